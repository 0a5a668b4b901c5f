"""Bicubic downscaling, the degradation operator ``D`` of PULSE (docs/method.md section 5).

The reference filters with one 1-D kernel of ``4 * factor`` taps, first along H
and then along W, each pass a reflect-padded, stride-``factor`` depthwise
convolution. A pass is linear in the samples along its axis, so here it is one
matrix ``[n_out, n_in]`` (``bicubic_matrix``: row ``o`` holds the taps of output
``o``, the reflect padding folded in, so a sample that the padding repeats gets
the sum of its taps) contracted against that axis: two matmuls per image plane
(``separable``: ``M_h @ X @ M_w^T`` per channel) and two for its gradient, with no
padded or windowed copy of the image. Measured
under ``jax.jit`` on two CPU cores, value and gradient of a squared error for a
``[1, 1024, 1024, 3]`` image: 18.7 ms at factor 32 (40 ms for the former
formulation, four shifted block windows and a contraction) and 58 ms at factor 2
(90 ms). Against ``tests/golden/bicubic.npz`` (the reference's outputs) it agrees
to float32 rounding: the matmul sums the taps in another order.

Precision is explicit: the contractions use ``Precision.HIGHEST`` because the
default float32 matmul precision on GPUs and TPUs (TF32 / bfloat16 passes)
alone moves the result far beyond the golden tolerance (docs/method.md
section 8.3). On CPU, HIGHEST is what the default already does.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

# Keys's cubic convolution parameter, as in the reference.
_CUBIC_A = -0.5


def _cubic(t: float) -> float:
    """The cubic convolution kernel with ``a = -0.5`` (docs/method.md section 5)."""
    t = abs(t)
    a = _CUBIC_A
    if t <= 1.0:
        return (a + 2.0) * t**3 - (a + 3.0) * t**2 + 1.0
    if t < 2.0:
        return a * t**3 - 5.0 * a * t**2 + 8.0 * a * t - 4.0 * a
    return 0.0


def _check_factor(factor: int) -> None:
    if isinstance(factor, bool) or not isinstance(factor, int | np.integer) or factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor!r}")


def bicubic_kernel(factor: int) -> np.ndarray:
    """The 1-D bicubic antialiasing kernel of the reference (docs/method.md section 5).

    Args:
      factor: the integer downscaling factor.

    Returns:
      A float32 array of ``4 * factor`` taps,
      ``k[i] = cubic((i - floor(4 * factor / 2) + 0.5) / factor)``, normalised
      to sum to 1. (Computed in float64 and rounded once: for factors up to 32
      this equals the reference's float32 taps exactly.)
    """
    _check_factor(factor)
    size = 4 * factor
    taps = np.array([_cubic((i - np.floor(size / 2) + 0.5) / factor) for i in range(size)])
    return (taps / taps.sum()).astype(np.float32)


@functools.cache
def bicubic_matrix(n_in: int, factor: int) -> np.ndarray:
    """One filtering pass along an axis of ``n_in`` samples as a matrix.

    Args:
      n_in: the axis length, divisible by ``factor``.
      factor: the integer downscaling factor.

    Returns:
      A read-only float32 ``[n_in // factor, n_in]`` matrix ``M``: the pass maps samples
      ``x`` to ``M @ x``. Output ``o`` is the ``4 * factor`` taps of ``bicubic_kernel``
      over the reflect-padded samples ``o * factor .. o * factor + 4 * factor - 1``, the
      padding split as in the reference (the odd sample after) and reflected as
      ``numpy.pad`` does (repeatedly, where a pad is longer than the axis). Built in
      float64 from the float32 taps, rounded once.
    """
    _check_factor(factor)
    taps = bicubic_kernel(factor).astype(np.float64)
    size = taps.shape[0]
    before = (size - factor) // 2
    source = np.pad(np.arange(n_in), (before, size - factor - before), mode="reflect")
    n_out = n_in // factor
    rows = np.repeat(np.arange(n_out), size)
    cols = source[np.arange(n_out)[:, None] * factor + np.arange(size)].ravel()
    matrix = np.zeros((n_out, n_in))
    np.add.at(matrix, (rows, cols), np.tile(taps, n_out))
    matrix = matrix.astype(np.float32)
    matrix.flags.writeable = False
    return matrix


def separable(images: jax.Array, rows: np.ndarray, cols: np.ndarray) -> jax.Array:
    """``[..., H, W, C] -> [..., h, w, C]``: ``rows [h, H] @ X @ cols[w, W]^T`` on every
    image's planes (one per channel), in float32 (``Precision.HIGHEST``).

    The planes are contracted with the channel axis moved ahead of H and W: with the
    channels innermost (``[..., H, W, C]`` contracted in place) the gradient's matmul has an
    operand transposed around a 3-wide minor axis, which XLA's GPU matmul emitter (Triton,
    default flags) fails to tile at 1024 px on an H100 (issue 20).
    """
    hi = jax.lax.Precision.HIGHEST
    planes = jnp.moveaxis(images, -1, -3)  # [..., C, H, W]
    planes = jnp.matmul(jnp.asarray(rows), planes, precision=hi)  # [..., C, h, W]
    planes = jnp.matmul(planes, jnp.asarray(cols).T, precision=hi)  # [..., C, h, w]
    return jnp.moveaxis(planes, -3, -1)


def bicubic_downscale(images: jax.Array, factor: int) -> jax.Array:
    """Downscale NHWC images by an integer factor with the reference's bicubic filter.

    Separable: the H pass runs first, then the W pass, each per channel
    (docs/method.md section 5). Differentiable and jit-able; ``factor`` must be static.

    Factor 1 returns ``images`` unchanged. (The reference would still apply
    its 4-tap kernel at stride 1, a half-pixel-shifted interpolation; a
    factor-1 "downscale" is meant as the identity here.) When a pad is as long
    as the axis itself (a single output pixel, e.g. 32 -> 1), the reference's
    reflect padding refuses; this follows ``numpy.pad``'s repeated reflection.

    Args:
      images: ``[..., H, W, C]``, any number of leading batch axes.
      factor: positive integer dividing both H and W.

    Returns:
      ``[..., H / factor, W / factor, C]``.

    Raises:
      ValueError: if ``factor`` is not a positive integer, ``images`` has fewer
        than 3 axes, or H or W is not divisible by ``factor``.
    """
    _check_factor(factor)
    if images.ndim < 3:
        raise ValueError(f"images must be [..., H, W, C], got shape {images.shape}")
    height, width = images.shape[-3], images.shape[-2]
    if height % factor or width % factor:
        raise ValueError(
            f"image size {height}x{width} is not divisible by the downscaling factor {factor}"
        )
    if factor == 1:
        return images
    return separable(images, bicubic_matrix(height, factor), bicubic_matrix(width, factor))


@functools.cache
def make_bicubic(factor: int) -> Callable[[jax.Array], jax.Array]:
    """A downscaling operator with the factor bound.

    One object per factor: `solve` takes the operator as a static argument, so returning
    the same object lets repeated solves reuse their compiled program.

    Args:
      factor: positive integer downscaling factor.

    Returns:
      ``images -> bicubic_downscale(images, factor)``.
    """
    _check_factor(factor)
    return functools.partial(bicubic_downscale, factor=factor)
