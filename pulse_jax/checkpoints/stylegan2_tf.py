"""Reading NVIDIA's original TensorFlow StyleGAN2 pickles (`stylegan2-ffhq-config-f.pkl`).

The pickle is the tuple `(G, D, Gs)` of `dnnlib.tflib.network.Network`
objects, as for StyleGAN (v1), and is decoded with the v1 reader's policy
(`tf_pickle.load_pickle`, on the shared bounded interpreter): its
`build_module_src` is never run. StyleGAN2
networks have state version 4 or later. The variables are renamed to NVIDIA
StyleGAN2-ADA's state-dict layout with the rules of NVIDIA's `legacy.py`
(`convert_tf_generator`, NVlabs/stylegan2-ada-pytorch):
  - dense `[in, out]` -> `[out, in]`; conv `[kh, kw, in, out]` -> `[out, in, kh, kw]`;
    `Conv0_up/weight` is flipped in both spatial axes first (TF's transposed conv
    runs the kernel the other way round from `conv2d_resample`);
  - `mod_bias + 1` (TF adds the 1 at run time, ADA stores it);
  - `4x4/Const/const[0]`, `noise{i}[0, 0]`, `dlatent_avg` -> `mapping.w_avg`;
  - noise `i` feeds `b4.conv1` (0), `b{r}.conv0` (2 log2 r - 5), `b{r}.conv1` (2 log2 r - 4).
"""

from __future__ import annotations

import os
import re

import numpy as np

from pulse_jax.checkpoints import (
    CheckpointError,
    FileBytes,
    read_regular,
    refuses,
    stylegan2_layout,
    tf_pickle,
)
from pulse_jax.checkpoints.safe_pickle import Limits, describe

KIND = "NVIDIA's TensorFlow StyleGAN2 pickle"
# legacy.py's defaults for kwargs a pickle does not state.
_DEFAULT_KWARGS = {"mapping_lrmul": 0.01, "conv_clamp": None, "label_size": 0}


def _name(state) -> str:
    """A network's name from its state, bounded, for a message."""
    name = state.get("name") if isinstance(state, dict) else None
    return repr(name[:40]) if isinstance(name, str) else describe(name)


def _select(path, top, network: str) -> tuple[dict, list]:
    """The state of Gs (index 2; `network="G_ema"`) or G (index 0) of `(G, D, Gs)`."""
    index, name = {"G_ema": (2, "Gs"), "G": (0, "G")}[network]
    if not (isinstance(top, tuple) and len(top) == 3):
        raise CheckpointError(path, f"holds a {type(top).__name__}, expected the (G, D, Gs) tuple")
    names = [
        item.state["name"][:40]
        if isinstance(item, tf_pickle.NetworkStub)
        and isinstance(item.state, dict)
        and isinstance(item.state.get("name"), str)
        else None
        for item in top
    ]
    net = top[index]
    if not isinstance(net, tf_pickle.NetworkStub):
        raise CheckpointError(path, f"index {index} is a {type(net).__name__}, not a Network")
    state = net.state
    if not isinstance(state, dict):
        raise CheckpointError(path, f"index {index} is a Network whose state was never set")
    if not isinstance(state.get("name"), str) or state["name"] != name:
        raise CheckpointError(path, f"holds {names} ({_name(state)} at {index}), expected {name!r}")
    version = state.get("version")
    if type(version) is not int or version < 4:
        raise CheckpointError(
            path,
            f"{name} is a network of version {describe(version)}: a StyleGAN (v1) pickle, read "
            "by `convert nvidia`, not StyleGAN2",
        )
    return state, names


def _collect(path, state: dict) -> dict:
    """legacy.py's `_collect_tf_params`: every variable, prefixed by its component's key.

    A name that two variables reach (a variable `synthesis/x` of Gs beside the variable
    `x` of its component `synthesis`) is refused: which one TF would use is ambiguous."""
    params: dict = {}
    _collect_into(path, params, "", state, 0)
    return params


def _collect_into(path, params: dict, prefix: str, net_state: dict, depth: int) -> None:
    # A function of the module, not a closure calling itself: a closure that refers to
    # itself is a reference cycle, which would keep `params` alive after a failed read.
    if depth > 4:
        raise CheckpointError(path, "networks nest deeper than 4 levels")
    for key, kind in (("variables", list), ("components", dict)):
        if not isinstance(net_state.get(key), kind):
            raise CheckpointError(path, f"{prefix or 'Gs'}: its state has no {key!r}")
    for name, value in tf_pickle.variables(path, net_state, prefix or "Gs").items():
        stylegan2_layout.check_name(path, name, prefix or "Gs", "\0")
        if prefix + name in params:
            raise CheckpointError(path, f"the variable {prefix}{name} appears twice")
        params[prefix + name] = value
        if len(params) > stylegan2_layout.MAX_KEYS:
            raise CheckpointError(path, "the network holds too many variables to be a generator")
    for name, component in net_state["components"].items():
        stylegan2_layout.check_name(path, name, prefix or "Gs", "/")
        if not (isinstance(component, tf_pickle.NetworkStub) and isinstance(component.state, dict)):
            raise CheckpointError(path, f"component {describe(name)} is not a Network")
        _collect_into(path, params, f"{prefix}{name}/", component.state, depth + 1)


def _kwarg(path, kwargs: dict, name: str, kind, default):
    """A static kwarg of the pickle, `default` when absent or None; refused unless of `kind`
    (a number, a string, ...: never an array whose truth value or comparison is ambiguous)."""
    value = kwargs.get(name)
    if value is None:
        return default
    if isinstance(value, np.generic):
        value = value.item()
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise CheckpointError(path, f"static_kwargs {name} is {describe(value)}")
    return value


def _refuse_unsupported(path, params: dict, kwargs: dict) -> None:
    label_size = _kwarg(path, kwargs, "label_size", int, 0)
    if label_size or any("LabelEmbed" in n or "LabelConcat" in n for n in params):
        raise CheckpointError(
            path,
            f"the generator is class-conditional (label_size = {describe(label_size)}); only "
            "unconditional generators are supported",
        )
    architecture = _kwarg(path, kwargs, "architecture", str, "skip")
    if any(re.fullmatch(r"synthesis/ToRGB_lod\d+/.+", n) for n in params):
        architecture = "orig"
    if any(re.fullmatch(r"synthesis/\d+x\d+/Skip/.+", n) for n in params):
        architecture = "resnet"
    if architecture != "skip":
        raise CheckpointError(
            path,
            f"the generator has architecture {describe(architecture)}; only 'skip' is supported",
        )


def convert_variables(
    path, params: dict, resample_kernel=(1, 3, 3, 1)
) -> tuple[dict[str, np.ndarray], list[str]]:
    """TF variable names (prefixed `mapping/`, `synthesis/`) -> (ADA state dict, unused names)."""
    used = set()

    def take(name: str) -> np.ndarray:
        if name not in params:
            raise CheckpointError(path, f"the generator has no TF variable {name!r}")
        used.add(name)
        return np.asarray(params[name], np.float32)

    def conv(name: str, flip: bool = False) -> np.ndarray:
        w = take(name)
        if w.ndim != 4:
            raise CheckpointError(path, f"{name} has shape {w.shape}, expected [k, k, in, out]")
        return np.transpose(w[::-1, ::-1] if flip else w, (3, 2, 0, 1))

    def dense(name: str) -> np.ndarray:
        w = take(name)
        if w.ndim != 2:
            raise CheckpointError(path, f"{name} has shape {w.shape}, expected [in, out]")
        return w.T

    def noise(i: int) -> np.ndarray:
        n = take(f"synthesis/noise{i}")
        if n.ndim != 4 or n.shape[:2] != (1, 1):
            raise CheckpointError(path, f"synthesis/noise{i} has shape {n.shape}")
        return n[0, 0]

    def layer(ada: str, tf: str, noise_index: int, up: bool) -> dict:
        return {
            f"{ada}.weight": conv(f"{tf}/weight", flip=up),
            f"{ada}.noise_strength": take(f"{tf}/noise_strength").reshape(()),
            f"{ada}.bias": take(f"{tf}/bias"),
            f"{ada}.resample_filter": filt,
            f"{ada}.noise_const": noise(noise_index),
            f"{ada}.affine.weight": dense(f"{tf}/mod_weight"),
            f"{ada}.affine.bias": take(f"{tf}/mod_bias") + np.float32(1),
        }

    def torgb(ada: str, tf: str) -> dict:
        return {
            f"{ada}.weight": conv(f"{tf}/weight"),
            f"{ada}.bias": take(f"{tf}/bias"),
            f"{ada}.affine.weight": dense(f"{tf}/mod_weight"),
            f"{ada}.affine.bias": take(f"{tf}/mod_bias") + np.float32(1),
        }

    filt = stylegan2_layout.resample_filter(resample_kernel)
    sizes = {
        int(m.group(1)) for n in params if (m := re.fullmatch(r"synthesis/(\d{1,5})x\1/.+", n))
    }
    if not sizes:
        raise CheckpointError(path, "the synthesis network has no '<r>x<r>/...' variables")
    const = take("synthesis/4x4/Const/const")
    if const.ndim != 4 or const.shape[0] != 1:
        raise CheckpointError(path, f"synthesis/4x4/Const/const has shape {const.shape}")
    state = {"synthesis.b4.const": const[0], "synthesis.b4.resample_filter": filt}
    state |= layer("synthesis.b4.conv1", "synthesis/4x4/Conv", 0, up=False)
    state |= torgb("synthesis.b4.torgb", "synthesis/4x4/ToRGB")
    r = 8
    while r <= max(sizes):
        b, s, log2 = f"synthesis.b{r}", f"synthesis/{r}x{r}", r.bit_length() - 1
        state[f"{b}.resample_filter"] = filt
        state |= layer(f"{b}.conv0", f"{s}/Conv0_up", 2 * log2 - 5, up=True)
        state |= layer(f"{b}.conv1", f"{s}/Conv1", 2 * log2 - 4, up=False)
        state |= torgb(f"{b}.torgb", f"{s}/ToRGB")
        r *= 2
    i = 0
    while f"mapping/Dense{i}/weight" in params:
        state[f"mapping.fc{i}.weight"] = dense(f"mapping/Dense{i}/weight")
        state[f"mapping.fc{i}.bias"] = take(f"mapping/Dense{i}/bias")
        i += 1
    state["mapping.w_avg"] = take("dlatent_avg")
    return state, sorted(set(params) - used)


@refuses
def read_tf_pickle(
    path: str | os.PathLike,
    *,
    network: str = "G_ema",
    limits: Limits | None = None,
    file: FileBytes | None = None,
):
    """Reads NVIDIA's TF StyleGAN2 pickle into the ADA layout, without TensorFlow or its code.

    Args:
      path: the `.pkl`, e.g. `stylegan2-ffhq-config-f.pkl`.
      network: "G_ema" (`Gs`, the long-term average, index 2; default) or "G" (index 0).
      limits: bounds of the read (`safe_pickle.Limits`; the defaults fit honest files).
      file: its bytes when the caller read them already (`read_regular`).

    Returns:
      A `stylegan2_layout.StyleGAN2Checkpoint` of format "tf-pickle"; the TF
      variables left unused (`lod`, ...) are listed in `source["dropped"]`.

    Raises:
      CheckpointError: the file names a global outside the allow-list, is a
        StyleGAN (v1) pickle, class-conditional, not the "skip" architecture,
        or its variables do not fit one StyleGAN2 configuration.
    """
    path = os.fspath(path)
    if network not in ("G_ema", "G"):
        raise CheckpointError(path, f"network {network!r:.40}: choose 'G_ema' or 'G'")
    file = file or read_regular(path)
    top = tf_pickle.load_pickle(
        path, limits, kind=KIND, zip_hint="read it with read_stylegan2", file=file
    )
    state, names = _select(path, top, network)
    static = state.get("static_kwargs")
    kwargs = _DEFAULT_KWARGS | (dict(static) if isinstance(static, dict) else {})
    params = _collect(path, state)
    _refuse_unsupported(path, params, kwargs)
    resample_kernel = _kwarg(path, kwargs, "resample_kernel", list | tuple, None) or (1, 3, 3, 1)
    if not (
        isinstance(resample_kernel, list | tuple)
        and 1 <= len(resample_kernel) <= 16
        and all(isinstance(t, int | float) and not isinstance(t, bool) for t in resample_kernel)
        and sum(resample_kernel) > 0
    ):
        raise CheckpointError(path, f"resample_kernel is {describe(resample_kernel)}")
    ada_state, dropped = convert_variables(path, params, tuple(resample_kernel))
    sha256 = file.sha256
    source = {
        "file": os.path.basename(path),
        "sha256": sha256,
        "format": "tf-pickle",
        "network": names[2 if network == "G_ema" else 0],
        "networks": names,
        "version": state.get("version"),
        "static_kwargs": stylegan2_layout.plain(static),
        "dropped": dropped[:64],
    }
    return stylegan2_layout.finish(
        path,
        "tf-pickle",
        ada_state,
        conv_clamp=_kwarg(path, kwargs, "conv_clamp", int | float, None),
        lr_multiplier=_kwarg(path, kwargs, "mapping_lrmul", int | float, None) or 0.01,
        source=source,
    )
