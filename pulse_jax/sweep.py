"""Sweeps: inputs x seeds x samples, shared by every device of every host, resumable.

`experiments/sweep.py` is `run_sweep` plus flag parsing. A sweep's unit of work
is one result, a (input, seed, sample) triple. Its start depends on nothing
else: `fold_in(fold_in(key(seed), image_id), sample)` with `image_id` the
input's index among the input files (`pipeline.load_inputs`), so a result does
not depend on which host computed it, in which batch, or how many devices there
were (with `batch_per_device` fixed; see `solve`).

Groups (`work_groups`): the whole work list, in a fixed order, is cut into
fixed chunks of `batch_per_device` results of one input size (the last chunk of
a size padded by repeating its last result). A group is what one device
optimizes at once, so its composition decides a result at the rounding level:
XLA:CPU picks kernels whose rounding depends on a row's position in the batch on
some machines (AMD EPYC) and not on others (AVX-512 Xeon). Groups are a function
of the work list alone, never of what is left to do: a resumed sweep recomputes
every group that is not wholly recorded, as a whole, and writes only what is
missing, so an interrupted and resumed sweep equals an uninterrupted one byte
for byte on the same machine kind, whatever the number of devices.

How hosts share it (`distributed.process_share`): the groups are dealt out to
the processes in turn; each process skips the groups already recorded and runs
the rest, one group per local device per `solve` call, on its *local* devices
only. Results need no communication, so no host ever waits for another (a host
that resumes with less left to do simply finishes earlier) and the output folder
need not be shared; only the final summary is gathered on process 0.

A manifest line records its group (`group`: index, position, `batch_per_device`,
members as [image_id, seed, sample]) and the machine that made it (`machine`:
jax and jaxlib versions, platform, device kind, CPU model); `recompute(record,
inputs, generator)` runs its group again and is bitwise equal to the line on the
same machine kind. On another machine kind the same group rounds differently
(README "Reproducibility" gives the measured size).

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
from pulse_jax.images import special_files
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


@dataclasses.dataclass(frozen=True)
class Group:
    """Results one device optimizes together: a fixed chunk of the work list.

    `items` are the real results; `rows()` pads them to `size` by repeating the last.
    """

    index: int
    items: tuple[WorkItem, ...]
    size: int

    def rows(self) -> list[WorkItem]:
        return list(self.items) + [self.items[-1]] * (self.size - len(self.items))

    def record(self, position: int) -> dict:
        """The manifest's `group` field for the result at `position`."""
        return {
            "index": self.index,
            "position": position,
            "batch_per_device": self.size,
            "members": [[w.input.image_id, w.seed, w.sample] for w in self.items],
        }


def work_groups(items: Sequence[WorkItem], batch_per_device: int) -> list[Group]:
    """The work list cut into fixed groups of `batch_per_device` results of one input size.

    Depends on the work list alone, so a resumed sweep forms the same groups.
    """
    chunks = pipeline.make_batches(items, batch_per_device, size=lambda w: w.input.lr.shape[0])
    return [Group(i, tuple(chunk), batch_per_device) for i, chunk in enumerate(chunks)]


def recompute(
    record: dict, inputs: Sequence[InputImage], generator: Generator, search: SearchConfig
) -> tuple:
    """Runs a manifest line's group again, as the sweep ran it, on one local device.

    Args:
      record: a line of `read_records`.
      inputs: `pipeline.load_inputs` of the sweep's input folder.
      generator: the sweep's generator.
      search: the sweep's search settings (`SweepConfig.search`).

    Returns:
      `(result, row)`: the group's `SolveResult` and the row that holds the line's result
      (its figures in column 0); bitwise equal to the line on the same machine kind.
    """
    by_id = {item.image_id: item for item in inputs}
    group = record["group"]
    try:
        members = tuple(WorkItem(by_id[i], s, k) for i, s, k in group["members"])
    except KeyError as e:
        raise ConfigError(f"the record's group names image_id {e}, which is not an input") from None
    result = _solve_groups(
        [Group(group["index"], members, group["batch_per_device"])],
        generator,
        search,
        jax.local_devices()[:1],
        remat=False,
    )
    return result, group["position"]


def _solve_groups(groups: Sequence[Group], generator, search, devices, *, remat: bool):
    """One `solve` call: group j on device j (padded with copies of the last group)."""
    groups = list(groups) + [groups[-1]] * (len(devices) - len(groups))
    rows = [w for g in groups for w in g.rows()]
    side = rows[0].input.lr.shape[0]
    kwargs = search.solve_kwargs(generator, side)
    kwargs.pop("seed")
    observed = search.degradation(side, generator.resolution).observed
    return solve(
        observed(np.stack([w.input.lr for w in rows])),
        generator,
        seed=[w.seed for w in rows],
        image_ids=[w.input.image_id for w in rows],
        sample_ids=[[w.sample] for w in rows],
        devices=devices,
        batch_per_device=groups[0].size,
        remat=remat,
        **kwargs,
    )


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


def check_records(
    records: Sequence[dict],
    inputs: Sequence[InputImage],
    settings: dict,
    batch_per_device: int | None = None,
) -> None:
    """Refuses to continue a sweep with other settings, over inputs that changed, or with
    another `batch_per_device` (other groups would round differently).

    Raises:
      ConfigError: naming the first clash.
    """
    by_name = {item.path.name: item for item in inputs}
    for record in records:
        item = by_name.get(record["input"])
        if item is None:
            continue
        old = pipeline.recorded_settings(record)
        old.pop("seed", None)
        why = None
        if record.get("input_sha256") != item.sha256:
            why = f"{item.path.name} is not the file those results were made from"
        elif old != settings:
            why = f"it was made with other settings ({pipeline.settings_diff(old, settings)})"
        elif (
            batch_per_device is not None
            and (record.get("group") or {}).get("batch_per_device", batch_per_device)
            != batch_per_device
        ):
            why = (
                f"it was made with --batch_per_device {record['group']['batch_per_device']}, "
                f"not {batch_per_device}"
            )
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
        for path, what in special_files(config.input_dir).items():
            pipeline.say(log, f"skipped {path}: {what}, not a regular file")
    pipeline.check_operator(search, generator, [item.lr.shape[0] for item in inputs])
    records = read_records(out)
    check_records(records, inputs, settings, config.batch_per_device)
    done = {(r["input"], r["seed"], r["sample"]) for r in records}
    items = work_list(inputs, config.seeds, config.samples)
    mine = distributed.process_share(
        work_groups(items, config.batch_per_device), process, processes
    )
    todo = [g for g in mine if any(w.key not in done for w in g.items)]
    owned = sum(len(g.items) for g in mine)
    missing = sum(w.key not in done for g in todo for w in g.items)
    out.mkdir(parents=True, exist_ok=True)
    cut_torn_line(shard)

    # One group per device and call; groups of one input size share a call.
    calls = pipeline.make_batches(todo, len(devices), size=lambda g: g.items[0].input.lr.shape[0])
    stats = {"done": 0, "skipped": owned - missing, "successes": 0, "latent_steps": 0}
    stats["solve_seconds"] = 0.0
    desc = f"sweep process {process}/{processes}"
    if stats["skipped"]:
        pipeline.say(log, f"{desc}: {stats['skipped']} of its {owned} results already done")
    machine = pipeline.machine_record()
    with Progress(
        missing * search.steps,
        desc,
        unit="latent-steps",
        stream=log,
        log_interval=config.log_interval,
    ) as bar:
        for groups in calls:
            t0 = time.perf_counter()
            result = _solve_groups(groups, generator, search, devices, remat=config.remat)
            seconds = time.perf_counter() - t0
            records = []
            for j, group in enumerate(groups):
                for position, w in enumerate(group.items):
                    if w.key in done:  # recorded before: recomputed only to keep the group
                        continue
                    row = j * group.size + position
                    paths = pipeline.write_sample(
                        out, result_dir(w), w.sample, result.hr[row, 0], result.lr[row, 0]
                    )
                    extra = {"process": process, "group": group.record(position)}
                    records.append(
                        _record(w, result, row, search, generator, seconds, paths, extra, machine)
                    )
            append_records(shard, records)  # after the images: a line means whole files
            stats["done"] += len(records)
            stats["successes"] += sum(r["success"] for r in records)
            stats["latent_steps"] += len(records) * search.steps
            stats["solve_seconds"] += seconds
            bar.update(
                len(records) * search.steps,
                l2=float(np.mean([r["l2"] for r in records])) if records else 0.0,
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


def _record(w: WorkItem, result, row: int, search, generator, seconds, paths, extra, machine):
    """One manifest line: `pipeline.manifest_record` for (input, seed, sample), whose
    figures are in column 0 of `result` row `row`, with `extra` (process, group)."""
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
        extra={**extra, "machine": machine},
    )
