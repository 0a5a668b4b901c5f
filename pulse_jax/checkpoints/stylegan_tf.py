"""NVIDIA's official StyleGAN (v1) TensorFlow pickle -> PULSE's state-dict layout.

`karras2019stylegan-ffhq-1024x1024.pkl` is a protocol-4 pickle of the tuple `(G, D, Gs)`
of networks (`tf_pickle`: read by the bounded interpreter, nothing run). The weights live
in `Gs.components['synthesis']` and `Gs.components['mapping']`. The variables are renamed
and transposed into PULSE's PyTorch state-dict layout (keys like
`blocks.8x8.conv0_up.weight`, conv `[out, in, kh, kw]`, dense `[out, in]`), so the result
can go through the same converter as PULSE's own `synthesis.pt` / `mapping.pt`.
"""

from __future__ import annotations

import os
import re

import numpy as np

from pulse_jax.checkpoints import CheckpointError, FileBytes, refuses
from pulse_jax.checkpoints.safe_pickle import Limits, describe
from pulse_jax.checkpoints.tf_pickle import NetworkStub, cut, load_pickle, short, variables
from pulse_jax.checkpoints.weights_file import MAX_RESOLUTION


def _network(path: str, obj: object, where: str) -> dict:
    if not isinstance(obj, NetworkStub):
        raise CheckpointError(
            path, f"{where} is a {type(obj).__name__}, expected a dnnlib.tflib.network.Network"
        )
    state = obj.state
    if not isinstance(state, dict):
        raise CheckpointError(path, f"{where} is a Network whose state was never set")
    for key, kind in (("name", str), ("variables", list), ("components", dict)):
        if not isinstance(state.get(key), kind):
            raise CheckpointError(path, f"{where}: its state has no {key!r} {kind.__name__}")
    version = state.get("version")
    if isinstance(version, int) and version >= 4:
        raise CheckpointError(
            path,
            f"{where} ({short(state['name'])}) is a network of version {version} (StyleGAN2 or "
            "later); only StyleGAN (v1) pickles are supported",
        )
    return state


def _select_gs(path: str, top: object) -> tuple[dict, list]:
    """Returns the state of `Gs` (index 2 of the `(G, D, Gs)` tuple) and the names in the tuple."""
    expected = "expected the (G, D, Gs) tuple of NVIDIA's StyleGAN pickle, with 'Gs' at index 2"
    if isinstance(top, NetworkStub):
        name = top.state.get("name") if isinstance(top.state, dict) else None
        raise CheckpointError(path, f"holds a single network {short(name)}, {expected}")
    if not isinstance(top, tuple):
        if isinstance(top, int) and top == 0x1950A86A20F9469CFC6C:
            raise CheckpointError(
                path, "this is a legacy PyTorch checkpoint; convert it with `convert pulse`"
            )
        raise CheckpointError(path, f"holds a {type(top).__name__}, {expected}")
    names = [
        item.state.get("name")
        if isinstance(item, NetworkStub) and isinstance(item.state, dict)
        else type(item).__name__
        for item in top[:4]
    ]
    if len(top) != 3:
        shown = ", ".join(short(n) for n in names)
        raise CheckpointError(path, f"holds a tuple of {len(top)} objects [{shown}], {expected}")
    gs = _network(path, top[2], "index 2")
    if gs["name"] != "Gs":
        # G has exactly Gs's variable names: taking it would silently give the
        # non-averaged generator.
        raise CheckpointError(
            path,
            f"holds {short(gs['name'])} at index 2 (networks "
            f"{', '.join(short(n) for n in names)}), expected 'Gs'",
        )
    return gs, names


# Transforms from TF's stored layouts to PULSE's torch layouts.
def _conv(w):  # HWIO [kh, kw, in, out] -> OIHW [out, in, kh, kw]
    return np.transpose(w, (3, 2, 0, 1))


def _dense(w):  # [in, out] -> [out, in]
    return np.transpose(w)


def _same(w):
    return w


_SYNTHESIS_NAME = re.compile(r"(\d{1,6})x(\d{1,6})/(Const|Conv|Conv0_up|Conv1)/.+")


def _synthesis_table(resolution: int) -> list[tuple[str, str | None, object, int]]:
    """(PULSE key, TF name or None for the blur buffer, transform, TF rank) in PULSE's order."""
    table: list[tuple[str, str | None, object, int]] = [
        ("torgb.weight", "ToRGB_lod0/weight", _conv, 4),
        ("torgb.bias", "ToRGB_lod0/bias", _same, 1),
    ]

    def epilogue(block: str, epi: str, tf_layer: str):
        return [
            (f"{block}.{epi}.noise.weight", f"{tf_layer}/Noise/weight", _same, 1),
            (f"{block}.{epi}.style_mod.lin.weight", f"{tf_layer}/StyleMod/weight", _dense, 2),
            (f"{block}.{epi}.style_mod.lin.bias", f"{tf_layer}/StyleMod/bias", _same, 1),
        ]

    res = 4
    while res <= resolution:
        block, scope = f"blocks.{res}x{res}", f"{res}x{res}"
        if res == 4:
            table += [
                (f"{block}.const", f"{scope}/Const/const", _same, 4),
                (f"{block}.bias", f"{scope}/Const/bias", _same, 1),
            ]
            table += epilogue(block, "epi1", f"{scope}/Const")
            conv, tf_conv = "conv", f"{scope}/Conv"
        else:
            table += [
                (f"{block}.conv0_up.weight", f"{scope}/Conv0_up/weight", _conv, 4),
                (f"{block}.conv0_up.bias", f"{scope}/Conv0_up/bias", _same, 1),
                (f"{block}.conv0_up.intermediate.kernel", None, None, 4),
            ]
            table += epilogue(block, "epi1", f"{scope}/Conv0_up")
            conv, tf_conv = "conv1", f"{scope}/Conv1"
        table += [
            (f"{block}.{conv}.weight", f"{tf_conv}/weight", _conv, 4),
            (f"{block}.{conv}.bias", f"{tf_conv}/bias", _same, 1),
        ]
        table += epilogue(block, "epi2", tf_conv)
        res *= 2
    return table


def _blur_kernel() -> np.ndarray:
    """PULSE's `BlurLayer` buffer: [1,2,1] x [1,2,1] / 16, shape [1, 1, 3, 3], not a TF variable."""
    k = np.array([1.0, 2.0, 1.0], np.float32)
    k = k[:, None] * k[None, :]
    return (k / k.sum())[None, None]


def _resolution(path: str, names) -> int:
    sizes = set()
    for name in names:
        m = _SYNTHESIS_NAME.fullmatch(name)
        if m:
            h, w = int(m.group(1)), int(m.group(2))
            if h != w:
                raise CheckpointError(path, f"synthesis variable {short(name)} is not square")
            sizes.add(h)
    if not sizes:
        raise CheckpointError(path, "Gs's synthesis network has no '<res>x<res>/...' variables")
    resolution = max(sizes)
    if resolution > MAX_RESOLUTION:
        raise CheckpointError(
            path, f"synthesis blocks claim {resolution} px, above the {MAX_RESOLUTION} px limit"
        )
    expected = {2**k for k in range(2, resolution.bit_length())}
    if resolution & (resolution - 1) or sizes != expected:
        raise CheckpointError(
            path,
            f"synthesis blocks {sorted(sizes)} are not the powers of two 4..{resolution}",
        )
    return resolution


def _convert_synthesis(path: str, variables: dict) -> tuple[dict[str, np.ndarray], dict]:
    resolution = _resolution(path, variables)
    lod = np.ravel(variables.get("lod", 0.0))
    if lod.shape != (1,) or lod[0] != 0.0:
        if lod.size > 4:
            raise CheckpointError(path, f"G_synthesis/lod has {lod.size} values, expected one")
        raise CheckpointError(
            path,
            f"G_synthesis/lod is {lod.tolist()}, expected 0.0 (a network caught mid progressive "
            "growing blends resolutions, which PULSE's generator does not)",
        )
    table = _synthesis_table(resolution)
    wanted = {tf for _, tf, _, _ in table if tf is not None}
    dropped = sorted(
        n for n in variables if n == "lod" or re.fullmatch(r"noise\d+|ToRGB_lod[1-9]\d*/.+", n)
    )
    missing = sorted(wanted - set(variables))
    unexpected = sorted(set(variables) - wanted - set(dropped))
    if missing or unexpected:
        raise CheckpointError(
            path,
            f"Gs's synthesis network does not match StyleGAN (v1) at {resolution} px: "
            f"missing {cut(missing)}, unexpected {cut(unexpected)}",
        )
    state_dict = {}
    for key, tf, transform, rank in table:
        if tf is None:
            state_dict[key] = _blur_kernel()
            continue
        value = np.asarray(variables[tf])
        if value.ndim != rank:
            raise CheckpointError(
                path, f"G_synthesis/{tf} has shape {value.shape}, expected {rank} dimensions"
            )
        state_dict[key] = np.ascontiguousarray(transform(value), dtype=np.float32)
    channels = _check_synthesis_shapes(path, state_dict, resolution)
    return state_dict, {"resolution": resolution, "channels": channels, "dropped": dropped}


def _check_synthesis_shapes(path: str, sd: dict, resolution: int) -> dict[int, int]:
    """Checks every shape against the channel counts the biases imply; returns them."""
    dlatent_size = sd["blocks.4x4.epi1.style_mod.lin.weight"].shape[1]
    channels, previous, expected = {}, None, {}
    res = 4
    while res <= resolution:
        b = f"blocks.{res}x{res}"
        first = f"{b}.bias" if res == 4 else f"{b}.conv0_up.bias"
        c = sd[first].shape[0]
        channels[res] = c
        for e in ("epi1", "epi2"):
            expected[f"{b}.{e}.noise.weight"] = (c,)
            expected[f"{b}.{e}.style_mod.lin.weight"] = (2 * c, dlatent_size)
            expected[f"{b}.{e}.style_mod.lin.bias"] = (2 * c,)
        if res == 4:
            expected[f"{b}.const"] = (1, c, 4, 4)
            expected[f"{b}.conv.weight"] = (c, c, 3, 3)
            expected[f"{b}.conv.bias"] = (c,)
        else:
            expected[f"{b}.conv0_up.weight"] = (c, previous, 3, 3)
            expected[f"{b}.conv1.weight"] = (c, c, 3, 3)
            expected[f"{b}.conv1.bias"] = (c,)
        previous = c
        res *= 2
    expected["torgb.weight"] = (sd["torgb.bias"].shape[0], previous, 1, 1)
    for key, shape in expected.items():
        if sd[key].shape != shape:
            raise CheckpointError(
                path, f"synthesis {key} (PULSE layout) has shape {sd[key].shape}, expected {shape}"
            )
    return channels


def _convert_mapping(path: str, variables: dict) -> tuple[dict[str, np.ndarray], dict]:
    if any(n.startswith("LabelConcat/") for n in variables):
        raise CheckpointError(path, "the mapping network is class-conditional; not supported")
    names = {n for n in variables if n != "lod"}
    count = len({n.split("/")[0] for n in names})
    wanted = {f"Dense{i}/{p}" for i in range(count) for p in ("weight", "bias")}
    if not names or names != wanted:
        raise CheckpointError(
            path,
            f"Gs's mapping network is not Dense0..Dense{count - 1}: missing "
            f"{cut(sorted(wanted - names))}, unexpected {cut(sorted(names - wanted))}",
        )
    state_dict, width = {}, None
    for i in range(count):
        w = np.asarray(variables[f"Dense{i}/weight"])
        b = np.asarray(variables[f"Dense{i}/bias"])
        if w.ndim != 2 or b.shape != (w.shape[1],) or (width is not None and w.shape[0] != width):
            raise CheckpointError(
                path, f"G_mapping/Dense{i}: weight {w.shape} and bias {b.shape} do not chain"
            )
        width = w.shape[1]
        state_dict[f"dense{i}.weight"] = np.ascontiguousarray(_dense(w), dtype=np.float32)
        state_dict[f"dense{i}.bias"] = np.ascontiguousarray(b, dtype=np.float32)
    return state_dict, {"mapping_layers": count, "dlatent_size": width}


def _plain(value):
    """A JSON-friendly copy of a static_kwargs value (numpy scalars become Python numbers)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return describe(value)


@refuses
def read_nvidia_pickle(
    path: str | os.PathLike, *, limits: Limits | None = None, file: FileBytes | None = None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict]:
    """Reads NVIDIA's StyleGAN (v1) pickle into PULSE-format state dicts, without running it.

    Takes `Gs` (the long-term average generator, index 2 of the pickled
    `(G, D, Gs)` tuple), renames its variables to PULSE's PyTorch keys and
    transposes them to torch layouts, exactly as PULSE's converted
    `synthesis.pt` / `mapping.pt` hold them (including the 3x3 blur buffers
    `blocks.{R}x{R}.conv0_up.intermediate.kernel`). The progressive-growing
    leftovers (`lod`, `ToRGB_lod1..`), the fixed noise inputs (`noise0..`) and
    `dlatent_avg` are dropped. Any resolution works; it is read from the
    `<res>x<res>/...` variable names.

    Args:
      path: the `.pkl` file, e.g. `karras2019stylegan-ffhq-1024x1024.pkl`.
      limits: bounds of the read (`safe_pickle.Limits`; the defaults fit honest files).
      file: its bytes when the caller read them already (`read_regular`).

    Returns:
      `(synthesis_state_dict, mapping_state_dict, info)`: float32 numpy arrays
      keyed like PULSE's `G_synthesis().state_dict()` and
      `G_mapping().state_dict()`; `info` is a JSON-friendly dict with
      `resolution`, `num_layers`, `dlatent_size`, `mapping_layers`,
      `channels` (per resolution), `networks` (names in the tuple),
      `build_func_names`, `static_kwargs` (per network) and `dropped` (TF
      names of the synthesis variables left out).

    Raises:
      CheckpointError: the file is unreadable, truncated, not the `(G, D, Gs)`
        tuple, not StyleGAN v1, or references any global outside the allow-list
        (`ALLOWED_GLOBALS`), in which case nothing from it was executed.
    """
    path = os.fspath(path)
    top = load_pickle(path, limits, file=file)
    gs, names = _select_gs(path, top)
    subnets = _subnetworks(path, gs)
    synthesis_sd, synthesis_info = _convert_synthesis(
        path, variables(path, subnets["synthesis"], "G_synthesis")
    )
    mapping_sd, mapping_info = _convert_mapping(
        path, variables(path, subnets["mapping"], "G_mapping")
    )
    style_inputs = synthesis_sd["blocks.4x4.epi1.style_mod.lin.weight"].shape[1]
    if mapping_info["dlatent_size"] != style_inputs:
        raise CheckpointError(
            path,
            f"the mapping network outputs {mapping_info['dlatent_size']} features, the "
            f"synthesis styles take {style_inputs}",
        )
    resolution = synthesis_info["resolution"]
    static_kwargs = _static_kwargs(path, gs, subnets, resolution)
    info = {
        "source": "nvidia-stylegan-tf-pickle",
        "networks": names,
        "version": _plain(gs.get("version")),
        "resolution": resolution,
        "num_layers": 2 * resolution.bit_length() - 4,
        "dlatent_size": mapping_info["dlatent_size"],
        "mapping_layers": mapping_info["mapping_layers"],
        "channels": {str(r): c for r, c in synthesis_info["channels"].items()},
        "build_func_names": {
            "Gs": gs.get("build_func_name"),
            **{role: s.get("build_func_name") for role, s in subnets.items()},
        },
        "static_kwargs": _plain(static_kwargs),
        "dropped": synthesis_info["dropped"],
    }
    return synthesis_sd, mapping_sd, info


def _subnetworks(path: str, gs: dict) -> dict[str, dict]:
    """Gs's synthesis and mapping networks, each checked to be StyleGAN v1's."""
    components = gs["components"]
    subnets = {}
    for role, func in (("synthesis", "G_synthesis"), ("mapping", "G_mapping")):
        if role not in components:
            raise CheckpointError(
                path,
                f"Gs has no {role!r} component "
                f"(found {sorted(short(k) for k in list(components)[:10])})",
            )
        subnets[role] = _network(path, components[role], f"Gs.components[{role!r}]")
        build = subnets[role].get("build_func_name")
        if build is not None and build != func:
            raise CheckpointError(
                path,
                f"Gs's {role} network is built by {short(build)}, expected {func!r} (StyleGAN v1)",
            )
    return subnets


def _static_kwargs(path: str, gs: dict, subnets: dict, resolution: int) -> dict[str, dict]:
    """The networks' static_kwargs ({} where a network has none), checked to declare the
    resolution the variables have."""
    static_kwargs = {"Gs": gs.get("static_kwargs")}
    static_kwargs.update({role: s.get("static_kwargs") for role, s in subnets.items()})
    static_kwargs = {k: dict(v) if isinstance(v, dict) else {} for k, v in static_kwargs.items()}
    declared = static_kwargs["synthesis"].get("resolution")
    if isinstance(declared, int) and declared != resolution:
        raise CheckpointError(
            path,
            f"static_kwargs say resolution {describe(declared)}, the variables say {resolution}",
        )
    return static_kwargs
