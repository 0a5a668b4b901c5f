"""Matmul/conv precision: the names a generator takes, the default per platform, and the
emulation on the CPU of what GPUs and TPUs do at reduced precision.

A generator's precision is a name (hashable, so it lives in the static architecture):

- "highest": full float32 products on every backend (on a TPU, six bfloat16 passes).
- "high": on a TPU, three bfloat16 passes; on a GPU, TF32 like "default".
- "default": the backend's fast float32 path: on a TPU one bfloat16 pass (operands rounded
  to bfloat16, products summed in float32), on an NVIDIA GPU since Ampere TF32 tensor cores
  (operands rounded to a 10-bit mantissa, summed in float32). On a CPU, full float32.
- "bf16", "tf32": the CPU emulation of those two: every conv and matmul operand of the
  generator (forward and backward) is rounded to a 7-bit (bfloat16) or a 10-bit (TF32)
  mantissa, round-to-nearest-even on the float32 bit pattern, and the products are summed in
  float32 at HIGHEST precision. On an accelerator they compute the same thing, at float32
  cost.
- "bf16_3x": the emulation of a TPU's "high": each operand split into a bfloat16 part and a
  bfloat16 remainder, and the three larger of the four cross products summed in float32.

XLA's own algorithm presets do not emulate these on the CPU (measured with jax 0.10.2:
`DotAlgorithmPreset.BF16_BF16_F32` gives the float32 result there, TF32 is refused), hence
the explicit rounding.

What the reduced precisions do to PULSE, and why each platform's default is what it is:
docs/precision.md and the README's "Precision on GPUs and TPUs".
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

LAX_PRECISIONS = {
    "highest": jax.lax.Precision.HIGHEST,
    "high": jax.lax.Precision.HIGH,
    "default": jax.lax.Precision.DEFAULT,
}
# Emulated names -> the mantissa bits their operands keep (float32 keeps 23).
EMULATED = {"bf16": 7, "tf32": 10}
# Emulated three-pass names -> the bits of each part (see `bilinear`).
THREE_PASS = {"bf16_3x": 7}
NAMES = tuple(LAX_PRECISIONS) + tuple(EMULATED) + tuple(THREE_PASS)

# The precision `load_generator(precision=None)` gives on each platform
# (`jax.default_backend()`), chosen from docs/precision.md's measurements (the README's
# "Precision on GPUs and TPUs"): TF32 on a GPU leaves the evaluation as it is and renders a
# 1024 px face 53 dB or more from float32's; one bfloat16 pass renders a StyleGAN v1 face
# 34 dB from it, three passes 90 dB, at half the passes of "highest".
PLATFORM_DEFAULTS = {"cpu": "highest", "gpu": "default", "tpu": "high"}


def check(name: str) -> str:
    """`name` if it is a precision name; else a ValueError listing them."""
    if name not in NAMES:
        raise ValueError(f"precision must be one of {', '.join(NAMES)}, got {name!r}")
    return name


def resolve(name: str | None, platform: str | None = None) -> str:
    """The precision to build a generator with: `name` itself, or for None the default of
    `platform` (`jax.default_backend()` when None; "highest" for a platform not listed)."""
    if name is not None:
        return check(name)
    platform = platform or jax.default_backend()
    platform = {"cuda": "gpu", "rocm": "gpu"}.get(platform, platform)  # device platform names
    return PLATFORM_DEFAULTS.get(platform, "highest")


def lax_precision(name: str) -> jax.lax.Precision:
    """The `precision=` of the lax op: HIGHEST for the emulated names (their operands are
    rounded beforehand, see `bilinear`)."""
    return LAX_PRECISIONS.get(check(name), jax.lax.Precision.HIGHEST)


def round_mantissa(x: jax.Array, bits: int) -> jax.Array:
    """float32 `x` rounded to `bits` mantissa bits, to nearest, ties to even, on the bit
    pattern (as a float32 -> bfloat16 conversion does for bits = 7). Overflow gives inf,
    NaN stays NaN."""
    drop = 23 - bits
    u = jax.lax.bitcast_convert_type(jnp.asarray(x, jnp.float32), jnp.uint32)
    odd = (u >> drop) & jnp.uint32(1)  # the kept part's last bit: ties go to even
    u = u + jnp.uint32((1 << (drop - 1)) - 1) + odd
    u = u & jnp.uint32(0xFFFFFFFF ^ ((1 << drop) - 1))
    return jnp.where(jnp.isnan(x), x, jax.lax.bitcast_convert_type(u, jnp.float32))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _operand(x: jax.Array, bits: int) -> jax.Array:
    """An operand as the reduced-precision unit reads it; its derivative is the identity (the
    unit's own result is what is differentiated, see `bilinear`)."""
    return round_mantissa(x, bits)


@_operand.defjvp
def _operand_jvp(bits, primals, tangents):
    return _operand(primals[0], bits), tangents[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _result(y: jax.Array, bits: int) -> jax.Array:
    """A product's result, unchanged; its cotangent is rounded, since the backward pass's
    products read the incoming gradient as an operand too."""
    del bits
    return y


def _result_fwd(y, bits):
    del bits
    return y, None


def _result_bwd(bits, _, g):
    return (round_mantissa(g, bits),)


_result.defvjp(_result_fwd, _result_bwd)


def bilinear(op, a: jax.Array, b: jax.Array, name: str) -> jax.Array:
    """`op(a, b, lax_precision)` (a matmul or conv, linear in each operand) at precision
    `name`. For an emulated name, both operands are rounded and the products summed in
    float32; differentiated, each backward product again reads rounded operands: the
    stored (rounded) operand and the rounded cotangent. A three-pass name sums three such
    products over the operands' parts, backward too. Other names call `op` as it is."""
    if name in THREE_PASS:
        return _three_pass(op, a, b, THREE_PASS[name])
    bits = EMULATED.get(name)
    if bits is None:
        return op(a, b, lax_precision(name))
    return _result(op(_operand(a, bits), _operand(b, bits), jax.lax.Precision.HIGHEST), bits)


def _parts(x: jax.Array, bits: int) -> tuple[jax.Array, jax.Array]:
    high = round_mantissa(x, bits)
    return high, round_mantissa(x - high, bits)


def _three_pass_products(op, a, b, bits):
    """op's three passes over (high, low) parts: a_low b_high + a_high b_low + a_high b_high,
    the small ones summed first."""
    (ah, al), (bh, bl) = _parts(a, bits), _parts(b, bits)
    hi = jax.lax.Precision.HIGHEST
    return (op(al, bh, hi) + op(ah, bl, hi)) + op(ah, bh, hi)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3))
def _three_pass(op, a, b, bits):
    return _three_pass_products(op, a, b, bits)


def _three_pass_fwd(op, a, b, bits):
    return _three_pass_products(op, a, b, bits), (a, b)


def _three_pass_bwd(op, bits, residuals, g):
    """Each backward product in three passes too: op's transposes, bilinear in (cotangent,
    the other operand), over their parts."""
    a, b = residuals

    def grad_a(cot, other):
        return jax.vjp(lambda x: op(x, other, jax.lax.Precision.HIGHEST), a)[1](cot)[0]

    def grad_b(cot, other):
        return jax.vjp(lambda y: op(other, y, jax.lax.Precision.HIGHEST), b)[1](cot)[0]

    return (
        _three_pass_products(lambda c, o, _: grad_a(c, o), g, b, bits),
        _three_pass_products(lambda c, o, _: grad_b(c, o), g, a, bits),
    )


_three_pass.defvjp(_three_pass_fwd, _three_pass_bwd)


def dot(x: jax.Array, w: jax.Array, name: str) -> jax.Array:
    """`jnp.dot(x, w)` at precision `name` (see `bilinear`)."""
    return bilinear(lambda a, b, p: jnp.dot(a, b, precision=p), x, w, name)
