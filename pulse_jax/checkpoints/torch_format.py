"""Reading PyTorch checkpoints (`torch.save` files) without torch and without running their code.

Both of torch's file formats are read:
  - the zip format (torch >= 1.6): `<name>/data.pkl` is the object pickle,
    `<name>/data/<key>` the raw bytes of each storage, `<name>/byteorder` their
    byte order ('little' when the record is missing);
  - the legacy format, which PULSE's own files use: five pickles back to back
    (the magic number, the protocol version 1001, a `sys_info` dict, the object
    pickle, the list of storage keys), then each storage in that order as an
    8-byte little-endian element count and its raw little-endian bytes.

A pickle may name any Python callable and have it called. Unpickling here
resolves only the few globals that a tensor checkpoint names (`_ALLOWED`), to
harmless stand-ins defined in this module; any other global is refused before
anything is called, so neither torch's code nor anyone else's runs. Tensors
come back as numpy arrays (bfloat16 widened to float32); the device a tensor
was saved for ('cuda:0', ...) is ignored.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import operator
import os
import pickle
import struct
import zipfile
import zlib

import numpy as np

from pulse_jax.checkpoints import CheckpointError

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
_ZIP_MAGIC = b"PK\x03\x04"

# torch dtype name -> numpy type code of its stored elements; bfloat16 is read
# as its raw 16 bits and widened afterwards (numpy has no bfloat16).
_DTYPES = {
    "float64": "f8",
    "float32": "f4",
    "float16": "f2",
    "bfloat16": "u2",
    "complex128": "c16",
    "complex64": "c8",
    "int64": "i8",
    "int32": "i4",
    "int16": "i2",
    "int8": "i1",
    "uint64": "u8",
    "uint32": "u4",
    "uint16": "u2",
    "uint8": "u1",
    "bool": "?",
}

# torch's storage classes, as named in persistent ids, and their element dtype.
_STORAGE_TYPES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "UntypedStorage": "uint8",
}

# What a malformed file can make the parsers below raise; each becomes a CheckpointError.
_PARSE_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    struct.error,
    zipfile.BadZipFile,
    zlib.error,
    NotImplementedError,
    KeyError,
    IndexError,
    ValueError,
    TypeError,
    AttributeError,
    OverflowError,
    MemoryError,
    RecursionError,
)


@dataclasses.dataclass(frozen=True)
class _StorageType:
    """Stands in for a torch storage class (`torch.FloatStorage`); never called."""

    dtype: str


@dataclasses.dataclass(frozen=True)
class _DType:
    """Stands in for a torch dtype (`torch.uint16`), as `_rebuild_tensor_v3` receives it."""

    name: str


@dataclasses.dataclass(frozen=True, eq=False)
class _Storage:
    """A storage's raw bytes (None while a legacy file's storages are not read yet)."""

    raw: np.ndarray | None  # [nbytes] uint8
    dtype: str
    byteorder: str  # numpy's '<' or '>'


def _ints(values, what: str) -> tuple[int, ...]:
    if not isinstance(values, tuple):
        raise ValueError(f"a tensor's {what} is a {type(values).__name__}, not a tuple")
    return tuple(operator.index(v) for v in values)


def _tensor(storage, storage_offset, size, stride, dtype: str) -> np.ndarray | None:
    """torch's `Tensor.set_(storage, offset, size, stride)`, reading into a new numpy array."""
    if not isinstance(storage, _Storage):
        raise ValueError(f"a tensor's storage is a {type(storage).__name__}")
    if storage.raw is None:
        return None
    offset = operator.index(storage_offset)
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    if len(size) != len(stride) or min((offset, *size, *stride)) < 0:
        raise ValueError(f"invalid tensor view: offset {offset}, size {size}, stride {stride}")
    element = np.dtype(_DTYPES[dtype]).newbyteorder(storage.byteorder)
    elements = storage.raw[: storage.raw.size - storage.raw.size % element.itemsize].view(element)
    if 0 in size:
        array = np.zeros(size, element)
    else:
        # as_strided does no bounds checks: a view past the storage would read foreign memory.
        last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if last >= elements.size:
            raise ValueError(
                f"a tensor of size {size}, stride {stride} at offset {offset} runs past "
                f"the end of its storage ({elements.size} elements)"
            )
        strides = tuple(s * element.itemsize for s in stride)
        view = np.lib.stride_tricks.as_strided(elements[offset:], size, strides, writeable=False)
        array = view.copy()
    array = array.astype(array.dtype.newbyteorder("="), copy=False)
    if dtype == "bfloat16":
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _tensor(storage, storage_offset, size, stride, getattr(storage, "dtype", ""))


def _rebuild_tensor_v2(
    storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None
):
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(
    storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None
):
    # torch writes dtypes that have no storage class of their own (uint16, ...) this way:
    # an untyped (byte) storage read as `dtype`, the offset counted in `dtype` elements.
    if not isinstance(dtype, _DType):
        raise ValueError(f"a tensor's dtype is a {type(dtype).__name__}")
    return _tensor(storage, storage_offset, size, stride, dtype.name)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    return data


class Namespace:
    """Stands in for `argparse.Namespace` (the `args` of rosinality's training checkpoints).

    Pickled as NEWOBJ + BUILD; the BUILD state is kept as a plain dict of its
    fields, so the namespace is data and nothing of argparse runs.
    """

    __slots__ = ("fields",)

    def __setstate__(self, state):
        if not (isinstance(state, dict) and all(isinstance(k, str) for k in state)):
            raise ValueError(f"an argparse Namespace's state is a {type(state).__name__}")
        self.fields = dict(state)


def _device(type: str, index: int | None = None) -> str:
    return str(type) if index is None else f"{type}:{operator.index(index)}"


# The only globals a checkpoint may name, each resolved to a stand-in defined above
# (or to an inert builtin). Anything else is refused.
_ALLOWED = {
    "collections.OrderedDict": collections.OrderedDict,
    "argparse.Namespace": Namespace,
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter_with_state,
    "torch.Size": tuple,
    "torch.device": _device,
    "torch.storage.UntypedStorage": _StorageType("uint8"),
    **{f"torch.{name}": _StorageType(dtype) for name, dtype in _STORAGE_TYPES.items()},
    # Very old torch named the storage class of a CUDA tensor in torch.cuda.
    **{f"torch.cuda.{name}": _StorageType(dtype) for name, dtype in _STORAGE_TYPES.items()},
    **{f"torch.{name}": _DType(name) for name in _DTYPES},
}


class _SafeUnpickler(pickle.Unpickler):
    """An unpickler that resolves only `_ALLOWED` globals and hands storages to `load_storage`."""

    def __init__(self, file, path, load_storage=None):
        super().__init__(file, encoding="utf-8")
        self._path = path
        self._load_storage = load_storage

    def find_class(self, module: str, name: str):
        qualified = f"{module}.{name}"
        if qualified not in _ALLOWED:
            raise CheckpointError(
                self._path,
                f"refuses to unpickle global {qualified!r}: a checkpoint may name only the "
                "torch globals that rebuild tensors",
            )
        return _ALLOWED[qualified]

    def persistent_load(self, pid):
        if self._load_storage is None:
            raise CheckpointError(self._path, "a header pickle refers to a storage")
        return self._load_storage(pid)


def _parse_storage_id(pid) -> tuple[str, str, int, tuple | None]:
    """('storage', storage_type, key, location, numel[, view]) -> (key, dtype, numel, view)."""
    if not (
        isinstance(pid, tuple)
        and len(pid) in (5, 6)
        and pid[0] == "storage"
        and isinstance(pid[1], _StorageType)
        and isinstance(pid[2], str)
        and isinstance(pid[4], int)
        and pid[4] >= 0
    ):
        raise ValueError(f"unexpected persistent id {pid!r:.100}")
    view = pid[5] if len(pid) == 6 else None
    return pid[2], pid[1].dtype, pid[4], view


def _load_zip(path, data: bytes):
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as e:
        raise CheckpointError(path, f"is not a readable zip archive, truncated? ({e})") from None
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if not pickles:
        raise CheckpointError(
            path, "is a zip archive without <name>/data.pkl: not a torch checkpoint"
        )
    prefix = pickles[0][: -len("/data.pkl")]
    byteorder = b"little"
    names = set(names)
    if f"{prefix}/byteorder" in names:
        byteorder = archive.read(f"{prefix}/byteorder").strip()
    if byteorder not in (b"little", b"big"):
        raise CheckpointError(path, f"has an unknown byteorder record {byteorder[:20]!r}")
    order = "<" if byteorder == b"little" else ">"
    raw_storages: dict[str, np.ndarray] = {}

    def load_storage(pid) -> _Storage:
        key, dtype, numel, _ = _parse_storage_id(pid)
        if key not in raw_storages:
            name = f"{prefix}/data/{key}"
            if name not in names:
                raise CheckpointError(path, f"has no record {name} for a storage it refers to")
            raw_storages[key] = np.frombuffer(archive.read(name), np.uint8)
        raw = raw_storages[key]
        nbytes = numel * np.dtype(_DTYPES[dtype]).itemsize
        if raw.size < nbytes:
            raise CheckpointError(
                path, f"storage {key} holds {raw.size} bytes, fewer than the {nbytes} declared"
            )
        return _Storage(raw[:nbytes], dtype, order)

    return _SafeUnpickler(io.BytesIO(archive.read(pickles[0])), path, load_storage).load()


def _load_legacy(path, data: bytes):
    stream = io.BytesIO(data)
    try:
        magic = _SafeUnpickler(stream, path).load()
    except CheckpointError:
        raise
    except _PARSE_ERRORS:
        magic = None
    if magic != MAGIC_NUMBER:
        raise CheckpointError(path, "is not a torch checkpoint (neither a zip nor a legacy file)")
    version = _SafeUnpickler(stream, path).load()
    if version != PROTOCOL_VERSION:
        raise CheckpointError(path, f"has legacy protocol version {version!r:.40}, not 1001")
    if not isinstance(_SafeUnpickler(stream, path).load(), dict):
        raise CheckpointError(path, "has a sys_info record that is not a dict")

    # A storage's element size is known only from the object pickle, which comes
    # before the storages: a first pass (tensors left unbuilt) learns every
    # storage's dtype, a second one after reading them builds the tensors.
    object_start = stream.tell()
    dtypes: dict[str, str] = {}

    def note_dtype(pid) -> _Storage:
        key, dtype, _, _ = _parse_storage_id(pid)
        dtypes.setdefault(key, dtype)
        return _Storage(None, dtype, "<")

    _SafeUnpickler(stream, path, note_dtype).load()
    keys = _SafeUnpickler(stream, path).load()
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        raise CheckpointError(path, "has a storage key record that is not a list of strings")

    raw_storages: dict[str, np.ndarray] = {}
    position = stream.tell()
    for key in keys:
        if key not in dtypes:
            raise CheckpointError(path, f"stores storage {key} that no tensor refers to")
        if position + 8 > len(data):
            raise CheckpointError(path, f"is truncated: it ends before storage {key}")
        (numel,) = struct.unpack_from("<q", data, position)
        nbytes = numel * np.dtype(_DTYPES[dtypes[key]]).itemsize
        if numel < 0 or position + 8 + nbytes > len(data):
            raise CheckpointError(
                path, f"is truncated: storage {key} needs {nbytes} bytes at byte {position + 8}"
            )
        raw_storages[key] = np.frombuffer(data, np.uint8, nbytes, position + 8)
        position += 8 + nbytes

    def load_storage(pid) -> _Storage:
        key, dtype, numel, view = _parse_storage_id(pid)
        if key not in raw_storages:
            raise CheckpointError(path, f"lacks the data of storage {key}")
        raw = raw_storages[key]
        itemsize = np.dtype(_DTYPES[dtype]).itemsize
        if raw.size < numel * itemsize:
            raise CheckpointError(
                path, f"storage {key} holds {raw.size // itemsize} elements, fewer than {numel}"
            )
        if view is not None:
            # Storage views of torch < 1.0: (view key, offset, numel) inside the root storage.
            _, view_offset, view_numel = view
            if view_offset < 0 or view_numel < 0 or view_offset + view_numel > numel:
                raise CheckpointError(
                    path, f"has a storage view {view!r:.60} outside storage {key}"
                )
            raw = raw[view_offset * itemsize : (view_offset + view_numel) * itemsize]
        return _Storage(raw, dtype, "<")

    stream.seek(object_start)
    return _SafeUnpickler(stream, path, load_storage).load()


def load_torch_checkpoint(path: str | os.PathLike) -> object:
    """Reads a `torch.save` file, zip or legacy format, without torch and without running its code.

    Args:
      path: the checkpoint file.

    Returns:
      The saved object, as `load_torch_bytes` returns it.

    Raises:
      CheckpointError: the file cannot be read, is not a torch checkpoint, is
        truncated or corrupt, or its pickle names a global outside the allow-list.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CheckpointError(path, f"cannot be read ({e.strerror or e})") from None
    return load_torch_bytes(path, data)


def load_torch_bytes(source, data: bytes) -> object:
    """Reads the bytes of a `torch.save` file (zip or legacy format) without running its code.

    Args:
      source: what the bytes came from (a path, or a description such as
        `"file.pkl: a tensor's storage"`), named in errors.
      data: the whole file's bytes.

    Returns:
      The saved object, with every tensor as a numpy array (C-contiguous; bfloat16
      as float32) and dicts, OrderedDicts, lists, tuples, numbers and strings as
      they were saved. A file holding a bare storage (what torch pickles inside
      `torch.storage._load_from_bytes`) gives that storage, which
      `_rebuild_tensor_v2` turns into an array.

    Raises:
      CheckpointError: the bytes are not a torch checkpoint, are truncated or
        corrupt, or their pickle names a global outside the allow-list.
    """
    if not data:
        raise CheckpointError(source, "is empty, not a torch checkpoint")
    try:
        if data.startswith(_ZIP_MAGIC):
            return _load_zip(source, data)
        return _load_legacy(source, data)
    except CheckpointError:
        raise
    except _PARSE_ERRORS as e:
        detail = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(
            source, f"is truncated or corrupt ({type(e).__name__}: {detail:.200})"
        ) from None


def load_state_dict(path: str | os.PathLike, key: str | None = None) -> dict[str, np.ndarray]:
    """Reads a state dict (parameter name -> array) from a torch checkpoint.

    Args:
      path: the checkpoint file.
      key: the entry of a checkpoint dict that holds the state dict (DCGAN's
        'netG_state_dict'), or None when the checkpoint is the state dict itself.

    Returns:
      A flat dict from parameter name to numpy array; integer buffers such as
      `num_batches_tracked` stay int64 arrays.

    Raises:
      CheckpointError: the checkpoint cannot be read (see `load_torch_checkpoint`),
        lacks `key`, or is not a flat mapping of names to tensors.
    """
    checkpoint = load_torch_checkpoint(path)
    if key is not None:
        if not isinstance(checkpoint, dict):
            raise CheckpointError(
                path, f"holds a {type(checkpoint).__name__}, not a dict with {key!r}"
            )
        if key not in checkpoint:
            entries = ", ".join(repr(k) for k in list(checkpoint)[:10])
            raise CheckpointError(path, f"has no entry {key!r} (entries: {entries})")
        checkpoint = checkpoint[key]
    if not isinstance(checkpoint, dict):
        raise CheckpointError(path, f"holds a {type(checkpoint).__name__}, not a state dict")
    for name, value in checkpoint.items():
        if not (isinstance(name, str) and isinstance(value, np.ndarray)):
            raise CheckpointError(
                path,
                f"is not a flat state dict: entry {name!r:.80} is a {type(value).__name__}",
            )
    return dict(checkpoint)
