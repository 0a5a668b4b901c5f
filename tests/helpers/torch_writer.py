"""Writes torch checkpoints without torch, for tests (not library code).

`save_torch_zip` and `save_torch_legacy` write what `torch.save` writes for a
nested structure of dicts, lists, tuples, numbers, strings and numpy arrays: the
same pickle (protocol 2; each tensor a `torch._utils._rebuild_tensor_v2` call on
a persistent id `('storage', torch.FloatStorage, key, location, numel)`) in the
zip or the legacy layout. Arrays are written C-contiguous, one storage each;
`TensorView` writes a strided view of a storage (views of one storage array
share it), and `Global` / `Call` put any global or call into the pickle, which
is how tests build malicious checkpoints.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
LEGACY_SYS_INFO = {
    "protocol_version": PROTOCOL_VERSION,
    "little_endian": True,
    "type_sizes": {"short": 2, "int": 4, "long": 4},
}

# numpy dtype -> torch dtype name
_TORCH_DTYPES = {
    np.dtype(np.float64): "float64",
    np.dtype(np.float32): "float32",
    np.dtype(np.float16): "float16",
    np.dtype(np.complex128): "complex128",
    np.dtype(np.complex64): "complex64",
    np.dtype(np.int64): "int64",
    np.dtype(np.int32): "int32",
    np.dtype(np.int16): "int16",
    np.dtype(np.int8): "int8",
    np.dtype(np.uint64): "uint64",
    np.dtype(np.uint32): "uint32",
    np.dtype(np.uint16): "uint16",
    np.dtype(np.uint8): "uint8",
    np.dtype(np.bool_): "bool",
}
# torch dtype name -> its storage class; dtypes without one (uint16/32/64) are
# written as torch 2 writes them: `_rebuild_tensor_v3` over an untyped storage.
_STORAGE_CLASSES = {
    "float64": "DoubleStorage",
    "float32": "FloatStorage",
    "float16": "HalfStorage",
    "bfloat16": "BFloat16Storage",
    "complex128": "ComplexDoubleStorage",
    "complex64": "ComplexFloatStorage",
    "int64": "LongStorage",
    "int32": "IntStorage",
    "int16": "ShortStorage",
    "int8": "CharStorage",
    "uint8": "ByteStorage",
    "bool": "BoolStorage",
}


@dataclasses.dataclass(frozen=True)
class Global:
    """A global `module.name`, pickled as a GLOBAL opcode without importing anything."""

    module: str
    name: str

    def __call__(self, *args):
        # pickle insists that a reduce function be callable; this one is only a name.
        raise TypeError(f"{self.module}.{self.name} is a stand-in, not the real global")


@dataclasses.dataclass(frozen=True, eq=False)
class Call:
    """Pickled as `function(*args)` (a REDUCE), whatever `function` names."""

    function: Global
    args: tuple


@dataclasses.dataclass(frozen=True, eq=False)
class TensorView:
    """A tensor viewing the 1-D `storage` with torch's offset and strides, in elements.

    `torch_dtype` overrides the dtype named in the file, e.g. 'bfloat16' for a
    uint16 storage holding bfloat16 bits.
    """

    storage: np.ndarray
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    torch_dtype: str | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class _StorageRef:
    key: str
    torch_dtype: str
    numel: int  # in elements of `torch_dtype`; in bytes for an untyped storage
    array: np.ndarray  # [N]


_REBUILD_TENSOR_V2 = Global("torch._utils", "_rebuild_tensor_v2")
_REBUILD_TENSOR_V3 = Global("torch._utils", "_rebuild_tensor_v3")
_ORDERED_DICT = Global("collections", "OrderedDict")


def _save_global(pickler: _TorchPickler, obj: Global) -> None:
    pickler.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
    pickler.memoize(obj)


class _TorchPickler(pickle._Pickler):
    """The pure-Python pickler, taught torch's tensors and our `Global`/`Call` objects."""

    dispatch = {**pickle._Pickler.dispatch, Global: _save_global}

    def __init__(self, file, *, location: str, legacy: bool):
        super().__init__(file, protocol=2)
        self.storages: dict[str, _StorageRef] = {}  # key -> storage
        self._refs: dict[int, _StorageRef] = {}  # id(storage array) -> storage
        self._location = location
        self._legacy = legacy

    def _storage(self, storage: np.ndarray, torch_dtype: str) -> _StorageRef:
        if id(storage) not in self._refs:
            key = str(len(self.storages))
            numel = storage.size if torch_dtype in _STORAGE_CLASSES else storage.nbytes
            # The reference holds the array, so its id is not reused while pickling.
            self._refs[id(storage)] = self.storages[key] = _StorageRef(
                key, torch_dtype, numel, storage
            )
        return self._refs[id(storage)]

    def reducer_override(self, obj):
        if isinstance(obj, np.ndarray):
            array = np.array(obj, order="C")  # not ascontiguousarray: that makes 0-d arrays 1-d
            stride = tuple(s // max(array.itemsize, 1) for s in array.strides)
            obj = TensorView(array.reshape(-1), 0, array.shape, stride)
        if isinstance(obj, TensorView):
            torch_dtype = obj.torch_dtype or _TORCH_DTYPES[obj.storage.dtype]
            storage = self._storage(obj.storage, torch_dtype)
            view = (storage, obj.offset, tuple(obj.shape), tuple(obj.stride), False)
            if torch_dtype in _STORAGE_CLASSES:
                return _REBUILD_TENSOR_V2, (*view, collections.OrderedDict())
            dtype = Global("torch", torch_dtype)
            return _REBUILD_TENSOR_V3, (*view, collections.OrderedDict(), dtype)
        if isinstance(obj, Call):
            return obj.function, tuple(obj.args)
        return NotImplemented

    def persistent_id(self, obj):
        if not isinstance(obj, _StorageRef):
            return None
        if obj.torch_dtype in _STORAGE_CLASSES:
            storage_class = Global("torch", _STORAGE_CLASSES[obj.torch_dtype])
        else:
            storage_class = Global("torch.storage", "UntypedStorage")
        pid = ("storage", storage_class, obj.key, self._location, obj.numel)
        return (*pid, None) if self._legacy else pid


def _little_endian_bytes(storage: np.ndarray) -> bytes:
    return storage.astype(storage.dtype.newbyteorder("<"), copy=False).tobytes()


def save_torch_zip(obj, path, *, location: str = "cpu") -> None:
    """Writes `obj` as `torch.save` does by default (the zip format).

    Args:
      obj: nested dicts/lists/tuples of numpy arrays, `TensorView`s, `Call`s,
        numbers and strings.
      path: the file to write; its stem names the archive's top folder, as in torch.
      location: the device each storage is tagged with ('cpu', 'cuda:0').
    """
    buffer = io.BytesIO()
    pickler = _TorchPickler(buffer, location=location, legacy=False)
    pickler.dump(obj)
    name = Path(path).stem
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{name}/data.pkl", buffer.getvalue())
        archive.writestr(f"{name}/byteorder", "little")
        for key, storage in pickler.storages.items():
            archive.writestr(f"{name}/data/{key}", _little_endian_bytes(storage.array))
        archive.writestr(f"{name}/version", "3\n")


def save_torch_legacy(obj, path, *, location: str = "cpu", sys_info=None) -> None:
    """Writes `obj` as `torch.save(..., _use_new_zipfile_serialization=False)` does.

    Args:
      obj: as for `save_torch_zip`.
      path: the file to write.
      location: the device each storage is tagged with ('cpu', 'cuda:0').
      sys_info: the header record (default `LEGACY_SYS_INFO`); a `Call` puts a
        payload in the header.
    """
    buffer = io.BytesIO()
    header = sys_info if sys_info is not None else LEGACY_SYS_INFO
    for record in (MAGIC_NUMBER, PROTOCOL_VERSION, header):
        _TorchPickler(buffer, location=location, legacy=True).dump(record)
    pickler = _TorchPickler(buffer, location=location, legacy=True)
    pickler.dump(obj)
    keys = sorted(pickler.storages)
    pickle.dump(keys, buffer, protocol=2)
    for key in keys:
        buffer.write(struct.pack("<q", pickler.storages[key].numel))
        buffer.write(_little_endian_bytes(pickler.storages[key].array))
    Path(path).write_bytes(buffer.getvalue())


def write_zip(path, pickle_bytes: bytes, storages: dict[str, bytes], compress=False):
    """A torch zip checkpoint from a hand-written data.pkl and raw storages."""
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", method) as archive:
        archive.writestr("archive/data.pkl", pickle_bytes)
        archive.writestr("archive/byteorder", "little")
        for key, raw in storages.items():
            archive.writestr(f"archive/data/{key}", raw)
    return path
