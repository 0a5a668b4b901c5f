"""Writes NVIDIA StyleGAN2-ADA network pickles without torch, for tests (not library code).

`write_ada_pickle` pickles a tree of `PersistentObject`s (as the reader returns
them, edited at will) the way `torch_utils.persistence` and torch do: each
object a `torch_utils.persistence._reconstruct_persistent_obj(meta)` call,
each array `torch._utils._rebuild_tensor_v2` over
`torch.storage._load_from_bytes(<legacy torch.save bytes of its storage>)`,
sets as `builtins.set`, `EasyDict`s as `dnnlib.util.EasyDict`. `Global` /
`Call` (from helpers.torch_writer) put any other global or call into the file.
"""

from __future__ import annotations

import collections
import io
import pickle
import re
import struct
from pathlib import Path

import numpy as np

from helpers import torch_writer
from helpers.torch_writer import Call, Global
from pulse_jax.checkpoints import stylegan2_ada, torch_format

_RECONSTRUCT = Global("torch_utils.persistence", "_reconstruct_persistent_obj")
_REBUILD = Global("torch._utils", "_rebuild_tensor_v2")
_LOAD_FROM_BYTES = Global("torch.storage", "_load_from_bytes")
_SET = Global("builtins", "set")
_EASY_DICT = Global("dnnlib.util", "EasyDict")
GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "stylegan2"


def storage_bytes(array: np.ndarray) -> bytes:
    """What torch pickles inside `_load_from_bytes`: a legacy `torch.save` of one storage."""
    buffer = io.BytesIO()
    records = (
        torch_writer.MAGIC_NUMBER,
        torch_writer.PROTOCOL_VERSION,
        torch_writer.LEGACY_SYS_INFO,
    )
    for record in records:
        torch_writer._TorchPickler(buffer, location="cpu", legacy=True).dump(record)
    pickler = torch_writer._TorchPickler(buffer, location="cpu", legacy=True)
    storage = pickler._storage(array.reshape(-1), torch_writer._TORCH_DTYPES[array.dtype])
    pickler.dump(storage)
    pickle.dump(sorted(pickler.storages), buffer, protocol=2)
    buffer.write(struct.pack("<q", storage.numel))
    buffer.write(array.astype(array.dtype.newbyteorder("<")).tobytes())
    return buffer.getvalue()


class _AdaPickler(pickle._Pickler):
    dispatch = {**pickle._Pickler.dispatch, Global: torch_writer._save_global}

    def reducer_override(self, obj):
        if isinstance(obj, stylegan2_ada.PersistentObject):
            meta = {
                "type": "class",
                "version": obj.version,
                "module_src": obj.module_src,
                "class_name": obj.class_name,
                "state": obj.state,
            }
            return _RECONSTRUCT, (meta,)
        if isinstance(obj, np.ndarray):
            array = np.array(obj, order="C")
            stride = tuple(s // array.itemsize for s in array.strides)
            storage = Call(_LOAD_FROM_BYTES, (storage_bytes(array),))
            return _REBUILD, (storage, 0, array.shape, stride, False, collections.OrderedDict())
        if isinstance(obj, frozenset | set):
            return _SET, (sorted(obj),)
        if isinstance(obj, dict) and "EasyDict" in type(obj).__name__:  # the reader's stand-in
            return _EASY_DICT, (), None, None, iter(obj.items())
        if isinstance(obj, Call):
            return obj.function, tuple(obj.args)
        return NotImplemented


def write_ada_pickle(path, top, protocol: int = 4) -> bytes:
    """Writes `top` (a dict of networks, PersistentObjects inside) and returns the bytes."""
    buffer = io.BytesIO()
    _AdaPickler(buffer, protocol=protocol).dump(top)
    data = buffer.getvalue()
    with open(path, "wb") as f:
        f.write(data)
    return data


def read_tree(path) -> object:
    """The reader's data view of an ADA pickle (PersistentObjects, arrays), for editing."""
    path = str(path)
    return stylegan2_ada.read_tree(path)


def walk(obj: stylegan2_ada.PersistentObject, prefix: str = ""):
    """(dotted name, object) over a persistent module tree, parents first."""
    yield prefix.rstrip("."), obj
    for name, child in obj.state.get("_modules", {}).items():
        if isinstance(child, stylegan2_ada.PersistentObject):
            yield from walk(child, f"{prefix}{name}.")


def _shrunk(array: np.ndarray) -> np.ndarray:
    """The golden's 512-wide latents and 64 or 32 channels cut to 8 and 4 (others kept)."""
    sizes = {512: 8, 64: 4, 32: 4}
    return np.array(array[tuple(slice(0, sizes.get(n, n)) for n in array.shape)])


def small_tree(golden) -> dict:
    """The golden ADA pickle's tree (`read_tree`) cut to a consistent 8 px generator, 4
    channels, 8-wide latents and a one-line module source: a few KB to mutate or break."""
    top = read_tree(golden)
    network = top["G_ema"]
    synthesis = network.state["_modules"]["synthesis"]
    for name in [n for n in synthesis.state["_modules"] if n not in ("b4", "b8")]:
        del synthesis.state["_modules"][name]
    for _, obj in walk(network):
        for group in ("_parameters", "_buffers"):
            tensors = obj.state.get(group, {})
            for name, value in tensors.items():
                if isinstance(value, np.ndarray):
                    tensors[name] = _shrunk(value)

    def replace(obj):
        state = dict(obj.state)
        state["_modules"] = {k: replace(v) for k, v in obj.state.get("_modules", {}).items()}
        return stylegan2_ada.PersistentObject(obj.class_name, obj.version, "# source\n", state)

    return {"G_ema": replace(network)}


def small_rosinality_state(golden_state: dict) -> dict:
    """The golden rosinality `g_ema` state dict cut the same way (8 px, 4 channels, 8 wide)."""
    keep = re.compile(
        r"(input|conv1|to_rgb1|style\.\d+|convs\.[01]|to_rgbs\.0)\..+|noises\.noise_[0-2]"
    )
    return {k: _shrunk(v) for k, v in golden_state.items() if keep.fullmatch(k)}


def tiny_rosinality_state() -> dict:
    """`small_rosinality_state` of the golden rosinality checkpoint (8 px)."""
    golden = torch_format.load_state_dict(GOLDEN / "sg2_rosinality_tiny.pt", "g_ema")
    return small_rosinality_state(golden)
