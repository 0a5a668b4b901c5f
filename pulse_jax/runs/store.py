"""The manifest store: one JSON line per result, appended after the result's files.

A run keeps `<out>/results.jsonl`, a sweep one shard per process,
`<out>/manifest.<process>.jsonl` (hosts that do not share a folder never write the same
file); both are the same store. A line is appended (one write, then fsync) after the
result's images are renamed into place, so every line names complete files. A kill
can leave a last line without its newline: it is not a record (`read_manifest`), and
it is cut off before the next append (`cut_torn_line`). Any other line that is not a
record stops the work before anything is written.

Fields of a line (`result_record`): `input` (file name), `input_sha256`, `image_id`,
`seed`, `sample`, `l2` (unclamped, of the best image), `success` (`l2 <= eps`),
`failed` (the loss turned NaN), `best_step`, `steps`, `seconds` (wall time of the
solve call that made it, shared by that call's results, the first call including
compilation), `generator`, `factor`, the paths relative to the output folder (`hr`,
`lr`, `comparison`, `intermediate`, null where not written), `process`, `group` (the
result's group: `index`, `position`, `batch_per_device` (its rows), `members`
[[image_id, seed, sample], ...], and a run's `batch_size`), `machine` (software and
machine kind: results are bitwise reproducible only where all of it is the same) and
`settings` (the search settings, `SearchConfig.settings`).

Lines written before the one engine stay readable: `config.recorded_settings` fills
settings that did not exist yet, `group_field` reads a group field with a default
(older lines have no `group`), and `group_rows` reads a run's old groups (images x
samples: `image_ids`, `rows`, `samples`).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import jaxlib

from pulse_jax.files import atomic_write
from pulse_jax.runs.config import ConfigError, recorded_settings, settings_diff
from pulse_jax.runs.distributed import cpu_model
from pulse_jax.runs.inputs import InputImage

REQUIRED = frozenset({"input", "seed", "sample"})
RUN_MANIFEST = "results.jsonl"
SWEEP_MANIFEST = "manifest.{process}.jsonl"  # one shard per process


def key(record: dict) -> tuple[str, int, int]:
    """A result's identity in an output folder: (input file name, seed, sample)."""
    return (record["input"], record["seed"], record["sample"])


def read_manifest(path: str | os.PathLike) -> list[dict]:
    """The records of one manifest file, in file order; `[]` when there is none.

    A last line without its newline (a process killed while appending) is not a record.

    Raises:
      ConfigError: a complete line is not a JSON object with `input`, `seed` and
        `sample`, naming the file and the line (the file is left alone).
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")[:-1]  # after the last "\n": torn
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}, line {number}: not JSON ({e})") from None
        if not isinstance(record, dict) or not REQUIRED <= record.keys():
            raise ConfigError(f"{path}, line {number}: not a manifest record")
        records.append(record)
    return records


def read_records(out_dir: str | os.PathLike, pattern: str) -> list[dict]:
    """Every record of every manifest file in `out_dir` named by `pattern` (`results.jsonl`,
    or `manifest.{process}.jsonl` for every process's shard)."""
    paths = sorted(Path(out_dir).glob(pattern.format(process="*")))
    return [record for path in paths for record in read_manifest(path)]


def cut_torn_line(path: Path) -> None:
    """Drops an incomplete last line from a manifest file (before appending to it)."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data[: data.rfind(b"\n") + 1]
        atomic_write(path, lambda f: f.write(keep))


def append_records(path: Path, records: Sequence[dict]) -> None:
    """Appends lines to a manifest file in one write, then flushes them to disk."""
    if not records:
        return
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    with open(path, "ab") as f:
        f.write(text.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


def result_record(item: InputImage, seed: int, sample: int, result, row: int, **fields) -> dict:
    """The manifest line of the result in row `row` (column 0) of a `SolveResult`.

    `fields`: `steps`, `seconds`, `generator`, the paths, `process`, `group`, `settings`
    (their meaning: the module docstring).
    """
    seconds = round(float(fields.pop("seconds")), 3)
    settings = fields.pop("settings")
    return {
        "input": item.path.name,
        "input_sha256": item.sha256,
        "image_id": item.image_id,
        "sample": sample,
        "seed": seed,
        "l2": float(result.l2[row, 0]),
        "success": bool(result.success[row, 0]),
        "failed": bool(result.failed[row, 0]),
        "best_step": int(result.best_step[row, 0]),
        "seconds": seconds,
        "factor": item.factor,
        **fields,
        "machine": machine_record(),
        "settings": settings,
    }


@functools.cache
def machine_record() -> dict:
    """What a result depends on besides its inputs and settings: the software and the
    machine kind (a line's `machine` field)."""
    device = jax.local_devices()[0]
    return {
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "platform": device.platform,
        "device_kind": device.device_kind,
        "cpu": cpu_model(),
    }


def group_field(record: dict, name: str, default):
    """A field of a manifest line's `group` (lines of older versions have none)."""
    group = record.get("group")
    return group.get(name, default) if isinstance(group, dict) else default


class GroupRows(NamedTuple):
    """A line's group as solve rows: what `engine.recompute` runs again."""

    index: int
    members: list[tuple[int, int, int]]  # (image_id, seed, sample) of the real rows
    size: int  # rows, the real ones then copies of the last
    position: int  # the line's row


def group_rows(record: dict) -> GroupRows:
    """The group of a line, new or from a run before the one engine (`image_ids` x
    `samples` samples, rows padded to `rows` images: the same rows, image-major)."""
    group = record["group"]
    if "members" in group:
        members = [tuple(m) for m in group["members"]]
        return GroupRows(group["index"], members, group["batch_per_device"], group["position"])
    samples = group["samples"]
    members = [(i, record["seed"], s) for i in group["image_ids"] for s in range(samples)]
    position = group["position"] * samples + record["sample"]
    return GroupRows(group["index"], members, group["rows"] * samples, position)


def check_records(
    records: Sequence[dict],
    inputs: Sequence[InputImage],
    settings: dict,
    knob: tuple[str, int],
    folders: Mapping[str, str],
    *,
    apart: bool = False,
) -> None:
    """Refuses to mix results of other settings, other files or other groups into one
    output folder.

    Args:
      records: the folder's manifest records.
      inputs: this work's inputs.
      settings: this work's settings; without `seed` where seeds have their own folders
        (a recorded result of another seed is then another result, not a clash).
      knob: (flag, value) that cuts the work into groups (`batch_size` or
        `batch_per_device`): other groups round differently.
      folders: result folder -> the input file name this work writes into it.
      apart: this work solves each result of a group as a group of one
        (`engine.groups_apart`; recorded as the line's `group.apart`).

    Raises:
      ConfigError: naming how many inputs clash, the first and the difference.
    """
    by_name = {item.path.name: item for item in inputs}
    holders = {str(r.get("hr", "")).rpartition("/")[0]: r["input"] for r in records}
    clashes = {
        name: f"its folder {folder}/ holds the results of {holders[folder]}"
        for folder, name in folders.items()
        if holders.get(folder, name) != name
    }
    flag, value = knob
    for record in records:
        if record["input"] not in by_name or record["input"] in clashes:
            continue
        old = recorded_settings(record)
        if "seed" not in settings:
            old.pop("seed", None)
        if record.get("input_sha256") != by_name[record["input"]].sha256:
            clashes[record["input"]] = "made from a different file of that name"
        elif old != settings:
            clashes[record["input"]] = settings_diff(old, settings)
        elif group_field(record, flag, value) != value:
            clashes[record["input"]] = f"made with --{flag} {record['group'][flag]}, not {value}"
        elif bool(group_field(record, "apart", False)) != bool(apart):
            how = "apart" if apart else "together"
            clashes[record["input"]] = f"its group's results were not solved {how} (--split_groups)"
    if clashes:
        name, why = next(iter(clashes.items()))
        raise ConfigError(
            f"the output folder already holds results for {len(clashes)} of these inputs made "
            f"from other files or with other settings (e.g. {name}: {why}); choose another "
            f"--output_dir, or move the old results away"
        )
