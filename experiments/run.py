"""PULSE on a folder of low-resolution images.

    python experiments/run.py --input_dir experiments/examples --output_dir results/examples

Writes, for every input `<stem>` and sample `<s>`, `<out>/<stem>/sample_<s>_hr.png`
and `sample_<s>_lr.png`, one `<out>/<stem>/comparison.png` per input (with `--plots`
also `l2_curves.png`), and a line per sample in `<out>/results.jsonl` (layout, re-runs
and seeding: the docstring of `pulse_jax/runs/engine.py`, `Work.for_run`). Flags
and defaults are PULSE's own, plus `--generator`, `--operator` (the degradation, with
its parameters), `--resize`, `--plots` and `--align`.

Exit status: 0 when every input was used (whether or not its samples reached
eps; see the manifest), 1 when some input files could not be used (each is
named, the others are processed), 2 when the settings or folders are wrong and
nothing was run.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from absl import app, flags

from pulse_jax import load_generator
from pulse_jax.images import ImageError
from pulse_jax.runs import cli, engine
from pulse_jax.runs.config import NOISE_OPTIONS, ConfigError, SearchConfig, check_applicable

FLAGS = flags.FLAGS
_DEFAULTS = SearchConfig()
cli.define_search_flags()
flags.adopt_module_key_flags(cli)

flags.DEFINE_string(
    "input_dir",
    None,
    "Folder of LR images: every file (any image format) except hidden files and a README.",
)
flags.DEFINE_string("output_dir", "results/runs", "Folder for the results and results.jsonl.")
flags.DEFINE_integer("samples", 1, "Samples per input, each from its own start.", lower_bound=1)
cli.define_old_name("duplicates", "samples")
flags.DEFINE_integer("batch_size", 1, "Input images per solve call.", lower_bound=1)
flags.DEFINE_integer(
    "seed",
    _DEFAULTS.seed,
    "Sample s of the input with index i among the input files (sorted by name) starts from "
    "fold_in(fold_in(key(seed), i), s). Every seed, 0 included, is a seed.",
)
flags.DEFINE_boolean(
    "save_intermediate",
    False,
    "Also write every step's image, <out>/<stem>/intermediate/sample_<s>_step_<j>.png.",
)
flags.DEFINE_boolean(
    "plots",
    False,
    "Also write <out>/<stem>/l2_curves.png, every sample's L2 over the steps with the eps "
    "line (needs matplotlib: pip install -e '.[plots]').",
)
flags.DEFINE_boolean(
    "align",
    False,
    "First detect, align and crop the faces of --input_dir (needs the optional dlib extra) "
    "and run on the aligned faces, written to <output_dir>/aligned/.",
)
cli.define_split_groups_flag()
flags.DEFINE_integer(
    "align_size",
    0,
    "With --align, the side of the aligned LR faces; 0: min(32, resolution / 4), i.e. 16 "
    "for the 64 px DCGAN and PULSE's 32 for 1024 px.",
    lower_bound=0,
)


def config_from_flags() -> engine.Work:
    """The run described by the parsed flags."""
    return engine.Work.for_run(
        FLAGS.input_dir,
        FLAGS.output_dir,
        cli.search_config(seed=FLAGS.seed),
        samples=FLAGS.samples,
        batch_size=FLAGS.batch_size,
        save_intermediate=FLAGS.save_intermediate,
        plots=FLAGS.plots,
        split_groups=cli.split_groups(),
    )


def align_inputs(work: engine.Work, resolution: int) -> tuple[engine.Work, list[ImageError]]:
    """Aligns the faces of the input folder into `<output_dir>/aligned/`.

    Returns:
      The run on the aligned LR faces, and one `ImageError` per photo that gave no face.

    Raises:
      ConfigError: face alignment (the optional dlib extra) is not installed, or
        --align_size does not divide the generator's resolution.
    """
    try:
        from pulse_jax import align  # optional extra: imported only when asked for
    except ImportError as e:
        raise ConfigError(
            f"--align needs the face-alignment module pulse_jax.align and its extra ({e})"
        ) from None
    size = FLAGS.align_size or min(32, resolution // 4)
    aligned = Path(work.output_dir) / "aligned"
    try:
        faces = align.align_to_folder(
            work.input_dir, aligned, output_size=size, resolution=resolution
        )
    except align.AlignmentUnavailable as e:
        raise ConfigError(f"--align: {e}") from None
    except ValueError as e:
        if isinstance(e, ImageError):
            raise
        raise ConfigError(f"--align: {e}") from None
    failed = [ImageError(path, reason) for path, reason in faces.skipped.items()]
    return dataclasses.replace(work, input_dir=str(aligned)), failed


def execute() -> int:
    """Runs with the parsed flags; returns the exit status (see the module docstring)."""
    if FLAGS.input_dir is None:
        print("error: --input_dir is required", file=sys.stderr)
        return 2
    not_aligned = []
    try:
        work = config_from_flags()
        generator = load_generator(work.search.generator)
        check_applicable(generator, [n for n in NOISE_OPTIONS if FLAGS[n].present])
        if FLAGS.align:
            work, not_aligned = align_inputs(work, generator.resolution)
        summary = engine.run(work, generator, process=(0, 1))
    except Exception as e:  # noqa: BLE001 - user errors end in one line; bugs are raised again
        return cli.exit_status(e, 2)
    # Photos in which no face was found count as failed inputs too.
    summary.failed[:0] = not_aligned
    summary.inputs += len(not_aligned)
    print("\n".join(summary.lines()))
    if summary.failed:
        print(
            f"error: {len(summary.failed)} of {summary.inputs} input files could not be used "
            "(each is named above)",
            file=sys.stderr,
        )
        return 1
    return 0


run, main = cli.entry_points(execute)


if __name__ == "__main__":
    app.run(main)
