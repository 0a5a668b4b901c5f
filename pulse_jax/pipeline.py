"""PULSE over a folder of images: inputs, batches, result files and the manifest.

`experiments/run.py` is `run_folder` plus flag parsing. The pieces are public so
that other launchers (seed sweeps) write results the same way:

- `load_inputs` reads and checks every file of a folder, keeping the bad ones
  as `ImageError`s instead of stopping;
- `make_batches` groups inputs of one size into batches of constant shape;
- `write_sample`, `write_intermediate` and `write_comparison` write one
  result's files, each atomically (a file appears whole or not at all);
- `manifest_record`, `read_manifest` and `update_manifest` keep
  `results.jsonl`, one JSON line per (input, sample).

Output layout, for an input file whose name without extension is `<stem>`:

    <out>/results.jsonl
    <out>/<stem>/sample_<s>_hr.png          the sample's best HR image
    <out>/<stem>/sample_<s>_lr.png          its downscale (what the loss compared)
    <out>/<stem>/comparison.png             observation | bicubic | every sample
    <out>/<stem>/l2_curves.png              with plots: every sample's L2 over the steps
    <out>/<stem>/intermediate/sample_<s>_step_<j>.png   with save_intermediate

(two inputs with the same stem, `a.png` and `a.jpg`, get `a_png/` and `a_jpg/`).

Re-running into an output folder never loses what is there: an input whose
requested samples are all in the manifest with the same settings is skipped
(so an interrupted run resumes where it stopped); if the manifest holds an
input's results made with other settings, the run is refused before anything
is written. The manifest is rewritten atomically after each batch, after the
batch's images, so every line points at complete files.

Batches are fixed chunks of the sorted input list (`make_batches` over every
input, not over what is left): one solve call optimizes a batch's samples
together, and on some machines (AMD EPYC) XLA:CPU rounds a row differently by
its position in the batch. A resumed run recomputes a batch that is not wholly
recorded as a whole and writes only its missing inputs, so it equals an
uninterrupted run byte for byte on the same machine kind. Each line records its
batch (`group`: index, position, the batch's image ids) and the machine
(`machine`).

Inputs are every file of the folder except hidden files and a README (the
folder's description). Seeds: sample s of the input with `image_id` i (its
index among the input files, sorted by name) starts from
`fold_in(fold_in(key(seed), i), s)`, exactly as `solve` seeds it:
`solve(lr[None], generator, seed=seed, image_ids=[image_id], sample_ids=[[sample]])`
starts from the same latent. Its result equals the line's up to float32 rounding,
which Adam amplifies over the steps; bit for bit when the call is the batch's own
(`recompute`), on the same machine kind.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TextIO

import jax
import jaxlib
import numpy as np

from pulse_jax import plots
from pulse_jax.checkpoints.weights_file import atomic_write
from pulse_jax.config import (  # noqa: F401 - re-exported: launchers use pipeline.<name>
    NOISE_OPTIONS,
    ConfigError,
    SearchConfig,
    check_applicable,
    check_operator,
    check_search,
    recorded_settings,
    settings_diff,
)
from pulse_jax.generators.base import Generator
from pulse_jax.images import (
    ImageError,
    comparison_sheet,
    list_images,
    load_image,
    output_names,
    prepare_for_generator,
    save_image,
    special_files,
    upscale_bicubic,
)
from pulse_jax.progress import Progress, format_seconds
from pulse_jax.solve import SolveResult, solve

MANIFEST = "results.jsonl"
# With `RunConfig.plots`, beside each comparison.png: every sample's L2 over the steps.
L2_PLOT = "l2_curves.png"


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


@dataclasses.dataclass(frozen=True)
class InputImage:
    """One usable input: its id for seeding, its file, its output folder name and its LR image."""

    image_id: int
    path: Path
    name: str  # the output folder, <out>/<name>/
    lr: np.ndarray  # [h, w, 3] in [0, 1]
    factor: int
    sha256: str = ""  # of the file, so a re-run recognises its results


@dataclasses.dataclass
class RunSummary:
    """What a run did; `lines()` is the report printed at the end."""

    inputs: int = 0
    failed: list[ImageError] = dataclasses.field(default_factory=list)
    skipped: int = 0
    samples: int = 0
    successes: int = 0
    latent_steps: int = 0
    solve_seconds: float = 0.0
    wall_seconds: float = 0.0
    output_dir: str = ""
    not_files: dict[Path, str] = dataclasses.field(default_factory=dict)  # path -> what it is

    def lines(self) -> list[str]:
        """Human-readable summary lines."""
        rate = self.latent_steps / self.solve_seconds if self.solve_seconds > 0 else 0.0
        lines = [
            f"inputs: {self.inputs} files, {len(self.failed)} failed, "
            f"{self.skipped} already done (skipped)",
            f"samples: {self.samples} written, {self.successes} reached eps, "
            f"{self.samples - self.successes} did not",
            f"time: {format_seconds(self.wall_seconds)} wall, "
            f"{self.solve_seconds:.1f} s solving (the first solve of a shape compiles)",
            f"throughput: {rate:.1f} latent-steps/s ({self.latent_steps} latent-steps)",
            f"results: {self.output_dir}/ (manifest {MANIFEST})",
        ]
        if self.failed:
            lines.append(f"failed inputs ({len(self.failed)}):")
            lines += [f"  {e}" for e in self.failed]
        if self.not_files:
            lines.append(f"skipped, not regular files ({len(self.not_files)}):")
            lines += [f"  {path}: {what}" for path, what in self.not_files.items()]
        return lines


# -- inputs and batches ------------------------------------------------------------------


def load_inputs(
    folder: str | os.PathLike, resolution: int, *, resize: bool = False
) -> tuple[list[InputImage], list[ImageError]]:
    """Reads every file of `folder` (any extension) as an LR input for a generator.

    A file named README (any extension, any case) is the folder's description, not an
    input: it is left out, like hidden files.

    Args:
      folder: the input folder (not recursive; hidden files are skipped).
      resolution: the generator's output side.
      resize: centre-crop and resize images whose size does not divide `resolution`
        (`prepare_for_generator`); otherwise they are refused.

    Returns:
      `(inputs, errors)`: the usable images, with `image_id` = index in the sorted
      listing of the input files (README and hidden files left out), and one
      `ImageError` (naming the file and the reason) per bad file.

    Raises:
      ImageError: the folder is missing, not a folder, or holds no file.
    """
    paths = [p for p in list_images(folder) if not is_readme(p)]
    if not paths:
        raise ImageError(folder, "the folder holds no input files (only a README)")
    names = output_names(paths)
    inputs, errors = [], []
    for image_id, path in enumerate(paths):
        try:
            lr, factor = prepare_for_generator(load_image(path), path, resolution, resize=resize)
        except ImageError as e:
            errors.append(e)
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        inputs.append(
            InputImage(image_id, path, names[path], lr.astype(np.float32), factor, digest)
        )
    return inputs, errors


def is_readme(path: Path) -> bool:
    """Whether `path` is a folder's README (README, README.md, readme.txt...)."""
    return path.name.split(".")[0].upper() == "README"


def make_batches(inputs: Sequence, batch_size: int, size=lambda item: item.lr.shape[0]) -> list:
    """Groups inputs of equal size into batches of at most `batch_size`, keeping their order.

    `size(item)` is an item's input size (default: of an `InputImage`). `pad_batch` then
    fills the last batch of a size, so every solve call of one size has the same shape and
    compiles once.
    """
    by_size: dict[int, list] = {}
    for item in inputs:
        by_size.setdefault(size(item), []).append(item)
    return [
        group[i : i + batch_size]
        for group in by_size.values()
        for i in range(0, len(group), batch_size)
    ]


def pad_batch(batch: Sequence[InputImage], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Stacks a batch, repeating its last image up to `size` rows.

    Returns:
      `(lr [size, h, w, 3], image_ids [size])`; rows past `len(batch)` are padding whose
      results are dropped.
    """
    rows = list(batch) + [batch[-1]] * (size - len(batch))
    return np.stack([r.lr for r in rows]), np.array([r.image_id for r in rows], np.int64)


# -- result files ------------------------------------------------------------------------


def sample_paths(name: str, sample: int) -> dict[str, str]:
    """The files of one sample, relative to the output folder."""
    return {"hr": f"{name}/sample_{sample}_hr.png", "lr": f"{name}/sample_{sample}_lr.png"}


def write_sample(out_dir: str | os.PathLike, name: str, sample: int, hr, lr) -> dict[str, str]:
    """Writes one sample's HR image and its downscale, each atomically.

    Args:
      out_dir: the output folder.
      name: the input's folder name under `out_dir`.
      sample: the sample index.
      hr: `[R, R, 3]` in [0, 1].
      lr: `[h, w, 3]` in [0, 1].

    Returns:
      The paths written, relative to `out_dir` (`{"hr": ..., "lr": ...}`).
    """
    paths = sample_paths(name, sample)
    save_image(Path(out_dir) / paths["hr"], hr)
    save_image(Path(out_dir) / paths["lr"], lr)
    return paths


def write_intermediate(out_dir: str | os.PathLike, name: str, sample: int, frames) -> str:
    """Writes a sample's image after every step, `<name>/intermediate/sample_<s>_step_<j>.png`
    (j zero-padded to the width of the step count).

    Args:
      frames: `[steps, R, R, 3]` in [0, 1].

    Returns:
      The intermediate folder, relative to `out_dir`.
    """
    folder = f"{name}/intermediate"
    width = len(str(len(frames) - 1))
    for j, frame in enumerate(frames):
        save_image(Path(out_dir) / folder / f"sample_{sample}_step_{j:0{width}d}.png", frame)
    return folder


def write_comparison(
    out_dir: str | os.PathLike,
    name: str,
    lr_input: np.ndarray,
    hr_samples: np.ndarray,
    l2: Sequence[float],
    success: Sequence[bool],
    *,
    observation: str = "",
) -> str:
    """Writes `<name>/comparison.png`: the observation (the LR input as the loss sees it),
    its bicubic upscale, then every sample labelled with its L2 and a check mark (reached
    eps) or a cross.

    Args:
      lr_input: `[h, w, 3]` the observation.
      observation: the operator's label (`Degradation.describe`), shown with the input
        unless it is PULSE's bicubic.
      hr_samples: `[S, R, R, 3]`.
      l2, success: per sample.

    Returns:
      The sheet's path, relative to `out_dir`.
    """
    side = hr_samples.shape[1]
    shown = "" if observation in ("", "bicubic") else f" {observation}"
    labels = [
        f"input {lr_input.shape[1]}x{lr_input.shape[0]}{shown}",
        f"bicubic x{side // lr_input.shape[0]}",
    ]
    labels += [
        f"sample {s} {'✓' if ok else '✗'} L2 {float(e):.1e}"
        for s, (e, ok) in enumerate(zip(l2, success, strict=True))
    ]
    sheet = comparison_sheet(lr_input, upscale_bicubic(lr_input, side), hr_samples, labels=labels)
    path = f"{name}/comparison.png"
    save_image(Path(out_dir) / path, sheet)
    return path


# -- the manifest ------------------------------------------------------------------------


def manifest_record(
    item: InputImage,
    sample: int,
    result: SolveResult,
    row: int,
    search: SearchConfig,
    generator: Generator,
    *,
    seconds: float,
    paths: dict[str, str | None],
    column: int | None = None,
    extra: dict | None = None,
) -> dict:
    """One manifest line for sample `sample` of batch row `row` of `result`.

    Fields: `input` (file name), `input_sha256` (of the file), `image_id`, `sample`,
    `seed`, `l2` (unclamped, of the best image), `success` (`l2 <= eps`), `failed` (the
    loss turned NaN), `best_step`, `steps`, `seconds` (wall time of the solve call that
    made it, shared by that call's whole batch, the first call including compilation),
    `generator`, `factor`, the output paths relative to the output folder (`hr`, `lr`,
    `comparison`, `intermediate` or null), the fields of `extra`, and `settings` (the full
    `SearchConfig`). The figures are read from `result[row, column]` (column defaults to
    `sample`: one solve call ran all samples of the row).
    """
    settings = search.settings(generator)
    column = sample if column is None else column
    return {
        "input": item.path.name,
        "input_sha256": item.sha256,
        "image_id": item.image_id,
        "sample": sample,
        "seed": search.seed,
        "l2": float(result.l2[row, column]),
        "success": bool(result.success[row, column]),
        "failed": bool(result.failed[row, column]),
        "best_step": int(result.best_step[row, column]),
        "steps": search.steps,
        "seconds": round(float(seconds), 3),
        "generator": search.generator,
        "factor": item.factor,
        **paths,
        **(extra or {}),
        "settings": settings,
    }


@functools.cache
def machine_record() -> dict:
    """What a result depends on besides its inputs and settings: the software and the
    machine kind (`manifest_record`'s `machine` field). Results are bitwise reproducible
    only where all of it is the same."""
    device = jax.local_devices()[0]
    return {
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "platform": device.platform,
        "device_kind": device.device_kind,
        "cpu": cpu_model(),
    }


def cpu_model() -> str:
    """The CPU's model name (`lscpu`'s), or the architecture where the OS does not say."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def recompute(record: dict, inputs: Sequence[InputImage], generator: Generator, search):
    """Runs a run's manifest line's batch again, as the run did.

    Args:
      record: a line of `read_manifest`.
      inputs: `load_inputs` of the run's input folder.
      generator: the run's generator.
      search: the run's `SearchConfig`.

    Returns:
      `(result, row)`: the batch's `SolveResult` (every sample of the run) and the row of
      the line's input; `result.l2[row, record["sample"]]` is the line's, bitwise on the
      same machine kind.
    """
    by_id = {item.image_id: item for item in inputs}
    group = record["group"]
    try:
        batch = [by_id[i] for i in group["image_ids"]]
    except KeyError as e:
        raise ConfigError(f"the record's batch names image_id {e}, which is not an input") from None
    result = _solve_batch(batch, group["rows"], generator, search, group["samples"], False)
    return result, group["position"]


def _solve_batch(batch, rows, generator, search, duplicates, keep_intermediate):
    """One run batch, padded to `rows` images by repeating its last; the loss compares the
    inputs as the operator observes them."""
    lr, image_ids = pad_batch(batch, rows)
    side = lr.shape[1]
    return solve(
        search.degradation(side, generator.resolution).observed(lr),
        generator,
        num_samples=duplicates,
        image_ids=image_ids,
        keep_intermediate=keep_intermediate,
        **search.solve_kwargs(generator, side),
    )


def read_manifest(path: str | os.PathLike) -> list[dict]:
    """The records of a manifest, in file order; `[]` when there is none.

    Raises:
      ConfigError: a line is not a JSON object with `input` and `sample` (the file is
        left alone; nothing is dropped).
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return parse_records(path, lines, {"input", "sample"}, "a manifest record")


def parse_records(path: Path, lines: list[str], required: set[str], what: str) -> list[dict]:
    """Manifest lines -> records: JSON objects holding the `required` keys; blank lines skip.

    Raises:
      ConfigError: naming `path` and the line number, for a line that is not `what`.
    """
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}, line {number}: not JSON ({e})") from None
        if not isinstance(record, dict) or not required <= record.keys():
            raise ConfigError(f"{path}, line {number}: not {what}")
        records.append(record)
    return records


def update_manifest(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Adds `records` to a manifest, rewriting it atomically.

    A record replaces the earlier line with the same (`input`, `sample`) in place;
    the others are appended. Every other line is kept as it was.
    """
    path = Path(path)
    lines = read_manifest(path)
    where = {(r["input"], r["sample"]): i for i, r in enumerate(lines)}
    for record in records:
        key = (record["input"], record["sample"])
        if key in where:
            lines[where[key]] = record
        else:
            where[key] = len(lines)
            lines.append(record)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines)
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


# -- checks ------------------------------------------------------------------------------


def check_resume(
    manifest: Sequence[dict],
    inputs: Sequence[InputImage],
    settings: dict,
    batch_size: int | None = None,
) -> None:
    """Refuses to mix results of other settings, other files or another `batch_size` (other
    batches round differently) into one output folder.

    Raises:
      ConfigError: the manifest holds results for an input of the same name made from a
        different file or with settings other than `settings`, or another input's results
        are in an input's output folder; the message names the input and the difference.
    """
    by_name = {item.path.name: item for item in inputs}
    clashes: dict[str, str] = {}
    folders = {str(r.get("hr", "")).split("/")[0]: r["input"] for r in manifest}
    for item in inputs:
        other = folders.get(item.name, item.path.name)
        if other != item.path.name:
            clashes[item.path.name] = f"its folder {item.name}/ holds the results of {other}"
    for record in manifest:
        item = by_name.get(record["input"])
        if item is None or record["input"] in clashes:
            continue
        old = recorded_settings(record)
        if record.get("input_sha256") != item.sha256:
            clashes[record["input"]] = "made from a different file of that name"
        elif old != settings:
            clashes[record["input"]] = settings_diff(old, settings)
        elif batch_size is not None and group_field(record, "batch_size", batch_size) != (
            batch_size
        ):
            clashes[record["input"]] = (
                f"made with --batch_size {record['group']['batch_size']}, not {batch_size}"
            )
    if clashes:
        name, why = next(iter(clashes.items()))
        raise ConfigError(
            f"the output folder already holds results for {len(clashes)} of these inputs made "
            f"from other files or with other settings (e.g. {name}: {why}); choose another "
            f"--output_dir, or move the old results away"
        )


def group_field(record: dict, name: str, default):
    """A field of a manifest line's `group` (lines of older versions have none)."""
    group = record.get("group")
    return group.get(name, default) if isinstance(group, dict) else default


# -- the run -----------------------------------------------------------------------------


def run_folder(config: RunConfig, generator: Generator, *, log: TextIO | None = None) -> RunSummary:
    """Runs PULSE on every image of `config.input_dir` and writes the results.

    Bad files are reported on `log` and in the summary, and the rest are processed.
    Samples that miss eps are written anyway, with `success: false` and a warning.

    Args:
      config: the run.
      generator: from `pulse_jax.load_generator(config.search.generator)`.
      log: where the progress line, warnings and errors go (default stderr).

    Returns:
      The `RunSummary`; `summary.failed` lists the bad inputs.

    Raises:
      ImageError: the input folder is missing or holds no file.
      ConfigError: the settings do not work with the generator, or the output folder
        holds results that this run would mix with or overwrite (`check_resume`).
    """
    log = log if log is not None else sys.stderr
    start = time.perf_counter()
    search = config.search
    if config.duplicates < 1 or config.batch_size < 1:
        raise ConfigError("--duplicates and --batch_size must be >= 1")
    check_search(search, generator)
    if config.plots and not plots.available():
        raise ConfigError("--plots needs matplotlib: pip install -e '.[plots]'")
    out = Path(config.output_dir)
    manifest_path = out / MANIFEST
    settings = search.settings(generator)

    inputs, errors = load_inputs(config.input_dir, generator.resolution, resize=search.resize)
    summary = RunSummary(inputs=len(inputs) + len(errors), failed=errors, output_dir=str(out))
    summary.not_files = special_files(config.input_dir)
    for e in errors:
        say(log, f"error: {e}")
    for path, what in summary.not_files.items():
        say(log, f"skipped {path}: {what}, not a regular file")
    check_operator(search, generator, [item.lr.shape[0] for item in inputs])
    manifest = read_manifest(manifest_path)
    check_resume(manifest, inputs, settings, config.batch_size)
    done = {(r["input"], r["sample"]) for r in manifest}

    def finished(item):
        return all((item.path.name, s) in done for s in range(config.duplicates))

    # Fixed batches of every input (not of what is left): a batch rounds as a whole.
    batches = list(enumerate(make_batches(inputs, config.batch_size)))
    rows = {}
    for _, batch in batches:
        side = batch[0].lr.shape[0]
        rows[side] = max(rows.get(side, 0), len(batch))
    todo = [(k, batch) for k, batch in batches if not all(map(finished, batch))]
    summary.skipped = sum(map(finished, inputs))
    if summary.skipped:
        say(log, f"{summary.skipped} inputs already done in {manifest_path}: skipped")

    samples_total = sum(not finished(item) for _, batch in todo for item in batch)
    samples_total *= config.duplicates
    machine = machine_record()
    with Progress(samples_total * search.steps, "pulse", unit="latent-steps", stream=log) as bar:
        for index, batch in todo:
            size = rows[batch[0].lr.shape[0]]
            t0 = time.perf_counter()
            result = _solve_batch(
                batch, size, generator, search, config.duplicates, config.save_intermediate
            )
            seconds = time.perf_counter() - t0
            group = {
                "index": index,
                "batch_size": config.batch_size,
                "rows": size,
                "samples": config.duplicates,
                "image_ids": [item.image_id for item in batch],
            }
            wanted = [(row, item) for row, item in enumerate(batch) if not finished(item)]
            records = _write_batch(
                out, wanted, result, search, generator, config, seconds, log, group, machine
            )
            update_manifest(manifest_path, records)
            count = len(wanted) * config.duplicates
            summary.samples += count
            summary.successes += sum(r["success"] for r in records)
            summary.latent_steps += count * search.steps
            summary.solve_seconds += seconds
            bar.update(
                count * search.steps,
                loss=float(np.mean(result.history["TOTAL"][-1, : len(batch)])),
                l2=float(np.mean(result.l2[: len(batch)])),
                reached_eps=f"{summary.successes}/{summary.samples}",
            )
    summary.wall_seconds = time.perf_counter() - start
    return summary


def _write_batch(
    out, wanted, result, search, generator, config, seconds, log, group, machine
) -> list[dict]:
    """Writes the files of a batch's `wanted` (row, input) pairs (images first, so manifest
    lines only name complete files) and returns their manifest records."""
    records = []
    for row, item in wanted:
        paths = []
        for s in range(config.duplicates):
            paths.append(write_sample(out, item.name, s, result.hr[row, s], result.lr[row, s]))
            intermediate = None
            if config.save_intermediate:
                intermediate = write_intermediate(out, item.name, s, result.intermediate[:, row, s])
            paths[s]["intermediate"] = intermediate
            if not result.success[row, s]:
                why = (
                    "its loss turned NaN"
                    if result.failed[row, s]
                    else f"L2 {result.l2[row, s]:.3g} > eps {search.eps:g}"
                )
                say(
                    log,
                    f"warning: {item.path.name} sample {s} did not reach eps ({why}); "
                    f"written anyway, success=false in {MANIFEST}",
                )
        operator = search.degradation(item.lr.shape[0], generator.resolution)
        comparison = write_comparison(
            out,
            item.name,
            operator.observed(item.lr),
            result.hr[row],
            result.l2[row],
            result.success[row],
            observation=operator.describe(),
        )
        if config.plots:
            plots.write_l2_curves(
                Path(out) / item.name / L2_PLOT,
                result.history["L2"][:, row],
                operator.success_eps(search.eps),
                title=f"{item.path.name} ({operator.describe()})",
            )
        for s in range(config.duplicates):
            paths[s]["comparison"] = comparison
            extra = {"group": dict(group, position=row), "machine": machine}
            records.append(
                manifest_record(
                    item,
                    s,
                    result,
                    row,
                    search,
                    generator,
                    seconds=seconds,
                    paths=paths[s],
                    extra=extra,
                )
            )
    return records


def say(log: TextIO, text: str) -> None:
    """Writes one line of a run's log. On a terminal the progress line has no newline yet:
    it is cleared first, and redrawn at the next update."""
    prefix = "\r\x1b[K" if hasattr(log, "isatty") and log.isatty() else ""
    log.write(prefix + text + "\n")
    log.flush()
