"""PULSE-format state dicts (torch layouts, dotted keys) -> pulse_jax parameters.

One small function per source block. Conv kernels go from torch's
(out, in, kh, kw) to [kh, kw, in, out], transposed-conv kernels from
(in, out, kh, kw) to [kh, kw, in, out], dense weights from (out, in) to [in, out],
the 4x4 constant from (1, C, 4, 4) to [1, 4, 4, C]. Nothing is rescaled.
"""

from __future__ import annotations

import re

import numpy as np

# Blocks 4x4 .. 8192x8192; mapping layers at most (StyleGAN's has 8).
MAX_BLOCKS = 12
MAX_MAPPING_LAYERS = 64


class StateDictError(ValueError):
    """A state dict whose keys or shapes are not those of the expected network."""


def _take(sd: dict, key: str, ndim: int | None = None) -> np.ndarray:
    if key not in sd:
        raise StateDictError(f"missing key {key!r}")
    value = np.asarray(sd[key])
    if ndim is not None and value.ndim != ndim:
        raise StateDictError(f"{key!r} has shape {value.shape}, expected {ndim} dimensions")
    return value.astype(np.float32) if value.dtype.kind == "f" else value


def conv_kernel(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0))  # (out, in, kh, kw) -> HWIO


def conv_transpose_kernel(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(w.transpose(2, 3, 0, 1))  # (in, out, kh, kw) -> [kh, kw, in, out]


def dense(sd: dict, prefix: str) -> dict:
    return {
        "weight": np.ascontiguousarray(_take(sd, f"{prefix}.weight", 2).T),
        "bias": _take(sd, f"{prefix}.bias", 1),
    }


def epilogue(sd: dict, prefix: str) -> dict:
    return {
        "noise": {"weight": _take(sd, f"{prefix}.noise.weight", 1)},
        "style_mod": {"lin": dense(sd, f"{prefix}.style_mod.lin")},
    }


def conv(sd: dict, prefix: str) -> dict:
    return {
        "weight": conv_kernel(_take(sd, f"{prefix}.weight", 4)),
        "bias": _take(sd, f"{prefix}.bias", 1),
    }


def input_block(sd: dict) -> dict:
    const = _take(sd, "blocks.4x4.const", 4)
    return {
        "const": np.ascontiguousarray(const.transpose(0, 2, 3, 1)),
        "bias": _take(sd, "blocks.4x4.bias", 1),
        "epi1": epilogue(sd, "blocks.4x4.epi1"),
        "conv": conv(sd, "blocks.4x4.conv"),
        "epi2": epilogue(sd, "blocks.4x4.epi2"),
    }


def upscale_block(sd: dict, name: str) -> dict:
    prefix = f"blocks.{name}"
    up = conv(sd, f"{prefix}.conv0_up")
    blur = _take(sd, f"{prefix}.conv0_up.intermediate.kernel", 4)  # (1, 1, 3, 3)
    up["intermediate"] = {"kernel": np.ascontiguousarray(blur[0, 0])}
    return {
        "conv0_up": up,
        "epi1": epilogue(sd, f"{prefix}.epi1"),
        "conv1": conv(sd, f"{prefix}.conv1"),
        "epi2": epilogue(sd, f"{prefix}.epi2"),
    }


def synthesis_params(sd: dict) -> dict:
    """PULSE `synthesis.pt` state dict -> synthesis parameters (any power-of-two resolution)."""
    names = {k.split(".")[1] for k in sd if k.startswith("blocks.")}
    for name in names:
        if not re.fullmatch(r"([1-9]\d{0,3})x\1", name):
            raise StateDictError(f"block {name[:40]!r} is not named <size>x<size>")
    if len(names) > MAX_BLOCKS:
        raise StateDictError(f"{len(names)} blocks, more than {MAX_BLOCKS} (4..8192 px)")
    if "4x4" not in names:
        raise StateDictError("no 'blocks.4x4.*' keys: not a StyleGAN synthesis state dict")
    sizes = sorted(int(n.split("x")[0]) for n in names)
    expected = [4 * 2**i for i in range(len(sizes))]
    if sizes != expected:
        raise StateDictError(f"blocks {sorted(names)} are not 4x4, 8x8, ... in powers of two")
    blocks = {"4x4": input_block(sd)}
    for size in sizes[1:]:
        blocks[f"{size}x{size}"] = upscale_block(sd, f"{size}x{size}")
    return {"blocks": blocks, "torgb": conv(sd, "torgb")}


def mapping_params(sd: dict) -> dict:
    """PULSE `mapping.pt` state dict -> mapping parameters (`dense0` .. `denseN`)."""
    names = {k.split(".")[0] for k in sd if k.startswith("dense")}
    count = len(names)
    if count == 0:
        raise StateDictError("no 'dense*' keys: not a StyleGAN mapping state dict")
    if count > MAX_MAPPING_LAYERS:
        raise StateDictError(f"{count} mapping layers, more than {MAX_MAPPING_LAYERS}")
    if names != {f"dense{i}" for i in range(count)}:
        raise StateDictError(f"mapping layers {sorted(names)[:8]} are not dense0..dense{count - 1}")
    return {f"dense{i}": dense(sd, f"dense{i}") for i in range(count)}


def dcgan_params(sd: dict) -> dict:
    """DCGAN `netG_state_dict` (keys `main.<i>.*`) -> DCGAN parameters."""
    from pulse_jax.generators.dcgan import CONV_INDICES, NORM_INDICES

    main = {}
    for i in CONV_INDICES:
        main[str(i)] = {"weight": conv_transpose_kernel(_take(sd, f"main.{i}.weight", 4))}
    for i in NORM_INDICES:
        main[str(i)] = {
            name: _take(sd, f"main.{i}.{name}", 1)
            for name in ("weight", "bias", "running_mean", "running_var")
        }
    return {"main": main}
