"""The project's own weights file: one `.npz` per generator, no pickle.

Layout of the archive:
  - `params/<a>/<b>/...`: every leaf of the nested parameter dict, as a float32
    (or int) array, path segments joined with '/';
  - `gaussian_fit/mean`, `gaussian_fit/std` (StyleGAN only);
  - `__meta__`: a UTF-8 JSON document stored as a uint8 array with `format`,
    `format_version`, `kind` (the generator's registered kind), `config` (its
    static structure) and `provenance` (source files and their sha256).

It is read with `allow_pickle=False`, so opening a weights file never runs code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from pulse_jax.checkpoints import CheckpointError

FORMAT = "pulse_jax.weights"
FORMAT_VERSION = 1
# The largest generator resolution any reader accepts (far above the 1024 px of FFHQ).
MAX_RESOLUTION = 8192


@dataclasses.dataclass(frozen=True)
class WeightsFile:
    kind: str
    params: dict
    config: dict
    gaussian_fit: dict | None
    provenance: dict


def sha256_of(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    flat = {}
    for key, value in tree.items():
        if "/" in key:
            raise ValueError(f"parameter name {key!r} must not contain '/'")
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, path + "/"))
        else:
            flat[path] = np.asarray(value)
    return flat


def unflatten(flat: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def atomic_write(path: str | os.PathLike, write) -> None:
    """Calls `write(file_object)` on a temporary file beside `path`, then renames it.

    A crash midway leaves either the old file or none, never half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a weights file is ordinary data
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_weights(
    path: str | os.PathLike,
    *,
    kind: str,
    params: dict,
    config: dict,
    gaussian_fit: dict | None = None,
    provenance: dict | None = None,
) -> None:
    """Writes a generator's weights file atomically."""
    arrays = {f"params/{k}": v for k, v in flatten(params).items()}
    if gaussian_fit is not None:
        arrays["gaussian_fit/mean"] = np.asarray(gaussian_fit["mean"], np.float32)
        arrays["gaussian_fit/std"] = np.asarray(gaussian_fit["std"], np.float32)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "config": config,
        "provenance": provenance or {},
    }
    arrays["__meta__"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_weights(path: str | os.PathLike) -> WeightsFile:
    """Reads a weights file written by `save_weights` (never unpickles)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise CheckpointError(path, f"not a pulse_jax weights file ({e})") from None
    if "__meta__" not in arrays:
        raise CheckpointError(path, "not a pulse_jax weights file (no __meta__ entry)")
    try:
        meta: dict[str, Any] = json.loads(arrays.pop("__meta__").tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(path, f"corrupt __meta__ entry ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(path, f"not a pulse_jax weights file (format {meta.get('format')!r})")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            path,
            f"written by a newer pulse_jax (format version {meta['format_version']}); upgrade",
        )
    gaussian_fit = None
    if "gaussian_fit/mean" in arrays:
        gaussian_fit = {
            "mean": arrays.pop("gaussian_fit/mean"),
            "std": arrays.pop("gaussian_fit/std"),
        }
    params = unflatten(
        {k[len("params/") :]: v for k, v in arrays.items() if k.startswith("params/")}
    )
    return WeightsFile(
        kind=meta["kind"],
        params=params,
        config=meta.get("config", {}),
        gaussian_fit=gaussian_fit,
        provenance=meta.get("provenance", {}),
    )
