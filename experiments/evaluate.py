"""How often PULSE succeeds, how consistent and how diverse its faces are, what it costs.

    python experiments/evaluate.py --synthetic 32 --samples 4 --output_dir results/eval_x4
    python experiments/evaluate.py --synthetic 32 --samples 4 --lr_size 8 \\
        --output_dir results/eval_x8
    python experiments/evaluate.py --input_dir my_hr_faces --operator gaussian --blur_sigma 2
    python experiments/evaluate.py --summarize "results/eval_*/report.json"

Degrades HR faces (a folder of them, or --synthetic N faces the generator draws from seeded
latents) with --operator, runs PULSE with --samples samples per face and writes
`<out>/report.json`, `<out>/report.md` and the plots `l2_curves.png`, `success_curve.png`
(with the `plots` extra) and `grid.png` (what is measured: `pulse_jax/evaluation/evaluate.py`).
--summarize puts the aggregate rows of existing reports into one markdown table (printed
and written to `<out>/summary.md`) and their success-rate curves into one plot
(`<out>/success_curves.png`).

Exit status: 0 on success (whatever the success rate), 2 when the settings or inputs are
wrong and nothing was run.
"""

from __future__ import annotations

import glob
import sys

from absl import app, flags

from pulse_jax import load_generator
from pulse_jax.evaluation import evaluate as evaluation
from pulse_jax.runs import cli
from pulse_jax.runs.config import NOISE_OPTIONS, ConfigError, SearchConfig, check_applicable

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
            paths = sorted(glob.glob(FLAGS.summarize))
            if not paths:
                raise ConfigError(f"--summarize {FLAGS.summarize!r}: no file matches")
            reports = [evaluation.read_report(p) for p in paths]
            written = evaluation.write_summary(reports, FLAGS.output_dir)
            print(evaluation.summary_table(reports), end="")
            print(f"written to {FLAGS.output_dir}/: {', '.join(written)}")
            return 0
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
        generator = load_generator(config.search.generator)
        check_applicable(generator, [n for n in NOISE_OPTIONS if FLAGS[n].present])
        report = evaluation.evaluate(config, generator, log=sys.stderr)
    except Exception as e:  # noqa: BLE001 - user errors end in one line; bugs are raised again
        return cli.exit_status(e, 2)
    for e in report["unusable_inputs"]:
        print(f"skipped: {e}", file=sys.stderr)
    written = evaluation.write_report(report, config.output_dir, plot_faces=config.plot_faces)
    print(evaluation.summary_table([report]), end="")
    print(f"written to {config.output_dir}/: {', '.join(written)}")
    return 0


run, main = cli.entry_points(execute)


if __name__ == "__main__":
    app.run(main)
