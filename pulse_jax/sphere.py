"""PULSE's spherical projection, row by row (docs/method.md section 3).

Every optimised tensor keeps each of its rows on the sphere of the radius that
row had before the first step: one radius per (sample, style layer) for a
StyleGAN latent ``[N, L, 512]`` (axes ``(-1,)``), per (sample, channel) for an
NHWC noise map ``[N, r, r, 1]`` (axes ``(1, 2)``), per sample for a DCGAN
latent ``[N, 100]`` (axes ``(-1,)``). Rows never mix, so batched samples stay
independent. (optax's ``projection_l2_sphere`` normalises a whole tree at once,
which is not this.)

The tree helpers take an ``axes_tree`` shaped like the value tree, whose leaves
are non-empty tuples of ints (the axes to reduce) or None (leave that subtree
alone). Since tuples are pytree nodes, a tuple of ints counts as a leaf there,
and any other tuple is a container: ``{"latent": (-1,), "noise": ((1, 2),
None)}`` projects the latent and the first of two noise maps.
"""

from typing import Any

import jax
import jax.numpy as jnp

# Added under the square root, as the reference does, so an all-zero row
# projects to zero instead of NaN.
_RADIUS_EPS = 1e-9

Axes = tuple[int, ...]


def sphere_radius(x: jax.Array, axes: Axes) -> jax.Array:
    """The radius of each row: ``sqrt(sum(x ** 2 over axes) + 1e-9)``.

    Args:
      x: any array.
      axes: the axes that make up a row (absolute indices, negatives allowed).

    Returns:
      The radii, with ``axes`` kept as size-1 axes so they broadcast against ``x``.
    """
    return jnp.sqrt(jnp.sum(x**2, axis=axes, keepdims=True) + _RADIUS_EPS)


def project_to_sphere(x: jax.Array, radius: jax.Array, axes: Axes) -> jax.Array:
    """Scale every row of ``x`` to the given radius.

    Same operation order as the reference (divide by the current norm, then
    multiply by the radius), which matters at float32 rounding level.

    Args:
      x: any array.
      radius: radii broadcastable against ``x``, e.g. from ``sphere_radius``.
      axes: the axes that make up a row.

    Returns:
      ``x / sqrt(sum(x ** 2 over axes) + 1e-9) * radius``.
    """
    return x / sphere_radius(x, axes) * radius


def _is_axes_leaf(node: Any) -> bool:
    """True for the leaves of an axes tree: None or a non-empty tuple of ints."""
    if node is None:
        return True
    return (
        isinstance(node, tuple)
        and len(node) > 0
        and all(isinstance(a, int) and not isinstance(a, bool) for a in node)
    )


def tree_radii(tree: Any, axes_tree: Any) -> Any:
    """The row radii of every projected leaf of a pytree.

    Args:
      tree: a pytree of arrays.
      axes_tree: the same structure as ``tree`` (a prefix of it where a leaf
        is None), with tuples of axes or None as leaves.

    Returns:
      A pytree shaped like ``axes_tree``: the radii (as from ``sphere_radius``)
      where axes are given, None elsewhere.
    """
    return jax.tree.map(
        lambda axes, x: None if axes is None else sphere_radius(x, axes),
        axes_tree,
        tree,
        is_leaf=_is_axes_leaf,
    )


def tree_project(tree: Any, radii: Any, axes_tree: Any) -> Any:
    """Project every leaf of a pytree that has axes onto its rows' spheres.

    Args:
      tree: a pytree of arrays.
      radii: the radii from ``tree_radii`` (recorded before the first step).
      axes_tree: the same axes tree that gave ``radii``.

    Returns:
      ``tree`` with each projected leaf replaced by ``project_to_sphere(leaf,
      radius, axes)``; subtrees whose axes are None are returned unchanged.
    """
    return jax.tree.map(
        lambda axes, x, radius: x if axes is None else project_to_sphere(x, radius, axes),
        axes_tree,
        tree,
        radii,
        is_leaf=_is_axes_leaf,
    )
