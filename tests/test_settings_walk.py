"""One setting's walk from the launcher to the compiled program: every `SearchOptions` field,
set on the command line, arrives in `search.Program.options` as the very `SearchOptions`
value the flags made (no kwargs dict in between: the value `make_program` receives is the
launcher's object) and in the manifest's settings in its recorded form."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
from absl import flags
from helpers.generators import small_stylegan_generator

from pulse_jax import problem
from pulse_jax.images import save_image
from pulse_jax.options import option_fields
from pulse_jax.runs import cli, engine

# Non-default values that together set every field (the operator parameters need their
# operator, and the mode refuses PULSE's own options, so four launches): the flag string a
# user types and the value it means.
CASES = [
    {
        "steps": ("3", 3),
        "loss_str": ("1*L1+0.05*GEOCROSS", "1*L1+0.05*GEOCROSS"),
        "eps": ("0.01", 0.01),
        "noise_type": ("fixed", "fixed"),
        "num_trainable_noise_layers": ("2", 2),
        "tile_latent": ("true", True),
        "bad_noise_layers": ("1.3", (1, 3)),
        "opt_name": ("sgdm", "sgdm"),
        "learning_rate": ("0.1", 0.1),
        "lr_schedule": ("fixed", "fixed"),
        "operator": ("gaussian", "gaussian"),
        "blur_sigma": ("1.5", 1.5),
    },
    {"operator": ("denoise", "denoise"), "noise_std": ("0.1", 0.1)},
    {"operator": ("inpaint", "inpaint"), "mask": ("random", "random")},
    {"mode": ("projector", "projector")},
]


class _Compiled(Exception):
    """Raised by the spy once the program is made: nothing needs to run."""


def test_the_cases_set_every_field():
    assert {name for case in CASES for name in case} == {f.name for f in option_fields()}


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(v for v, _ in c.values()))
def test_every_option_walks_from_its_flag_to_the_program_and_the_manifest(
    case, tmp_path, monkeypatch
):
    values = flags.FlagValues()
    cli.define_search_flags(values)
    values(["test", *(f"--{name}={text}" for name, (text, _) in case.items())])
    search = cli.search_config(values)
    generator = small_stylegan_generator(0)
    save_image(tmp_path / "a.png", np.full((8, 8, 3), 0.5, np.float32))
    work = engine.Work.for_run(str(tmp_path), str(tmp_path / "out"), search)

    made = {}
    make_program = problem.make_program

    def spy(generator, lr_size, options, **execution):
        made["options"] = options
        made["program"] = make_program(generator, lr_size, options, **execution)
        raise _Compiled

    monkeypatch.setattr(problem, "make_program", spy)
    with pytest.raises(_Compiled):
        engine.run(work, generator, process=(0, 1), log=io.StringIO())

    assert made["options"] is search.options  # the flags' value itself, not a rebuilt one
    program_options = made["program"].options
    settings = search.settings(generator)
    for name, (_, value) in case.items():
        field = next(f for f in option_fields() if f.name == name)
        assert value != field.default and getattr(search.options, name) == value, name
        assert getattr(program_options, name) == value, name
        spec = field.metadata["option"]
        assert settings[name] == (spec.format(value) if spec.format else value), name
    # Nothing else changed on the way: the program's options are the flags' options (with
    # the generator's defaults filled in where they were left unset).
    assert dataclasses.replace(program_options) == search.options.for_arch(generator.arch)
