"""Tests for pulse_jax.degrade.operators: shapes, linearity, gradients, bicubic unchanged, eps
rules."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from pulse_jax.degrade import operators
from pulse_jax.degrade.downscale import bicubic_downscale, make_bicubic
from pulse_jax.degrade.operators import OperatorName, make_operator

NAMES = list(OperatorName)
R, SIDE = 32, 8  # factor 4


def images(seed: int, n: int = 2) -> jax.Array:
    return jax.random.uniform(jax.random.key(seed), (n, R, R, 3))


@pytest.mark.parametrize("name", NAMES)
def test_shape_and_dtype(name):
    op = make_operator(name, SIDE, R // SIDE)
    y = jax.jit(op)(images(0))
    assert y.shape == (2, SIDE, SIDE, 3) and y.dtype == jnp.float32
    assert jax.jit(op)(images(0)[0]).shape == (SIDE, SIDE, 3)  # no batch axis


@pytest.mark.parametrize("name", NAMES)
def test_linear(name):
    # Every operator is linear (denoise's noise is in `observe`, not in the operator).
    # float32 matmuls: max-abs 1e-5 on values of order 1.
    op = jax.jit(make_operator(name, SIDE, R // SIDE))
    x, y = images(1), images(2)
    np.testing.assert_allclose(op(2.0 * x - 0.5 * y), 2.0 * op(x) - 0.5 * op(y), atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_gradient_is_the_adjoint_and_matches_finite_differences(name):
    op = make_operator(name, SIDE, R // SIDE)
    x = images(3, 1)
    v = jax.random.normal(jax.random.key(4), (1, SIDE, SIDE, 3))
    # Dot-product test: <A u, v> = <u, A^T v>, A^T v from reverse-mode autodiff.
    u = jax.random.normal(jax.random.key(5), x.shape)
    (adjoint,) = jax.vjp(op, x)[1](v)
    np.testing.assert_allclose(jnp.vdot(op(u), v), jnp.vdot(u, adjoint), rtol=1e-4)
    # The gradient of a squared error against central differences, which are exact for a
    # quadratic up to float32 rounding (step 1e-2: relative 2e-3 leaves room for it).
    target = op(images(6, 1))

    def loss(z):
        return jnp.mean((op(z) - target) ** 2)

    grad = jax.grad(loss)(x)
    direction = jax.random.normal(jax.random.key(7), x.shape)
    h = 1e-2
    numeric = (loss(x + h * direction) - loss(x - h * direction)) / (2 * h)
    np.testing.assert_allclose(jnp.vdot(grad, direction), numeric, rtol=2e-3)


@pytest.mark.parametrize("factor", [1, 2, 4, 8, 16])
def test_bicubic_is_pulses_downscale_unchanged(factor):
    op = make_operator("bicubic", 64 // factor, factor)
    x = jax.random.uniform(jax.random.key(8), (2, 64, 64, 3))
    np.testing.assert_array_equal(op(x), make_bicubic(factor)(x))
    np.testing.assert_array_equal(op(x), bicubic_downscale(x, factor))
    assert operators.DEFAULT_OPERATOR == OperatorName.BICUBIC


def test_equal_operators_are_equal_static_arguments():
    # solve's jit cache keys on the operator: equal parameters must hash equal.
    a = make_operator("gaussian", SIDE, 4, blur_sigma=1.5)
    assert a == make_operator("gaussian", SIDE, 4, blur_sigma=1.5) and hash(a) == hash(
        make_operator("gaussian", SIDE, 4, blur_sigma=1.5)
    )
    assert a != make_operator("gaussian", SIDE, 4, blur_sigma=2.0)


def test_box_is_the_block_mean():
    x = images(9)
    y = make_operator("box", SIDE, 4)(x)
    expected = np.asarray(x).reshape(2, SIDE, 4, SIDE, 4, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(y, expected, atol=1e-6)


def test_nearest_picks_pillows_pixel():
    x = np.asarray(images(10))
    y = make_operator("nearest", SIDE, 4)(x)
    np.testing.assert_array_equal(y, x[:, 2::4, 2::4])
    # Pillow's nearest resize picks the same pixels.
    pil = Image.fromarray((x[0] * 255).astype(np.uint8)).resize((SIDE, SIDE), Image.NEAREST)
    np.testing.assert_array_equal(np.asarray(pil), (x[0, 2::4, 2::4] * 255).astype(np.uint8))


def test_gaussian_rows_and_limits():
    matrix = operators.gaussian_matrix(R, 4, 2.0)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-6)  # constants stay constant
    # The blur is centred on each block: symmetric about the block centre in the interior.
    row = matrix[3]
    centre = 3 * 4 + 1.5
    np.testing.assert_allclose(row[int(centre - 0.5) - 3], row[int(centre + 0.5) + 3], atol=1e-7)
    # A small sigma at an odd factor is the nearest subsampling.
    np.testing.assert_allclose(
        operators.gaussian_matrix(27, 3, 0.05), operators.nearest_matrix(27, 3), atol=1e-6
    )
    # A wider blur smooths more: stripes one block wide fade toward their mean.
    stripes = (np.arange(R) // 4) % 2
    board = np.broadcast_to(stripes[None, :, None, None], (1, R, R, 3)).astype(np.float32)
    spread = [
        float(np.std(make_operator("gaussian", SIDE, 4, blur_sigma=s)(board))) for s in (0.3, 2.0)
    ]
    assert spread[1] < spread[0]


def test_inpaint_counts_only_observed_pixels_and_scales_eps():
    op = make_operator("inpaint", SIDE, 4, mask="center")
    mask = op.mask
    assert mask.shape == (SIDE, SIDE) and mask[SIDE // 2, SIDE // 2] == 0 and mask[0, 0] == 1
    assert op.observed_fraction == pytest.approx(0.75)
    x = images(11)
    y = np.asarray(op(x))
    assert np.all(y[:, mask == 0] == 0)
    np.testing.assert_array_equal(y[:, mask == 1], np.asarray(make_bicubic(4)(x))[:, mask == 1])
    # What happens under the mask never changes the observation: HR pixel 17 reaches
    # only LR pixels 2..5 (the 16 bicubic taps of output o cover 4o - 6 .. 4o + 9), masked.
    other = np.asarray(x).copy()
    other[:, 17, 17] = 0.0
    np.testing.assert_allclose(op(other), y, atol=1e-7)
    assert op.success_eps(2e-3) == pytest.approx(1.5e-3)
    np.testing.assert_array_equal(
        op.observed(np.ones((SIDE, SIDE, 3))), np.repeat(mask[..., None], 3, 2)
    )


def test_inpaint_mask_from_a_file(tmp_path):
    pattern = np.zeros((SIDE, SIDE), np.uint8)
    pattern[:, : SIDE // 2] = 255
    Image.fromarray(pattern).save(tmp_path / "mask.png")
    op = make_operator("inpaint", SIDE, 4, mask=tmp_path / "mask.png")
    np.testing.assert_array_equal(op.mask, pattern / 255)
    with pytest.raises(ValueError, match="the mask is 8x8, the observation 4x4"):
        make_operator("inpaint", 4, 8, mask=tmp_path / "mask.png")
    Image.fromarray(np.zeros_like(pattern)).save(tmp_path / "black.png")
    with pytest.raises(ValueError, match="observes no pixel"):
        make_operator("inpaint", SIDE, 4, mask=tmp_path / "black.png")
    with pytest.raises(ValueError, match="no such file"):
        make_operator("inpaint", SIDE, 4, mask=tmp_path / "missing.png")
    random = make_operator("inpaint", SIDE, 4, mask="random")
    assert 0.2 < random.observed_fraction < 0.8
    assert random == make_operator("inpaint", SIDE, 4, mask="random")  # a fixed pattern


def test_colorize_is_the_luma_in_every_channel():
    x = images(12)
    y = np.asarray(make_operator("colorize", SIDE, 4)(x))
    low = np.asarray(make_bicubic(4)(x))
    luma = low @ np.array(operators.LUMA, np.float32)
    for c in range(3):
        np.testing.assert_allclose(y[..., c], luma, atol=1e-6)
    # A grey input observes as itself; a colour one as its grey.
    grey = np.repeat(np.linspace(0, 1, SIDE * SIDE).reshape(SIDE, SIDE, 1), 3, 2)
    op = make_operator("colorize", SIDE, 4)
    np.testing.assert_allclose(op.observed(grey), grey, atol=1e-6)


def test_denoise_observation_and_eps():
    op = make_operator("denoise", SIDE, 4, noise_std=0.1)
    x = 0.25 + 0.5 * images(13, 8)  # away from 0 and 1, so clipping is rare
    clean = np.asarray(op(x))
    np.testing.assert_array_equal(clean, make_bicubic(4)(x))
    noisy = op.observe(x, jax.random.key(0))
    assert noisy.min() >= 0 and noisy.max() <= 1
    # The noise has the stated std (8 x 8 x 8 x 3 = 1536 draws: within 10%).
    assert np.std(noisy - clean) == pytest.approx(0.1, rel=0.1)
    # The true image's L2 against its noisy observation is about noise_std**2: eps is added.
    assert op.success_eps(2e-3) == pytest.approx(2e-3 + 0.01)
    assert np.mean((noisy - clean) ** 2) < op.success_eps(2e-3)
    # Noise 0 is the bicubic operator's observation.
    zero = make_operator("denoise", SIDE, 4, noise_std=0.0)
    np.testing.assert_array_equal(zero.observe(x, jax.random.key(0)), np.clip(clean, 0, 1))


def test_bad_names_and_parameters():
    with pytest.raises(ValueError, match="unknown operator 'sharpen'; choose from bicubic"):
        make_operator("sharpen", SIDE, 4)
    with pytest.raises(ValueError, match="blur_sigma must be > 0"):
        make_operator("gaussian", SIDE, 4, blur_sigma=0.0)
    with pytest.raises(ValueError, match="noise_std must be >= 0"):
        make_operator("denoise", SIDE, 4, noise_std=-1.0)
    with pytest.raises(ValueError, match="factor must be a positive integer"):
        make_operator("box", SIDE, 0)
    with pytest.raises(ValueError, match="divisible by 4"):
        make_operator("box", SIDE, 4)(jnp.zeros((1, 30, 30, 3)))


def test_parameters_registry():
    assert operators.parameters_of("gaussian") == ("blur_sigma",)
    assert operators.parameters_of("denoise") == ("noise_std",)
    assert operators.parameters_of("inpaint") == ("mask",)
    assert operators.parameters_of("bicubic") == ()
    op = make_operator("gaussian", SIDE, 4)
    assert op.blur_sigma == operators.PARAMETER["blur_sigma"].default
    assert dataclasses.replace(op, blur_sigma=1.0).describe() == "gaussian sigma 1"
