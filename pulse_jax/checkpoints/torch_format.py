"""Reading PyTorch checkpoints (`torch.save` files) without torch and without running their code.

Both of torch's file formats are read:
  - the zip format (torch >= 1.6): `<name>/data.pkl` is the object pickle,
    `<name>/data/<key>` the raw bytes of each storage, `<name>/byteorder` their
    byte order ('little' when the record is missing);
  - the legacy format, which PULSE's own files use: five pickles back to back
    (the magic number, the protocol version 1001, a `sys_info` dict, the object
    pickle, the list of storage keys), then each storage in that order as an
    8-byte little-endian element count and its raw little-endian bytes.

A pickle may name any Python callable and have it called. These files are
decoded by the shared bounded interpreter (`safe_pickle`), which resolves only
the few globals that a tensor checkpoint names (`_GLOBALS`) to pure functions
defined here that build fresh values; any other global is refused before
anything is called, so neither torch's code nor anyone else's runs. Every
tensor's view is checked against its storage before it is copied out, and all
the bytes a read allocates stay within `safe_pickle.Limits.expansion` times the
file's size. Tensors come back as numpy arrays (bfloat16 widened to float32);
the device a tensor was saved for ('cuda:0', ...) is ignored.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import struct
import zipfile

import numpy as np

from pulse_jax.checkpoints import CheckpointError, FileBytes, read_regular, refuses
from pulse_jax.checkpoints.safe_pickle import Global, Limits, Policy, Refusal, Session, describe

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


@dataclasses.dataclass(frozen=True, eq=False)
class _Storage:
    """A storage's raw bytes (None while a legacy file's storages are not read yet)."""

    raw: np.ndarray | None  # [nbytes] uint8
    dtype: str
    byteorder: str  # numpy's '<' or '>'


def _refuse_global(name: str) -> str:
    return (
        f"refuses to unpickle global {name!r}: a checkpoint may name only the torch "
        "globals that rebuild tensors"
    )


def _device(type, index=None) -> str:
    if not isinstance(type, str) or not (index is None or isinstance(index, int)):
        raise Refusal(f"names a device {describe(type)}, {describe(index)}")
    return type[:40] if index is None else f"{type[:40]}:{index}"


def _size(values=()) -> tuple:
    if not isinstance(values, tuple):
        raise Refusal(f"has a torch.Size of {describe(values)}")
    return values


def _ordered_dict(*args) -> collections.OrderedDict:
    if args:  # Python pickles an OrderedDict as OrderedDict() followed by its items
        raise Refusal("builds an OrderedDict from arguments, which torch never writes")
    return collections.OrderedDict()


@dataclasses.dataclass(frozen=True)
class Namespace:
    """`argparse.Namespace` as data (the `args` of rosinality's training checkpoints)."""

    fields: dict


class _PendingNamespace:
    """`argparse.Namespace` made by NEWOBJ, waiting for its fields (BUILD)."""


def _namespace(*args) -> _PendingNamespace:
    if args:
        raise Refusal("creates an argparse Namespace with arguments, which pickle never does")
    return _PendingNamespace()


def build_state(obj, state):
    """BUILD in a torch checkpoint: a state dict's OrderedDict gets its `_metadata` (dropped);
    an argparse Namespace its fields (a fresh `Namespace`). Anything else is refused."""
    if isinstance(obj, collections.OrderedDict) and (state is None or isinstance(state, dict)):
        return obj
    if isinstance(obj, _PendingNamespace):
        if not (isinstance(state, dict) and all(isinstance(k, str) for k in state)):
            raise Refusal(f"gives an argparse Namespace the state {describe(state)}")
        return Namespace(dict(state))
    raise Refusal(f"sets the state of {describe(obj)} (BUILD), which torch never does")


def _policy(session: Session) -> Policy:
    """The globals of a tensor checkpoint, each building fresh values within `session`."""
    return Policy(tensor_globals(session), _refuse_global, build=build_state)


def tensor_globals(session: Session) -> dict[str, Global]:
    """The globals a torch checkpoint may name (qualified name -> `Global`), each building
    fresh values whose arrays are checked and budgeted by `session`; for readers of formats
    that embed torch tensors (NVIDIA's StyleGAN2-ADA pickles)."""

    def tensor(storage, storage_offset, size, stride, dtype: str):
        """torch's `Tensor.set_(storage, offset, size, stride)`, copied into a new array."""
        if not isinstance(storage, _Storage):
            raise Refusal(f"has a tensor whose storage is {describe(storage)}")
        if storage.raw is None:
            return None
        element = np.dtype(_DTYPES[dtype]).newbyteorder(storage.byteorder)
        what = f"a tensor of size {describe(size)}"
        array = session.array(storage.raw, element, size, stride, storage_offset, what=what)
        array = array.astype(array.dtype.newbyteorder("="), copy=False)
        if dtype == "bfloat16":
            session.take(2 * array.nbytes, "widening bfloat16")
            array = (array.astype(np.uint32) << 16).view(np.float32)
        return array

    def rebuild_tensor(storage, storage_offset, size, stride):
        return tensor(storage, storage_offset, size, stride, getattr(storage, "dtype", ""))

    def rebuild_tensor_v2(
        storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None
    ):
        return rebuild_tensor(storage, storage_offset, size, stride)

    def rebuild_tensor_v3(
        storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None
    ):
        # torch writes dtypes without a storage class of their own (uint16, ...) this way:
        # an untyped (byte) storage read as `dtype`, the offset counted in `dtype` elements.
        if not (isinstance(dtype, Global) and dtype.tag in _DTYPES and dtype.call is None):
            raise Refusal(f"has a tensor whose dtype is {describe(dtype)}")
        return tensor(storage, storage_offset, size, stride, dtype.tag)

    def rebuild_parameter(data, requires_grad, backward_hooks, state=None):
        return data

    functions = {
        "collections.OrderedDict": _ordered_dict,
        "torch._utils._rebuild_tensor": rebuild_tensor,
        "torch._utils._rebuild_tensor_v2": rebuild_tensor_v2,
        "torch._utils._rebuild_tensor_v3": rebuild_tensor_v3,
        "torch._utils._rebuild_parameter": rebuild_parameter,
        "torch._utils._rebuild_parameter_with_state": rebuild_parameter,
        "torch.Size": _size,
        "torch.device": _device,
    }
    allowed = {name: Global(name, call=call) for name, call in functions.items()}
    allowed["argparse.Namespace"] = Global("argparse.Namespace", new=_namespace)
    allowed.update(_TOKENS)
    return allowed


# Storage classes and dtypes: inert names a persistent id or `_rebuild_tensor_v3` carries.
_TOKENS = {
    "torch.storage.UntypedStorage": Global("torch.storage.UntypedStorage", tag="uint8"),
    **{f"torch.{n}": Global(f"torch.{n}", tag=dtype) for n, dtype in _STORAGE_TYPES.items()},
    # Very old torch named the storage class of a CUDA tensor in torch.cuda.
    **{
        f"torch.cuda.{n}": Global(f"torch.cuda.{n}", tag=dtype)
        for n, dtype in _STORAGE_TYPES.items()
    },
    **{f"torch.{n}": Global(f"torch.{n}", tag=n) for n in _DTYPES},
}
_STORAGE_TOKENS = {id(g) for name, g in _TOKENS.items() if name.endswith("Storage")}
# The header records of a legacy file (magic number, version, sys_info) name no global.
_HEADER_POLICY = Policy({}, _refuse_global)


def _parse_storage_id(pid) -> tuple[str, str, int, tuple | None]:
    """('storage', storage_type, key, location, numel[, view]) -> (key, dtype, numel, view)."""
    if not (
        isinstance(pid, tuple)
        and len(pid) in (5, 6)
        and pid[0] == "storage"
        and id(pid[1]) in _STORAGE_TOKENS
        and isinstance(pid[2], str)
        and len(pid[2]) <= 100
        and type(pid[4]) is int
        and 0 <= pid[4] < 1 << 62
    ):
        raise Refusal(f"has an unexpected persistent id ({describe(pid)})")
    view = pid[5] if len(pid) == 6 else None
    if view is not None and not (
        isinstance(view, tuple)
        and len(view) == 3
        and all(type(v) is int and 0 <= v < 1 << 62 for v in view[1:])
    ):
        raise Refusal(f"has a storage view that is {describe(view)}")
    return pid[2], pid[1].tag, pid[4], view


def _load_zip(session: Session, data: bytes):
    path = session.path
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise CheckpointError(path, f"is not a readable zip archive, truncated? ({e})") from None
    entries = session.zip_entries(archive)
    pickles = [n for n in entries if n.endswith("/data.pkl") and n.count("/") == 1]
    if not pickles:
        raise CheckpointError(
            path, "is a zip archive without <name>/data.pkl: not a torch checkpoint"
        )
    prefix = pickles[0][: -len("/data.pkl")]
    byteorder = b"little"
    if (record := entries.get(f"{prefix}/byteorder")) is not None:
        if record.file_size > 16:
            raise CheckpointError(path, f"has a byteorder record of {record.file_size} bytes")
        byteorder = session.zip_member(archive, record).strip()
    if byteorder not in (b"little", b"big"):
        raise CheckpointError(path, f"has an unknown byteorder record {byteorder[:20]!r}")
    order = "<" if byteorder == b"little" else ">"
    raw_storages: dict[str, np.ndarray] = {}

    def load_storage(pid) -> _Storage:
        key, dtype, numel, _ = _parse_storage_id(pid)
        if key not in raw_storages:
            name = f"{prefix}/data/{key}"
            if name not in entries:
                raise Refusal(f"has no record {name} for a storage it refers to")
            raw_storages[key] = np.frombuffer(session.zip_member(archive, entries[name]), np.uint8)
        raw = raw_storages[key]
        nbytes = numel * np.dtype(_DTYPES[dtype]).itemsize
        if raw.size < nbytes:
            raise Refusal(f"storage {key} holds {raw.size} bytes, fewer than the {nbytes} declared")
        return _Storage(raw[:nbytes], dtype, order)

    pickle_bytes = session.guard(lambda: session.zip_member(archive, entries[pickles[0]]))
    value, _ = session.unpickle(pickle_bytes, _policy(session), persistent_load=load_storage)
    return value


def _load_legacy(session: Session, data: bytes):
    path = session.path
    try:
        magic, position = session.unpickle(data, _HEADER_POLICY)
    except CheckpointError:
        magic = None
    if type(magic) is not int or magic != MAGIC_NUMBER:
        raise CheckpointError(path, "is not a torch checkpoint (neither a zip nor a legacy file)")
    version, position = session.unpickle(data, _HEADER_POLICY, start=position)
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise CheckpointError(path, f"has legacy protocol version {describe(version)}, not 1001")
    sys_info, position = session.unpickle(data, _HEADER_POLICY, start=position)
    if not isinstance(sys_info, dict):
        raise CheckpointError(path, "has a sys_info record that is not a dict")

    # A storage's element size is known only from the object pickle, which comes
    # before the storages: a first pass (tensors left unbuilt) learns every
    # storage's dtype, a second one after reading them builds the tensors.
    object_start = position
    dtypes: dict[str, str] = {}

    def note_dtype(pid) -> _Storage:
        key, dtype, _, _ = _parse_storage_id(pid)
        dtypes.setdefault(key, dtype)
        return _Storage(None, dtype, "<")

    _, position = session.unpickle(
        data, _policy(session), start=object_start, persistent_load=note_dtype
    )
    keys, position = session.unpickle(data, _HEADER_POLICY, start=position)
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        raise CheckpointError(path, "has a storage key record that is not a list of strings")

    raw_storages: dict[str, np.ndarray] = {}
    for key in keys:
        if key not in dtypes:
            raise CheckpointError(path, f"stores storage {describe(key)} that no tensor refers to")
        if position + 8 > len(data):
            raise CheckpointError(path, f"is truncated: it ends before storage {describe(key)}")
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
            raise Refusal(f"lacks the data of storage {key}")
        raw = raw_storages[key]
        itemsize = np.dtype(_DTYPES[dtype]).itemsize
        if raw.size < numel * itemsize:
            raise Refusal(
                f"storage {key} holds {raw.size // itemsize} elements, fewer than {numel}"
            )
        if view is not None:
            # Storage views of torch < 1.0: (view key, offset, numel) inside the root storage.
            _, view_offset, view_numel = view
            if view_offset + view_numel > numel:
                raise Refusal(f"has a storage view {view[1:]} outside storage {key}")
            raw = raw[view_offset * itemsize : (view_offset + view_numel) * itemsize]
        return _Storage(raw, dtype, "<")

    value, _ = session.unpickle(
        data, _policy(session), start=object_start, persistent_load=load_storage
    )
    return value


def load_torch_bytes(
    source: str | os.PathLike, data: bytes, *, limits: Limits | None = None
) -> object:
    """Reads a `torch.save` payload held in memory (zip or legacy format), under the same
    limits as `load_torch_checkpoint`; `source` names it in errors.

    Args:
      source: what the bytes are (a file, or a file and the place inside it).
      data: the payload.
      limits: bounds of the read (`safe_pickle.Limits`; the defaults fit honest files).

    Returns:
      As `load_torch_checkpoint`.

    Raises:
      CheckpointError: as `load_torch_checkpoint`.
    """
    if not data:
        raise CheckpointError(source, "is empty, not a torch checkpoint")
    session = Session(source, len(data), limits)
    return session.guard(lambda: read_payload(session, data))


def read_payload(session: Session, data: bytes) -> object:
    """Reads a `torch.save` payload (zip or legacy) inside another read: its arrays count
    against `session`'s budget and deadline, and its errors name `session.path`.

    Returns:
      As `load_torch_bytes`; a payload holding a bare storage (what
      `torch.storage._load_from_bytes` carries) gives that storage, which the
      `_rebuild_tensor*` globals of `tensor_globals(session)` turn into an array.

    Raises:
      CheckpointError: as `load_torch_bytes`.
    """
    data = bytes(data)
    if data.startswith(_ZIP_MAGIC):
        return _load_zip(session, data)
    return _load_legacy(session, data)


@refuses
def load_torch_checkpoint(
    path: str | os.PathLike, *, limits: Limits | None = None, file: FileBytes | None = None
) -> object:
    """Reads a `torch.save` file, zip or legacy format, without torch and without running its code.

    Args:
      path: the checkpoint file.
      limits: bounds of the read (`safe_pickle.Limits`; the defaults fit honest files, a
        genuine file that needs more memory than 8 x its size passes a larger `expansion`).
      file: the file's bytes when the caller already read them (`read_regular`: read once,
        hashed as read); else the file is read here (a regular file only).

    Returns:
      The saved object, with every tensor as a numpy array (C-contiguous; bfloat16
      as float32), dicts, OrderedDicts, lists, tuples, numbers and strings as
      they were saved and an argparse Namespace as a `Namespace` of its fields
      (fresh values: nothing is shared between reads).

    Raises:
      CheckpointError: the file cannot be read, is not a torch checkpoint, is
        truncated or corrupt, exceeds the limits, or its pickle names a global
        outside the allow-list.
    """
    data = (file or read_regular(path)).data
    return load_torch_bytes(path, data, limits=limits)


@refuses
def load_state_dict(
    path: str | os.PathLike,
    key: str | None = None,
    *,
    limits: Limits | None = None,
    file: FileBytes | None = None,
) -> dict[str, np.ndarray]:
    """Reads a state dict (parameter name -> array) from a torch checkpoint.

    Args:
      path: the checkpoint file.
      key: the entry of a checkpoint dict that holds the state dict (DCGAN's
        'netG_state_dict'), or None when the checkpoint is the state dict itself.
      limits, file: as for `load_torch_checkpoint`.

    Returns:
      A flat dict from parameter name to numpy array; integer buffers such as
      `num_batches_tracked` stay int64 arrays.

    Raises:
      CheckpointError: the checkpoint cannot be read (see `load_torch_checkpoint`),
        lacks `key`, or is not a flat mapping of names to tensors.
    """
    checkpoint = load_torch_checkpoint(path, limits=limits, file=file)
    if key is not None:
        if not isinstance(checkpoint, dict):
            raise CheckpointError(
                path, f"holds a {type(checkpoint).__name__}, not a dict with {key!r}"
            )
        if key not in checkpoint:
            entries = ", ".join(_name(k) for k in list(checkpoint)[:10])
            raise CheckpointError(path, f"has no entry {key!r} (entries: {entries})")
        checkpoint = checkpoint[key]
    if not isinstance(checkpoint, dict):
        raise CheckpointError(path, f"holds a {type(checkpoint).__name__}, not a state dict")
    for name, value in dict.items(checkpoint):
        if not (isinstance(name, str) and isinstance(value, np.ndarray)):
            raise CheckpointError(
                path,
                f"is not a flat state dict: entry {_name(name)} is a {type(value).__name__}",
            )
    return dict(checkpoint)


def _name(key) -> str:
    """A dict key for a message: a string quoted and cut at 80 characters."""
    return repr(key[:80]) if isinstance(key, str) else describe(key)
