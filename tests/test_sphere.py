"""Tests for pulse_jax.sphere: PULSE's row-wise spherical projection (docs/method.md section 3)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pulse_jax.sphere import project_to_sphere, sphere_radius, tree_project, tree_radii

# (shape, axes) of the tensors PULSE projects: StyleGAN latent, tiled latent,
# NHWC noise map, DCGAN latent.
CASES = [((3, 6, 512), (-1,)), ((3, 1, 512), (-1,)), ((3, 8, 8, 1), (1, 2)), ((3, 100), (-1,))]


def _normal(seed: int, shape: tuple[int, ...]) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), shape)


@pytest.mark.parametrize("shape, axes", CASES)
def test_radius_shape_and_value(shape, axes):
    x = _normal(0, shape)
    radius = sphere_radius(x, axes)
    expected = np.sqrt(np.sum(np.asarray(x, np.float64) ** 2, axis=axes, keepdims=True) + 1e-9)
    assert radius.shape == expected.shape
    np.testing.assert_allclose(np.asarray(radius), expected, rtol=1e-6)


@pytest.mark.parametrize("shape, axes", CASES)
def test_projection_restores_radii(shape, axes):
    start = _normal(1, shape)
    radius = sphere_radius(start, axes)
    # An optimizer step moves every row off its sphere, by a different amount per row.
    moved = start * jnp.linspace(0.1, 5.0, start.size).reshape(shape) + 0.3
    projected = project_to_sphere(moved, radius, axes)
    np.testing.assert_allclose(
        np.asarray(sphere_radius(projected, axes)), np.asarray(radius), rtol=0, atol=1e-5
    )


@pytest.mark.parametrize("shape, axes", CASES)
def test_projection_is_idempotent(shape, axes):
    x = _normal(2, shape)
    radius = sphere_radius(_normal(3, shape), axes)
    once = project_to_sphere(x, radius, axes)
    twice = project_to_sphere(once, radius, axes)
    np.testing.assert_allclose(np.asarray(twice), np.asarray(once), rtol=0, atol=1e-5)


def test_rows_are_independent():
    x = _normal(4, (4, 6, 512))
    radius = sphere_radius(_normal(5, (4, 6, 512)), (-1,))
    full = project_to_sphere(x, radius, (-1,))
    # Change one row (sample 2, layer 3): no other row may move.
    x2 = x.at[2, 3].multiply(7.0).at[2, 3, 0].add(1.0)
    changed = project_to_sphere(x2, radius, (-1,))
    diff = np.abs(np.asarray(changed) - np.asarray(full)).max(axis=-1)  # [4, 6]
    assert diff[2, 3] > 0
    diff[2, 3] = 0
    assert not diff.any()
    # And each sample alone gives the same rows as in the batch (up to the
    # order XLA sums a row in, which may depend on the batch shape).
    for n in range(4):
        alone = project_to_sphere(x[n : n + 1], radius[n : n + 1], (-1,))
        np.testing.assert_allclose(np.asarray(alone[0]), np.asarray(full[n]), rtol=1e-6, atol=1e-7)


def test_noise_radius_per_channel():
    x = jnp.stack([jnp.ones((4, 4)), 2 * jnp.ones((4, 4))], axis=-1)[None]  # [1, 4, 4, 2]
    radius = sphere_radius(x, (1, 2))
    assert radius.shape == (1, 1, 1, 2)
    np.testing.assert_allclose(np.asarray(radius).ravel(), [4.0, 8.0], rtol=1e-6)


def test_zero_row_stays_finite():
    x = jnp.zeros((2, 8))
    projected = project_to_sphere(x, jnp.ones((2, 1)), (-1,))
    np.testing.assert_array_equal(np.asarray(projected), 0.0)


def test_tree_helpers():
    tree = {
        "latent": _normal(6, (2, 4, 16)),
        "noise": (_normal(7, (2, 4, 4, 1)), _normal(8, (2, 8, 8, 1)), _normal(9, (2, 16, 16, 1))),
    }
    axes_tree = {"latent": (-1,), "noise": ((1, 2), None, (1, 2))}
    radii = tree_radii(tree, axes_tree)
    assert radii["noise"][1] is None
    assert radii["latent"].shape == (2, 4, 1)
    assert radii["noise"][0].shape == (2, 1, 1, 1)

    moved = jax.tree.map(lambda x: 3.0 * x + 0.1, tree)
    projected = jax.jit(lambda t, r: tree_project(t, r, axes_tree))(moved, radii)
    np.testing.assert_allclose(
        np.asarray(sphere_radius(projected["latent"], (-1,))),
        np.asarray(radii["latent"]),
        atol=1e-5,
    )
    for i in (0, 2):
        np.testing.assert_allclose(
            np.asarray(sphere_radius(projected["noise"][i], (1, 2))),
            np.asarray(radii["noise"][i]),
            atol=1e-5,
        )
    # The unprojected leaf passes through untouched.
    np.testing.assert_array_equal(np.asarray(projected["noise"][1]), np.asarray(moved["noise"][1]))


def test_tree_none_prefix_skips_subtree():
    tree = {"latent": _normal(10, (2, 3)), "fixed": {"a": _normal(11, (2, 3)), "b": jnp.ones(2)}}
    axes_tree = {"latent": (-1,), "fixed": None}
    radii = tree_radii(tree, axes_tree)
    projected = tree_project(jax.tree.map(lambda x: 2.0 * x, tree), radii, axes_tree)
    np.testing.assert_allclose(
        np.asarray(projected["latent"]), np.asarray(tree["latent"]), rtol=1e-6
    )
    np.testing.assert_array_equal(np.asarray(projected["fixed"]["b"]), 2.0)
