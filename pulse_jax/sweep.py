"""Sweeps: inputs x seeds x samples, shared by every device of every host, resumable.

`experiments/sweep.py` is `run_sweep` plus flag parsing; `engine` does the work (fixed
groups, the process split, resume, refusals, `engine.recompute`). What makes it a sweep:
every seed has its own folder (`<out>/seed_<k>/<stem>/`, `layout`) and every process its
own manifest shard (`<out>/manifest.<process>.jsonl`: hosts need not share the output
folder; keep the number of processes when they do not); process 0 writes
`<out>/summary.json`; a group is always `batch_per_device` results (the program
`plan_batch_size` measured), so results do not depend on how many devices or hosts
there were. More seeds or samples with the same settings extend a sweep.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import jax

from pulse_jax import engine, store
from pulse_jax.config import ConfigError, SearchConfig
from pulse_jax.files import atomic_write
from pulse_jax.generators.base import Generator
from pulse_jax.progress import say
from pulse_jax.solve import compiled_memory

SUMMARY = "summary.json"


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """A sweep: inputs x seeds x samples with one set of search settings.

    `search.seed` is not used: `seeds` lists the seeds.
    """

    input_dir: str
    output_dir: str
    search: SearchConfig = SearchConfig()
    seeds: tuple[int, ...] = (0,)
    samples: int = 1
    batch_per_device: int = 1
    remat: bool = False
    log_interval: float = 10.0
    split_groups: bool | None = None  # `engine.Work.split_groups`

    def work(self) -> engine.Work:
        """The sweep as the engine's work: seed folders, groups of `batch_per_device`."""
        if self.samples < 1 or self.batch_per_device < 1 or not self.seeds:
            raise ConfigError(
                "--samples and --batch_per_device must be >= 1, with one seed or more"
            )
        if len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ConfigError(f"--seeds must be distinct and >= 0, got {list(self.seeds)}")
        return engine.Work(
            input_dir=self.input_dir,
            output_dir=self.output_dir,
            search=self.search,
            seeds=tuple(self.seeds),
            samples=self.samples,
            group_size=self.batch_per_device,
            knob=("batch_per_device", self.batch_per_device),
            manifest=store.SWEEP_MANIFEST,
            remat=self.remat,
            split_groups=self.split_groups,
            desc="sweep",
            log_interval=self.log_interval,
        )


def run_sweep(
    config: SweepConfig,
    generator: Generator,
    *,
    devices: Sequence[jax.Device] | None = None,
    log: TextIO | None = None,
) -> engine.Summary:
    """Runs this process's share of a sweep and gathers the summary of all processes.

    Every process of the run calls it with the same config (a collective at the end);
    process 0 prints the summary on `log` and writes summary.json.

    Args:
      config: the sweep.
      generator: from `pulse_jax.load_generator(config.search.generator)`.
      devices: where this process solves; default its local devices.
      log: progress, warnings and (process 0) the summary; default stderr.

    Returns:
      The `engine.Summary` of every process.

    Raises:
      ImageError: the input folder is missing or holds no file.
      ConfigError: bad settings, or an output folder with results of other settings.
    """
    log = sys.stderr if log is None else log
    summary = engine.run(config.work(), generator, devices=devices, log=log)
    if jax.process_index() == 0:
        for line in summary.lines():
            say(log, line)
        text = json.dumps(summary.as_json(), indent=1)
        atomic_write(Path(config.output_dir) / SUMMARY, lambda f: f.write(text.encode("utf-8")))
    return summary


def _memory_limit(device: jax.Device) -> int | None:
    """The device's memory in bytes where it says (a compile-only device does not)."""
    try:
        stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    except Exception:  # noqa: BLE001 - compile-only and CPU devices may refuse
        return None
    return (stats or {}).get("bytes_limit")


def plan_batch_size(
    generator: Generator,
    lr_size: int,
    search: SearchConfig,
    *,
    remat: bool = False,
    largest: int = 256,
    device: jax.Device | None = None,
    limit_bytes: int | None = None,
) -> list[dict]:
    """How much memory one device needs per `batch_per_device`, 1, 2, 4... up to `largest`.

    Each row is `solve.compiled_memory` for that batch, plus `fits` (total below 90% of
    the device's memory, when the device reports it). Stops after the first that does
    not fit. Run it on the machine that will run the sweep (a TPU/GPU host): the
    compiler and memory are the device's. `device` may also be a compile-only device
    (`jax.experimental.topologies`; nothing is placed on it), with the chip's memory as
    `limit_bytes`; `experiments/plan.py` does this for whole chips without one.

    Returns:
      [{"batch_per_device", "total_bytes", ..., "limit_bytes", "fits"}].
    """
    device = device or jax.local_devices()[0]
    limit = limit_bytes if limit_bytes is not None else _memory_limit(device)
    kwargs = search.solve_kwargs(generator, lr_size)
    kwargs.pop("seed")
    rows, batch = [], 1
    while batch <= largest:
        row = compiled_memory(generator, lr_size, batch, device=device, remat=remat, **kwargs)
        row = dict(row, batch_per_device=batch, limit_bytes=limit)
        row["fits"] = None if limit is None else row["total_bytes"] <= 0.9 * limit
        rows.append(row)
        if row["fits"] is False:
            break
        batch *= 2
    return rows
