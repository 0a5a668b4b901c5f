"""The generators' layers against plain `jax.lax` formulations, values and gradients, and
the weight preparation that `solve` runs once per call (`arch.prepare`).

Every op here has a custom gradient (for speed, see `pulse_jax.generators.ops`); each is
compared with JAX's own autodiff of the textbook formulation. Tolerance: max-abs 1e-4 on
values and gradients of magnitude up to ~30 (float32 sums in another order).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import pytest

from pulse_jax.generators import ops
from pulse_jax.options import SearchOptions

ATOL = 1e-4
NHWC = ("NHWC", "HWIO", "NHWC")


def plain_conv(x, kernel, padding):
    pads = [(padding, padding)] * 2
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), pads, dimension_numbers=NHWC, precision="highest"
    )


def plain_conv_transpose(x, kernel):
    """torch conv_transpose2d(stride 2, padding 1) of a 4x4 kernel: the stride-dilated input
    correlated with the flipped kernel."""
    return jax.lax.conv_general_dilated(
        x,
        kernel[::-1, ::-1],
        (1, 1),
        [(2, 2), (2, 2)],
        lhs_dilation=(2, 2),
        dimension_numbers=NHWC,
        precision="highest",
    )


def value_and_grads(fn, x, kernel, weights):
    """The op's output and the gradients of a weighted sum of it w.r.t. x and the kernel."""
    out = fn(x, kernel)
    grads = jax.grad(lambda a, b: jnp.sum(fn(a, b) * weights), argnums=(0, 1))(x, kernel)
    return out, grads


def random(seed, shape, scale=1.0):
    return scale * jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def assert_same(actual, expected):
    chex.assert_trees_all_equal_shapes(actual, expected)
    chex.assert_trees_all_close(actual, expected, rtol=0, atol=ATOL)


@pytest.mark.parametrize("padding,size", [(1, 3), (0, 1)])
def test_conv2d_and_its_gradients(padding, size):
    x, kernel = random(0, (2, 9, 9, 5)), random(1, (size, size, 5, 7), 0.3)
    weights = random(2, (2, 9, 9, 7))  # 'same' output either way
    expected = value_and_grads(lambda a, k: plain_conv(a, k, padding), x, kernel, weights)
    actual = value_and_grads(lambda a, k: ops.conv2d(a, k, padding, "highest"), x, kernel, weights)
    assert_same(actual, expected)


def test_prepared_conv2d_gives_the_raw_kernel_its_gradient():
    """`prepare_conv` inside the differentiated function: the kernel's gradient arrives
    whole through the forward kernel (the adjoint kernel only shapes the input gradient)."""
    x, kernel, weights = (
        random(0, (1, 8, 8, 4)),
        random(1, (3, 3, 4, 6), 0.3),
        random(2, (1, 8, 8, 6)),
    )
    expected = value_and_grads(lambda a, k: plain_conv(a, k, 1), x, kernel, weights)
    actual = value_and_grads(
        lambda a, k: ops.conv2d(a, ops.prepare_conv(k * 1.0), 1, "highest"), x, kernel, weights
    )
    assert_same(actual, expected)


@pytest.mark.parametrize("prepared", [False, True])
def test_upsample_conv2x_is_torch_conv_transpose_with_its_gradients(prepared):
    x, kernel, weights = (
        random(0, (2, 6, 5, 4)),
        random(1, (4, 4, 4, 3), 0.3),
        random(2, (2, 12, 10, 3)),
    )

    def fn(a, k):
        return ops.upsample_conv2x(a, ops.prepare_upsample(k) if prepared else k, "highest")

    expected = value_and_grads(plain_conv_transpose, x, kernel, weights)
    assert_same(value_and_grads(fn, x, kernel, weights), expected)
    assert_same(ops.conv_transpose2d(x, kernel, 2, 1, "highest"), expected[0])
    assert_same(ops.conv_transpose2d(x, ops.prepare_upsample(kernel), 2, 1, "highest"), expected[0])
    with pytest.raises(ValueError, match="stride 2, padding 1"):
        ops.conv_transpose2d(x, ops.prepare_upsample(kernel), 1, 0, "highest")


def test_nearest_upsample_then_conv3x3_is_one_transposed_conv():
    x, kernel, weights = (
        random(0, (1, 5, 5, 3)),
        random(1, (3, 3, 3, 4), 0.3),
        random(2, (1, 10, 10, 4)),
    )

    def plain(a, k):  # each pixel repeated 2 x 2, then the 3x3 conv
        return plain_conv(jnp.repeat(jnp.repeat(a, 2, axis=1), 2, axis=2), k, 1)

    def fast(a, k):
        return ops.upsample_conv2x(a, ops.nearest_upsample_kernel(k), "highest")

    assert_same(
        value_and_grads(fast, x, kernel, weights), value_and_grads(plain, x, kernel, weights)
    )


def test_blur_and_its_gradient():
    x, weights = random(0, (2, 7, 7, 3)), random(2, (2, 7, 7, 3))
    blur = jnp.outer(jnp.array([1.0, 2.0, 1.0]), jnp.array([1.0, 3.0, 1.0])) / 20.0  # asymmetric
    depthwise = jnp.tile(blur[:, :, None, None], (1, 1, 1, 3))

    def plain(a, k):
        return jax.lax.conv_general_dilated(
            a,
            k,
            (1, 1),
            [(1, 1), (1, 1)],
            dimension_numbers=NHWC,
            feature_group_count=3,
            precision="highest",
        )

    expected = plain(x, depthwise)
    grad = jax.grad(lambda a: jnp.sum(plain(a, depthwise) * weights))(x)
    assert_same(ops.depthwise_conv2d(x, blur, 1, "highest"), expected)
    assert_same(
        jax.grad(lambda a: jnp.sum(ops.depthwise_conv2d(a, blur, 1, "highest") * weights))(x), grad
    )


@pytest.mark.parametrize("tile_latent", [False, True])
def test_stylegan_prepare_changes_no_number(tiny_stylegan, tile_latent):
    """Rendering and its gradients from prepared weights equal those from the raw weights:
    the same float32 operations run on the same values, outside the loop."""
    arch, params = tiny_stylegan.arch, tiny_stylegan.params
    options = SearchOptions(tile_latent=tile_latent)
    starts = [arch.sample_start(k, options) for k in jax.random.split(jax.random.key(0), 2)]
    variables = jax.tree.map(lambda *v: jnp.stack(v), *starts)
    prepared = jax.jit(arch.prepare)(params)
    conv1 = prepared["synthesis"]["blocks"]["8x8"]["conv1"]
    assert "weight" not in conv1 and set(conv1["prepared"]) == {"kernel", "adjoint"}

    def loss(p, v):
        images, dlatents = arch.render(p, v, options)
        return jnp.sum(images**2) + jnp.sum(dlatents)

    raw = jax.jit(jax.value_and_grad(loss, argnums=1))(params, variables)
    fast = jax.jit(jax.value_and_grad(loss, argnums=1))(prepared, variables)
    assert_same(fast, raw)
    assert float(jnp.abs(raw[0])) > 0


def test_dcgan_prepare_changes_no_number(dcgan64):
    arch, params = dcgan64.arch, dcgan64.params
    z = random(0, (3, arch.latent_size))

    def loss(p, latent):
        return jnp.sum(arch.render(p, {"latent": latent}, SearchOptions())[0] ** 2)

    raw = jax.jit(jax.value_and_grad(loss, argnums=1))(params, z)
    fast = jax.jit(jax.value_and_grad(loss, argnums=1))(jax.jit(arch.prepare)(params), z)
    assert_same(fast, raw)
