"""Sweeps: inputs x seeds x samples, shared by every device of every host, resumable.

`experiments/sweep.py` is `run_sweep` plus flag parsing. A sweep's unit of work
is one result, a (input, seed, sample) triple. Its start depends on nothing
else: `fold_in(fold_in(key(seed), image_id), sample)` with `image_id` the
input's index among the input files (`pipeline.load_inputs`), so a result does
not depend on which host computed it, in which batch, or how many devices there
were (with `batch_per_device` fixed; see `solve`).

How hosts share it (`distributed.process_share`): the whole work list, in a
fixed order, is dealt out to the processes in turn; each process skips what is
already recorded, batches the rest `batch_per_device` x its local devices at a
time and runs `solve` on its *local* devices only. Results need no
communication, so no host ever waits for another (a host that resumes with
less left to do simply finishes earlier) and the output folder need not be
shared; only the final summary is gathered on process 0.

A line of the manifest is reproducible on its own, bitwise on the same kind of
device: `solve(lr[None], generator, seed=seed, image_ids=[image_id],
sample_ids=[[sample]], batch_per_device=b, devices=jax.local_devices()[:1])`
with the sweep's `--batch_per_device` b.

Output layout (`pipeline`'s, one folder per seed):

    <out>/seed_<seed>/<stem>/sample_<s>_hr.png    the result's best HR image
    <out>/seed_<seed>/<stem>/sample_<s>_lr.png    its downscale
    <out>/manifest.<process>.jsonl                one line per result, by that process
    <out>/summary.json                            written by process 0 at the end

Exactly once, whole or not at all: a result's images are written atomically
(temporary file, then rename), then its manifest line is appended to the
process's own shard and flushed to disk (fsync). On restart every shard in the
folder is read and recorded results are skipped; a result whose images exist
without a line (killed in between) is computed again and its files replaced.
A line torn by a kill is cut off on restart. Each line carries the search
settings; a restart with other settings, or over inputs that changed, is
refused. Keep the number of processes when the output folder is not shared
between hosts (each host then sees only its own shards).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import jax
import numpy as np

from pulse_jax import distributed, pipeline
from pulse_jax.checkpoints.weights_file import atomic_write
from pulse_jax.generators.base import Generator
from pulse_jax.pipeline import ConfigError, InputImage, SearchConfig
from pulse_jax.progress import Progress, format_seconds
from pulse_jax.solve import compiled_memory, solve

SHARD = "manifest.{process}.jsonl"
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


@dataclasses.dataclass(frozen=True)
class WorkItem:
    """One result to compute."""

    input: InputImage
    seed: int
    sample: int

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.input.path.name, self.seed, self.sample)


@dataclasses.dataclass
class SweepSummary:
    """Totals over every process, known on every process after `run_sweep`.

    Attributes:
      per_process: one dict per process: `done` (results computed by this run),
        `skipped` (already recorded), `successes`, `latent_steps`, `solve_seconds`,
        `wall_seconds`.
    """

    items: int = 0
    inputs: int = 0
    failed: list = dataclasses.field(default_factory=list)
    per_process: list[dict] = dataclasses.field(default_factory=list)
    output_dir: str = ""

    def total(self, name: str) -> float:
        return sum(p[name] for p in self.per_process)

    def lines(self) -> list[str]:
        """Human-readable summary lines."""
        done, steps = int(self.total("done")), self.total("latent_steps")
        wall = max((p["wall_seconds"] for p in self.per_process), default=0.0)
        lines = [
            f"sweep: {self.items} results ({self.inputs} inputs, {len(self.failed)} unreadable)"
            f" on {len(self.per_process)} processes",
            f"results: {done} computed now, {int(self.total('skipped'))} already done, "
            f"{int(self.total('successes'))} of the new reached eps",
            f"time: {format_seconds(wall)} wall, throughput {steps / wall if wall else 0:.1f} "
            f"latent-steps/s over all hosts",
        ]
        for i, p in enumerate(self.per_process):
            rate = p["latent_steps"] / p["solve_seconds"] if p["solve_seconds"] else 0.0
            lines.append(
                f"  process {i}: {int(p['done'])} computed, {int(p['skipped'])} skipped, "
                f"{rate:.1f} latent-steps/s while solving"
            )
        lines.append(f"manifest: {self.output_dir}/{SHARD.format(process='*')}")
        return lines


def work_list(inputs: Sequence[InputImage], seeds: Sequence[int], samples: int) -> list:
    """Every result of a sweep, inputs x seeds x samples, in that (fixed) order."""
    return [WorkItem(item, s, k) for item in inputs for s in seeds for k in range(samples)]


def result_dir(item: WorkItem) -> str:
    """The folder of a result's image files, relative to the output folder."""
    return f"seed_{item.seed}/{item.input.name}"


def result_paths(item: WorkItem) -> dict[str, str]:
    """A result's image files, relative to the output folder."""
    return pipeline.sample_paths(result_dir(item), item.sample)


def read_records(out_dir: str | os.PathLike) -> list[dict]:
    """Every complete manifest line of every process's shard in `out_dir`.

    A last line without its newline (a process killed while appending) is not a record.

    Raises:
      ConfigError: a complete line is not a manifest record.
    """
    records = []
    for path in sorted(Path(out_dir).glob(SHARD.format(process="*"))):
        text = path.read_text(encoding="utf-8")
        lines = text.split("\n")[:-1]  # the part after the last newline is torn or empty
        required = {"input", "seed", "sample"}
        records += pipeline.parse_records(path, lines, required, "a sweep record")
    return records


def cut_torn_line(path: Path) -> None:
    """Drops an incomplete last line from a process's own shard (before appending to it)."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data[: data.rfind(b"\n") + 1]
        atomic_write(path, lambda f: f.write(keep))


def append_records(path: Path, records: Sequence[dict]) -> None:
    """Appends lines to a shard in one write, then flushes them to disk."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    with open(path, "ab") as f:
        f.write(text.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


def check_records(records: Sequence[dict], inputs: Sequence[InputImage], settings: dict) -> None:
    """Refuses to continue a sweep with other settings, or over inputs that changed.

    Raises:
      ConfigError: naming the first clash.
    """
    by_name = {item.path.name: item for item in inputs}
    for record in records:
        item = by_name.get(record["input"])
        if item is None:
            continue
        old = dict(record.get("settings") or {})
        old.pop("seed", None)
        why = None
        if record.get("input_sha256") != item.sha256:
            why = f"{item.path.name} is not the file those results were made from"
        elif old != settings:
            why = f"it was made with other settings ({pipeline.settings_diff(old, settings)})"
        if why:
            raise ConfigError(
                f"the output folder already holds sweep results that do not fit this sweep: "
                f"{why}; choose another --output_dir, or move the old results away"
            )


def plan_batch_size(
    generator: Generator,
    lr_size: int,
    search: SearchConfig,
    *,
    remat: bool = False,
    largest: int = 256,
    device: jax.Device | None = None,
) -> list[dict]:
    """How much memory one device needs per `batch_per_device`, 1, 2, 4... up to `largest`.

    Each row is `solve.compiled_memory` for that batch, plus `fits` (total below 90% of
    the device's memory, when the device reports it). Stops after the first that does
    not fit. Run it on the machine that will run the sweep (a TPU/GPU host): the
    compiler and memory are the device's.

    Returns:
      [{"batch_per_device", "total_bytes", ..., "limit_bytes", "fits"}].
    """
    device = device or jax.local_devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    limit = (stats or {}).get("bytes_limit")
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


def run_sweep(
    config: SweepConfig,
    generator: Generator,
    *,
    devices: Sequence[jax.Device] | None = None,
    log: TextIO | None = None,
) -> SweepSummary:
    """Runs this process's share of a sweep and gathers the summary of all processes.

    Every process of the run calls it with the same config (a collective at the end).

    Args:
      config: the sweep.
      generator: from `pulse_jax.load_generator(config.search.generator)`.
      devices: where this process solves; default its local devices.
      log: progress, warnings and (process 0) the summary; default stderr.

    Returns:
      The `SweepSummary` of every process.

    Raises:
      ImageError: the input folder is missing or holds no file.
      ConfigError: bad settings, or an output folder with results of other settings.
    """
    log = log if log is not None else sys.stderr
    wall = time.perf_counter()
    process, processes = jax.process_index(), jax.process_count()
    devices = list(devices or jax.local_devices())
    search = config.search
    if config.samples < 1 or config.batch_per_device < 1 or not config.seeds:
        raise ConfigError("--samples and --batch_per_device must be >= 1, with one seed or more")
    if len(set(config.seeds)) != len(config.seeds) or min(config.seeds) < 0:
        raise ConfigError(f"--seeds must be distinct and >= 0, got {list(config.seeds)}")
    pipeline.check_search(search, generator)
    settings = search.settings(generator)
    settings.pop("seed")
    out = Path(config.output_dir)
    shard = out / SHARD.format(process=process)

    inputs, errors = pipeline.load_inputs(
        config.input_dir, generator.resolution, resize=search.resize
    )
    if process == 0:
        for e in errors:
            pipeline.say(log, f"error: {e}")
    pipeline.check_operator(search, generator, [item.lr.shape[0] for item in inputs])
    records = read_records(out)
    check_records(records, inputs, settings)
    done = {(r["input"], r["seed"], r["sample"]) for r in records}
    items = work_list(inputs, config.seeds, config.samples)
    mine = distributed.process_share(items, process, processes)
    todo = [w for w in mine if w.key not in done]
    out.mkdir(parents=True, exist_ok=True)
    cut_torn_line(shard)

    width = config.batch_per_device * len(devices)
    batches = pipeline.make_batches(todo, width, size=lambda w: w.input.lr.shape[0])
    stats = {"done": 0, "skipped": len(mine) - len(todo), "successes": 0, "latent_steps": 0}
    stats["solve_seconds"] = 0.0
    desc = f"sweep process {process}/{processes}"
    if stats["skipped"]:
        pipeline.say(log, f"{desc}: {stats['skipped']} of its {len(mine)} results already done")
    with Progress(
        len(todo) * search.steps,
        desc,
        unit="latent-steps",
        stream=log,
        log_interval=config.log_interval,
    ) as bar:
        for batch in batches:
            # Every call of a size has the same shape (the last batch repeats its last item),
            # so it compiles once.
            rows = list(batch) + [batch[-1]] * (width - len(batch))
            side = batch[0].input.lr.shape[0]
            kwargs = search.solve_kwargs(generator, side)
            kwargs.pop("seed")
            observed = search.degradation(side, generator.resolution).observed
            t0 = time.perf_counter()
            result = solve(
                observed(np.stack([w.input.lr for w in rows])),
                generator,
                seed=[w.seed for w in rows],
                image_ids=[w.input.image_id for w in rows],
                sample_ids=[[w.sample] for w in rows],
                devices=devices,
                batch_per_device=config.batch_per_device,
                remat=config.remat,
                **kwargs,
            )
            seconds = time.perf_counter() - t0
            records = []
            for row, w in enumerate(batch):
                paths = pipeline.write_sample(
                    out,
                    result_dir(w),
                    w.sample,
                    result.hr[row, 0],
                    result.lr[row, 0],
                )
                records.append(_record(w, result, row, search, generator, seconds, paths))
            append_records(shard, records)  # after the images: a line means whole files
            stats["done"] += len(batch)
            stats["successes"] += sum(r["success"] for r in records)
            stats["latent_steps"] += len(batch) * search.steps
            stats["solve_seconds"] += seconds
            bar.update(
                len(batch) * search.steps,
                l2=float(np.mean(result.l2[: len(batch)])),
                reached_eps=f"{stats['successes']}/{stats['done']}",
            )
    stats["wall_seconds"] = time.perf_counter() - wall
    names = list(stats)
    rows = distributed.gather([stats[k] for k in names])
    summary = SweepSummary(
        items=len(items),
        inputs=len(inputs),
        failed=errors,
        per_process=[dict(zip(names, map(float, row), strict=True)) for row in rows],
        output_dir=str(out),
    )
    if process == 0:
        for line in summary.lines():
            pipeline.say(log, line)
        text = json.dumps(
            {
                "items": summary.items,
                "inputs": summary.inputs,
                "unreadable_inputs": [str(e) for e in errors],
                "per_process": summary.per_process,
            },
            indent=1,
        )
        atomic_write(out / SUMMARY, lambda f: f.write(text.encode("utf-8")))
    return summary


def _record(w: WorkItem, result, row: int, search, generator, seconds, paths) -> dict:
    """One manifest line: `pipeline.manifest_record` for (input, seed, sample), whose
    figures are in column 0 of `result` row `row`, with the process that made it."""
    return pipeline.manifest_record(
        w.input,
        w.sample,
        result,
        row,
        dataclasses.replace(search, seed=w.seed),
        generator,
        seconds=seconds,
        paths=paths,
        column=0,
        extra={"process": jax.process_index()},
    )
