"""The emulated precisions (pulse_jax.precision): the rounding, the rounded operands of every
conv and matmul forward and backward, "highest" unchanged, the default per platform, and a
golden run at each emulated precision within the deviation docs/precision.md measured.

Tolerances, justified:
- Rounding: bitwise, against ml_dtypes' float32 -> bfloat16 conversion (the same
  round-to-nearest-even) and against a float64 round-half-even of the 11-bit significand
  (TF32); both exact by construction.
- Emulated products: 1e-6 max-abs against the same lax op on operands rounded by hand
  (1e-5 for the 2x upsampling's gradient, a sum of 16 products more); the float32 result
  lies 1e-3 or more away, so the check tells the two apart. Three passes: 1e-6 against the
  three part products by hand; within 1e-3 of float32, a single bfloat16 pass not.
- Golden run `sgd_fixed` (tiny StyleGAN, 20 SGD steps): measured worst relative L2
  deviation from the reference 0.13% (tf32) and 0.72% (bf16), against 0.02% at float32;
  asserted 0.5% and 2%, and at least 0.05% (the emulation acts).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from precision_lib import golden_problem

import pulse_jax
from pulse_jax import precision
from pulse_jax.generators import ops


def _special_values() -> np.ndarray:
    one = np.float32(1)
    ulp10, ulp7 = 2.0**-10, 2.0**-7
    values = [
        0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.finfo(np.float32).max,
        np.finfo(np.float32).tiny, 1e-40, -3e-39,  # smallest normal, subnormals
        one + ulp10 / 2, one + 3 * ulp10 / 2, -(one + ulp10 / 2),  # TF32 ties
        one + ulp7 / 2, one + 3 * ulp7 / 2, -(one + 3 * ulp7 / 2),  # bfloat16 ties
        one + ulp10 / 2 + 2.0**-22, 65504.0, 3.1415927,
    ]  # fmt: skip
    return np.asarray(values, np.float32)


def _test_values() -> np.ndarray:
    rng = np.random.default_rng(0)
    scaled = rng.standard_normal(4000) * 10.0 ** rng.integers(-30, 30, 4000)
    bits = rng.integers(0, 2**32, 4000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    finite = bits[np.isfinite(bits)]
    return np.concatenate([_special_values(), scaled.astype(np.float32), finite])


def test_bf16_rounding_is_the_bfloat16_conversion():
    x = _test_values()
    got = np.asarray(precision.round_mantissa(jnp.asarray(x), 7))
    want = x.astype(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_tf32_rounding_keeps_ten_bits_ties_to_even():
    x = _test_values()
    x = x[np.isfinite(x) & (np.abs(x) >= np.finfo(np.float32).tiny)]  # normal numbers
    x = x[np.abs(x) < 3.4e38]  # none that round up to inf
    m, e = np.frexp(x.astype(np.float64))  # x = m * 2**e, |m| in [0.5, 1)
    want = np.ldexp(np.round(m * 2.0**11), e - 11).astype(np.float32)  # np.round: half even
    got = np.asarray(precision.round_mantissa(jnp.asarray(x), 10))
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    ties = jnp.asarray([1 + 2.0**-11, 1 + 3 * 2.0**-11, -(1 + 2.0**-11)], jnp.float32)
    np.testing.assert_array_equal(precision.round_mantissa(ties, 10), [1, 1 + 2.0**-9, -1])


def test_rounding_overflow_and_nan():
    big = np.finfo(np.float32).max
    got = precision.round_mantissa(jnp.asarray([big, -big, np.nan], jnp.float32), 7)
    assert np.isposinf(got[0]) and np.isneginf(got[1]) and np.isnan(got[2])


def _rounded(x, name):
    return precision.round_mantissa(x, precision.EMULATED[name])


@pytest.mark.parametrize("name", ["bf16", "tf32"])
def test_emulated_conv_reads_rounded_operands_forward_and_backward(name):
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (2, 8, 8, 4))
    kernel = jax.random.normal(keys[1], (3, 3, 4, 5))
    g = jax.random.normal(keys[2], (2, 8, 8, 5))

    def conv(a, k):
        return jax.lax.conv_general_dilated(
            a, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=jax.lax.Precision.HIGHEST,
        )  # fmt: skip

    def emulated(a, k, c):
        out, vjp = jax.vjp(lambda a, k: ops.conv2d(a, ops.prepare_conv(k), 1, name), a, k)
        return (out, *vjp(c))

    def by_hand(a, k, c):  # the plain conv (and its transposes) of rounded operands
        ra, rk, rc = _rounded(a, name), _rounded(k, name), _rounded(c, name)
        out, vjp = jax.vjp(conv, ra, rk)
        return (out, *vjp(rc))

    def float32(a, k, c):
        out, vjp = jax.vjp(conv, a, k)
        return (out, *vjp(c))

    got, want, full = (jax.jit(f)(x, kernel, g) for f in (emulated, by_hand, float32))
    for got_i, want_i, full_i in zip(got, want, full, strict=True):
        np.testing.assert_allclose(got_i, want_i, rtol=0, atol=1e-6)
        assert np.abs(np.asarray(full_i) - np.asarray(want_i)).max() > 1e-3


@pytest.mark.parametrize("name", ["bf16", "tf32"])
def test_emulated_dot_and_upsample_gradients_read_rounded_operands(name):
    keys = jax.random.split(jax.random.key(1), 4)
    x, w = jax.random.normal(keys[0], (3, 16)), jax.random.normal(keys[1], (16, 8))
    g = jax.random.normal(keys[2], (3, 8))
    grad_x = jax.jit(lambda a, c: jax.vjp(lambda a: ops.dot(a, w, name), a)[1](c)[0])(x, g)
    want = jnp.dot(_rounded(g, name), _rounded(w, name).T, precision="highest")
    np.testing.assert_allclose(grad_x, want, rtol=0, atol=1e-6)
    # The 2x upsampling conv's custom input gradient: a stride-2 conv of the rounded
    # cotangent with the rounded kernel, as jax's own transpose of the rounded forward gives.
    kernel = jax.random.normal(keys[3], (4, 4, 3, 2))
    image = jax.random.normal(keys[0], (1, 5, 5, 3))
    cot = jax.random.normal(keys[1], (1, 10, 10, 2))

    @jax.jit
    def grads(a, c):
        got = jax.vjp(lambda a: ops.upsample_conv2x(a, kernel, name), a)[1](c)[0]
        rounded_kernel = _rounded(kernel, name)
        plain = jax.vjp(lambda a: ops.upsample_conv2x(a, rounded_kernel, "highest"), a)[1]
        return got, plain(_rounded(c, name))[0]

    got, want = grads(image, cot)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_three_pass_bf16_sums_the_three_larger_part_products_forward_and_backward():
    keys = jax.random.split(jax.random.key(4), 3)
    x, w = jax.random.normal(keys[0], (3, 64)), jax.random.normal(keys[1], (64, 8))
    g = jax.random.normal(keys[2], (3, 8))

    def parts(v):
        high = precision.round_mantissa(v, 7)
        return high, precision.round_mantissa(v - high, 7)

    def three(a, b):
        (ah, al), (bh, bl) = parts(a), parts(b)
        return sum(jnp.dot(p, q, precision="highest") for p, q in ((al, bh), (ah, bl), (ah, bh)))

    out, vjp = jax.jit(lambda a, b: jax.vjp(lambda a, b: ops.dot(a, b, "bf16_3x"), a, b))(x, w)
    np.testing.assert_allclose(out, three(x, w), rtol=0, atol=1e-6)
    grad_x, grad_w = vjp(g)
    np.testing.assert_allclose(grad_x, three(g, w.T), rtol=0, atol=1e-6)
    np.testing.assert_allclose(grad_w, three(x.T, g), rtol=0, atol=1e-6)
    # Near float32 (parts of 16 bits), far nearer than one bfloat16 pass.
    exact = jnp.dot(x, w, precision="highest")
    assert np.abs(out - exact).max() < 1e-3 < np.abs(ops.dot(x, w, "bf16") - exact).max()


def test_highest_is_the_plain_lax_op():
    x, w = (
        jax.random.normal(jax.random.key(2), (4, 32)),
        jax.random.normal(jax.random.key(3), (32, 8)),
    )
    got = jax.jit(lambda a, b: ops.dot(a, b, "highest"))(x, w)
    want = jax.jit(lambda a, b: jnp.dot(a, b, precision=jax.lax.Precision.HIGHEST))(x, w)
    np.testing.assert_array_equal(got, want)  # the same program
    assert ops.lax_precision("default") == jax.lax.Precision.DEFAULT
    assert ops.lax_precision("bf16") == jax.lax.Precision.HIGHEST  # operands rounded first


def test_default_precision_per_platform():
    assert precision.resolve(None, "cpu") == "highest"
    assert precision.resolve(None, "gpu") == "default"  # TF32 (docs/precision.md)
    assert precision.resolve(None, "cuda") == "default"
    assert precision.resolve(None, "tpu") == "high"  # three bfloat16 passes; one is too coarse
    assert precision.resolve(None, "some_new_platform") == "highest"
    assert precision.resolve("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="precision must be one of"):
        precision.resolve("fp8")


def test_load_generator_takes_the_platforms_default(tiny_stylegan_path, monkeypatch):
    assert pulse_jax.load_generator(tiny_stylegan_path).arch.precision == "highest"  # CPU
    assert pulse_jax.load_generator(tiny_stylegan_path, precision="tf32").arch.precision == "tf32"
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert pulse_jax.load_generator(tiny_stylegan_path).arch.precision == "default"


@pytest.mark.parametrize(("name", "tolerance"), [("tf32", 0.005), ("bf16", 0.02)])
def test_emulated_golden_run_stays_near_the_reference(
    golden_dir, tiny_stylegan_path, name, tolerance
):
    reference, target, init, options = golden_problem(golden_dir / "run_sgd_fixed.npz", 12)
    generator = pulse_jax.load_generator(tiny_stylegan_path, precision=name)
    l2 = np.asarray(pulse_jax.solve(target, generator, init=init, **options).history["L2"])
    np.testing.assert_allclose(l2[:, :, 0], reference, rtol=tolerance)
    # float32 stays within 0.02% of the reference here (tests/test_solve.py): the emulation acts.
    assert (np.abs(l2[:, :, 0] - reference) / reference).max() > 5e-4
