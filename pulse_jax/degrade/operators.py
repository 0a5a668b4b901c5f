"""Degradation operators: what PULSE's loss compares a generated face with the input through.

PULSE's own operator is the bicubic downscale (docs/method.md section 5, `downscale.py`,
unchanged here and the default). The paper argues the method is not tied to it: any
differentiable map from the generator's images to the observation works, because the
search only needs `L2 = mean((D(G(z)) - y)**2)` and its gradient. This module holds the
operators the launchers offer, by name (`OperatorName`), each a differentiable, linear
map `[..., R, R, 3] -> [..., h, h, 3]` with `h = R / factor`:

| name | observation |
|---|---|
| `bicubic` | PULSE's bicubic downscale |
| `box` | the mean of each `factor x factor` block (area average) |
| `gaussian` | a Gaussian blur of std `blur_sigma` HR pixels, sampled at each block's centre |
| `nearest` | one pixel per block, the one at offset `factor // 2` (Pillow's nearest) |
| `inpaint` | the bicubic downscale where the `mask` observes, 0 elsewhere |
| `denoise` | the bicubic downscale plus Gaussian noise of std `noise_std` (clipped to [0, 1]) |
| `colorize` | the grey (ITU-R 601 luma) of the bicubic downscale, in all 3 channels |

The success threshold follows the operator (`Degradation.success_eps`), so that `eps`
keeps its meaning of a mean squared error on what is observed:
- `inpaint`: `eps * observed fraction`. L2 is a mean over every pixel and the
  unobserved ones contribute exactly 0, so this is `eps` on the mean over the observed
  pixels.
- `denoise`: `eps + noise_std**2`. Against a noisy observation even the true image has
  an expected L2 of `noise_std**2` (a little less after clipping), so a threshold of
  `eps` alone would ask the search to fit the noise.
- every other operator: `eps`.

Operators are frozen dataclasses, so equal operators are equal static arguments of
`jax.jit` and repeated solves reuse their compiled program. Every pass is a matmul with
`Precision.HIGHEST` (see `downscale.py`).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pulse_jax.degrade.downscale import make_bicubic, separable
from pulse_jax.images import ImageError, load_image

# ITU-R BT.601 luma, as Pillow's convert("L") weighs R, G, B.
LUMA = (0.299, 0.587, 0.114)
# Gaussian taps out to 4 standard deviations (the rest is below 3.4e-4 of the peak).
_GAUSS_RADIUS = 4.0


class OperatorName(enum.StrEnum):
    """The registered operators (`make_operator`)."""

    BICUBIC = "bicubic"
    BOX = "box"
    GAUSSIAN = "gaussian"
    NEAREST = "nearest"
    INPAINT = "inpaint"
    DENOISE = "denoise"
    COLORIZE = "colorize"


DEFAULT_OPERATOR = OperatorName.BICUBIC


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One typed operator parameter: its option name, type, default, and who uses it."""

    name: str
    type: type
    default: Any
    used_by: OperatorName
    help: str


# The operators' parameters, one definition each (flags and manifest settings derive from it).
PARAMETERS = (
    Parameter(
        "blur_sigma",
        float,
        2.0,
        OperatorName.GAUSSIAN,
        "--operator gaussian: standard deviation of the blur, in HR pixels (> 0).",
    ),
    Parameter(
        "noise_std",
        float,
        0.05,
        OperatorName.DENOISE,
        "--operator denoise: standard deviation of the additive Gaussian noise on [0, 1] "
        "pixels (>= 0); eps becomes eps + noise_std**2.",
    ),
    Parameter(
        "mask",
        str,
        "center",
        OperatorName.INPAINT,
        "--operator inpaint: the observed pixels, at the observation's size: 'center' (all "
        "but a centred square of half the side), 'random' (each pixel with probability "
        "1/2, fixed pattern) or an image file (white = observed, black = missing). eps "
        "becomes eps * observed fraction.",
    ),
)
PARAMETER = {p.name: p for p in PARAMETERS}
PARAMETER_NAMES = tuple(PARAMETER)


def parameters_of(name: str) -> tuple[str, ...]:
    """The parameter names operator `name` uses."""
    return tuple(p.name for p in PARAMETERS if p.used_by == OperatorName(name))


# -- 1-D passes as matrices ----------------------------------------------------------------


def _reflect(n: int, reach: int) -> np.ndarray:
    """Source index of each position -reach .. n - 1 + reach under reflect padding
    (``numpy.pad``'s "reflect", repeated where the pad is longer than the axis)."""
    return np.pad(np.arange(n), reach, mode="reflect")


@functools.cache
def box_matrix(n_in: int, factor: int) -> np.ndarray:
    """The area average along an axis: `[n_in // factor, n_in]`, 1/factor over each block."""
    n_out = n_in // factor
    matrix = np.zeros((n_out, n_in), np.float32)
    for o in range(n_out):
        matrix[o, o * factor : (o + 1) * factor] = 1.0 / factor
    matrix.flags.writeable = False
    return matrix


@functools.cache
def nearest_matrix(n_in: int, factor: int) -> np.ndarray:
    """Nearest subsampling along an axis: output o is input `o * factor + factor // 2`."""
    n_out = n_in // factor
    matrix = np.zeros((n_out, n_in), np.float32)
    matrix[np.arange(n_out), np.arange(n_out) * factor + factor // 2] = 1.0
    matrix.flags.writeable = False
    return matrix


@functools.cache
def gaussian_matrix(n_in: int, factor: int, sigma: float) -> np.ndarray:
    """Gaussian blur then decimation along an axis, `[n_in // factor, n_in]`.

    Output o is the blur centred on its block's centre `o * factor + (factor - 1) / 2`
    (a half-pixel position for even factors): taps `exp(-d**2 / (2 sigma**2))` at the
    distances `d` of the pixels within `4 sigma`, normalised to sum 1, reflect padding
    folded in (a pixel the padding repeats gets the sum of its taps).
    """
    n_out = n_in // factor
    reach = int(np.ceil(_GAUSS_RADIUS * sigma + factor))
    source = _reflect(n_in, reach)
    matrix = np.zeros((n_out, n_in))
    for o in range(n_out):
        centre = o * factor + (factor - 1) / 2
        positions = np.arange(
            int(np.floor(centre - _GAUSS_RADIUS * sigma)),
            int(np.ceil(centre + _GAUSS_RADIUS * sigma)) + 1,
        )
        taps = np.exp(-((positions - centre) ** 2) / (2.0 * sigma**2))
        np.add.at(matrix[o], source[positions + reach], taps / taps.sum())
    matrix = matrix.astype(np.float32)
    matrix.flags.writeable = False
    return matrix


def _separable(images: jax.Array, matrix: np.ndarray) -> jax.Array:
    """The same 1-D pass along H, then along W: `[..., R, R, C] -> [..., h, h, C]`
    (`downscale.separable`: the form that compiles on GPUs)."""
    return separable(images, matrix, matrix)


def _check_images(images: jax.Array, factor: int) -> None:
    if images.ndim < 3 or images.shape[-3] != images.shape[-2] or images.shape[-3] % factor:
        raise ValueError(
            f"images must be [..., R, R, C] with R divisible by {factor}, got {images.shape}"
        )


# -- the operators ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Degradation:
    """A degradation operator: `op(images)` maps `[..., R, R, 3]` to `[..., h, h, 3]`.

    Attributes:
      name: its `OperatorName`.
      factor: `R / h`.
      side: the observation's side `h`.
      blur_sigma: `gaussian` only.
      noise_std: `denoise` only.
      mask_bits: `inpaint` only: the observed pixels `[h, h]` as packed bits
        (`np.packbits`), so that the operator stays hashable.
    """

    name: OperatorName
    factor: int
    side: int
    blur_sigma: float = 0.0
    noise_std: float = 0.0
    mask_bits: bytes = b""

    def __call__(self, images: jax.Array) -> jax.Array:
        """The noiseless observation of `images` (linear and differentiable)."""
        name = self.name
        if name == OperatorName.BICUBIC or name == OperatorName.DENOISE:
            return make_bicubic(self.factor)(images)
        _check_images(images, self.factor)
        n = images.shape[-2]
        if name == OperatorName.BOX:
            return _separable(images, box_matrix(n, self.factor))
        if name == OperatorName.NEAREST:
            return _separable(images, nearest_matrix(n, self.factor))
        if name == OperatorName.GAUSSIAN:
            return _separable(images, gaussian_matrix(n, self.factor, self.blur_sigma))
        low = make_bicubic(self.factor)(images)
        if name == OperatorName.INPAINT:
            return low * jnp.asarray(self.mask)[:, :, None]
        luma = jnp.asarray(LUMA, low.dtype)  # float32 on every platform, as the bicubic's matmuls
        grey = jnp.tensordot(low, luma, axes=((-1,), (0,)), precision=jax.lax.Precision.HIGHEST)
        return jnp.repeat(grey[..., None], 3, axis=-1)

    @property
    def mask(self) -> np.ndarray:
        """The observed pixels, float32 `[h, h]` of 0 and 1 (all ones but for `inpaint`)."""
        if self.name != OperatorName.INPAINT:
            return np.ones((self.side, self.side), np.float32)
        bits = np.unpackbits(np.frombuffer(self.mask_bits, np.uint8))[: self.side**2]
        return bits.reshape(self.side, self.side).astype(np.float32)

    @property
    def observed_fraction(self) -> float:
        """The fraction of observation pixels that count (1 but for `inpaint`)."""
        return float(self.mask.mean())

    def success_eps(self, eps: float) -> float:
        """The threshold on L2 that means `eps` for this operator (module docstring)."""
        if self.name == OperatorName.INPAINT:
            return float(eps) * self.observed_fraction
        if self.name == OperatorName.DENOISE:
            return float(eps) + self.noise_std**2
        return float(eps)

    def observed(self, lr: np.ndarray) -> np.ndarray:
        """What of a given input `[..., h, h, 3]` the loss compares with: masked for
        `inpaint`, grey for `colorize` (a grey input stays as it is), else unchanged."""
        lr = np.asarray(lr, np.float32)
        if self.name == OperatorName.INPAINT:
            return lr * self.mask[:, :, None]
        if self.name == OperatorName.COLORIZE:
            grey = np.tensordot(lr, np.asarray(LUMA, np.float32), axes=((-1,), (0,)))
            return np.repeat(grey[..., None], 3, axis=-1).astype(np.float32)
        return lr

    def observe(self, images: jax.Array, key: jax.Array) -> np.ndarray:
        """The observation of HR `images` `[N, R, R, 3]` as an input would hold it: the
        operator's output, with `denoise`'s noise drawn from `key`, clipped to [0, 1]."""
        low = self(jnp.asarray(images, jnp.float32))
        if self.name == OperatorName.DENOISE:
            low = low + self.noise_std * jax.random.normal(key, low.shape, low.dtype)
        return np.asarray(jnp.clip(low, 0.0, 1.0), np.float32)

    def describe(self) -> str:
        """A short label: the name and its parameters, e.g. "gaussian sigma 2"."""
        if self.name == OperatorName.GAUSSIAN:
            return f"gaussian sigma {self.blur_sigma:g}"
        if self.name == OperatorName.DENOISE:
            return f"denoise std {self.noise_std:g}"
        if self.name == OperatorName.INPAINT:
            return f"inpaint {self.observed_fraction:.0%} observed"
        return str(self.name)


def make_operator(
    name: str,
    side: int,
    factor: int,
    *,
    blur_sigma: float = PARAMETER["blur_sigma"].default,
    noise_std: float = PARAMETER["noise_std"].default,
    mask: str | os.PathLike = PARAMETER["mask"].default,
) -> Degradation:
    """The registered operator `name` for observations of `side` px and a downscaling factor.

    Args:
      name: an `OperatorName`.
      side: the observation's side `h`.
      factor: `R / h`, a positive integer.
      blur_sigma, noise_std, mask: the parameters (`PARAMETERS`); each is read only by
        the operator that uses it.

    Returns:
      A `Degradation`; `bicubic` computes exactly `downscale.make_bicubic(factor)`.

    Raises:
      ValueError: an unknown name, a bad factor or parameter, or a mask that is not
        'center', 'random' or a readable image of `side` px, or observes no pixel (the
        message names it).
    """
    try:
        op = OperatorName(name)
    except ValueError:
        raise ValueError(
            f"unknown operator {name!r}; choose from {', '.join(OperatorName)}"
        ) from None
    for what, value in (("factor", factor), ("side", side)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{what} must be a positive integer, got {value!r}")
    factor, side = int(factor), int(side)
    if op == OperatorName.GAUSSIAN:
        if not blur_sigma > 0:
            raise ValueError(f"--blur_sigma must be > 0, got {blur_sigma}")
        return Degradation(op, factor, side, blur_sigma=float(blur_sigma))
    if op == OperatorName.DENOISE:
        if not noise_std >= 0:
            raise ValueError(f"--noise_std must be >= 0, got {noise_std}")
        return Degradation(op, factor, side, noise_std=float(noise_std))
    if op == OperatorName.INPAINT:
        observed = mask_pattern(mask, side)
        if not observed.any():
            raise ValueError(f"--mask {mask}: observes no pixel")
        bits = np.packbits(observed.astype(np.uint8).ravel()).tobytes()
        return Degradation(op, factor, side, mask_bits=bits)
    return Degradation(op, factor, side)


def mask_pattern(mask: str | os.PathLike, side: int) -> np.ndarray:
    """The observed pixels `[side, side]` (bool) that the `mask` parameter names."""
    if str(mask) == "center":
        observed = np.ones((side, side), bool)
        lo = side // 4
        observed[lo : lo + side // 2, lo : lo + side // 2] = False
        return observed
    if str(mask) == "random":
        # A fixed pattern per side, so that the same --mask random means the same pixels.
        key = jax.random.fold_in(jax.random.key(0), side)
        return np.asarray(jax.random.bernoulli(key, 0.5, (side, side)))
    try:
        image = load_image(Path(mask))
    except ImageError as e:
        raise ValueError(f"--mask: {e}") from None
    if image.shape[:2] != (side, side):
        raise ValueError(
            f"--mask {mask}: the mask is {image.shape[1]}x{image.shape[0]}, the observation "
            f"{side}x{side}"
        )
    return image.mean(axis=-1) >= 0.5
