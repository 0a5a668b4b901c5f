"""The one layout every StyleGAN2 reader converts to: NVIDIA StyleGAN2-ADA's generator state dict.

Keys, orientation and scale are those of `Generator.state_dict()` in NVIDIA's
`training/networks.py` (StyleGAN2-ADA PyTorch), e.g. `mapping.fc0.weight`
`[out, in]`, `synthesis.b8.conv0.weight` `[out, in, 3, 3]` (the upsampling
conv's weight as `conv2d_resample` takes it), `synthesis.b8.conv0.noise_const`
`[8, 8]`, `synthesis.b4.const` `[C, 4, 4]`, scalar `noise_strength`s. The
configuration (resolution, channels, mapping depth) is inferred from the
shapes, and every key and shape is checked against it.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from pulse_jax.checkpoints import CheckpointError
from pulse_jax.checkpoints.weights_file import MAX_CHANNELS, MAX_MAPPING_LAYERS, MAX_RESOLUTION

# Keys of an ADA state dict at most (1024 px: 212); a file naming far more is refused early.
MAX_KEYS = 4096


@dataclasses.dataclass(frozen=True)
class StyleGAN2Checkpoint:
    """A StyleGAN2 generator read from any supported file, in NVIDIA StyleGAN2-ADA's layout.

    Attributes:
      format: "ada-pickle", "rosinality" or "tf-pickle".
      state: float32 arrays keyed by StyleGAN2-ADA generator state-dict names
        ("mapping.fc0.weight", "mapping.w_avg", "synthesis.b4.const",
        "synthesis.b8.conv0.noise_const", ...), in ADA's orientation and scale.
      config: z_dim, w_dim, img_resolution, img_channels, num_ws, mapping_layers,
        conv_clamp (float or None), lr_multiplier (of the mapping network), c_dim (0).
      source: provenance: file name, sha256, format details (JSON-friendly).
    """

    format: str
    state: dict[str, np.ndarray]
    config: dict
    source: dict


def resample_filter(taps=(1.0, 3.0, 3.0, 1.0)) -> np.ndarray:
    """NVIDIA's `upfirdn2d.setup_filter(taps)`: the outer product, normalised to sum 1. [4, 4]"""
    f = np.asarray(taps, np.float32)
    f = np.outer(f, f)
    return (f / f.sum()).astype(np.float32)


def expected_shapes(
    resolution: int,
    channels: dict[int, int],
    w_dim: int,
    img_channels: int,
    mapping_shapes: list[tuple[int, int]],
    filter_shape: tuple[int, int] = (4, 4),
) -> dict[str, tuple[int, ...]]:
    """Every key of an ADA "skip" generator with these sizes -> its shape, in state-dict order."""
    shapes: dict[str, tuple[int, ...]] = {}
    r, previous = 4, None
    while r <= resolution:
        b, c = f"synthesis.b{r}", channels[r]
        if r == 4:
            shapes[f"{b}.const"] = (c, 4, 4)
        shapes[f"{b}.resample_filter"] = filter_shape
        convs = [("conv1", c)] if r == 4 else [("conv0", previous), ("conv1", c)]
        for name, c_in in convs:
            p = f"{b}.{name}"
            shapes |= {
                f"{p}.weight": (c, c_in, 3, 3),
                f"{p}.noise_strength": (),
                f"{p}.bias": (c,),
                f"{p}.resample_filter": filter_shape,
                f"{p}.noise_const": (r, r),
                f"{p}.affine.weight": (c_in, w_dim),
                f"{p}.affine.bias": (c_in,),
            }
        shapes |= {
            f"{b}.torgb.weight": (img_channels, c, 1, 1),
            f"{b}.torgb.bias": (img_channels,),
            f"{b}.torgb.affine.weight": (c, w_dim),
            f"{b}.torgb.affine.bias": (c,),
        }
        previous, r = c, 2 * r
    shapes["mapping.w_avg"] = (w_dim,)
    for i, (out_features, in_features) in enumerate(mapping_shapes):
        shapes[f"mapping.fc{i}.weight"] = (out_features, in_features)
        shapes[f"mapping.fc{i}.bias"] = (out_features,)
    return shapes


def _size(path, value: int, what: str, high: int = MAX_CHANNELS) -> int:
    """A size the file implies, checked against the weights file's range before it sizes
    anything (a width of 0 or 10**9 is refused here, not in a fit)."""
    if not 1 <= value <= high:
        raise CheckpointError(path, f"{what} is {value}, expected 1..{high}")
    return value


def _shape(path, state: dict, key: str) -> tuple[int, ...]:
    if key not in state:
        raise CheckpointError(path, f"the generator has no {key!r}")
    return tuple(np.shape(state[key]))


def _mapping_shapes(path, state: dict) -> list[tuple[int, ...]]:
    """The mapping layers' weight shapes [out, in], each size in range, chaining."""
    mapping_shapes = []
    while f"mapping.fc{len(mapping_shapes)}.weight" in state:
        if len(mapping_shapes) >= MAX_MAPPING_LAYERS:
            raise CheckpointError(path, f"the mapping has more than {MAX_MAPPING_LAYERS} layers")
        weight = _shape(path, state, f"mapping.fc{len(mapping_shapes)}.weight")
        if len(weight) != 2:
            raise CheckpointError(
                path, f"mapping.fc{len(mapping_shapes)}.weight has shape {weight}, expected 2-D"
            )
        for n in weight:
            _size(path, n, f"a size of mapping.fc{len(mapping_shapes)}.weight")
        mapping_shapes.append(weight)
    if not mapping_shapes:
        raise CheckpointError(path, "the generator has no mapping layers 'mapping.fc<i>.weight'")
    for i in range(1, len(mapping_shapes)):
        if mapping_shapes[i][1] != mapping_shapes[i - 1][0]:
            raise CheckpointError(
                path,
                f"mapping.fc{i}.weight {mapping_shapes[i]} does not take fc{i - 1}'s "
                f"{mapping_shapes[i - 1][0]} features",
            )
    return mapping_shapes


def infer_config(path, state: dict[str, np.ndarray]) -> tuple[dict, dict[str, tuple[int, ...]]]:
    """Reads the sizes off the shapes and checks every key and shape against them.

    Returns:
      The config (without conv_clamp and lr_multiplier) and the expected shape of
      every key, in state-dict order.
    """
    if len(state) > MAX_KEYS:
        raise CheckpointError(path, f"the generator has {len(state)} tensors, too many to be one")
    blocks = set()
    for key in state:
        m = re.fullmatch(r"synthesis\.b(\d{1,5})\..+", key)
        if m:
            blocks.add(int(m.group(1)))
    if not blocks:
        raise CheckpointError(path, "the generator has no synthesis blocks 'synthesis.b<res>.*'")
    resolution = max(blocks)
    expected = {2**k for k in range(2, resolution.bit_length())}
    if resolution & (resolution - 1) or blocks != expected or resolution > MAX_RESOLUTION:
        raise CheckpointError(
            path,
            f"synthesis blocks {sorted(blocks)[:12]} are not the powers of two 4..{resolution}",
        )
    channels = {}
    for r in sorted(blocks):
        weight = _shape(path, state, f"synthesis.b{r}.conv1.weight")
        if len(weight) != 4:
            raise CheckpointError(path, f"synthesis.b{r}.conv1.weight has shape {weight}")
        channels[r] = _size(path, weight[0], f"the channels of synthesis.b{r}")
    mapping_shapes = _mapping_shapes(path, state)
    w_dim = mapping_shapes[-1][0]
    img_channels = _shape(path, state, f"synthesis.b{resolution}.torgb.weight")[:1]
    if img_channels != (3,):
        raise CheckpointError(path, f"the generator makes {img_channels} channels, not RGB (3)")
    img_channels = 3
    shapes = expected_shapes(resolution, channels, w_dim, img_channels, mapping_shapes)
    missing = [k for k in shapes if k not in state]
    unexpected = sorted(set(state) - set(shapes))
    if missing or unexpected:
        raise CheckpointError(
            path,
            f"the generator does not match StyleGAN2 ('skip', {resolution} px): missing "
            f"{missing[:6]}{' ...' if len(missing) > 6 else ''}, unexpected "
            f"{unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}",
        )
    for key, shape in shapes.items():
        got = tuple(np.shape(state[key]))
        if got != shape:
            raise CheckpointError(
                path, f"{key} has shape {got}, expected {shape} (from the inferred channels)"
            )
    config = {
        "z_dim": mapping_shapes[0][1],
        "w_dim": w_dim,
        "img_resolution": resolution,
        "img_channels": img_channels,
        "num_ws": 2 * (resolution.bit_length() - 1) - 2,
        "mapping_layers": len(mapping_shapes),
        "c_dim": 0,
    }
    return config, shapes


def finish(
    path, format: str, state: dict, *, conv_clamp, lr_multiplier, source: dict
) -> StyleGAN2Checkpoint:
    """Checks a converted state (keys, shapes, finite float32) and wraps it with its config."""
    config, shapes = infer_config(path, state)
    out = {}
    for key in shapes:
        value = np.asarray(state[key])
        if value.dtype.kind != "f":
            raise CheckpointError(path, f"{key} holds {value.dtype} values, expected floats")
        value = np.array(value, dtype=np.float32, order="C")  # a copy; keeps 0-d arrays 0-d
        if not np.isfinite(value).all():
            raise CheckpointError(path, f"{key} holds non-finite values (inf or nan)")
        out[key] = value
    if conv_clamp is not None:
        if isinstance(conv_clamp, bool) or not isinstance(conv_clamp, int | float | np.number):
            raise CheckpointError(path, f"conv_clamp is a {type(conv_clamp).__name__}")
        conv_clamp = float(conv_clamp)
        if not (np.isfinite(conv_clamp) and conv_clamp > 0):
            raise CheckpointError(path, f"conv_clamp is {conv_clamp}, expected a positive number")
    if isinstance(lr_multiplier, bool) or not isinstance(lr_multiplier, int | float | np.number):
        kind = type(lr_multiplier).__name__
        raise CheckpointError(path, f"the mapping's lr_multiplier is a {kind}")
    lr_multiplier = float(lr_multiplier)
    if not (np.isfinite(lr_multiplier) and lr_multiplier > 0):
        raise CheckpointError(path, f"the mapping's lr_multiplier is {lr_multiplier}")
    config |= {"conv_clamp": conv_clamp, "lr_multiplier": lr_multiplier}
    return StyleGAN2Checkpoint(format=format, state=out, config=config, source=source)


# The longest module, parameter or variable name a reader takes (torch's and TF's are
# short: "synthesis.b1024.torgb.affine.weight"); flattened paths join at most a few.
MAX_NAME = 200


def check_name(path, name, where: str, separator: str) -> str:
    """A module, parameter or variable name from a file, before it is joined into a flat
    key: a string of at most `MAX_NAME` characters without `separator` (torch refuses dots
    in module and parameter names; a name holding one could stand for a nested module's
    weight, so reading it would be ambiguous)."""
    if not isinstance(name, str):
        raise CheckpointError(path, f"{where} has a name that is {type(name).__name__}")
    if len(name) > MAX_NAME:
        raise CheckpointError(path, f"{where} has a name of {len(name)} characters")
    if separator in name or not name:
        raise CheckpointError(
            path,
            f"{where} has a name {name[:60]!r} that is empty or holds {separator!r}: ambiguous "
            "beside nested names",
        )
    return name


def entry_names(path, top, expected: str, listed: int) -> list[str]:
    """The first `listed` names of the dict a file holds, cut to 40 characters, for its
    messages; a file that holds something else is refused as not `expected`."""
    if not isinstance(top, dict):
        raise CheckpointError(path, f"holds a {type(top).__name__}, expected {expected}")
    return [str(k)[:40] for k in list(top)[:listed]]


def plain(value, depth: int = 0, budget: list | None = None):
    """A bounded, JSON-friendly copy of a small value read from a file (for provenance):
    at most 6 levels, 64 items per container and 4096 values in all."""
    budget = [4096] if budget is None else budget
    budget[0] -= 1
    if depth > 6 or budget[0] < 0:
        return "..."
    if isinstance(value, dict):
        items = list(value.items())[:64]
        return {str(k)[:100]: plain(v, depth + 1, budget) for k, v in items}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v, depth + 1, budget) for v in list(value)[:64]]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str):
        return value[:200]
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return type(value).__name__  # complex numbers, bytes, ...: named, never stored
