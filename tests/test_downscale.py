"""Tests for pulse_jax.degrade.downscale against the reference's bicubic downscales.

Golden: tests/golden/bicubic.npz (NCHW, from the reference's BicubicDownSample).
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from pulse_jax.degrade.downscale import (
    bicubic_downscale,
    bicubic_kernel,
    bicubic_matrix,
    make_bicubic,
)

GOLDEN = Path(__file__).parent / "golden" / "bicubic.npz"
FACTORS = (2, 4, 8, 16, 32)
# Reached on CPU: at most 3.0e-7 (factor 16; images in [0, 1]): each pass is a matmul
# that sums the taps in another order than the reference's convolution. The
# tolerance leaves room for other backends and XLA versions.
ATOL = 1e-5

# Jitted once: eager mode would compile every primitive separately, which is slower.
downscale = jax.jit(bicubic_downscale, static_argnums=1)


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as data:
        return {k: data[k] for k in data.files}


def to_nhwc(x: np.ndarray) -> np.ndarray:
    return np.transpose(x, (0, 2, 3, 1))


@pytest.mark.parametrize("factor", FACTORS)
def test_matches_reference(golden, factor):
    images = jnp.asarray(to_nhwc(golden["x"]))  # [2, 128, 128, 3]
    expected = to_nhwc(golden[f"y_factor{factor}"])
    out = downscale(images, factor)
    assert out.shape == expected.shape
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), expected, rtol=0, atol=ATOL)


@pytest.mark.parametrize("factor", (1, 2, 8, 32))
def test_kernel_taps(factor):
    taps = bicubic_kernel(factor)
    assert taps.shape == (4 * factor,)
    assert taps.dtype == np.float32
    np.testing.assert_allclose(taps.sum(), 1.0, atol=1e-6)
    np.testing.assert_array_equal(taps, taps[::-1])  # symmetric about the window centre


def test_kernel_factor_2_by_hand():
    # cubic(+-1.75), cubic(+-1.25), cubic(+-0.75), cubic(+-0.25) with a = -0.5, sum 2.
    raw = np.array([-0.0234375, -0.0703125, 0.2265625, 0.8671875])
    expected = np.concatenate([raw, raw[::-1]]) / 2.0
    np.testing.assert_allclose(bicubic_kernel(2), expected, rtol=1e-6)


@pytest.mark.parametrize("n_in,factor", [(128, 32), (16, 2), (12, 3), (4, 4), (2, 2)])
def test_matrix_is_the_reflect_padded_strided_filter(n_in, factor):
    """Row o of the pass matrix, built here tap by tap: the kernel over the reflect-padded
    samples o * factor .. o * factor + 4 * factor - 1 (numpy's repeated reflection where a
    pad is longer than the axis, e.g. 4 samples and 6 padded on each side)."""
    taps = bicubic_kernel(factor).astype(np.float64)
    before = (4 * factor - factor) // 2
    padded_index = np.pad(np.arange(n_in), (before, 4 * factor - factor - before), mode="reflect")
    expected = np.zeros((n_in // factor, n_in))
    for o in range(n_in // factor):
        for t in range(4 * factor):
            expected[o, padded_index[o * factor + t]] += taps[t]
    matrix = bicubic_matrix(n_in, factor)
    assert matrix.dtype == np.float32 and not matrix.flags.writeable
    np.testing.assert_allclose(matrix, expected, rtol=0, atol=1e-7)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-6)


def test_leading_axes(golden):
    images = jnp.asarray(to_nhwc(golden["x"]))  # [2, 128, 128, 3]
    flat = downscale(images, 8)
    stacked = jnp.stack([images, images[::-1]])  # [2, 2, 128, 128, 3]
    out = downscale(stacked, 8)
    assert out.shape == (2, 2, 16, 16, 3)
    np.testing.assert_allclose(np.asarray(out[0]), np.asarray(flat), rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out[1]), np.asarray(flat[::-1]), rtol=0, atol=1e-6)
    single = downscale(images[0], 8)  # no batch axis
    np.testing.assert_allclose(np.asarray(single), np.asarray(flat[0]), rtol=0, atol=1e-6)


def test_channels_and_samples_do_not_mix():
    images = jnp.zeros((3, 32, 32, 4)).at[1, :, :, 2].set(1.0)
    out = np.array(downscale(images, 4))
    np.testing.assert_allclose(out[1, :, :, 2], 1.0, atol=1e-6)  # taps sum to one
    out[1, :, :, 2] = 0.0
    assert not out.any()


def test_non_square():
    images = jax.random.uniform(jax.random.key(0), (1, 32, 64, 3))
    out = downscale(images, 8)
    assert out.shape == (1, 4, 8, 3)
    transposed = downscale(jnp.swapaxes(images, 1, 2), 8)
    np.testing.assert_allclose(
        np.asarray(out), np.swapaxes(np.asarray(transposed), 1, 2), atol=1e-6
    )


def test_factor_one_is_identity():
    images = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3))
    assert bicubic_downscale(images, 1) is images


def test_differentiable():
    images = jax.random.uniform(jax.random.key(2), (1, 16, 16, 3))
    check_grads(lambda x: downscale(x, 4), (images,), order=1, modes=["rev"])


def test_make_bicubic(golden):
    images = jnp.asarray(to_nhwc(golden["x"]))
    np.testing.assert_array_equal(
        np.asarray(jax.jit(make_bicubic(16))(images)), np.asarray(downscale(images, 16))
    )


@pytest.mark.parametrize("shape", [(1, 30, 32, 3), (1, 32, 30, 3)])
def test_not_divisible(shape):
    with pytest.raises(ValueError, match="not divisible"):
        bicubic_downscale(jnp.zeros(shape), 4)


@pytest.mark.parametrize("factor", [0, -2, 2.0])
def test_bad_factor(factor):
    with pytest.raises(ValueError, match="positive integer"):
        bicubic_downscale(jnp.zeros((1, 8, 8, 3)), factor)
    with pytest.raises(ValueError, match="positive integer"):
        make_bicubic(factor)
