"""How often PULSE succeeds, how consistent and how diverse its faces are, what it costs;
and the same for ILO and NVIDIA's projector, side by side.

    python experiments/evaluate.py --synthetic 32 --samples 4 --output_dir results/eval_x4
    python experiments/evaluate.py --synthetic 32 --samples 4 --lr_size 8 \\
        --output_dir results/eval_x8
    python experiments/evaluate.py --input_dir my_hr_faces --operator gaussian --blur_sigma 2
    python experiments/evaluate.py --summarize "results/eval_*/report.json"
    python experiments/evaluate.py --generator stylegan2_64_c32 --method pulse,ilo,projector \\
        --synthetic 32 --samples 4 --output_dir results/side_x4

Degrades HR faces (a folder of them, or --synthetic N faces the generator draws from seeded
latents) with --operator, runs PULSE with --samples samples per face and writes
`<out>/report.json`, `<out>/report.md` and the plots `l2_curves.png`, `success_curve.png`
(with the `plots` extra) and `grid.png` (what is measured: `pulse_jax/evaluation/evaluate.py`).
--summarize puts the aggregate rows of existing reports into one markdown table (printed
and written to `<out>/summary.md`) and their success-rate curves into one plot
(`<out>/success_curves.png`).

--method runs each listed search mode (pulse, ilo, projector) on the same faces,
observations and seeds, each with its own defaults and --steps steps, into
`<out>/<method>/`, then writes the side-by-side `<out>/summary.md` (a row per method) and
`<out>/grid.png` (per face, a row per method). Success is PULSE's criterion (L2 <= eps) for
every method: ILO and the projector have none of their own besides their final loss. A
method that refuses the settings (ILO on an operator other than bicubic, ILO or the
projector on the DCGAN) gets a `report.json` saying why and n/a in the table.
--generator also takes the benchmark's generators stylegan<R> and stylegan2_<R>[_c<C>]
(experiments/benchmark_lib.py): RANDOM weights, for comparing the searches where no
trained StyleGAN2 is at hand (docs/evaluation.md says what that means).

Exit status: 0 on success (whatever the success rate), 2 when the settings or inputs are
wrong and nothing was run.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import sys

import benchmark_lib
from absl import app, flags

from pulse_jax import load_generator
from pulse_jax.evaluation import evaluate as evaluation
from pulse_jax.generators.base import Generator
from pulse_jax.images import save_image
from pulse_jax.options import SearchMode
from pulse_jax.runs import cli
from pulse_jax.runs.config import (
    NOISE_OPTIONS,
    ConfigError,
    SearchConfig,
    check_applicable,
    check_search,
)

FLAGS = flags.FLAGS
_DEFAULTS = evaluation.EvalConfig(search=SearchConfig(), output_dir="")
cli.define_search_flags()
flags.adopt_module_key_flags(cli)

flags.DEFINE_string(
    "input_dir", None, "Folder of HR faces of the generator's resolution (or use --resize)."
)
flags.DEFINE_integer(
    "synthetic", 0, "Without --input_dir: evaluate on N faces the generator draws.", lower_bound=0
)
cli.define_split_groups_flag()
flags.DEFINE_integer(
    "data_seed", _DEFAULTS.data_seed, "Seeds the synthetic faces and the observation noise."
)
flags.DEFINE_integer("samples", _DEFAULTS.samples, "Samples (starts) per face, K.", lower_bound=1)
cli.define_old_name("seeds", "samples")
flags.DEFINE_integer(
    "seed",
    0,
    "Sample s of face i starts from fold_in(fold_in(key(seed), i), s).",
)
flags.DEFINE_integer("lr_size", _DEFAULTS.lr_size, "Side of the observations.", lower_bound=1)
flags.DEFINE_integer(
    "batch_size", _DEFAULTS.batch_size, "Faces per solve call; 0: all at once.", lower_bound=0
)
flags.DEFINE_integer("plot_faces", _DEFAULTS.plot_faces, "Faces shown in the grids.", lower_bound=1)
flags.DEFINE_string("output_dir", "results/evaluate", "Folder for the report and plots.")
flags.DEFINE_list(
    "method",
    ["pulse"],
    "Comma-separated search modes to evaluate side by side on the same faces (pulse, ilo, "
    "projector), each into <output_dir>/<method>/ when more than one. Default: --mode's.",
)
flags.DEFINE_string(
    "summarize",
    None,
    "Instead of evaluating: one markdown table of the report.json files matching this glob "
    "pattern, printed and written to <output_dir>/summary.md, and their success-rate curves "
    "in one plot, <output_dir>/success_curves.png.",
)


def execute() -> int:
    """Runs with the parsed flags; returns the exit status (see the module docstring)."""
    try:
        if FLAGS.summarize is not None:
            return _summarize(FLAGS.summarize, FLAGS.output_dir)
        config = evaluation.EvalConfig(
            search=cli.search_config(seed=FLAGS.seed),
            output_dir=FLAGS.output_dir,
            input_dir=FLAGS.input_dir,
            synthetic=FLAGS.synthetic,
            data_seed=FLAGS.data_seed,
            samples=FLAGS.samples,
            lr_size=FLAGS.lr_size,
            batch_size=FLAGS.batch_size,
            plot_faces=FLAGS.plot_faces,
            split_groups=cli.split_groups(),
        )
        generator = generator_by_name(config.search.generator)
        check_applicable(generator, [n for n in NOISE_OPTIONS if FLAGS[n].present])
        methods = method_configs(config, generator, _method_names())
        reports = [_evaluate_one(c, generator, reason) for c, reason in methods]
    except Exception as e:  # noqa: BLE001 - user errors end in one line; bugs are raised again
        return cli.exit_status(e, 2)
    if len(reports) > 1:
        written = evaluation.write_summary(reports, config.output_dir)
        ran = [r for r in reports if "_arrays" in r]  # at least one (`method_configs`)
        shown = min(config.plot_faces, len(ran[0]["_arrays"]["names"]))
        grid = evaluation.side_by_side_grid(ran, shown)
        save_image(os.path.join(config.output_dir, evaluation.GRID), grid)
        print(f"written to {config.output_dir}/: {', '.join(written + [evaluation.GRID])}")
    print(evaluation.summary_table(reports), end="")
    return 0


def _summarize(pattern: str, output_dir: str) -> int:
    """--summarize: one table (and curve plot) of the reports matching `pattern`."""
    paths = sorted(glob.glob(pattern))
    if not paths:
        raise ConfigError(f"--summarize {pattern!r}: no file matches")
    reports = [evaluation.read_report(p) for p in paths]
    written = evaluation.write_summary(reports, output_dir)
    print(evaluation.summary_table(reports), end="")
    print(f"written to {output_dir}/: {', '.join(written)}")
    return 0


def generator_by_name(name: str) -> Generator:
    """`load_generator(name)`, or for the benchmark's names (stylegan<R>,
    stylegan2_<R>[_c<C>]) a generator with RANDOM weights (`benchmark_lib.make_generator`,
    seed 0): its faces are the generator's own, not real faces."""
    if re.fullmatch(r"stylegan\d+|stylegan2_\d+(_c\d+)?", name) and not os.path.exists(name):
        return benchmark_lib.make_generator(name)
    return load_generator(name)


def _method_names() -> list[str]:
    if FLAGS["method"].present and FLAGS["mode"].present:
        raise ConfigError("give --method (several searches) or --mode (one), not both")
    return FLAGS.method if FLAGS["method"].present else [str(FLAGS.mode)]


def method_configs(config, generator: Generator, names: list[str]) -> list[tuple]:
    """Each method's evaluation (`config` with the method as its mode; its own folder when
    there are several) and why it cannot run (None: it can).

    Raises:
      ConfigError: an unknown or repeated method; with one method, its settings error;
        with several, when none of them can run.
    """
    unknown = [n for n in names if n not in {m.value for m in SearchMode}]
    if unknown or len(set(names)) != len(names) or not names:
        raise ConfigError(
            f"--method {','.join(names)}: give distinct methods among "
            f"{', '.join(m.value for m in SearchMode)}"
        )
    out = []
    for name in names:
        options = dataclasses.replace(config.search.options, mode=name)
        folder = os.path.join(config.output_dir, name) if len(names) > 1 else config.output_dir
        search = dataclasses.replace(config.search, options=options)
        method = dataclasses.replace(config, search=search, output_dir=folder)
        try:
            check_search(search, generator)
            out.append((method, None))
        except ConfigError as e:
            if len(names) == 1:
                raise
            out.append((method, str(e)))
    if all(reason for _, reason in out):
        raise ConfigError("no method can run these settings: " + "; ".join(r for _, r in out))
    return out


def _evaluate_one(config, generator: Generator, reason: str | None) -> dict:
    """One method's report (`reason`: why it is not run), written to its folder."""
    if reason is None:
        report = evaluation.evaluate(config, generator, log=sys.stderr)
    else:
        print(f"n/a: {config.search.options.mode}: {reason}", file=sys.stderr)
        report = evaluation.not_run_report(config, generator, reason)
    for e in report.get("unusable_inputs", []):
        print(f"skipped: {e}", file=sys.stderr)
    written = evaluation.write_report(report, config.output_dir, plot_faces=config.plot_faces)
    print(f"written to {config.output_dir}/: {', '.join(written)}")
    return report


run, main = cli.entry_points(execute)


if __name__ == "__main__":
    app.run(main)
