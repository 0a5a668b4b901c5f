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
through the project's torch reader (`torch_format.read_payload`) inside the
same read.

The pickle is decoded by the shared bounded interpreter (`safe_pickle`) with
this format's policy (`_policy`): the torch tensor globals, NVIDIA's numpy and
EasyDict stand-ins, the persistence reconstructor and `builtins.set`, each a
pure function building a fresh value; anything else is refused before it is
called. BUILD acts only on a numpy dtype, EasyDict or OrderedDict the read just
made; every array is checked against its storage and counted against the
read's byte budget (`Limits.expansion` x the file's size).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os

import numpy as np

from pulse_jax.checkpoints import (
    CheckpointError,
    FileBytes,
    read_regular,
    refuses,
    stylegan2_layout,
    tf_pickle,
    torch_format,
)
from pulse_jax.checkpoints.safe_pickle import (
    Global,
    Limits,
    Policy,
    Refusal,
    Session,
    check_keys,
    describe,
)
from pulse_jax.checkpoints.stylegan2_layout import check_name

KIND = "an NVIDIA StyleGAN2-ADA pickle"
_MAX_DEPTH = 12  # Generator.synthesis.b8.conv0.affine is depth 4
# The classes of NVIDIA's training/networks_stylegan3.py that its StyleGAN2 modules lack.
_STYLEGAN3_CLASSES = frozenset({"SynthesisInput"})
_STYLEGAN3_SOURCE_MARKERS = ("class SynthesisInput(", "filtered_lrelu")
# What the tensors of these pickles name of torch's globals (torch 1.7-1.9 and current).
_TORCH_GLOBALS = (
    "collections.OrderedDict",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
)
# What their numpy scalars (in training_set_kwargs, augment_pipe) and EasyDicts name, in
# numpy 1 and numpy 2 spelling.
_NVIDIA_GLOBALS = (
    "dnnlib.util.EasyDict",
    "numpy.dtype",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
)


@dataclasses.dataclass(frozen=True, slots=True)
class PersistentObject:
    """A `torch_utils.persistence` object as data: its class name, source text and state."""

    class_name: str
    version: int
    module_src: str  # never executed
    state: dict


def _reconstruct(meta) -> PersistentObject:
    """`torch_utils.persistence._reconstruct_persistent_obj(meta)`, as data."""
    if not isinstance(meta, dict):
        raise Refusal(f"has a persistent object whose meta is {describe(meta)}")
    fields = {k: meta.get(k) for k in ("type", "version", "module_src", "class_name", "state")}
    if fields["type"] != "class":
        raise Refusal(
            f"has a persistent object of type {describe(fields['type'])}, expected 'class'"
        )
    if not (
        isinstance(fields["class_name"], str)
        and isinstance(fields["module_src"], str)
        and type(fields["version"]) is int
        and isinstance(fields["state"], dict)
    ):
        raise Refusal("has a persistent object whose meta is malformed")
    return PersistentObject(
        fields["class_name"][:100], fields["version"], fields["module_src"], fields["state"]
    )


def _set(items=()) -> set:
    """`builtins.set(list)` (how protocol 2 pickles a set): a set of strings or numbers."""
    if not isinstance(items, list | tuple):
        raise Refusal(f"builds a set from {describe(items)}, not a list")
    for item in items:
        if not isinstance(item, str | int | float | bool | bytes | type(None)):
            raise Refusal(f"has a set item that is {describe(item)}, not a string or number")
    check_keys(items)
    return set(items)


def _policy(session: Session) -> Policy:
    """The globals of an ADA pickle, each building fresh values within `session`."""
    tensors = torch_format.tensor_globals(session)
    numpy_globals, numpy_build = tf_pickle.stand_ins(session)

    def load_from_bytes(data):
        """`torch.storage._load_from_bytes(b)`: a legacy `torch.save` of one storage, read by
        the torch reader inside this read (same budget, same deadline)."""
        if not isinstance(data, bytes):
            raise Refusal(f"gives torch.storage._load_from_bytes {describe(data)}, not bytes")
        try:
            return torch_format.read_payload(session, data)
        except CheckpointError as e:
            raise Refusal(
                f"has a tensor storage (torch.storage._load_from_bytes) that {e.reason}"
            ) from None

    def build(obj, state):
        if isinstance(obj, collections.OrderedDict):
            return torch_format.build_state(obj, state)
        return numpy_build(obj, state)  # numpy dtypes, EasyDicts; anything else is refused

    allowed = {name: tensors[name] for name in _TORCH_GLOBALS}
    allowed |= {name: numpy_globals[name] for name in _NVIDIA_GLOBALS}
    allowed |= {
        g.name: g
        for g in (
            Global("torch_utils.persistence._reconstruct_persistent_obj", call=_reconstruct),
            Global("torch.storage._load_from_bytes", call=load_from_bytes),
            Global("builtins.set", call=_set),
        )
    }
    return Policy(
        allowed, tf_pickle.refusal(KIND, allowed), build=build, encoding="latin1", sets=True
    )


def read_tree(
    path: str | os.PathLike, *, limits: Limits | None = None, file: FileBytes | None = None
) -> object:
    """The data view of an ADA pickle: its top-level dict with `PersistentObject`s, numpy
    arrays, strings and numbers in place of networks, tensors and attributes.

    Raises:
      CheckpointError: a global outside the allow-list (nothing is called), a tensor
        outside its storage, the limits exceeded, a truncated or corrupt pickle.
    """
    return tf_pickle.load_pickle(
        os.fspath(path),
        limits,
        policy=_policy,
        kind=KIND,
        zip_hint="rosinality's .pt files are read by the same entry point (read_stylegan2)",
        file=file,
    )


def _flatten(path, obj: PersistentObject, prefix: str, out: dict, modules: list, depth: int):
    """torch's `state_dict()` over the module tree: parameters, persistent buffers, children."""
    if depth > _MAX_DEPTH:
        raise CheckpointError(path, f"modules nest deeper than {_MAX_DEPTH} levels at {prefix!r}")
    if len(modules) >= stylegan2_layout.MAX_KEYS:
        raise CheckpointError(path, "the network holds too many modules to be a generator")
    modules.append((prefix.rstrip("."), obj))
    where = prefix.rstrip(".") or "the network"
    state = obj.state
    skip = state.get("_non_persistent_buffers_set") or frozenset()
    if not isinstance(skip, set | frozenset):
        raise CheckpointError(path, f"{prefix or 'the network'}: _non_persistent_buffers_set")
    for group in ("_parameters", "_buffers"):
        tensors = state.get(group, {})
        if not isinstance(tensors, dict):
            raise CheckpointError(path, f"{prefix or 'the network'}: {group} is not a dict")
        for name, value in tensors.items():
            check_name(path, name, where, ".")
            if value is None or (group == "_buffers" and name in skip):
                continue
            if not isinstance(value, np.ndarray):
                raise CheckpointError(
                    path, f"{prefix}{name!s:.60} is a {type(value).__name__}, not a tensor"
                )
            if prefix + name in out:
                raise CheckpointError(path, f"{prefix}{name} appears twice in the network")
            out[prefix + name] = value
            if len(out) > stylegan2_layout.MAX_KEYS:
                raise CheckpointError(path, "the network holds too many tensors to be a generator")
    children = state.get("_modules", {})
    if not isinstance(children, dict):
        raise CheckpointError(path, f"{prefix or 'the network'}: _modules is not a dict")
    for name, child in children.items():
        check_name(path, name, where, ".")
        if name in state.get("_parameters", {}) or name in state.get("_buffers", {}):
            raise CheckpointError(path, f"{where} has a module and a tensor named {name!r}")
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
    names = stylegan2_layout.entry_names(path, top, "a dict of networks", 10)
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
            f"{network} is class-conditional (c_dim = {describe(c_dim)}); only unconditional "
            "generators "
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


@refuses
def read_ada_pickle(
    path: str | os.PathLike,
    *,
    network: str = "G_ema",
    limits: Limits | None = None,
    file: FileBytes | None = None,
):
    """Reads NVIDIA's StyleGAN2-ADA network pickle into the ADA layout, without running its code.

    Args:
      path: the `.pkl` (a training snapshot, or `dict(G_ema=...)` alone).
      network: "G_ema" (the long-term average generator, default) or "G".
      limits: bounds of the read (`safe_pickle.Limits`; the defaults fit honest files).
      file: its bytes when the caller read them already (`read_regular`).

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
    file = file or read_regular(path)
    top = read_tree(path, limits=limits, file=file)
    net = _select(path, top, network)
    state, modules = {}, []
    _flatten(path, net, "", state, modules, 0)
    _refuse_unsupported(path, net, modules, network)
    clamps = _attribute(path, modules, "SynthesisLayer", "conv_clamp")
    clamps |= _attribute(path, modules, "ToRGBLayer", "conv_clamp")
    conv_clamp = _one(path, clamps, "conv_clamp", None)
    mapping_layers = [m for name, m in modules if name.startswith("mapping.fc")]
    gains = [m.state.get("bias_gain", 0.01) for m in mapping_layers]
    if not all(isinstance(g, int | float) and not isinstance(g, bool) for g in gains):
        raise CheckpointError(path, "a mapping layer's bias_gain is not a number")
    gains = set(gains)
    lr = _one(path, gains, "lr_multiplier", 0.01)
    sha256 = file.sha256
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
