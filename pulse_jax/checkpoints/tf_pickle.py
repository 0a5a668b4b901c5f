"""NVIDIA's TensorFlow network pickles (StyleGAN v1 and v2), read without TensorFlow.

Such a file is a pickle of `dnnlib.tflib.network.Network` objects. Each network pickles
as its `__getstate__` dict: `version`, `name`, `static_kwargs`, `components` (nested
networks), `build_module_src` (Python source that TensorFlow's own `__setstate__` would
`exec`), `build_func_name` and `variables`, a list of `(scope-relative name, numpy
array)` pairs.

The file is decoded by the shared bounded interpreter (`safe_pickle`) with an allow-list
of exactly the globals such a file needs (a stub `Network` that only keeps its state,
`EasyDict` as a plain dict, numpy's array/dtype/scalar reconstructors), each resolved to a
function here that builds a fresh value: an array's dtype must be a plain number type and
its byte count must match its shape before it is copied out, and any other global is
refused before it can be called; `build_module_src` is never run. This module is that
policy (`load_pickle`, `stand_ins`, also used by the ADA reader for its numpy values) and
the checks of a network's variables; `stylegan_tf` (v1) and `stylegan2_tf` convert them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from pulse_jax.checkpoints import CheckpointError, FileBytes, read_regular
from pulse_jax.checkpoints.safe_pickle import Global, Limits, Policy, Refusal, Session, describe


class NetworkStub:
    """Stands in for `dnnlib.tflib.network.Network`: keeps the pickled state, runs nothing
    (made fresh per object; its state is set once, by the BUILD that follows its creation)."""

    def __init__(self):
        self.state: dict | None = None


class _EasyDictStub(dict):
    """Stands in for `dnnlib.util.EasyDict` (a dict with attribute access): a plain dict."""


class _PendingArray:
    """`numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')`: an array waiting for BUILD."""


@dataclasses.dataclass(frozen=True)
class _PendingDType:
    """`numpy.dtype(code, align, copy)`: a dtype waiting for its BUILD state (byte order)."""

    code: str


# Element type codes numpy pickles a plain number dtype with.
_DTYPE_CODE = re.compile(r"(b1|[iu][1248]|f[248]|c(8|16))")


def _no_arguments(what: str):
    def new(*args):
        if args:
            raise Refusal(f"creates a {what} with arguments, which NVIDIA's pickles never do")
        return NetworkStub() if what == "Network" else _EasyDictStub()

    return new


def _dtype(code, align=False, copy=True):
    if not (isinstance(code, str) and _DTYPE_CODE.fullmatch(code)):
        raise Refusal(f"has an array element type {describe(code)}, not a plain number type")
    return _PendingDType(code)


def _reconstruct(cls, shape, code):
    if not (cls is _NDARRAY and shape == (0,) and code in (b"b", "b")):
        raise Refusal("reconstructs an array in a way numpy never pickles one")
    return _PendingArray()


_NDARRAY = Global("numpy.ndarray")
_NAMES = {
    ("dnnlib.tflib.network", "Network"): "Network",
    ("dnnlib.util", "EasyDict"): "EasyDict",
    ("numpy", "ndarray"): "ndarray",
    ("numpy", "dtype"): "dtype",
    # Both numpy spellings: a 2019 pickle names numpy.core, a numpy-2 pickle numpy._core.
    ("numpy.core.multiarray", "_reconstruct"): "_reconstruct",
    ("numpy._core.multiarray", "_reconstruct"): "_reconstruct",
    ("numpy.core.multiarray", "scalar"): "scalar",
    ("numpy._core.multiarray", "scalar"): "scalar",
}
# The globals an NVIDIA StyleGAN pickle may name, (module, name) -> what it stands for.
ALLOWED_GLOBALS = dict(_NAMES)


def refusal(kind: str, allowed) -> Callable[[str], str]:
    """The message for a global outside `allowed` (qualified names) in a file of `kind`."""
    names = sorted(allowed)
    needs = ", ".join(names) if len(names) <= 8 else f"the {len(names)} globals it is known to use"

    def message(name: str) -> str:
        return f"refused global '{name}' (not called): {kind} needs only {needs}"

    return message


_KIND = "an NVIDIA StyleGAN pickle"


def _policy(session: Session) -> Policy:
    """The allow-list, each global building fresh values within `session`."""
    allowed, build = stand_ins(session)
    return Policy(allowed, refusal(_KIND, allowed), build=build, encoding="latin1")


def stand_ins(session: Session) -> tuple[dict[str, Global], Callable[[Any, Any], Any]]:
    """The globals of NVIDIA's pickles (qualified name -> `Global` building fresh values
    within `session`) and the BUILD hook for the values they make; other NVIDIA readers
    (StyleGAN2) take these as they are or pick from them."""

    def final_dtype(dtype, what: str) -> np.dtype:
        if not isinstance(dtype, np.dtype):
            raise Refusal(f"{what} has element type {describe(dtype)}, not a numpy dtype")
        return dtype

    def scalar(dtype, data):
        dtype = final_dtype(dtype, "a numpy scalar")
        if isinstance(data, str):
            data = data.encode("latin1")
        if not (isinstance(data, bytes) and len(data) == dtype.itemsize):
            raise Refusal(
                f"has a numpy scalar of {describe(data)} for a {dtype.itemsize}-byte type"
            )
        return np.frombuffer(data, dtype)[0]

    def build(obj, state):
        if isinstance(obj, NetworkStub):
            if not isinstance(state, dict):
                raise Refusal(f"gives a Network the state {describe(state)}, expected a dict")
            obj.state = state
            return obj
        if isinstance(obj, _EasyDictStub):
            if state:
                raise Refusal("gives an EasyDict attributes, which NVIDIA's pickles never do")
            return obj
        if isinstance(obj, _PendingDType):
            # (version, byte order, subarray, names, fields, itemsize, alignment, flags)
            if not (
                isinstance(state, tuple)
                and len(state) == 8
                and state[0] == 3
                and state[1] in ("<", ">", "|", "=")
                and state[2:5] == (None, None, None)
                and state[5:] == (-1, -1, 0)
            ):
                raise Refusal(f"gives a dtype the state {describe(state)}, not a plain number")
            return np.dtype(obj.code).newbyteorder(state[1])
        if isinstance(obj, _PendingArray):
            # (version, shape, dtype, Fortran order, raw bytes)
            if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1):
                raise Refusal(f"gives an array the state {describe(state)}")
            _, shape, dtype, fortran, raw = state
            dtype = final_dtype(dtype, "an array")
            if isinstance(raw, str):
                raw = raw.encode("latin1")
            if not isinstance(raw, bytes) or not isinstance(fortran, bool):
                raise Refusal(f"gives an array the data {describe(raw)}, not raw bytes")
            if not isinstance(shape, tuple):
                raise Refusal(f"gives an array the shape {describe(shape)}")
            order = tuple(reversed(shape)) if fortran else shape
            what = f"an array of shape {describe(shape)}"
            expected = dtype.itemsize
            for n in shape:
                expected *= n if isinstance(n, int) else 1
            if len(raw) != expected:
                raise Refusal(f"{what} holds {len(raw)} bytes, not the {expected} it needs")
            array = session.array(np.frombuffer(raw, np.uint8), dtype, order, what=what)
            return array.T if fortran else array
        raise Refusal(f"sets the state of {describe(obj)} (BUILD), which this format never does")

    makers = {
        "Network": Global("dnnlib.tflib.network.Network", new=_no_arguments("Network")),
        "EasyDict": Global(
            "dnnlib.util.EasyDict", new=_no_arguments("EasyDict"), call=_no_arguments("EasyDict")
        ),
        "ndarray": _NDARRAY,
        "dtype": Global("numpy.dtype", call=_dtype),
        "_reconstruct": Global("numpy.core.multiarray._reconstruct", call=_reconstruct),
        "scalar": Global("numpy.core.multiarray.scalar", call=scalar),
    }
    allowed = {f"{m}.{n}": makers[role] for (m, n), role in ALLOWED_GLOBALS.items()}
    return allowed, build


def load_pickle(
    path: str,
    limits: Limits | None,
    *,
    policy: Callable[[Session], Policy] = _policy,
    kind: str = _KIND,
    zip_hint: str = "convert PULSE's .pt files with `convert pulse`",
    file: FileBytes | None = None,
) -> object:
    """Decodes the pickle `path` with `policy(session)` (default: StyleGAN v1's allow-list);
    every failure becomes a one-line CheckpointError that calls the file `kind`; `file` is
    its bytes when the caller read them already (`read_regular`)."""
    data = (file or read_regular(path)).data
    if not data:
        raise CheckpointError(path, f"the file is empty, expected {kind}")
    if data.startswith(b"PK\x03\x04"):
        raise CheckpointError(
            path, f"this is a zip archive (a PyTorch checkpoint?), not {kind}; {zip_hint}"
        )
    session = Session(path, len(data), limits)
    value, _ = session.unpickle(data, policy(session))
    return value


def cut(names: list[str]) -> list[str]:
    """The first 8 names of a list, each cut at 80 characters, for a message."""
    return [n[:80] for n in names[:8]]


def short(value) -> str:
    """A name from the file, quoted and cut, for a message."""
    return repr(value[:60]) if isinstance(value, str) else describe(value)


def variables(path: str, state: dict, where: str) -> dict[str, np.ndarray | np.generic]:
    variables: dict[str, np.ndarray | np.generic] = {}
    for item in state["variables"]:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise CheckpointError(path, f"{where}: a variable entry is not a (name, array) pair")
        name, value = item
        if not isinstance(value, np.ndarray | np.generic) or value.dtype.kind != "f":
            raise CheckpointError(
                path, f"{where}/{name[:80]} is a {type(value).__name__}, expected a float array"
            )
        if name in variables:
            raise CheckpointError(path, f"{where}: variable {short(name)} appears twice")
        variables[name] = value
    return variables
