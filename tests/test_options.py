"""The one options value: flags, `solve`'s keywords and the settings derive from it and agree."""

from __future__ import annotations

import dataclasses
import enum
import inspect
import json

import pytest
from absl import flags

import pulse_jax
from pulse_jax import cli, config, operators, options
from pulse_jax.generators import dcgan, stylegan
from pulse_jax.generators.base import Generator
from pulse_jax.options import ConfigError, LRSchedule, NoiseType, OptName, SearchOptions

FIELDS = {f.name: f for f in dataclasses.fields(SearchOptions)}


@pytest.fixture(scope="module")
def parsed_flags():
    values = flags.FlagValues()
    cli.define_search_flags(values)
    values(["test"])
    return values


def test_every_field_is_an_option():
    assert tuple(FIELDS) == options.OPTION_NAMES
    assert all(isinstance(f.metadata["option"], options.Spec) for f in FIELDS.values())
    # The operator's parameters are listed, with the operators module's defaults and help.
    for parameter in operators.PARAMETERS:
        field = FIELDS[parameter.name]
        assert field.default == parameter.default
        assert field.metadata["option"].help == parameter.help
        assert options.option_types()[parameter.name] is parameter.type


def test_flags_agree_with_the_fields(parsed_flags):
    types = options.option_types(config.SearchConfig)
    names = [f.name for f in options.option_fields(config.SearchConfig)]
    assert set(names) == set(FIELDS) | {"generator", "resize"}  # seeds are the launchers'
    assert tuple(names) == cli.SEARCH_FLAGS
    for field in options.option_fields(config.SearchConfig):
        flag, spec, kind = parsed_flags[field.name], field.metadata["option"], types[field.name]
        assert flag.help.endswith(spec.help)  # enums: absl puts the choices first
        if spec.format is not None:  # bad_noise_layers: PULSE's string on the command line
            assert flag.default is None and field.default is None
        else:
            assert flag.default == field.default
        if isinstance(kind, type) and issubclass(kind, enum.StrEnum):
            assert flag.parser.enum_values == [str(m) for m in kind]
        elif kind in (int, float):
            assert type(flag.default) is kind
            assert flag.parser.lower_bound == spec.lower
    # The parsed defaults make the default configuration.
    assert cli.search_config(parsed_flags) == config.SearchConfig()


def test_solve_keywords_agree_with_the_fields():
    for fn in (pulse_jax.solve, pulse_jax.lower):
        parameters = inspect.signature(fn).parameters
        for name, field in FIELDS.items():
            p = parameters[name]
            assert p.kind is inspect.Parameter.KEYWORD_ONLY and p.default == field.default
            assert p.annotation == inspect.get_annotations(SearchOptions, eval_str=True)[name]
            assert field.metadata["option"].help in fn.__doc__
        assert "options" not in parameters  # no bare **options left in what help() shows
    assert set(inspect.signature(pulse_jax.solve).parameters) - set(FIELDS) == {
        "lr_images", "generator", "num_samples", "seed", "init", "downscale", "image_ids",
        "sample_ids", "keep_intermediate", "devices", "batch_per_device", "remat",
        "progress", "progress_every",
    }  # fmt: skip


def test_flag_values_are_checked_when_parsed():
    values = flags.FlagValues()
    cli.define_search_flags(values)
    for argv, message in [
        (["--eps", "0"], "eps"),
        (["--loss_str", "100*L3"], "L3"),
        (["--bad_noise_layers", "1.x"], "'.'-separated"),
        (["--opt_name", "rmsprop"], "opt_name"),
    ]:
        values.unparse_flags()
        with pytest.raises(flags.IllegalFlagValueError, match=message):
            values(["test", *argv])
    values.unparse_flags()
    values(["test", "--bad_noise_layers", "11.17", "--opt_name", "sgd"])
    search = cli.search_config(values, seed=3)
    assert search.bad_noise_layers == (11, 17) and search.opt_name is OptName.SGD
    assert search.seed == 3


@pytest.mark.parametrize(
    "change, message",
    [
        ({"steps": 0}, r"steps \(--steps\) must be >= 1"),
        ({"steps": 2.5}, "steps must be int"),
        ({"eps": 0.0}, r"eps \(--eps\) must be > 0"),
        ({"num_trainable_noise_layers": -1}, "num_trainable_noise_layers"),
        ({"loss_str": "100*L3"}, "loss_str.*unknown loss term 'L3'"),
        ({"noise_type": "random"}, "unknown noise_type 'random'; valid choices: zero"),
        ({"opt_name": "rmsprop"}, "unknown opt_name 'rmsprop'"),
        ({"lr_schedule": "cosine"}, "unknown lr_schedule 'cosine'"),
        ({"operator": "blur"}, "unknown operator 'blur'"),
        ({"bad_noise_layers": "a.b"}, "bad_noise_layers must be '.'-separated"),
        ({"tile_latent": "yes"}, "tile_latent must be bool"),
    ],
)
def test_bad_values_raise_one_error_naming_the_option(change, message):
    with pytest.raises(ConfigError, match=message):
        SearchOptions(**change)
    with pytest.raises(ConfigError, match=message):
        config.SearchConfig(**change)


def test_values_take_their_types():
    o = SearchOptions(noise_type="zero", opt_name="sgdm", lr_schedule="fixed", steps=3)
    assert (o.noise_type, o.opt_name, o.lr_schedule) == (
        NoiseType.ZERO,
        OptName.SGDM,
        LRSchedule.FIXED,
    )
    assert SearchOptions(bad_noise_layers="17.11").bad_noise_layers == (17, 11)
    assert SearchOptions(bad_noise_layers="").bad_noise_layers == ()
    assert SearchOptions(bad_noise_layers=[3]).bad_noise_layers == (3,)
    assert SearchOptions().bad_noise_layers is None  # the generator's default
    assert SearchOptions(learning_rate=1).learning_rate == 1.0
    with pytest.raises(TypeError, match="stepz"):
        SearchOptions(stepz=3)


def _style_arch(blocks: int) -> stylegan.StyleGANArch:
    return stylegan.StyleGANArch(resolution=4 * 2 ** (blocks - 1), channels=(512,) * blocks)


def test_generators_declare_their_options():
    style, flat = _style_arch(9), dcgan.DCGANArch()
    assert Generator("stylegan", style, {}).has_noise
    assert not Generator("dcgan", flat, {}).has_noise
    assert options.Scope.STYLE in style.option_scopes
    assert flat.option_scopes == {options.Scope.GENERIC}
    # Defaults from the generator: PULSE's 17 where it exists.
    assert SearchOptions().for_arch(style).bad_noise_layers == (17,)
    assert SearchOptions().for_arch(_style_arch(6)).bad_noise_layers == ()
    assert SearchOptions(bad_noise_layers=(3,)).for_arch(style).bad_noise_layers == (3,)
    with pytest.raises(ConfigError, match=r"bad_noise_layers 19 do not exist.*0\.\.17"):
        SearchOptions(bad_noise_layers="19").for_arch(style)
    # Options of another scope, set, are refused; left at their defaults, they pass.
    assert SearchOptions(steps=3).for_arch(flat) == SearchOptions(steps=3)
    with pytest.raises(ConfigError, match="tile_latent applies to StyleGAN only"):
        SearchOptions(tile_latent=True).for_arch(flat)


# Today's manifest settings (as e17a469 wrote them, plus the mode of issue 23), byte for byte.
SETTINGS_STYLE_DEFAULT = (
    '{"generator": "weights/x.npz", "seed": 0, "steps": 100, "loss_str": '
    '"100*L2+0.05*GEOCROSS", "eps": 0.002, "noise_type": "trainable", '
    '"num_trainable_noise_layers": 5, "tile_latent": false, "bad_noise_layers": "17", '
    '"opt_name": "adam", "learning_rate": 0.4, "lr_schedule": "linear1cycledrop", '
    '"resize": false, "operator": "bicubic", "blur_sigma": null, "noise_std": null, '
    '"mask": null, "mode": "pulse"}'
)
SETTINGS_STYLE_SET = (
    '{"generator": "weights/x.npz", "seed": 7, "steps": 3, "loss_str": "1*L1", "eps": 0.01, '
    '"noise_type": "fixed", "num_trainable_noise_layers": 2, "tile_latent": true, '
    '"bad_noise_layers": "11.3", "opt_name": "sgdm", "learning_rate": 0.1, "lr_schedule": '
    '"fixed", "resize": true, "operator": "gaussian", "blur_sigma": 1.5, "noise_std": null, '
    '"mask": null, "mode": "pulse"}'
)
SETTINGS_DCGAN = (
    '{"generator": "dcgan64", "seed": 2, "steps": 100, "loss_str": "100*L2+0.05*GEOCROSS", '
    '"eps": 0.002, "noise_type": null, "num_trainable_noise_layers": null, "tile_latent": '
    'null, "bad_noise_layers": null, "opt_name": "adam", "learning_rate": 0.4, '
    '"lr_schedule": "linear1cycledrop", "resize": false, "operator": "inpaint", '
    '"blur_sigma": null, "noise_std": null, "mask": "random", "mode": "pulse"}'
)


def test_settings_are_recorded_as_before():
    style = Generator("stylegan", _style_arch(9), {})
    flat = Generator("dcgan", dcgan.DCGANArch(), {})
    default = config.SearchConfig(generator="weights/x.npz")
    assert json.dumps(default.settings(style)) == SETTINGS_STYLE_DEFAULT
    set_ = config.SearchConfig(
        generator="weights/x.npz", seed=7, steps=3, loss_str="1*L1", eps=0.01,
        noise_type="fixed", num_trainable_noise_layers=2, tile_latent=True,
        bad_noise_layers="11.3", opt_name="sgdm", learning_rate=0.1, lr_schedule="fixed",
        resize=True, operator="gaussian", blur_sigma=1.5,
    )  # fmt: skip
    assert json.dumps(set_.settings(style)) == SETTINGS_STYLE_SET
    dc = config.SearchConfig(seed=2, operator="inpaint", mask="random")
    assert json.dumps(dc.settings(flat)) == SETTINGS_DCGAN
    # The diff of two recordings names what changed, in the recorded form.
    diff = config.settings_diff(default.settings(style), set_.settings(style))
    assert "bad_noise_layers '17' -> '11.3'" in diff and "steps 100 -> 3" in diff


def test_solve_kwargs_and_replace():
    style = Generator("stylegan", _style_arch(9), {})
    flat = Generator("dcgan", dcgan.DCGANArch(), {})
    search = config.SearchConfig(steps=3, operator="denoise", noise_std=0.1)
    kwargs = search.solve_kwargs(style, 16)
    assert kwargs["eps"] == pytest.approx(2e-3 + 0.01) and kwargs["downscale"].factor == 64
    assert kwargs["steps"] == 3 and kwargs["bad_noise_layers"] is None
    assert "operator" not in kwargs and "noise_type" not in search.solve_kwargs(flat, 16)
    assert dataclasses.replace(search, seed=5).seed == 5
    assert search.options == SearchOptions(steps=3, operator="denoise", noise_std=0.1)
