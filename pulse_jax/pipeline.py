"""PULSE over a folder of images: the engine with one seed on one process.

`experiments/run.py` is `run_folder` plus flag parsing; `engine` does the work (fixed
groups, resume, refusals, `engine.recompute`). What makes it a run: one seed, so its
results need no seed folder (`<out>/<stem>/sample_<s>_hr.png`, `layout`) and
`<out>/results.jsonl` is its manifest (`store`); a comparison sheet per input; groups of
`batch_size` inputs with all their samples side by side (a size with fewer inputs gets
one group of them all, not padding).

Sample s of the input with `image_id` i is seeded as in docs/method.md section 8.1,
exactly as `solve(lr[None], generator, seed=seed, image_ids=[i], sample_ids=[[s]])`
seeds it: equal to the line up to float32 rounding, which Adam amplifies over the
steps; bit for bit through the line's own group (`engine.recompute`), on the same
machine kind.
"""

from __future__ import annotations

import dataclasses
from typing import TextIO

from pulse_jax import engine, store
from pulse_jax.config import ConfigError, SearchConfig
from pulse_jax.generators.base import Generator


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
    split_groups: bool | None = None  # `engine.Work.split_groups`

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
            split_groups=self.split_groups,
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
