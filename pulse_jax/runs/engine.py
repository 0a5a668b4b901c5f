"""The one work loop of runs and sweeps: a fixed work list in fixed groups, resumable.

A unit of work is one result, an (input, seed, sample) triple (`WorkItem`). Its start
depends on nothing else (docs/method.md section 8.1), with `image_id` the input's index
among the input files (`inputs.load_inputs`). A run (`Work.for_run`, experiments/run.py)
is this engine with one seed on one process; a sweep (`Work.for_sweep`, `sweep.run_sweep`)
with many seeds on many.

Groups (`work_groups`): the work list (inputs x seeds x samples, in that order) is cut
into fixed chunks of `group_size` results of one input size, the last chunk of a size
padded by repeating its last result. A group is what one device optimizes at once, so
its composition decides a result at the rounding level (docs/method.md section 8.2).
Groups are a function of the work list alone, never of what
is left to do: a resumed run recomputes every group that is not wholly recorded, as a
whole, and writes only what is missing, so it equals an uninterrupted one byte for byte
on the same machine kind, whatever the number of devices. (A run's `fit_groups`: a size
with fewer results than `group_size` gets groups of its own count, not padding.) On CPU at
1024 px and more (`groups_apart`, `Work.split_groups`) each result of a group is solved
as a group of one, where larger groups were not faster per sample (docs/batch_curve_cpu.md):
a group then fixes which results share a call and a manifest's `group`, not the rounding.

Processes (`distributed.process_share`): the groups are dealt out to the processes in
turn; each skips the groups already recorded and runs the rest, one group per local
device per `solve` call. Results need no communication; only the summary is gathered.

Exactly once, whole or not at all: a result's images are written atomically, then its
line is appended to the process's manifest file and flushed (`store`). A restart reads
every manifest file of the folder and skips recorded results; images without a line
(killed in between) are computed again and replaced. A restart with other settings,
other files or another group size is refused before anything is written.
`recompute(record, ...)` runs a line's group again: bitwise equal on the same machine kind.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

import jax
import numpy as np

from pulse_jax.checkpoints import shown
from pulse_jax.evaluation import plots
from pulse_jax.generators.base import Generator
from pulse_jax.images import ImageError, special_files
from pulse_jax.runs import distributed, layout, store
from pulse_jax.runs.config import ConfigError, SearchConfig, check_operator, check_search
from pulse_jax.runs.inputs import InputImage, load_inputs
from pulse_jax.runs.progress import Progress, format_seconds, say
from pulse_jax.solve import SolveResult, rows_one_at_a_time, solve

# Generators this size and up report progress during a call by default (`Work.report_every`).
IN_CALL_PROGRESS_SIDE = 256


@dataclasses.dataclass(frozen=True)
class WorkItem:
    """One result to compute."""

    input: InputImage
    seed: int
    sample: int

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.input.path.name, self.seed, self.sample)


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


@dataclasses.dataclass(frozen=True)
class Work:
    """What the engine runs: a run over a folder (`Work.for_run`) or a sweep
    (`Work.for_sweep`).

    Attributes:
      seeds, samples: the work list is inputs x seeds x range(samples).
      group_size: results per group (what one device optimizes at once).
      knob: (flag, value) that set `group_size`, recorded in each line's `group` and
        checked on resume (`batch_size` for a run, `batch_per_device` for a sweep).
      manifest: the manifest file name, `{process}` standing for the process index.
      fit_groups: groups of a size with fewer results than `group_size` are not padded.
      seed_folders: results under `seed_<k>/` (`layout`); without, one seed only.
      sheets, plots, intermediate: also write comparison.png per (input, seed),
        l2_curves.png beside it, every step's image.
      desc: the progress line's name.
      progress_every: process 0's progress line moves every that many steps during a
        `solve` call (`solve(progress=...)`); 0: only when a call ends; None: `report_every`
        decides from the generator's size.
      split_groups: solve every result of a group as a group of one (`groups_apart`):
        True, False, or None to let `groups_apart` decide from the generator and devices.
    """

    input_dir: str
    output_dir: str
    search: SearchConfig
    seeds: tuple[int, ...]
    samples: int
    group_size: int
    knob: tuple[str, int]
    manifest: str
    fit_groups: bool = False
    seed_folders: bool = True
    sheets: bool = False
    plots: bool = False
    intermediate: bool = False
    remat: bool = False
    desc: str = "pulse"
    log_interval: float = 10.0
    progress_every: int | None = None
    split_groups: bool | None = None

    @classmethod
    def for_run(
        cls,
        input_dir: str,
        output_dir: str,
        search: SearchConfig | None = None,
        *,
        samples: int = 1,
        batch_size: int = 1,
        save_intermediate: bool = False,
        plots: bool = False,
        progress_every: int | None = None,
        split_groups: bool | None = None,
    ) -> Work:
        """A run over a folder (experiments/run.py): one seed (`search.seed`) on one process,
        results without seed folders (`<out>/<stem>/sample_<s>_hr.png`, `layout`),
        `<out>/results.jsonl` as its manifest (`store`), a comparison sheet per input, groups
        of `batch_size` inputs with all their `samples` side by side (a size with fewer
        inputs gets one group of them all, not padding); `plots` also writes
        `<out>/<stem>/l2_curves.png` (the plots extra); `split_groups`: `Work`'s.

        Sample s of the input with `image_id` i is seeded as in docs/method.md section 8.1,
        exactly as `solve(lr[None], generator, seed=seed, image_ids=[i], sample_ids=[[s]])`
        seeds it: equal to the line up to float32 rounding, which Adam amplifies over the
        steps; bit for bit through the line's own group (`recompute`), on the same machine
        kind.
        """
        if samples < 1 or batch_size < 1:
            raise ConfigError("--samples and --batch_size must be >= 1")
        search = search or SearchConfig()
        return cls(
            input_dir=input_dir,
            output_dir=output_dir,
            search=search,
            seeds=(search.seed,),
            samples=samples,
            group_size=batch_size * samples,
            knob=("batch_size", batch_size),
            manifest=store.RUN_MANIFEST,
            fit_groups=True,
            seed_folders=False,
            sheets=True,
            plots=plots,
            intermediate=save_intermediate,
            desc="pulse",
            progress_every=progress_every,
            split_groups=split_groups,
        )

    @classmethod
    def for_sweep(
        cls,
        input_dir: str,
        output_dir: str,
        search: SearchConfig | None = None,
        *,
        seeds: Sequence[int] = (0,),
        samples: int = 1,
        batch_per_device: int = 1,
        remat: bool = False,
        log_interval: float = 10.0,
        split_groups: bool | None = None,
    ) -> Work:
        """A sweep (experiments/sweep.py, `sweep.run_sweep`): inputs x `seeds` x `samples`,
        every seed in its own folder (`<out>/seed_<k>/<stem>/`), every process its own
        manifest shard (`<out>/manifest.<process>.jsonl`), groups of exactly
        `batch_per_device` results (the program `sweep.plan_batch_size` measured), so
        results do not depend on how many devices or hosts there were. `search.seed` is not
        used; `split_groups`: `Work`'s."""
        if samples < 1 or batch_per_device < 1 or not seeds:
            raise ConfigError(
                "--samples and --batch_per_device must be >= 1, with one seed or more"
            )
        if len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise ConfigError(f"--seeds must be distinct and >= 0, got {list(seeds)}")
        return cls(
            input_dir=input_dir,
            output_dir=output_dir,
            search=search or SearchConfig(),
            seeds=tuple(seeds),
            samples=samples,
            group_size=batch_per_device,
            knob=("batch_per_device", batch_per_device),
            manifest=store.SWEEP_MANIFEST,
            remat=remat,
            desc="sweep",
            log_interval=log_interval,
            split_groups=split_groups,
        )

    def report_every(self, resolution: int) -> int:
        """`progress_every`, or its default: every `max(1, steps // 20)` steps for generators
        of `IN_CALL_PROGRESS_SIDE` px and up, whose calls run for minutes; none during a call
        below that, whose calls run for seconds. Reporting has two costs: each report makes
        the device wait for the host (2-4 ms on CPU, docs/progress_cost_cpu.md), and JAX
        does not keep a program with a host callback in its persistent compilation cache,
        so a reporting search is compiled again by every launch."""
        if self.progress_every is not None:
            return self.progress_every
        if resolution < IN_CALL_PROGRESS_SIDE:
            return 0
        return max(1, self.search.options.steps // 20)

    def folder(self, input_name: str, seed: int) -> str:
        """A result's folder relative to the output folder."""
        return layout.result_folder(input_name, seed, seed_folders=self.seed_folders)


@dataclasses.dataclass
class Summary:
    """What a run or a sweep did, over every process; `lines()` is the printed report.

    Attributes:
      per_process: one dict per process: `done` (results computed now), `skipped`
        (already recorded), `successes`, `latent_steps`, `solve_seconds`, `wall_seconds`.
    """

    items: int = 0
    inputs: int = 0  # input files, usable or not
    inputs_done: int = 0  # inputs all of whose results were recorded before
    failed: list[ImageError] = dataclasses.field(default_factory=list)
    not_files: dict[Path, str] = dataclasses.field(default_factory=dict)  # path -> what it is
    per_process: list[dict] = dataclasses.field(default_factory=list)
    output_dir: str = ""
    manifest: str = store.RUN_MANIFEST

    def total(self, name: str) -> float:
        return sum(p[name] for p in self.per_process)

    def lines(self) -> list[str]:
        """Human-readable summary lines."""
        done, successes = int(self.total("done")), int(self.total("successes"))
        wall = max((p["wall_seconds"] for p in self.per_process), default=0.0)
        rates = [
            p["latent_steps"] / p["solve_seconds"] if p["solve_seconds"] else 0.0
            for p in self.per_process
        ]
        count = len(self.per_process)
        lines = [
            f"inputs: {self.inputs} files, {len(self.failed)} failed, "
            f"{self.inputs_done} already done (skipped)",
            f"samples: {done} written, {successes} reached eps, {done - successes} did not "
            f"({int(self.total('skipped'))} of {self.items} already done)",
            f"time: {format_seconds(wall)} wall, {self.total('solve_seconds'):.1f} s solving "
            "(the first solve of a shape compiles)",
            f"throughput: {sum(rates):.1f} latent-steps/s ({int(self.total('latent_steps'))} "
            f"latent-steps) on {count} process{'es' if count != 1 else ''}",
        ]
        if count > 1:
            lines += [
                f"  process {i}: {int(p['done'])} computed, {int(p['skipped'])} skipped, "
                f"{rate:.1f} latent-steps/s while solving"
                for i, (p, rate) in enumerate(zip(self.per_process, rates, strict=True))
            ]
        lines.append(f"results: {self.output_dir}/ (manifest {self.manifest.format(process='*')})")
        if self.failed:
            lines.append(f"failed inputs ({len(self.failed)}):")
            lines += [f"  {shown(e)}" for e in self.failed]
        if self.not_files:
            lines.append(f"skipped, not regular files ({len(self.not_files)}):")
            lines += [f"  {shown(path)}: {what}" for path, what in self.not_files.items()]
        return lines

    def as_json(self) -> dict:
        """The sweep's summary.json: `items`, `inputs` (usable), `unreadable_inputs`,
        `per_process`."""
        return {
            "items": self.items,
            "inputs": self.inputs - len(self.failed),
            "unreadable_inputs": [str(e) for e in self.failed],
            "per_process": self.per_process,
        }


def work_list(inputs: Sequence[InputImage], seeds: Sequence[int], samples: int) -> list:
    """Every result, inputs x seeds x samples, in that (fixed) order."""
    return [WorkItem(item, s, k) for item in inputs for s in seeds for k in range(samples)]


def fixed_chunks(items: Sequence, size: int, side: Callable) -> list[list]:
    """Chunks of at most `size` items of equal `side(item)`, in order (sides in order of
    first appearance): every solve call of one side has the same shape and compiles once."""
    by_side: dict[int, list] = {}
    for item in items:
        by_side.setdefault(side(item), []).append(item)
    return [g[i : i + size] for g in by_side.values() for i in range(0, len(g), size)]


def work_groups(items: Sequence[WorkItem], size: int, *, fit: bool = False) -> list[Group]:
    """The work list cut into fixed groups of `size` results of one input size (with
    `fit`, a size's groups hold at most as many rows as it has results).

    Depends on the work list alone, so a resumed run forms the same groups.
    """
    chunks = fixed_chunks(items, size, lambda w: w.input.side)
    rows: dict[int, int] = {}
    for chunk in chunks:
        side = chunk[0].input.side
        rows[side] = max(rows.get(side, 0), len(chunk))
    return [
        Group(i, tuple(chunk), rows[chunk[0].input.side] if fit else size)
        for i, chunk in enumerate(chunks)
    ]


def run(
    work: Work,
    generator: Generator,
    *,
    devices: Sequence[jax.Device] | None = None,
    process: tuple[int, int] | None = None,
    log: TextIO | None = None,
) -> Summary:
    """Runs this process's share of `work` and gathers the summary of every process.

    With more than one process, every process calls it with the same work (the summary
    gather at the end is a collective).

    Args:
      work: what to run.
      generator: from `pulse_jax.load_generator(work.search.generator)`.
      devices: where this process solves, one group per device per call; default its
        local devices.
      process: (index, count); default `jax.process_index()`, `jax.process_count()`.
      log: progress, warnings and (process 0) input errors; default stderr.

    Returns:
      The `Summary` of every process.

    Raises:
      ImageError: the input folder is missing or holds no file.
      ConfigError: bad settings, or an output folder with results this work would mix
        with or overwrite (`store.check_records`).
    """
    log = sys.stderr if log is None else log
    wall = time.perf_counter()
    index, count = process or (jax.process_index(), jax.process_count())
    devices = list(devices or jax.local_devices())
    work, apart = _execution(work, generator, devices, log if index == 0 else None)
    inputs, summary, done = _start(work, generator, index, log)
    out = Path(work.output_dir)
    items = work_list(inputs, work.seeds, work.samples)
    groups = work_groups(items, work.group_size, fit=work.fit_groups)
    mine = distributed.process_share(groups, index, count)
    todo = [g for g in mine if any(w.key not in done for w in g.items)]
    missing = sum(w.key not in done for g in todo for w in g.items)
    stats = {"done": 0, "skipped": sum(len(g.items) for g in mine) - missing, "successes": 0}
    stats.update(latent_steps=0, solve_seconds=0.0)
    desc = work.desc if count == 1 else f"{work.desc} process {index}/{count}"
    if stats["skipped"]:
        done_before = f"{stats['skipped']} of its {stats['skipped'] + missing} results"
        already = f"{summary.inputs_done} inputs already done in {out}"
        say(log, f"{desc}: {done_before} already done ({already})")
    out.mkdir(parents=True, exist_ok=True)
    shard = out / work.manifest.format(process=index)
    store.cut_torn_line(shard)
    steps = work.search.options.steps
    every = work.report_every(generator.resolution) if index == 0 else 0  # process 0 reports
    bar = Progress(missing * steps, desc, "latent-steps", log, log_interval=work.log_interval)
    with bar:
        for call in fixed_chunks(todo, len(devices), lambda g: g.items[0].input.side):
            watch = _CallProgress(bar, sum(w.key not in done for g in call for w in g.items))
            t0 = time.perf_counter()
            result = _solve_groups(
                call, generator, work.search, devices, apart=apart, remat=work.remat,
                keep_intermediate=work.intermediate, progress=watch if every else None,
                progress_every=every,
            )  # fmt: skip
            seconds = time.perf_counter() - t0
            new = _write_call(work, generator, call, result, done, seconds, index, log)
            store.append_records(shard, new)  # after the images: a line means whole files
            stats["done"] += len(new)
            stats["successes"] += sum(r["success"] for r in new)
            stats["latent_steps"] += len(new) * steps
            stats["solve_seconds"] += seconds
            bar.update(
                len(new) * steps - watch.counted,
                l2=float(np.mean([r["l2"] for r in new])) if new else 0.0,
                reached_eps=f"{stats['successes']}/{stats['done']}",
            )
    stats["wall_seconds"] = time.perf_counter() - wall
    names = list(stats)
    rows = distributed.gather([stats[k] for k in names])
    summary.per_process = [dict(zip(names, map(float, row), strict=True)) for row in rows]
    return summary


class _CallProgress:
    """`solve(progress=...)` of one call: moves the progress line by the call's pending
    results x the steps done, and shows the call's best L2 so far and how many of its rows
    are below eps (`counted`: the latent-steps it added)."""

    def __init__(self, bar: Progress, pending: int):
        self.bar, self.pending, self.counted = bar, pending, 0

    def __call__(self, report) -> None:
        steps = round(report.fraction * report.steps)
        self.bar.update(
            self.pending * steps - self.counted,
            best_l2=report.best_l2,
            below_eps=f"{report.below_eps}/{report.l2.size}",
        )
        self.counted = self.pending * steps


def _start(work: Work, generator: Generator, index: int, log: TextIO):
    """Checks the work, reads its inputs (process 0 names the bad ones on `log`) and the
    folder's manifest, and refuses results this work would mix with.

    Returns:
      `(inputs, summary, done)`: the summary's input fields filled in; the recorded keys.
    """
    search = work.search
    check_search(search, generator)
    if work.plots and not plots.available():
        raise ConfigError("--plots needs matplotlib: pip install -e '.[plots]'")
    if not work.seed_folders and len(work.seeds) != 1:
        raise ConfigError("results without seed folders hold one seed")
    inputs, errors = load_inputs(work.input_dir, generator.resolution, resize=search.resize)
    summary = Summary(
        items=len(inputs) * len(work.seeds) * work.samples,
        inputs=len(inputs) + len(errors),
        failed=errors,
        not_files=special_files(work.input_dir),
        output_dir=str(Path(work.output_dir)),
        manifest=work.manifest,
    )
    if index == 0:
        for e in errors:
            say(log, f"error: {e}")
        for path, what in summary.not_files.items():
            say(log, f"skipped {shown(path)}: {what}, not a regular file")
    check_operator(search, generator, [item.side for item in inputs])
    settings = search.settings(generator)
    if work.seed_folders:  # then another seed is another result, not a clash
        settings.pop("seed")
    folders = {work.folder(i.name, s): i.path.name for i in inputs for s in work.seeds}
    records = store.read_records(work.output_dir, work.manifest)
    store.check_records(records, inputs, settings, work.knob, folders, apart=work.split_groups)
    done = {store.key(r) for r in records}
    summary.inputs_done = sum(
        all((i.path.name, s, k) in done for s in work.seeds for k in range(work.samples))
        for i in inputs
    )
    return inputs, summary, done


def groups_apart(resolution: int, devices: Sequence[jax.Device]) -> bool:
    """Whether a launcher solves each result of a group as a group of one by itself: where
    `solve` runs a step's rows one at a time (`solve.rows_one_at_a_time`: CPU devices,
    generators of 1024 px and more), where a group of 4 measured no faster per sample than a
    group of 1 (docs/batch_curve_cpu.md)."""
    return rows_one_at_a_time(resolution, devices)


def _execution(work: Work, generator, devices, log: TextIO | None) -> tuple[Work, bool]:
    """(the work with `split_groups` decided, whether groups run apart); says on `log` when
    they do."""
    apart = work.split_groups
    if apart is None:
        apart = groups_apart(generator.resolution, devices)
    apart = bool(apart) and work.group_size > 1  # groups of one: nothing to split
    if apart and log is not None:
        say(
            log,
            f"{work.desc}: each result of a group of {work.group_size} runs as a group of one "
            f"(on CPU at {generator.resolution} px not slower per sample; "
            "docs/batch_curve_cpu.md); results equal those of groups of 1; "
            "--split_groups=never keeps groups together",
        )
    return dataclasses.replace(work, split_groups=apart), apart


def _solve_groups(
    groups: Sequence[Group],
    generator: Generator,
    search: SearchConfig,
    devices,
    *,
    apart: bool = False,
    **execution,
) -> SolveResult:
    """One `solve` call: group j on device j (padded with copies of the last group), or with
    `apart` every result as a group of one (a group's padding rows then repeat its last
    result instead of computing it again); `execution`: solve's `remat`,
    `keep_intermediate`, `progress`, `progress_every`."""
    if apart:
        items = [w for g in groups for w in g.items]
        starts = np.cumsum([0] + [len(g.items) for g in groups])[:-1]
        at = [
            int(s) + min(p, len(g.items) - 1)
            for g, s in zip(groups, starts, strict=True)
            for p in range(g.size)
        ]
        return _take_rows(_solve_rows(items, 1, generator, search, devices, **execution), at)
    groups = list(groups) + [groups[-1]] * (len(devices) - len(groups))
    rows = [w for g in groups for w in g.rows()]
    return _solve_rows(rows, groups[0].size, generator, search, devices, **execution)


def _take_rows(result: SolveResult, rows: Sequence[int]) -> SolveResult:
    """The result's rows (axis 0, axis 1 of the per-step fields) in the order `rows`."""
    per_step = ("history", "intermediate", "trajectory")
    return SolveResult(
        **{
            f.name: jax.tree.map(
                lambda x, s=f.name in per_step: np.take(x, rows, axis=int(s)),
                getattr(result, f.name),
            )
            for f in dataclasses.fields(result)
        }
    )


def _solve_rows(
    rows: Sequence[WorkItem],
    batch_per_device: int,
    generator: Generator,
    search: SearchConfig,
    devices,
    *,
    remat: bool = False,
    keep_intermediate: bool = False,
    progress: Callable | None = None,
    progress_every: int = 0,
) -> SolveResult:
    """One `solve` call of these rows, `batch_per_device` at a time on each device, with the
    work's search options as they are; the rest are `solve`'s execution settings."""
    observed = search.options.degradation(rows[0].input.side, generator.resolution).observed
    return solve(
        observed(np.stack([w.input.lr for w in rows])),
        generator,
        search.options,
        seed=[w.seed for w in rows],
        image_ids=[w.input.image_id for w in rows],
        sample_ids=[[w.sample] for w in rows],
        devices=devices,
        batch_per_device=batch_per_device,
        remat=remat,
        keep_intermediate=keep_intermediate,
        progress=progress,
        progress_every=progress_every,
    )


def _write_call(
    work: Work, generator, groups, result: SolveResult, done, seconds, process, log
) -> list[dict]:
    """Writes the files of a call's results that are not `done` (images first, so a line
    only names complete files) and returns their manifest lines."""
    out, search = Path(work.output_dir), work.search
    flag, value = work.knob
    apart = {"apart": True} if work.split_groups else {}
    rows = [
        (j * g.size + p, w, dict(g.record(p), **{flag: value}, **apart))
        for j, g in enumerate(groups)
        for p, w in enumerate(g.items)
    ]
    new = [(row, w, group) for row, w, group in rows if w.key not in done]
    sheets = _write_sheets(work, generator, rows, new, result) if work.sheets else {}
    settings = {s: dataclasses.replace(search, seed=s).settings(generator) for s in work.seeds}
    records = []
    for row, w, group in new:
        folder = work.folder(w.input.name, w.seed)
        paths = layout.write_sample(out, folder, w.sample, result.hr[row, 0], result.lr[row, 0])
        paths["comparison"] = sheets.get((w.input.path.name, w.seed))
        paths["intermediate"] = (
            layout.write_intermediate(out, folder, w.sample, result.intermediate[:, row, 0])
            if work.intermediate
            else None
        )
        if not result.success[row, 0]:
            _warn_missed(log, work, w, result, row, process)
        records.append(
            store.result_record(
                w.input,
                w.seed,
                w.sample,
                result,
                row,
                steps=search.options.steps,
                seconds=seconds,
                generator=search.generator,
                **paths,
                process=process,
                group=group,
                settings=settings[w.seed],
            )
        )
    return records


def _warn_missed(log: TextIO, work: Work, w: WorkItem, result, row: int, process: int) -> None:
    """Names on `log` a result that did not reach eps (it is written anyway)."""
    why = (
        "its loss turned NaN"
        if result.failed[row, 0]
        else f"L2 {result.l2[row, 0]:.3g} > eps {work.search.options.eps:g}"
    )
    seed = f" seed {w.seed}" if work.seed_folders else ""
    say(
        log,
        f"warning: {shown(w.input.path.name)}{seed} sample {w.sample} did not reach eps ({why}); "
        f"written anyway, success=false in {work.manifest.format(process=process)}",
    )


def _write_sheets(work: Work, generator, rows, new, result: SolveResult) -> dict:
    """Writes comparison.png (and with plots l2_curves.png) of every (input, seed) that has
    a new result and all its samples in this call; returns (input, seed) -> sheet path."""
    by_result: dict[tuple, dict[int, tuple]] = {}
    for row, w, _ in rows:
        by_result.setdefault((w.input.path.name, w.seed), {})[w.sample] = (row, w)
    sheets = {}
    for name, seed in dict.fromkeys((w.input.path.name, w.seed) for _, w, _ in new):
        samples = by_result[(name, seed)]
        if len(samples) != work.samples:
            continue  # an input's samples split over calls: no sheet
        picked = [samples[s][0] for s in range(work.samples)]
        item = samples[0][1].input
        folder = work.folder(item.name, seed)
        operator = work.search.options.degradation(item.side, generator.resolution)
        sheets[(name, seed)] = layout.write_comparison(
            work.output_dir,
            folder,
            operator.observed(item.lr),
            result.hr[picked, 0],
            result.l2[picked, 0],
            result.success[picked, 0],
            observation=operator.describe(),
        )
        if work.plots:
            plots.write_l2_curves(
                Path(work.output_dir) / folder / layout.L2_PLOT,
                result.history["L2"][:, picked, 0],
                operator.success_eps(work.search.options.eps),
                title=f"{item.path.name} ({operator.describe()})",
            )
    return sheets


def recompute(
    record: dict, inputs: Sequence[InputImage], generator: Generator, search: SearchConfig
) -> tuple[SolveResult, int]:
    """Runs a manifest line's group again, as the run or sweep ran it, on one local device.

    Args:
      record: a line of `store.read_manifest` (also of a run before the one engine).
      inputs: `inputs.load_inputs` of the input folder.
      generator: the work's generator.
      search: the work's search settings (the seeds are the line's group's).

    Returns:
      `(result, row)`: the group's `SolveResult` and the row that holds the line's result
      (its figures in column 0); bitwise equal to the line on the same machine kind.
    """
    by_id = {item.image_id: item for item in inputs}
    group = store.group_rows(record)
    try:
        members = tuple(WorkItem(by_id[i], s, k) for i, s, k in group.members)
    except KeyError as e:
        raise ConfigError(f"the record's group names image_id {e}, which is not an input") from None
    one = [Group(group.index, members, group.size)]
    apart = bool(store.group_field(record, "apart", False))
    result = _solve_groups(one, generator, search, jax.local_devices()[:1], apart=apart)
    return result, group.position
