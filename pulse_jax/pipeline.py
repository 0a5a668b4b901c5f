"""PULSE over a folder of images: the engine with one seed on one process.

`experiments/run.py` is `run_folder` plus flag parsing. The work is
`engine.run`'s (fixed groups, resume, refusals, `engine.recompute`); what makes it a
run:

- one seed, so results need no seed folder (`layout`):

      <out>/results.jsonl                     one line per (input, sample) (`store`)
      <out>/<stem>/sample_<s>_hr.png          the sample's best HR image
      <out>/<stem>/sample_<s>_lr.png          its downscale (what the loss compared)
      <out>/<stem>/comparison.png             observation | bicubic | every sample
      <out>/<stem>/l2_curves.png              with plots: every sample's L2 over the steps
      <out>/<stem>/intermediate/sample_<s>_step_<j>.png   with save_intermediate

  (two inputs with the same stem, `a.png` and `a.jpg`, get `a_png/` and `a_jpg/`);
- a group is `batch_size` inputs with all their samples (`batch_size x duplicates`
  rows, an input's samples side by side), the last of a size padded; a size with fewer
  inputs than `batch_size` gets one group of them all, not padding.

Sample s of the input with `image_id` i starts from `fold_in(fold_in(key(seed), i), s)`,
exactly as `solve` seeds it: `solve(lr[None], generator, seed=seed, image_ids=[i],
sample_ids=[[s]])` starts from the same latent. Its result equals the line's up to
float32 rounding, which Adam amplifies over the steps; bit for bit when the call is the
line's own group (`engine.recompute`), on the same machine kind.
"""

from __future__ import annotations

import dataclasses
from typing import TextIO

from pulse_jax import engine, store
from pulse_jax.config import (  # noqa: F401 - also imported from here by cli, evaluate
    NOISE_OPTIONS,
    ConfigError,
    SearchConfig,
    check_applicable,
    check_search,
)
from pulse_jax.generators.base import Generator
from pulse_jax.inputs import is_readme  # noqa: F401 - imported from here by evaluate
from pulse_jax.store import cpu_model  # noqa: F401 - imported from here by make_machine_reference


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A run over a folder: where from, where to, how many samples, how batched."""

    input_dir: str
    output_dir: str
    search: SearchConfig = SearchConfig()
    duplicates: int = 1
    batch_size: int = 1
    save_intermediate: bool = False
    plots: bool = False  # also write <out>/<stem>/l2_curves.png (needs the plots extra)

    def work(self) -> engine.Work:
        """The run as the engine's work: one seed, groups of `batch_size` inputs."""
        if self.duplicates < 1 or self.batch_size < 1:
            raise ConfigError("--duplicates and --batch_size must be >= 1")
        return engine.Work(
            input_dir=self.input_dir,
            output_dir=self.output_dir,
            search=self.search,
            seeds=(self.search.seed,),
            samples=self.duplicates,
            group_size=self.batch_size * self.duplicates,
            knob=("batch_size", self.batch_size),
            manifest=store.RUN_MANIFEST,
            fit_groups=True,
            seed_folders=False,
            sheets=True,
            plots=self.plots,
            intermediate=self.save_intermediate,
            desc="pulse",
        )


def run_folder(
    config: RunConfig, generator: Generator, *, log: TextIO | None = None
) -> engine.Summary:
    """Runs PULSE on every image of `config.input_dir` on this process's local devices.

    Bad files are reported on `log` and in the summary, and the rest are processed.
    Samples that miss eps are written anyway, with `success: false` and a warning.

    Args:
      config: the run.
      generator: from `pulse_jax.load_generator(config.search.generator)`.
      log: where the progress line, warnings and errors go (default stderr).

    Returns:
      The `engine.Summary`; `summary.failed` lists the bad inputs.

    Raises:
      ImageError: the input folder is missing or holds no file.
      ConfigError: the settings do not work with the generator, or the output folder
        holds results that this run would mix with or overwrite.
    """
    return engine.run(config.work(), generator, process=(0, 1), log=log)
