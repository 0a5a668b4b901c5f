"""Reading NVIDIA's StyleGAN2-ADA (and StyleGAN3-release StyleGAN2) pickles without running them.

A network pickle is `dict(training_set_kwargs, G, D, G_ema, augment_pipe)` or
`dict(G_ema=...)`. Every network is a `torch_utils.persistence` object: the
global `torch_utils.persistence._reconstruct_persistent_obj` called with
`meta = dict(type='class', version, module_src, class_name, state)`, where
NVIDIA's loader `exec`s `module_src`. Here `meta` becomes a `PersistentObject`
(data: the source is kept as a string, never compiled), and `state` is walked
like a torch module's `__dict__` (`_parameters`, `_buffers`, `_modules`,
plain attributes). Tensors are `torch._utils._rebuild_tensor_v2` over
`torch.storage._load_from_bytes(<legacy torch.save bytes>)`; those bytes go
through the project's torch reader (`torch_format.load_torch_bytes`).

Every global resolves through a per-read allow-list (`_allowed`) of fresh
stand-ins that take data and return fresh values; anything else is refused
before it is called.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os

import numpy as np

from pulse_jax.checkpoints import CheckpointError, nvidia_pickle, stylegan2_layout, torch_format

KIND = "an NVIDIA StyleGAN2-ADA pickle"
_MAX_DEPTH = 12  # Generator.synthesis.b8.conv0.affine is depth 4
# The classes of NVIDIA's training/networks_stylegan3.py that its StyleGAN2 modules lack.
_STYLEGAN3_CLASSES = frozenset({"SynthesisInput"})
_STYLEGAN3_SOURCE_MARKERS = ("class SynthesisInput(", "filtered_lrelu")


@dataclasses.dataclass(frozen=True, slots=True)
class PersistentObject:
    """A `torch_utils.persistence` object as data: its class name, source text and state."""

    class_name: str
    version: int
    module_src: str  # never executed
    state: dict

    def __setstate__(self, state):
        raise ValueError("a persistent object is built twice")


@dataclasses.dataclass(frozen=True, slots=True)
class _DTypeSpec:
    """`numpy.dtype(spec, align, copy)` as data; its BUILD state sets only the byte order."""

    spec: str
    order: list  # one slot, filled by __setstate__: '<', '>', '|' or '='

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) >= 2 and state[1] in "<>|="):
            raise ValueError(f"unexpected numpy dtype state {state!r:.80}")
        if self.order:
            raise ValueError("a numpy dtype is built twice")
        self.order.append(state[1])


class _Call:
    """A fresh, immutable callable standing in for one allowed global (BUILD cannot change it)."""

    __slots__ = ("_function",)

    def __init__(self, function):
        object.__setattr__(self, "_function", function)

    def __setattr__(self, name, value):
        raise AttributeError("a stand-in global cannot be changed")

    def __call__(self, *args):
        return self._function(*args)


# numpy type codes a scalar in these pickles may carry (Python numbers pickle as themselves).
_SCALAR_CODES = frozenset({"f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "b1"})


def _dtype(spec, align=False, copy=False) -> _DTypeSpec:
    if not (isinstance(spec, str) and spec in _SCALAR_CODES):
        raise ValueError(f"numpy dtype {spec!r:.40} is not a plain number type")
    return _DTypeSpec(spec, [])


def _scalar(dtype, data=b"") -> np.generic:
    if not isinstance(dtype, _DTypeSpec) or not isinstance(data, bytes):
        raise ValueError("a numpy scalar is not (dtype, bytes)")
    order = dtype.order[0] if dtype.order and dtype.order[0] in "<>" else "<"
    element = np.dtype(dtype.spec).newbyteorder(order)
    if len(data) != element.itemsize:
        raise ValueError(f"a numpy {dtype.spec} scalar of {len(data)} bytes")
    return np.frombuffer(data, element, 1)[0].astype(element.newbyteorder("="))


def _allowed(path: str) -> dict:
    """(module, name) -> stand-in, made fresh for one read."""

    def reconstruct(meta) -> PersistentObject:
        if not isinstance(meta, dict):
            raise CheckpointError(path, f"a persistent object's meta is a {type(meta).__name__}")
        fields = {k: meta.get(k) for k in ("type", "version", "module_src", "class_name", "state")}
        if fields["type"] != "class":
            raise CheckpointError(
                path, f"a persistent object of type {fields['type']!r:.40}, expected 'class'"
            )
        if not (
            isinstance(fields["class_name"], str)
            and isinstance(fields["module_src"], str)
            and isinstance(fields["version"], int)
            and isinstance(fields["state"], dict)
        ):
            raise CheckpointError(path, "a persistent object's meta is malformed")
        return PersistentObject(
            fields["class_name"][:100], fields["version"], fields["module_src"], fields["state"]
        )

    def load_from_bytes(data):
        if not isinstance(data, bytes):
            raise CheckpointError(path, "torch.storage._load_from_bytes is given no bytes")
        return torch_format.load_torch_bytes(f"{path}: a tensor's storage", data)

    easy_dict = type("EasyDict", (dict,), {"__slots__": ()})  # fresh class: BUILD on it is local
    scalar = _Call(_scalar)
    return {
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _Call(reconstruct),
        ("torch._utils", "_rebuild_tensor_v2"): _Call(torch_format._rebuild_tensor_v2),
        ("torch._utils", "_rebuild_parameter"): _Call(torch_format._rebuild_parameter),
        ("torch._utils", "_rebuild_parameter_with_state"): _Call(
            torch_format._rebuild_parameter_with_state
        ),
        ("torch.storage", "_load_from_bytes"): _Call(load_from_bytes),
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): _Call(frozenset),
        ("dnnlib.util", "EasyDict"): easy_dict,
        ("numpy", "dtype"): _Call(_dtype),
        ("numpy.core.multiarray", "scalar"): scalar,  # numpy 1.x name
        ("numpy._core.multiarray", "scalar"): scalar,  # numpy 2.x name
    }


def _flatten(path, obj: PersistentObject, prefix: str, out: dict, modules: list, depth: int):
    """torch's `state_dict()` over the module tree: parameters, persistent buffers, children."""
    if depth > _MAX_DEPTH:
        raise CheckpointError(path, f"modules nest deeper than {_MAX_DEPTH} levels at {prefix!r}")
    modules.append((prefix.rstrip("."), obj))
    state = obj.state
    skip = state.get("_non_persistent_buffers_set") or frozenset()
    if not isinstance(skip, set | frozenset):
        raise CheckpointError(path, f"{prefix or 'the network'}: _non_persistent_buffers_set")
    for group in ("_parameters", "_buffers"):
        tensors = state.get(group, {})
        if not isinstance(tensors, dict):
            raise CheckpointError(path, f"{prefix or 'the network'}: {group} is not a dict")
        for name, value in tensors.items():
            if value is None or (group == "_buffers" and name in skip):
                continue
            if not (isinstance(name, str) and isinstance(value, np.ndarray)):
                raise CheckpointError(
                    path, f"{prefix}{name!s:.60} is a {type(value).__name__}, not a tensor"
                )
            out[prefix + name] = value
            if len(out) > stylegan2_layout.MAX_KEYS:
                raise CheckpointError(path, "the network holds too many tensors to be a generator")
    children = state.get("_modules", {})
    if not isinstance(children, dict):
        raise CheckpointError(path, f"{prefix or 'the network'}: _modules is not a dict")
    for name, child in children.items():
        if child is None:
            continue
        if not isinstance(child, PersistentObject):
            raise CheckpointError(
                path,
                f"module {prefix}{name!s:.60} is a {type(child).__name__}, not a "
                "torch_utils.persistence object",
            )
        _flatten(path, child, f"{prefix}{name}.", out, modules, depth + 1)


def _attribute(path, modules, class_name: str, attribute: str) -> set:
    """The distinct values of `attribute` over the modules of class `class_name` that set it."""
    values = set()
    for _, module in modules:
        if module.class_name == class_name and attribute in module.state:
            value = module.state[attribute]
            value = value.item() if isinstance(value, np.generic) else value
            if not (value is None or isinstance(value, bool | int | float | str)):
                raise CheckpointError(
                    path, f"{module.class_name}.{attribute} is a {type(value).__name__}"
                )
            values.add(value)
    return values


def _one(path, values: set, what: str, default):
    if len(values) > 1:
        raise CheckpointError(path, f"{what} differs between layers ({sorted(map(str, values))})")
    return next(iter(values)) if values else default


def _select(path, top, network: str) -> PersistentObject:
    if isinstance(top, PersistentObject):
        if network != "G_ema":
            raise CheckpointError(path, f"holds one bare network, not a dict with {network!r}")
        return top
    if not isinstance(top, dict):
        raise CheckpointError(path, f"holds a {type(top).__name__}, expected a dict of networks")
    names = [str(k)[:40] for k in list(top)[:10]]
    if network not in top:
        raise CheckpointError(path, f"has no network {network!r} (it holds {names})")
    net = top[network]
    if not isinstance(net, PersistentObject):
        raise CheckpointError(
            path, f"{network} is a {type(net).__name__}, not a torch_utils.persistence object"
        )
    return net


def _refuse_unsupported(path, net: PersistentObject, modules, network: str) -> None:
    classes = {m.class_name for _, m in modules}
    if classes & _STYLEGAN3_CLASSES or any(
        marker in m.module_src for _, m in modules[:1] for marker in _STYLEGAN3_SOURCE_MARKERS
    ):
        raise CheckpointError(
            path,
            f"{network} is a StyleGAN3 network (training.networks_stylegan3: "
            f"{', '.join(sorted(classes & _STYLEGAN3_CLASSES) or ['filtered_lrelu'])}); "
            "only StyleGAN2 generators are supported",
        )
    if net.class_name != "Generator":
        raise CheckpointError(path, f"{network} is a {net.class_name!r}, expected a 'Generator'")
    c_dim = net.state.get("c_dim", 0)
    embed = any(name == "mapping.embed" for name, _ in modules)
    if embed or (isinstance(c_dim, int | np.integer) and c_dim > 0):
        raise CheckpointError(
            path,
            f"{network} is class-conditional (c_dim = {c_dim}); only unconditional generators "
            "are supported",
        )
    other = sorted(map(str, _attribute(path, modules, "SynthesisBlock", "architecture") - {"skip"}))
    if other:
        raise CheckpointError(
            path, f"{network} has architecture {other[0]!r:.20}; only 'skip' is supported"
        )
    for class_name in ("SynthesisLayer", "FullyConnectedLayer"):
        for activation in _attribute(path, modules, class_name, "activation"):
            if activation not in ("lrelu", "linear"):
                raise CheckpointError(
                    path, f"{network} uses activation {activation!r:.20}; only 'lrelu' is supported"
                )


def read_ada_pickle(path: str | os.PathLike, *, network: str = "G_ema"):
    """Reads NVIDIA's StyleGAN2-ADA network pickle into the ADA layout, without running its code.

    Args:
      path: the `.pkl` (a training snapshot, or `dict(G_ema=...)` alone).
      network: "G_ema" (the long-term average generator, default) or "G".

    Returns:
      A `stylegan2_layout.StyleGAN2Checkpoint` of format "ada-pickle".

    Raises:
      CheckpointError: the file names a global outside the allow-list (nothing
        from it is called), is not a StyleGAN2 generator, is class-conditional
        or a StyleGAN3 network, or its tensors do not fit one configuration.
    """
    path = os.fspath(path)
    if network not in ("G_ema", "G"):
        raise CheckpointError(path, f"network {network!r:.40}: choose 'G_ema' or 'G'")
    top = nvidia_pickle._load(
        path,
        _allowed(path),
        KIND,
        "rosinality's .pt files are read by the same entry point (read_stylegan2)",
    )
    net = _select(path, top, network)
    state, modules = {}, []
    _flatten(path, net, "", state, modules, 0)
    _refuse_unsupported(path, net, modules, network)
    clamps = _attribute(path, modules, "SynthesisLayer", "conv_clamp")
    clamps |= _attribute(path, modules, "ToRGBLayer", "conv_clamp")
    conv_clamp = _one(path, clamps, "conv_clamp", None)
    mapping_layers = [m for name, m in modules if name.startswith("mapping.fc")]
    gains = {m.state.get("bias_gain", 0.01) for m in mapping_layers}
    if not all(isinstance(g, int | float) and not isinstance(g, bool) for g in gains):
        raise CheckpointError(path, "a mapping layer's bias_gain is not a number")
    lr = _one(path, gains, "lr_multiplier", 0.01)
    with open(path, "rb") as f:
        sha256 = hashlib.file_digest(f, "sha256").hexdigest()
    source = {
        "file": os.path.basename(path),
        "sha256": sha256,
        "format": "ada-pickle",
        "network": network,
        "networks": [str(k)[:40] for k in top] if isinstance(top, dict) else [network],
        "persistence_version": net.version,
        "module_src_sha256": hashlib.sha256(net.module_src.encode("utf-8", "replace")).hexdigest(),
        "init_kwargs": stylegan2_layout.plain(net.state.get("_init_kwargs")),
    }
    return stylegan2_layout.finish(
        path, "ada-pickle", state, conv_clamp=conv_clamp, lr_multiplier=lr, source=source
    )
