"""Layers shared by the generators, NHWC, with an explicit matmul/conv precision.

Precision is a string so that it can live in a hashable, static architecture:
"highest" (full float32 on every backend; the default, needed for parity with
the golden vectors on GPU/TPU, PULSE_SPEC section 1), "high", "default"
(TF32/bfloat16 passes on accelerators; full float32 on CPU anyway).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

PRECISIONS = {
    "highest": jax.lax.Precision.HIGHEST,
    "high": jax.lax.Precision.HIGH,
    "default": jax.lax.Precision.DEFAULT,
}

_NHWC = ("NHWC", "HWIO", "NHWC")


def lax_precision(name: str) -> jax.lax.Precision:
    try:
        return PRECISIONS[name]
    except KeyError:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {name!r}") from None


def leaky_relu(x: jax.Array, slope: float = 0.2) -> jax.Array:
    return jnp.where(x >= 0, x, x * slope)


def conv2d(x: jax.Array, kernel: jax.Array, padding: int, precision: str) -> jax.Array:
    """Stride-1 cross-correlation, torch `F.conv2d` semantics. kernel: [kh, kw, in, out]."""
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(1, 1),
        padding=[(padding, padding), (padding, padding)],
        dimension_numbers=_NHWC,
        precision=lax_precision(precision),
    )


def conv_transpose2d(
    x: jax.Array, kernel: jax.Array, stride: int, padding: int, precision: str
) -> jax.Array:
    """torch `F.conv_transpose2d` semantics. kernel: [kh, kw, in, out] (torch's (in, out, kh, kw)
    moved to HWIO, not flipped): a transposed conv is a correlation of the stride-dilated input
    with the spatially flipped kernel, padded by k - 1 - padding."""
    k = kernel.shape[0]
    pad = k - 1 - padding
    return jax.lax.conv_general_dilated(
        x,
        kernel[::-1, ::-1],
        window_strides=(1, 1),
        padding=[(pad, pad), (pad, pad)],
        lhs_dilation=(stride, stride),
        dimension_numbers=_NHWC,
        precision=lax_precision(precision),
    )


def depthwise_conv2d(x: jax.Array, kernel: jax.Array, padding: int, precision: str) -> jax.Array:
    """The same [kh, kw] kernel applied to every channel on its own (the StyleGAN blur)."""
    channels = x.shape[-1]
    k = jnp.broadcast_to(kernel[:, :, None, None], kernel.shape + (1, channels))
    return jax.lax.conv_general_dilated(
        x,
        k.astype(x.dtype),
        window_strides=(1, 1),
        padding=[(padding, padding), (padding, padding)],
        dimension_numbers=_NHWC,
        feature_group_count=channels,
        precision=lax_precision(precision),
    )


def upsample_nearest2x(x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, 2H, 2W, C], each pixel repeated 2 x 2."""
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
    return x.reshape(b, 2 * h, 2 * w, c)
