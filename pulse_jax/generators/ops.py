"""Layers shared by the generators, NHWC, with an explicit matmul/conv precision.

Precision is a string so that it can live in a hashable, static architecture:
"highest" (full float32 on every backend, needed for parity with the golden vectors,
docs/method.md section 8.3), "high", "default" (TF32/bfloat16 passes on accelerators; full
float32 on CPU anyway), and "bf16" / "tf32" / "bf16_3x", their emulation on any backend
(`pulse_jax.precision`): every conv and matmul here, the custom gradients' included, goes
through `precision.bilinear`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pulse_jax import precision as precisions

dot = precisions.dot  # the generators' matmul: dot(x, w, precision)
lax_precision = precisions.lax_precision

_NHWC = ("NHWC", "HWIO", "NHWC")


def leaky_relu(x: jax.Array, slope: float = 0.2) -> jax.Array:
    return jnp.where(x >= 0, x, x * slope)


def conv2d(x: jax.Array, kernel, padding: int, precision: str) -> jax.Array:
    """Stride-1 cross-correlation, torch `F.conv2d` semantics.

    kernel: [kh, kw, in, out], or `prepare_conv(kernel)` (the same conv with its backward
    kernel computed once, outside the optimization loop).
    """
    prepared = kernel if isinstance(kernel, dict) else prepare_conv(kernel)
    pads = ((padding, padding), (padding, padding))
    return _conv(x, prepared["kernel"], prepared["adjoint"], pads, precision)


def prepare_conv(kernel: jax.Array) -> dict:
    """A stride-1 conv's kernel [kh, kw, in, out] and the kernel of its input gradient, the
    flipped and transposed [kh, kw, out, in] (see `_conv`).

    Generators call this once per search (their `prepare`), before the optimization loop.
    Computed in the backward pass from the kernel instead, the transposes stay inside the
    loop's `while` body on XLA:CPU (17 of them for a 1024 px StyleGAN, measured in the
    optimized HLO): every step would transpose every kernel again.
    """
    return {"kernel": kernel, "adjoint": jnp.swapaxes(kernel[::-1, ::-1], 2, 3)}


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _conv(x: jax.Array, kernel: jax.Array, adjoint: jax.Array, padding, precision: str):
    """Stride-1 NHWC conv whose input gradient is again an NHWC/HWIO conv.

    JAX's own transpose rule gives the input gradient as a conv with the kernel's feature
    dimensions swapped (HWOI); inside the PULSE step XLA:CPU then misses its fast conv path
    and runs those convs about 10x slower than the forward ones (measured: 1.4 s for the
    16-channel 3x3 conv at 1024 px, against 0.1 s). The flipped, transposed kernel
    (`adjoint`, from `prepare_conv`) keeps every conv in the layout XLA runs best.
    `adjoint` only shapes the gradient: the output does not depend on it, so its own
    cotangent is zero.
    """
    del adjoint
    return _conv_nhwc(x, kernel, padding, precision)


def _conv_nhwc(x, kernel, padding, precision, **dilation):
    """Stride-1 NHWC/HWIO conv at `precision` (`precision.bilinear`); `dilation`:
    conv_general_dilated's lhs_dilation, for the general transposed conv."""
    return precisions.bilinear(
        lambda a, b, p: jax.lax.conv_general_dilated(
            a, b, (1, 1), padding, dimension_numbers=_NHWC, precision=p, **dilation
        ),
        x,
        kernel,
        precision,
    )


def _conv_fwd(x, kernel, adjoint, padding, precision):
    return _conv_nhwc(x, kernel, padding, precision), (x, kernel, adjoint)


def _conv_bwd(padding, precision, residuals, g):
    x, kernel, adjoint = residuals
    kh, kw = kernel.shape[:2]
    (top, bottom), (left, right) = padding
    grad_padding = ((kh - 1 - top, kh - 1 - bottom), (kw - 1 - left, kw - 1 - right))
    grad_x = _conv_nhwc(g, adjoint, grad_padding, precision)
    _, kernel_vjp = jax.vjp(lambda k: _conv_nhwc(x, k, padding, precision), kernel)
    return grad_x, kernel_vjp(g)[0], jnp.zeros_like(adjoint)


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_transpose2d(x: jax.Array, kernel, stride: int, padding: int, precision: str) -> jax.Array:
    """torch `F.conv_transpose2d` semantics. kernel: [kh, kw, in, out] (torch's (in, out, kh, kw)
    moved to HWIO, not flipped).

    Computed without multiplying the zeros a stride-dilated input would hold: the 4x4,
    stride 2, padding 1 case (StyleGAN's fused upscale, the DCGAN) by `upsample_conv2x`; a
    transposed conv of a 1x1 input (the DCGAN's first layer) as one matmul; any other case
    as a correlation of the stride-dilated input with the flipped kernel.
    """
    if isinstance(kernel, dict):  # prepare_upsample(kernel) of a 4x4 kernel
        if (stride, padding) != (2, 1):
            raise ValueError("a prepared kernel is for stride 2, padding 1 only")
        return upsample_conv2x(x, kernel, precision)
    kh, kw = kernel.shape[:2]
    if (kh, kw, stride, padding) == (4, 4, 2, 1):
        return upsample_conv2x(x, kernel, precision)
    if stride == 1 and padding == 0 and x.shape[1:3] == (1, 1):
        # Each output pixel (i, j) is x . kernel[i, j]: one matmul.
        return precisions.bilinear(
            lambda a, b, p: jnp.einsum("bc,hwco->bhwo", a, b, precision=p),
            x[:, 0, 0, :],
            kernel,
            precision,
        )  # [B, kh, kw, out]
    pad_h, pad_w = kh - 1 - padding, kw - 1 - padding
    pads = ((pad_h, pad_h), (pad_w, pad_w))
    return _conv_nhwc(x, kernel[::-1, ::-1], pads, precision, lhs_dilation=(stride, stride))


def upsample_conv2x(x: jax.Array, kernel, precision: str, *, full: bool = False) -> jax.Array:
    """`conv_transpose2d(x, kernel, stride=2, padding=1)` for a 4x4 kernel, at the input
    resolution and without the zeros of a stride-dilated input (`full`: padding 0, the
    2H + 2 rows and columns before the crop, as StyleGAN2's upsampling conv needs them).

    Output row 2m + a takes input rows m - 1 + a and m + a with taps 3 - a and 1 - a (the
    same along columns): four sub-pixel 2x2 kernels. Counting output rows from -1
    (o + 1 = 2j + a'), every phase reads input rows (j - 1, j), so all four phases are one
    stride-1 conv with 4 x out channels over the input padded by one, and the interleave
    (depth-to-space) is a reshape-transpose and a slice that XLA fuses with the consumer.
    The gradient is the adjoint, a stride-2 conv of the output gradient with the same
    kernel (`_upsample_bwd`), 2-4x faster on XLA:CPU than the transpose of the sub-pixel form.

    Args:
      x: [B, H, W, in].
      kernel: [4, 4, in, out], torch `conv_transpose2d` layout moved to HWIO (not flipped),
        or `prepare_upsample(kernel)` (both forms computed once, outside the loop).
      precision: see `lax_precision`.

    Returns:
      [B, 2H, 2W, out], or [B, 2H + 2, 2W + 2, out] with `full`.
    """
    prepared = kernel if isinstance(kernel, dict) else prepare_upsample(kernel)
    return _upsample(x, prepared["phases"], prepared["adjoint"], precision, full)


def prepare_upsample(kernel: jax.Array) -> dict:
    """The two forms of a 4x4 stride-2 transposed-conv kernel [4, 4, in, out] that
    `upsample_conv2x` runs: the four sub-pixel phases as one [2, 2, in, 4 * out] kernel, and
    the [4, 4, out, in] kernel of the stride-2 adjoint conv (the input gradient)."""
    # Phase (a', b') = (1 - a, 1 - b) takes taps (a' + 2, a') for input rows (j - 1, j).
    phases = [kernel[2 + a :: -2, 2 + c :: -2] for a in (0, 1) for c in (0, 1)]
    return {"phases": jnp.concatenate(phases, axis=-1), "adjoint": jnp.swapaxes(kernel, 2, 3)}


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _upsample(x: jax.Array, phases: jax.Array, adjoint: jax.Array, precision: str, full: bool):
    del adjoint  # shapes the gradient only (see `_conv`)
    return _upsample_subpixel(x, phases, precision, full)


def _upsample_subpixel(x: jax.Array, phases: jax.Array, precision: str, full: bool) -> jax.Array:
    b, h, w, _ = x.shape
    out = phases.shape[-1] // 4
    z = _conv_nhwc(x, phases, ((1, 1), (1, 1)), precision)
    z = z.reshape(b, h + 1, w + 1, 2, 2, out).transpose(0, 1, 3, 2, 4, 5)
    z = z.reshape(b, 2 * h + 2, 2 * w + 2, out)  # output rows and columns -1 .. 2H
    return z if full else z[:, 1 : 2 * h + 1, 1 : 2 * w + 1]


def _upsample_fwd(x, phases, adjoint, precision, full):
    return _upsample_subpixel(x, phases, precision, full), (x, phases, adjoint)


def _upsample_bwd(precision, full, residuals, g):
    x, phases, adjoint = residuals
    pad = 0 if full else 1  # the transposed conv's padding
    grad_x = precisions.bilinear(
        lambda a, b, p: jax.lax.conv_general_dilated(
            a, b, (2, 2), ((pad, pad), (pad, pad)), dimension_numbers=_NHWC, precision=p
        ),
        g,
        adjoint,  # [4, 4, out, in]
        precision,
    )
    _, phases_vjp = jax.vjp(lambda k: _upsample_subpixel(x, k, precision, full), phases)
    return grad_x, phases_vjp(g)[0], jnp.zeros_like(adjoint)


_upsample.defvjp(_upsample_fwd, _upsample_bwd)


def nearest_upsample_kernel(kernel: jax.Array) -> jax.Array:
    """3x3 kernel [3, 3, in, out] -> the 4x4 kernel [4, 4, in, out] with which
    `upsample_conv2x` computes `conv2d(nearest x2 upsample of x, kernel, 1)` at the input
    resolution.

    After a nearest x2 upsample, output row 2m takes input rows m - 1 (tap 0) and m (taps 1
    and 2), row 2m + 1 rows m (taps 0, 1) and m + 1 (tap 2): the transposed conv (stride 2,
    padding 1) with the 4x4 kernel of taps (2, 1 + 2, 0 + 1, 0) along each axis, which
    `upsample_conv2x` runs with 2.25x fewer multiply-adds than the 3x3 conv over the
    upsampled image; mathematically the same (float32 rounding of the summed taps aside).
    """

    def taps(v, axis):  # 3 taps along `axis` -> the 4 taps of the transposed conv
        t0, t1, t2 = (jnp.take(v, i, axis=axis) for i in range(3))
        return jnp.stack([t2, t1 + t2, t0 + t1, t0], axis)

    return taps(taps(kernel, 0), 1)


def depthwise_conv2d(x: jax.Array, kernel: jax.Array, padding: int, precision: str) -> jax.Array:
    """The same [kh, kw] kernel applied to every channel on its own (the StyleGAN blur), with
    zero padding `padding` on every side: 'same' (`padding = k // 2`) or 'valid' (0).

    Written as a sum of shifted copies of the zero-padded input, which XLA fuses with the
    surrounding elementwise work into one pass (a grouped conv is a slow path on XLA:CPU).
    Its gradient is the same stencil with the kernel flipped (`_depthwise_bwd`): left to
    autodiff, each shifted copy would become its own padded tensor, nine full passes over
    the largest activations.
    """
    del precision  # elementwise float32 multiply-adds: no reduced-precision passes here
    k = kernel.shape[0]
    if k != kernel.shape[1] or k % 2 == 0 or padding not in (0, k // 2):
        raise ValueError("depthwise_conv2d supports a square odd kernel, padding k // 2 or 0")
    return _depthwise(x, kernel.astype(x.dtype), padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _depthwise(x: jax.Array, kernel: jax.Array, pad: int) -> jax.Array:
    return _stencil(x, kernel, pad)


def _stencil(x: jax.Array, kernel: jax.Array, pad: int) -> jax.Array:
    k = kernel.shape[0]
    h, w = x.shape[1] + 2 * pad - k + 1, x.shape[2] + 2 * pad - k + 1
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))) if pad else x
    terms = [kernel[i, j] * xp[:, i : i + h, j : j + w, :] for i in range(k) for j in range(k)]
    return functools.reduce(jnp.add, terms)


def _depthwise_fwd(x, kernel, pad):
    return _stencil(x, kernel, pad), (x, kernel)


def _depthwise_bwd(pad, residuals, g):
    x, kernel = residuals
    grad_kernel = jax.vjp(lambda k: _stencil(x, k, pad), kernel)[1](g)[0]
    return _stencil(g, kernel[::-1, ::-1], kernel.shape[0] - 1 - pad), grad_kernel


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)
