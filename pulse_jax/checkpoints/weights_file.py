"""The project's own weights file: one `.npz` per generator, no pickle, its schema checked.

Layout of the archive (numpy's `.npz`: a zip of `.npy` members, stored uncompressed):
  - `params/<a>/<b>/...`: every leaf of the nested parameter dict, as a float32
    array, path segments joined with '/';
  - `gaussian_fit/mean`, `gaussian_fit/std` (StyleGAN and StyleGAN2);
  - `__meta__`: a UTF-8 JSON document stored as a uint8 array with `format`,
    `format_version`, `kind` (the generator's registered kind), `config` (its
    static structure) and `provenance` (source files and their sha256).

Reading is a parser, not `np.load`: the zip's members are checked (no duplicates, no
encryption, declared sizes within a budget proportional to the file), each `.npy`
header is matched against the one form numpy writes, its dtype and shape against its
byte count, before any array is made; then the whole content is checked against the
kind's schema (`SCHEMAS`: config fields, every parameter's name and shape, finite
values), so a file that loads is one the generator can run. A new generator kind adds
one `Schema` entry.

Why `.npz` and not safetensors: the layout above is already "a bounded header, then raw
bytes" once read by this parser, it needs no dependency beyond numpy, and every
existing file and documented name (`weights/ffhq1024.npz`, `weights/dcgan64.npz`) keeps
working.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pulse_jax.checkpoints import (
    CheckpointError,
    FileBytes,
    check_regular,
    read_regular,
    refuses,
)
from pulse_jax.checkpoints.safe_pickle import Limits, Refusal, Session
from pulse_jax.files import atomic_write

FORMAT = "pulse_jax.weights"
FORMAT_VERSION = 1
# The largest generator resolution any reader accepts (far above the 1024 px of FFHQ).
MAX_RESOLUTION = 8192
MAX_CHANNELS = 4096  # per layer; StyleGAN's widest has 512
MAX_META_BYTES = 1 << 20
MAX_MAPPING_LAYERS = 64  # StyleGAN's and StyleGAN2's have 8
MAX_ENTRIES = 10_000


@dataclasses.dataclass(frozen=True)
class WeightsFile:
    kind: str
    params: dict
    config: dict
    gaussian_fit: dict | None
    provenance: dict


def sha256_of(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """The sha256 of a regular file (a FIFO or a device is refused before it is opened)."""
    check_regular(path)
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


class SchemaError(Refusal):
    """A weights file's content that is not what its kind needs; str names the field."""


Shapes = dict[str, tuple[int, ...]]


@dataclasses.dataclass(frozen=True)
class Schema:
    """What one generator kind's weights file holds.

    `params(config, shapes)` checks the config and returns the exact parameter paths and
    shapes the kind needs, given the shapes present (channel counts that the config does
    not record are read from them); it raises `SchemaError` naming the field.
    """

    params: Callable[[dict, Shapes], Shapes]
    gaussian_fit: bool  # whether the kind needs one (its length: `fit_size(shapes)`)
    fit_size: Callable[[Shapes], int] | None = None


def _int_field(config: dict, name: str, low: int, high: int) -> int:
    value = config.get(name)
    if type(value) is not int or not low <= value <= high:
        raise SchemaError(f"config.{name} is {_short(value)}, expected an integer in {low}..{high}")
    return value


def _channels(shapes: Shapes, path: str, axis: int, field: str) -> int:
    if path not in shapes or len(shapes[path]) <= axis:
        raise SchemaError(f"{path} is missing or has too few dimensions")
    value = shapes[path][axis]
    if not 1 <= value <= MAX_CHANNELS:
        raise SchemaError(f"{field} ({path}) is {value}, expected 1..{MAX_CHANNELS}")
    return value


def _resolution_and_channels(config: dict) -> tuple[int, list[int]]:
    """A style generator's config.resolution (a power of two) and config.channels (one count
    per block, 4 px up)."""
    resolution = _int_field(config, "resolution", 4, MAX_RESOLUTION)
    if resolution & (resolution - 1):
        raise SchemaError(f"config.resolution is {resolution}, not a power of two")
    channels = config.get("channels")
    blocks = resolution.bit_length() - 2
    if not (
        isinstance(channels, list)
        and len(channels) == blocks
        and all(type(c) is int and 1 <= c <= MAX_CHANNELS for c in channels)
    ):
        raise SchemaError(
            f"config.channels is {_short(channels)}, expected {blocks} integers in "
            f"1..{MAX_CHANNELS} for {resolution} px"
        )
    return resolution, channels


def _stylegan_params(config: dict, shapes: Shapes) -> Shapes:
    resolution, channels = _resolution_and_channels(config)
    first = "synthesis/blocks/4x4/epi1/style_mod/lin/weight"
    dlatent = _channels(shapes, first, 0, "the dlatent size")
    expected: Shapes = {}
    previous = None
    for i, c in enumerate(channels):
        side = 4 * 2**i
        block = f"synthesis/blocks/{side}x{side}"
        if i == 0:
            expected[f"{block}/const"] = (1, 4, 4, c)
            expected[f"{block}/bias"] = (c,)
            expected[f"{block}/conv/weight"] = (3, 3, c, c)
            expected[f"{block}/conv/bias"] = (c,)
        else:
            expected[f"{block}/conv0_up/weight"] = (3, 3, previous, c)
            expected[f"{block}/conv0_up/bias"] = (c,)
            expected[f"{block}/conv0_up/intermediate/kernel"] = (3, 3)
            expected[f"{block}/conv1/weight"] = (3, 3, c, c)
            expected[f"{block}/conv1/bias"] = (c,)
        for epi in ("epi1", "epi2"):
            expected[f"{block}/{epi}/noise/weight"] = (c,)
            expected[f"{block}/{epi}/style_mod/lin/weight"] = (dlatent, 2 * c)
            expected[f"{block}/{epi}/style_mod/lin/bias"] = (2 * c,)
        previous = c
    expected["synthesis/torgb/weight"] = (1, 1, previous, 3)
    expected["synthesis/torgb/bias"] = (3,)
    layers = sum(1 for p in shapes if re.fullmatch(r"mapping/dense\d+/weight", p))
    if layers > MAX_MAPPING_LAYERS:
        raise SchemaError(f"the mapping has {layers} layers, more than {MAX_MAPPING_LAYERS}")
    if layers or any(p.startswith("mapping/") for p in shapes):
        width = _channels(shapes, "mapping/dense0/weight", 0, "the latent size")
        for i in range(layers):
            out = (
                dlatent
                if i == layers - 1
                else _channels(shapes, f"mapping/dense{i}/weight", 1, f"mapping dense{i} width")
            )
            expected[f"mapping/dense{i}/weight"] = (width, out)
            expected[f"mapping/dense{i}/bias"] = (out,)
            width = out
    return expected


def _dcgan_params(config: dict, shapes: Shapes) -> Shapes:
    from pulse_jax.generators.dcgan import CONV_INDICES, NORM_INDICES

    latent = _int_field(config, "latent_size", 1, MAX_CHANNELS)
    resolution = 4 * 2 ** (len(CONV_INDICES) - 1)
    if config.get("resolution") != resolution:
        raise SchemaError(f"config.resolution is {_short(config.get('resolution'))}, not 64")
    expected: Shapes = {}
    width = latent
    for n, conv in enumerate(CONV_INDICES):
        path = f"main/{conv}/weight"
        out = 3 if n == len(CONV_INDICES) - 1 else _channels(shapes, path, 3, f"{path} outputs")
        expected[path] = (4, 4, width, out)
        if n < len(NORM_INDICES):
            for name in ("weight", "bias", "running_mean", "running_var"):
                expected[f"main/{NORM_INDICES[n]}/{name}"] = (out,)
        width = out
    return expected


def _stylegan2_params(config: dict, shapes: Shapes) -> Shapes:
    resolution, channels = _resolution_and_channels(config)
    blocks = len(channels)
    layers = _int_field(config, "mapping_layers", 1, MAX_MAPPING_LAYERS)
    z_dim = _int_field(config, "z_dim", 1, MAX_CHANNELS)
    w_dim = _int_field(config, "w_dim", 1, MAX_CHANNELS)
    num_ws = 2 * blocks
    if config.get("num_ws") != num_ws:
        raise SchemaError(
            f"config.num_ws is {_short(config.get('num_ws'))}, expected {num_ws} at {resolution} px"
        )
    for name, optional in (("conv_clamp", True), ("mapping_lr", False)):
        value = config.get(name)
        if value is None and optional:
            continue
        if not (
            (type(value) is int and 0 < value < 1 << 53)
            or (type(value) is float and math.isfinite(value) and value > 0)
        ):
            raise SchemaError(f"config.{name} is {_short(value)}, expected a positive number")
    expected: Shapes = {}
    width = z_dim
    for i in range(layers):
        expected[f"mapping/fc{i}/weight"] = (width, w_dim)
        expected[f"mapping/fc{i}/bias"] = (w_dim,)
        width = w_dim
    expected["mapping/w_avg"] = (w_dim,)

    def layer(prefix: str, c_in: int, c: int, side: int) -> None:
        expected[f"{prefix}/weight"] = (3, 3, c_in, c)
        expected[f"{prefix}/affine/weight"] = (w_dim, c_in)
        expected[f"{prefix}/affine/bias"] = (c_in,)
        expected[f"{prefix}/bias"] = (c,)
        expected[f"{prefix}/noise_strength"] = ()
        expected[f"{prefix}/noise_const"] = (side, side)  # the noise buffer

    previous = channels[0]
    for i, c in enumerate(channels):
        side = 4 * 2**i
        block = f"synthesis/b{side}"
        if i == 0:
            expected[f"{block}/const"] = (1, 4, 4, c)
        else:
            layer(f"{block}/conv0", previous, c, side)
        layer(f"{block}/conv1", c, c, side)
        expected[f"{block}/torgb/weight"] = (c, 3)
        expected[f"{block}/torgb/affine/weight"] = (w_dim, c)
        expected[f"{block}/torgb/affine/bias"] = (c,)
        expected[f"{block}/torgb/bias"] = (3,)
        previous = c
    return expected


def _lpips_params(backbone: str) -> Callable[[dict, Shapes], Shapes]:
    """LPIPS's weights (docs/lpips.md): the backbone's convolutions and the lin layers."""

    def params(config: dict, shapes: Shapes) -> Shapes:
        from pulse_jax.lpips import param_shapes

        if config != {"backbone": backbone}:
            raise SchemaError(f"config is {_short(config)}, expected {{'backbone': {backbone!r}}}")
        return param_shapes(backbone)

    return params


# The registered generator kinds (and LPIPS's weights) and their weights files' schemas.
SCHEMAS: dict[str, Schema] = {
    "lpips_vgg16": Schema(_lpips_params("vgg16"), gaussian_fit=False),
    "lpips_alexnet": Schema(_lpips_params("alexnet"), gaussian_fit=False),
    "stylegan": Schema(
        _stylegan_params,
        gaussian_fit=True,
        fit_size=lambda shapes: shapes["synthesis/blocks/4x4/epi1/style_mod/lin/weight"][0],
    ),
    "stylegan2": Schema(
        _stylegan2_params,
        gaussian_fit=True,
        fit_size=lambda shapes: shapes["mapping/w_avg"][0],
    ),
    "dcgan": Schema(_dcgan_params, gaussian_fit=False),
}


def check_params(kind: str, config: Any, params: dict[str, np.ndarray]) -> dict:
    """Checks flat parameters (path -> array) and a config against the kind's schema (every
    number in range, every shape the config implies, finite float32 values), as a converter
    does before any computation these numbers size (the gaussian fit); returns the
    parameter shapes.

    Raises:
      SchemaError: naming the field (kind, config entry, parameter path) and the problem.
    """
    if kind not in SCHEMAS:
        raise SchemaError(f"kind is {_short(kind)}, expected one of {', '.join(SCHEMAS)}")
    if not isinstance(config, dict):
        raise SchemaError(f"config is {_short(config)}, expected an object")
    schema = SCHEMAS[kind]
    shapes = {path: tuple(np.shape(v)) for path, v in params.items()}
    expected = schema.params(config, shapes)
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    if missing or unexpected:
        raise SchemaError(
            f"params do not match a {kind} generator: missing {_cut(missing)}, "
            f"unexpected {_cut(unexpected)}"
        )
    for path, shape in expected.items():
        _check_array(f"params/{path}", params[path], shape)
    return shapes


def check_content(
    kind: str, config: Any, params: dict[str, np.ndarray], gaussian_fit: dict | None
) -> None:
    """Checks flat parameters (path -> array) and a gaussian fit against the kind's schema.

    Raises:
      SchemaError: naming the field (kind, config entry, parameter path) and the problem.
    """
    shapes = check_params(kind, config, params)
    schema = SCHEMAS[kind]
    if schema.gaussian_fit:
        if gaussian_fit is None or set(gaussian_fit) != {"mean", "std"}:
            raise SchemaError(f"gaussian_fit: a {kind} file needs both gaussian_fit/mean and /std")
        size = schema.fit_size(shapes)
        _check_array("gaussian_fit/mean", gaussian_fit["mean"], (size,))
        _check_array("gaussian_fit/std", gaussian_fit["std"], (size,))
        if np.any(np.asarray(gaussian_fit["std"]) < 0):
            raise SchemaError("gaussian_fit/std holds negative values")
    elif gaussian_fit is not None:
        raise SchemaError(f"gaussian_fit: a {kind} file holds none")


def _check_array(field: str, value, shape: tuple[int, ...]) -> None:
    if not isinstance(value, np.ndarray) or value.dtype != np.float32:
        what = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
        raise SchemaError(f"{field} is {what}, expected float32")
    if value.shape != shape:
        raise SchemaError(f"{field} has shape {value.shape}, expected {shape}")
    if not np.all(np.isfinite(value)):
        raise SchemaError(f"{field} holds NaN or infinite values")


def _short(value) -> str:
    """A value from a file for a message: JSON, cut at 60 characters (a huge integer or a
    deep structure is named, not printed)."""
    if type(value) is int and value.bit_length() > 128:
        return "a big integer"
    try:
        return json.dumps(value)[:60] if _jsonable(value) else type(value).__name__
    except (ValueError, TypeError, RecursionError):
        return type(value).__name__


def _jsonable(value) -> bool:
    return value is None or isinstance(value, str | int | float | bool | list | dict)


def _cut(names: list[str]) -> list[str]:
    return [n[:80] for n in names[:8]]


def save_weights(
    path: str | os.PathLike,
    *,
    kind: str,
    params: dict,
    config: dict,
    gaussian_fit: dict | None = None,
    provenance: dict | None = None,
) -> None:
    """Writes a generator's weights file atomically, after checking it against its schema.

    Args:
      path: the `.npz` to write.
      kind: a key of `SCHEMAS` (the generator's registered kind).
      params: the nested parameter dict (float32 leaves).
      config: the kind's static structure (JSON-friendly).
      gaussian_fit: {"mean", "std"} for kinds that need one.
      provenance: source records (JSON-friendly).

    Raises:
      ValueError: the content does not match the kind's schema (`SchemaError`).
    """
    flat = {k: np.asarray(v) for k, v in flatten(params).items()}
    flat = {k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in flat.items()}
    fit = None
    if gaussian_fit is not None:
        fit = {k: np.asarray(gaussian_fit[k], np.float32) for k in ("mean", "std")}
    check_content(kind, config, flat, fit)
    arrays = {f"params/{k}": v for k, v in flat.items()}
    if fit is not None:
        arrays["gaussian_fit/mean"] = fit["mean"]
        arrays["gaussian_fit/std"] = fit["std"]
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "config": config,
        "provenance": provenance or {},
    }
    arrays["__meta__"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)
    atomic_write(path, lambda f: np.savez(f, **arrays))


# The one header form numpy writes for an array: dtype, order, shape.
_NPY_HEADER = re.compile(
    r"\{'descr': '([<>|][a-zA-Z]\d{1,2})', 'fortran_order': (True|False), "
    r"'shape': \(((?:\d{1,12}, )*\d{0,12},?)\), \} *\n"
)
# Plain number types only (an object or string dtype is refused before any data is read).
_NPY_DTYPES = {"<f2", "<f4", "<f8", "|i1", "<i2", "<i4", "<i8", "|u1", "<u2", "<u4", "<u8", "|b1"}


def _read_npy(name: str, data: bytes) -> np.ndarray:
    """Parses one `.npy` member: magic, header, then exactly the bytes its shape needs."""
    if data[:6] != b"\x93NUMPY" or len(data) < 10 or data[6] not in (1, 2, 3):
        raise SchemaError(f"{name} is not a .npy array")
    if data[6] == 1:
        size, start = int.from_bytes(data[8:10], "little"), 10
    else:
        size, start = int.from_bytes(data[8:12], "little"), 12
    if size > 4096 or start + size > len(data):
        raise SchemaError(f"{name} has a .npy header of {size} bytes")
    header = _NPY_HEADER.fullmatch(data[start : start + size].decode("latin1"))
    if header is None:
        raise SchemaError(f"{name} has a .npy header numpy does not write")
    descr, fortran, dims = header.groups()
    if descr not in _NPY_DTYPES:
        raise SchemaError(f"{name} holds {descr} elements, not numbers")
    shape = tuple(int(d) for d in dims.split(",") if d.strip())
    if len(shape) > 8:
        raise SchemaError(f"{name} has {len(shape)} dimensions")
    dtype = np.dtype(descr)
    body = len(data) - start - size
    if math.prod(shape) * dtype.itemsize != body:
        raise SchemaError(f"{name} has shape {shape} but {body} bytes of data")
    array = np.frombuffer(data, dtype, offset=start + size)
    order = "F" if fortran == "True" else "C"
    return array.reshape(shape, order=order).copy()


def read_arrays(
    path: str | os.PathLike, limits: Limits | None = None, file: FileBytes | None = None
) -> dict[str, np.ndarray]:
    """The arrays of an `.npz` (member name without `.npy` -> array), read by the bounded
    parser above (never `np.load`): plain number dtypes, the header form numpy writes, the
    byte count matching the shape, members within `limits`' budget.

    Raises:
      CheckpointError: one line naming the file and the member.
    """
    path = Path(path)
    data = (file or read_regular(path)).data  # `file`: the bytes when the caller read them
    session = Session(path, len(data), limits)

    def read() -> dict[str, np.ndarray]:
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
            raise CheckpointError(path, f"not a pulse_jax weights file ({e})") from None
        entries = session.zip_entries(archive)
        if len(entries) > MAX_ENTRIES:
            raise SchemaError(f"holds {len(entries)} entries, more than {MAX_ENTRIES}")
        arrays = {}
        for member, info in entries.items():
            if not member.endswith(".npy"):
                raise SchemaError(f"{member[:80]} is not a .npy member")
            name = member[: -len(".npy")]
            if name == "__meta__" and info.file_size > MAX_META_BYTES:
                raise SchemaError(f"__meta__ holds {info.file_size} bytes, more than 1 MiB")
            arrays[name] = _read_npy(name[:80], session.zip_member(archive, info))
        return arrays

    try:
        return session.guard(read)
    except SchemaError as e:
        raise CheckpointError(path, str(e)) from None


def _read_meta(arrays: dict[str, np.ndarray]) -> dict:
    if "__meta__" not in arrays:
        raise SchemaError("not a pulse_jax weights file (no __meta__ entry)")
    raw = arrays.pop("__meta__")
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise SchemaError(f"__meta__ is a {raw.dtype} array of shape {raw.shape}, not bytes")
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise SchemaError(f"corrupt __meta__ entry ({str(e)[:100]})") from None
    if not isinstance(meta, dict):
        raise SchemaError(f"__meta__ is {_short(meta)}, not an object")
    if meta.get("format") != FORMAT:
        raise SchemaError(f"not a pulse_jax weights file (format {_short(meta.get('format'))})")
    version = meta.get("format_version")
    if type(version) is not int or version < 1:
        raise SchemaError(f"__meta__.format_version is {_short(version)}, not a version")
    if version > FORMAT_VERSION:
        raise SchemaError(f"written by a newer pulse_jax (format version {version}); upgrade")
    for field, kind in (("kind", str), ("config", dict), ("provenance", dict)):
        if not isinstance(meta.get(field), kind):
            raise SchemaError(
                f"__meta__.{field} is {_short(meta.get(field))}, expected a {kind.__name__}"
            )
    return meta


@refuses
def load_weights(path: str | os.PathLike) -> WeightsFile:
    """Reads and checks a weights file written by `save_weights` (never unpickles).

    Raises:
      CheckpointError: one line naming the file and the field: not a weights file, a
        malformed member or header, metadata of the wrong form, an unknown kind, or
        parameters, config or gaussian fit that do not match the kind's schema.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(path, "no such file")
    check_regular(path, "weights file")
    arrays = read_arrays(path)
    try:
        meta = _read_meta(arrays)
        fit = None
        if "gaussian_fit/mean" in arrays or "gaussian_fit/std" in arrays:
            if not {"gaussian_fit/mean", "gaussian_fit/std"} <= set(arrays):
                raise SchemaError("gaussian_fit: has one of mean and std without the other")
            fit = {"mean": arrays.pop("gaussian_fit/mean"), "std": arrays.pop("gaussian_fit/std")}
        stray = sorted(k for k in arrays if not k.startswith("params/"))
        if stray:
            raise SchemaError(f"holds entries outside params/: {_cut(stray)}")
        flat = {k[len("params/") :]: v for k, v in arrays.items()}
        check_content(meta["kind"], meta["config"], flat, fit)
    except SchemaError as e:
        raise CheckpointError(path, str(e)) from None
    return WeightsFile(
        kind=meta["kind"],
        params=unflatten(flat),
        config=meta["config"],
        gaussian_fit=fit,
        provenance=meta["provenance"],
    )
