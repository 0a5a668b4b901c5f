"""PULSE's loss terms and loss-string parser (docs/method.md section 4).

Everything here is per sample: the reference sums its terms over the batch,
which does not couple the samples' gradients but does hide which sample is
done (docs/method.md section 10), so pulse_jax keeps the sample axes and leaves any
reduction to the caller. Summing these per-sample values over the batch gives
the reference's numbers.
"""

import math
import re

import jax
import jax.numpy as jnp

from pulse_jax.degrade.downscale import make_bicubic
from pulse_jax.degrade.operators import Degradation, OperatorName

TERMS = ("L2", "L1", "GEOCROSS", "LPIPS")
# ILO compares the observations through LPIPS at 256 px (docs/lpips.md, "As a loss term").
LPIPS_SIDE = 256

# The reference scales GEOCROSS by the literal 512, the StyleGAN latent width;
# it is a constant, not the width of whatever latent is passed in.
_GEOCROSS_SCALE = 512.0
# Inside the square roots, so that the gradient at A = 0 (the i == j pairs) is finite.
_GEOCROSS_EPS = 1e-9
# Reference's weighting of the L1 term, inside the term itself.
_L1_SCALE = 10.0

_TERM_RE = re.compile(r"^\s*([^*]+?)\s*\*\s*([A-Za-z0-9_]+)\s*$")


def parse_loss_str(loss_str: str) -> tuple[tuple[float, str], ...]:
    """Parse a loss string such as ``"100*L2+0.05*GEOCROSS"``.

    Terms are '+'-separated ``weight*NAME`` pairs; whitespace around the parts
    is ignored. Unlike the reference, ``L2`` is not required. A name may
    appear more than once (its weights then add up in ``total_loss``).

    Args:
      loss_str: the loss string.

    Returns:
      ``((weight, name), ...)`` in the order written.

    Raises:
      ValueError: for an empty string, a term not of the form ``weight*NAME``,
        a weight that is not a finite number, or a name not in ``TERMS``.
    """
    if not loss_str or not loss_str.strip():
        raise ValueError(f"empty loss string; expected e.g. '100*L2+0.05*GEOCROSS' ({TERMS=})")
    parsed = []
    for term in loss_str.split("+"):
        match = _TERM_RE.match(term)
        if match is None:
            raise ValueError(
                f"malformed term {term.strip()!r} in loss string {loss_str!r}: "
                "expected 'weight*NAME', e.g. '100*L2'"
            )
        weight_str, name = match.groups()
        try:
            weight = float(weight_str)
        except ValueError:
            weight = math.nan
        if not math.isfinite(weight):
            raise ValueError(
                f"weight {weight_str!r} of term {term.strip()!r} is not a finite number"
            )
        if name not in TERMS:
            raise ValueError(f"unknown loss term {name!r} in {loss_str!r}; valid terms: {TERMS}")
        parsed.append((weight, name))
    return tuple(parsed)


def l2_error(gen_lr: jax.Array, ref: jax.Array) -> jax.Array:
    """Mean squared downscaling error, per sample, not clamped.

    Args:
      gen_lr: ``[..., H, W, C]`` downscaled generated images.
      ref: ``[..., H, W, C]`` low-resolution targets (broadcastable).

    Returns:
      ``[...]``: the mean over H, W and C of ``(gen_lr - ref) ** 2``.
    """
    return jnp.mean((gen_lr - ref) ** 2, axis=(-3, -2, -1))


def l1_error(gen_lr: jax.Array, ref: jax.Array) -> jax.Array:
    """Mean absolute downscaling error, per sample, not clamped nor scaled.

    Args:
      gen_lr: ``[..., H, W, C]`` downscaled generated images.
      ref: ``[..., H, W, C]`` low-resolution targets (broadcastable).

    Returns:
      ``[...]``: the mean over H, W and C of ``|gen_lr - ref|``.
    """
    return jnp.mean(jnp.abs(gen_lr - ref), axis=(-3, -2, -1))


def geocross(dlatents: jax.Array) -> jax.Array:
    """The geodesic cross loss of PULSE, per sample (docs/method.md section 4).

    Penalises the angles between the style layers' dlatents, so that the
    layers of a sample stay close to one common latent. For rows ``u_i``:
    ``A = sqrt(|u_i - u_j|^2 + 1e-9)``, ``B = sqrt(|u_i + u_j|^2 + 1e-9)``,
    ``D = 2 * atan2(A, B)`` (the angle between ``u_i`` and ``u_j``), and the
    loss is ``mean over all (i, j), diagonal included, of 512 * D^2, / 8``.
    The 512 is the reference's literal constant, whatever the width D.

    Args:
      dlatents: ``[..., L, D]``, the dlatents after the gaussian-fit mapping.

    Returns:
      ``[...]``: one value per sample.
    """
    rows_i = dlatents[..., :, None, :]  # [..., L, 1, D]
    rows_j = dlatents[..., None, :, :]  # [..., 1, L, D]
    a = jnp.sqrt(jnp.sum((rows_i - rows_j) ** 2, axis=-1) + _GEOCROSS_EPS)  # [..., L, L]
    b = jnp.sqrt(jnp.sum((rows_i + rows_j) ** 2, axis=-1) + _GEOCROSS_EPS)
    angles = 2.0 * jnp.arctan2(a, b)
    return jnp.mean(angles**2 * _GEOCROSS_SCALE, axis=(-2, -1)) / 8.0


def loss_terms(
    gen_lr: jax.Array,
    ref: jax.Array,
    dlatents: jax.Array | None,
    *,
    eps: float,
    names: tuple[str, ...] | list[str],
    tiled: bool = False,
    lpips: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """The requested loss terms, per sample, as they enter the total.

    ``L2 = max(l2_error, eps)`` and ``L1 = 10 * max(l1_error, eps)``: the clamp
    stops a sample's gradient from that term once it is below ``eps``.
    ``GEOCROSS = geocross(dlatents)``, or zero when the latent is tiled (all
    style layers equal) or there are no dlatents (a generator without style
    layers, docs/method.md section 2.3). ``LPIPS`` is the value the caller computed
    (``lpips_term``), as it is.

    Args:
      gen_lr: ``[..., H, W, C]`` downscaled generated images.
      ref: ``[..., H, W, C]`` low-resolution targets.
      dlatents: ``[..., L, D]`` or None.
      eps: the clamp, e.g. 2e-3.
      names: the terms to compute (names from ``TERMS``; repeats are fine).
      tiled: whether the latent is tiled over the style layers.
      lpips: ``[...]``, the LPIPS term (``lpips_term``); needed when it is requested.

    Returns:
      ``{name: [...]}`` for each distinct requested name.

    Raises:
      ValueError: for a name not in ``TERMS``, or LPIPS requested without its value.
    """
    batch_shape = jnp.broadcast_shapes(gen_lr.shape, ref.shape)[:-3]
    terms = {}
    for name in dict.fromkeys(names):
        if name == "L2":
            terms[name] = jnp.maximum(l2_error(gen_lr, ref), eps)
        elif name == "L1":
            terms[name] = _L1_SCALE * jnp.maximum(l1_error(gen_lr, ref), eps)
        elif name == "GEOCROSS":
            if tiled or dlatents is None:
                terms[name] = jnp.zeros(batch_shape, gen_lr.dtype)
            else:
                terms[name] = geocross(dlatents)
        elif name == "LPIPS":
            if lpips is None:
                raise ValueError("the LPIPS term needs its value (losses.lpips_term)")
            terms[name] = lpips
        else:
            raise ValueError(f"unknown loss term {name!r}; valid terms: {TERMS}")
    return terms


def total_loss(terms: dict[str, jax.Array], parsed: tuple[tuple[float, str], ...]) -> jax.Array:
    """The weighted sum of the terms, per sample.

    Args:
      terms: per-sample terms from ``loss_terms``.
      parsed: ``((weight, name), ...)`` from ``parse_loss_str``.

    Returns:
      ``[...]``: ``sum(weight * terms[name])`` over the parsed terms.

    Raises:
      ValueError: if ``parsed`` is empty.
    """
    if not parsed:
        raise ValueError("no loss terms to sum")
    total = None
    for weight, name in parsed:
        weighted = weight * terms[name]
        total = weighted if total is None else total + weighted
    return total


def lpips_term(weights, downscale, images: jax.Array, gen_lr: jax.Array, ref: jax.Array):
    """LPIPS between the generated and the given observation, as ILO computes it
    (docs/lpips.md, "As a loss term"), per sample.

    ILO (ilo_stylegan.py, `lpips_method: fill`) compares the generated image and the
    target through LPIPS (VGG) at 256 px: the target observation where it is observed,
    filled with the generated observation where it is not (inpainting's mask). Here: the
    operator's observation of `images` without its mask, and `ref` filled with it; both
    downscaled (bicubic) by the smallest factor that brings them to at most 256 px, none
    for observations of 256 px or less.

    Args:
      weights: `pulse_jax.lpips.LPIPSWeights`.
      downscale: the program's degradation (an `operators.Degradation` or any callable).
      images: [N, R, R, 3] generated images; gen_lr: their observation [N, h, h, 3];
      ref: the targets [N, h, h, 3] (all in [0, 1]).

    Returns:
      [N].
    """
    gen, target = gen_lr, ref
    if isinstance(downscale, Degradation) and downscale.name == OperatorName.INPAINT:
        gen = make_bicubic(downscale.factor)(images)
        mask = jnp.asarray(downscale.mask)[:, :, None]
        target = mask * ref + (1.0 - mask) * gen
    side = gen.shape[-2]
    factor = next(f for f in range(1, side + 1) if side % f == 0 and side // f <= LPIPS_SIDE)
    if factor > 1:
        gen, target = make_bicubic(factor)(gen), make_bicubic(factor)(target)
    return weights(gen, target)
