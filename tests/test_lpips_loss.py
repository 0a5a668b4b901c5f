"""The loss term `LPIPS` (losses.lpips_term, docs/lpips.md "As a loss term") and its
weights' way through solve (Problem.loss_params)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.lpips_fixtures import random_weights

import pulse_jax
from pulse_jax import SearchOptions, losses, lpips, search
from pulse_jax.degrade import operators
from pulse_jax.degrade.downscale import make_bicubic
from pulse_jax.problem import make_problem


def weights(backbone: str) -> lpips.LPIPSWeights:
    return lpips.LPIPSWeights(backbone, random_weights(backbone))


def test_the_grammar_takes_lpips():
    assert losses.parse_loss_str("100*L2+0.5*LPIPS") == ((100.0, "L2"), (0.5, "LPIPS"))
    with pytest.raises(ValueError, match="needs its value"):
        losses.loss_terms(jnp.zeros((1, 4, 4, 3)), jnp.zeros((1, 4, 4, 3)), None, eps=0.0,
                          names=("LPIPS",))  # fmt: skip


def images_and_targets(side: int, factor: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = jnp.asarray(rng.uniform(0, 1, (2, side * factor, side * factor, 3)), jnp.float32)
    ref = jnp.asarray(rng.uniform(0, 1, (2, side, side, 3)), jnp.float32)
    return images, ref


def test_super_resolution_compares_the_observations():
    """Up to 256 px the term is LPIPS of the observation and the target, as they are."""
    w = weights("alexnet")
    op = operators.make_operator("bicubic", 32, 2)
    images, ref = images_and_targets(32, 2)
    got = losses.lpips_term(w, op, images, op(images), ref)
    np.testing.assert_allclose(got, w(op(images), ref), rtol=0, atol=1e-7)


def test_inpainting_fills_the_target_where_unobserved(tmp_path):
    """ILO's `fill`: unobserved target pixels take the generated observation's values, so
    what the target holds there does not matter."""
    w = weights("alexnet")
    mask = np.zeros((32, 32), bool)
    mask[:, :20] = True
    mask_file = tmp_path / "mask.png"
    from PIL import Image

    Image.fromarray(mask.astype(np.uint8) * 255).save(mask_file)
    op = operators.make_operator("inpaint", 32, 2, mask=mask_file)
    images, ref = images_and_targets(32, 2)
    other = jnp.where(jnp.asarray(mask)[:, :, None], ref, 1.0 - ref)
    got = losses.lpips_term(w, op, images, op(images), ref * op.mask[:, :, None])
    np.testing.assert_allclose(got, losses.lpips_term(w, op, images, op(images), other), atol=1e-6)
    full = make_bicubic(2)(images)
    filled = jnp.where(jnp.asarray(mask)[:, :, None], ref, full)
    np.testing.assert_allclose(got, w(full, filled), atol=1e-6)
    assert float(jnp.min(got)) > 0


def test_large_observations_are_compared_at_256_px():
    w = weights("alexnet")
    rng = np.random.default_rng(1)
    gen, ref = (jnp.asarray(rng.uniform(0, 1, (1, 512, 512, 3)), jnp.float32) for _ in "ab")
    got = losses.lpips_term(w, make_bicubic(1), gen, gen, ref)
    down = make_bicubic(2)
    np.testing.assert_allclose(got, w(down(gen), down(ref)), atol=1e-6)


@pytest.fixture(scope="module")
def vgg():
    return weights("vgg16")


@pytest.fixture(scope="module")
def targets():
    return np.random.default_rng(0).uniform(0.2, 0.8, (1, 16, 16, 3)).astype(np.float32)


def test_a_step_reports_the_term_and_follows_its_gradient(dcgan64, targets, vgg):
    """Only LPIPS in the loss: the step reports LPIPS of the start's observation, and its
    gradient alone moves the latent."""
    state = pulse_jax.init(targets, dcgan64, steps=2, loss_str="1*LPIPS", lpips_weights=vgg)
    assert state.loss_params["LPIPS"].backbone == "vgg16"
    images, _ = search._render(state.program, state.params, state.fixed, state.trainable)
    expected = vgg(state.program.downscale(images), state.ref)
    moved, out = pulse_jax.step(state)
    np.testing.assert_allclose(out["history"]["LPIPS"], expected, rtol=1e-5)
    np.testing.assert_allclose(out["history"]["TOTAL"], expected, rtol=1e-5)
    latent = moved.trainable["latent"] - state.trainable["latent"]
    assert float(jnp.abs(latent).max()) > 1e-4


@pytest.mark.slow
def test_solve_runs_the_term(dcgan64, targets, vgg):
    loss = "100*L2+0.05*GEOCROSS+1*LPIPS"
    result = pulse_jax.solve(targets, dcgan64, steps=2, loss_str=loss, lpips_weights=vgg)
    assert result.history["LPIPS"].shape == (2, 1, 1)
    assert np.all(np.isfinite(result.history["LPIPS"])) and result.history["LPIPS"].min() > 0


def test_without_the_term_no_weights_are_loaded(dcgan64, targets, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("LPIPS weights loaded for a loss without LPIPS")

    monkeypatch.setattr(lpips, "load_lpips", refuse)
    problem, _ = make_problem(targets, dcgan64, SearchOptions(steps=1))
    assert problem.loss_params is None and not jax.tree.leaves(problem.loss_params)
