"""Tests for pulse_jax.losses against the reference's loss values.

Golden: tests/golden/losses.npz (NCHW). The reference sums every term over the
batch of 2; pulse_jax keeps one value per sample, so the tests compare sums.
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pulse_jax.degrade.downscale import bicubic_downscale
from pulse_jax.losses import (
    geocross,
    l1_error,
    l2_error,
    loss_terms,
    parse_loss_str,
    total_loss,
)

GOLDEN = Path(__file__).parent / "golden" / "losses.npz"
# Key of each loss string in losses.npz ('*' -> 'x', '+' -> '_', '.' -> 'p').
LOSS_STRINGS = {
    "100*L2+0.05*GEOCROSS": "100xL2_0p05xGEOCROSS",
    "10*L1": "10xL1",
    "1*L2+1*L1+1*GEOCROSS": "1xL2_1xL1_1xGEOCROSS",
}
# Relative tolerance on the batch sums. Reached on CPU: at most 2.1e-7 relative
# (L2 6e-8, L1 7e-8, GEOCROSS 1.2e-7 = 3.1e-5 absolute on 261, i.e. one float32
# ulp; totals <= 2.1e-7), all float32 rounding.
RTOL = 1e-5


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as data:
        return {k: data[k] for k in data.files}


PULSE_TERMS = ("L2", "L1", "GEOCROSS")  # the reference's terms (LPIPS: tests/test_lpips_loss.py)


@pytest.fixture(scope="module")
def per_sample_terms(golden):
    gen_im = jnp.asarray(np.transpose(golden["gen_im"], (0, 2, 3, 1)))  # [2, 128, 128, 3]
    ref = jnp.asarray(np.transpose(golden["ref_im"], (0, 2, 3, 1)))  # [2, 16, 16, 3]
    gen_lr = jax.jit(bicubic_downscale, static_argnums=1)(gen_im, 8)
    dlatents = jnp.asarray(golden["dlatents"])  # [2, 12, 512]
    return loss_terms(gen_lr, ref, dlatents, eps=float(golden["eps"]), names=PULSE_TERMS)


@pytest.mark.parametrize("loss_str", LOSS_STRINGS)
def test_matches_reference(golden, per_sample_terms, loss_str):
    key = LOSS_STRINGS[loss_str]
    parsed = parse_loss_str(loss_str)
    for _, name in parsed:
        assert per_sample_terms[name].shape == (2,)
        np.testing.assert_allclose(
            float(jnp.sum(per_sample_terms[name])), golden[f"part__{key}__{name}"], rtol=RTOL
        )
    total = total_loss(per_sample_terms, parsed)
    assert total.shape == (2,)
    np.testing.assert_allclose(float(jnp.sum(total)), golden[f"total__{key}"], rtol=RTOL)


def test_l2_clamped_at_eps(golden):
    ref = jnp.asarray(np.transpose(golden["ref_im"], (0, 2, 3, 1)))
    eps = float(golden["eps"])
    terms = loss_terms(ref + 1e-3, ref, None, eps=eps, names=("L2",))
    np.testing.assert_allclose(float(jnp.sum(terms["L2"])), golden["l2_clamped_at_eps"], rtol=1e-6)
    # Below eps the clamp also stops the gradient.
    grad = jax.grad(lambda x: jnp.sum(loss_terms(x, ref, None, eps=eps, names=("L2",))["L2"]))(
        ref + 1e-3
    )
    assert not np.asarray(grad).any()


def test_clamp_is_per_sample():
    ref = jnp.zeros((2, 4, 4, 3))
    gen_lr = ref.at[1].set(0.5)  # sample 0 is exact, sample 1 is not
    terms = loss_terms(gen_lr, ref, None, eps=2e-3, names=("L2", "L1"))
    np.testing.assert_allclose(np.asarray(terms["L2"]), [2e-3, 0.25], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(terms["L1"]), [10 * 2e-3, 10 * 0.5], rtol=1e-6)


def test_errors_keep_leading_axes():
    x = jax.random.normal(jax.random.key(0), (3, 2, 4, 4, 3))
    np.testing.assert_allclose(
        np.asarray(l2_error(x, 0.0)), np.mean(np.asarray(x) ** 2, (2, 3, 4)), rtol=1e-6
    )
    np.testing.assert_allclose(
        np.asarray(l1_error(x, 0.0)), np.mean(np.abs(np.asarray(x)), (2, 3, 4)), rtol=1e-6
    )


def test_geocross_by_hand():
    # Two orthogonal unit rows: D_01 = D_10 = pi / 2, D_00 = D_11 ~ 0.
    dlatents = jnp.zeros((1, 2, 512)).at[0, 0, 0].set(1.0).at[0, 1, 1].set(1.0)
    expected = 512 * (2 * (np.pi / 2) ** 2) / 4 / 8
    np.testing.assert_allclose(np.asarray(geocross(dlatents)), [expected], rtol=1e-5)


def test_geocross_tiled_and_missing(golden):
    ref = jnp.zeros((2, 4, 4, 3))
    dlatents = jnp.asarray(golden["dlatents"])
    for kwargs in ({"dlatents": dlatents, "tiled": True}, {"dlatents": None}):
        terms = loss_terms(ref, ref, eps=2e-3, names=("GEOCROSS",), **kwargs)
        np.testing.assert_array_equal(np.asarray(terms["GEOCROSS"]), [0.0, 0.0])


def test_geocross_gradient_finite(golden):
    dlatents = jnp.asarray(golden["dlatents"])
    grad = jax.grad(lambda d: jnp.sum(geocross(d)))(dlatents)
    assert np.isfinite(np.asarray(grad)).all()


@pytest.mark.parametrize(
    "loss_str, expected",
    [
        ("100*L2+0.05*GEOCROSS", ((100.0, "L2"), (0.05, "GEOCROSS"))),
        (" 10 * L1 ", ((10.0, "L1"),)),
        ("1e-2*GEOCROSS+1*L1", ((0.01, "GEOCROSS"), (1.0, "L1"))),
        ("1*L2 + 1*L1 + 1*GEOCROSS", ((1.0, "L2"), (1.0, "L1"), (1.0, "GEOCROSS"))),
    ],
)
def test_parse_good(loss_str, expected):
    assert parse_loss_str(loss_str) == expected


@pytest.mark.parametrize(
    "loss_str, message",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("100*L3", "unknown loss term 'L3'"),
        ("100*l2", "unknown loss term 'l2'"),
        ("L2", "malformed"),
        ("100*L2+", "malformed"),
        ("100**L2", "malformed"),
        ("100*L2*2", "malformed"),
        ("abc*L2", "not a finite number"),
        ("nan*L2", "not a finite number"),
    ],
)
def test_parse_bad(loss_str, message):
    with pytest.raises(ValueError, match=message):
        parse_loss_str(loss_str)


def test_total_loss_weights():
    terms = {"L2": jnp.array([1.0, 2.0]), "GEOCROSS": jnp.array([10.0, 20.0])}
    total = total_loss(terms, parse_loss_str("100*L2+0.05*GEOCROSS"))
    np.testing.assert_allclose(np.asarray(total), [100.5, 201.0], rtol=1e-6)
