"""`solve` against the original step by step (golden runs), and its per-sample properties.

Tolerances, justified:
- First step (one update from the reference's own start): latents and trainable noise
  maps max-abs 1e-4 (reached: <= 7.6e-6 for latents, 9.5e-7 for noise; one row, below,
  is allowed to be off).
- Whole runs (20 steps): each sample's unclamped L2 at every step within a relative
  tolerance per run. The reference's own README notes that an independent float32
  implementation drifted by up to 0.5 (absolute) in latents after 20 Adam steps while its
  L2 trajectories stayed within 1%: Adam normalises each gradient element, so rounding-level
  differences in tiny gradient elements become full-size steps. Measured here: max
  relative L2 deviation 0.95% (default), 0.02% (sgd_fixed), 0.02% (tiled_fixed_sgdm),
  0.12% (zero_adamax_l1), 0.24% (succeeds; 2.7% with a conv formulation that flips the
  element below). Asserted: 1.5% for the first four, 5% for `succeeds`. (These move by
  a few tenths of a percent whenever the float32 summation order changes: with the
  bicubic downscale as block windows instead of a matmul they were 0.72%, 0.06%, 0.11%,
  0.13% and 0.14%.)
- `succeeds`, sample 0, style row 0: one latent element's gradient is the sum of an L2
  part (-8.09e-5) and a GEOCROSS part (+7.70e-5) that cancel (float64 gives
  -3.83e-6, while float32 evaluations err by ~6e-6 in the L2 part there: the reference's
  float32 and ours now give +2e-6, an earlier conv formulation of ours gave -3.9e-6).
  Adam's first step moves every element by about +-lr, so where the signs differ that
  element moves the other way and the row's sphere projection rescales the whole row.
  The test allows this row (and no other) to be off, and checks that the element really
  is such a cancellation.
"""

from __future__ import annotations

import dataclasses
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.generators import small_stylegan_generator

import pulse_jax
from pulse_jax import losses, search
from pulse_jax.degrade.downscale import bicubic_downscale
from pulse_jax.options import SearchOptions

RUNS = {
    "default": 0.015,
    "sgd_fixed": 0.015,
    "tiled_fixed_sgdm": 0.015,
    "zero_adamax_l1": 0.015,
    "succeeds": 0.05,
}
ILL_CONDITIONED_ROWS = {"succeeds": {(0, 0)}}


def nhwc(x):
    return np.moveaxis(x, -3, -1)


def load_run(golden_dir, name):
    run = dict(np.load(golden_dir / f"run_{name}.npz"))
    config = json.loads(str(run["config"]))
    init = {
        "latent": run["init_latent"][:, None],
        "noise": [nhwc(run[f"init_noise_{i}"])[:, None] for i in range(12)],
    }
    options = {
        k: config[k]
        for k in (
            "steps loss_str eps noise_type num_trainable_noise_layers tile_latent "
            "bad_noise_layers opt_name learning_rate lr_schedule"
        ).split()
    }
    # Two runs keep PULSE's default 17, which the 12-layer tiny generator lacks: PULSE
    # ignores such a layer, `solve` refuses it (test_a_noise_layer_that_does_not_exist...).
    layers = [v for v in options["bad_noise_layers"].split(".") if v.strip()]
    options["bad_noise_layers"] = ".".join(v for v in layers if int(v) < 12)
    return run, nhwc(run["ref_im"]), init, options


@pytest.fixture(scope="module", params=sorted(RUNS))
def golden_run(request, golden_dir, tiny_stylegan):
    name = request.param
    run, ref, init, options = load_run(golden_dir, name)
    result = pulse_jax.solve(ref, tiny_stylegan, init=init, keep_intermediate=True, **options)
    return name, run, result


@pytest.mark.slow
def test_first_step_matches_reference(golden_run):
    name, run, result = golden_run
    latent = result.trajectory["latent"][0, :, 0]  # after the first update [B, L, 512]
    error = np.abs(latent - run["latent_per_step"][0]).max(axis=-1)  # per (sample, row)
    off = {tuple(int(v) for v in idx) for idx in np.argwhere(error > 1e-4)}
    assert off <= ILL_CONDITIONED_ROWS.get(name, set())
    for i in run["trainable_noise_layers"]:
        noise = result.trajectory["noise"][i][0, :, 0]
        np.testing.assert_allclose(noise, nhwc(run[f"noise_{i}_per_step"][0]), rtol=0, atol=1e-4)


@pytest.mark.slow
def test_whole_run_follows_reference_l2_trajectory(golden_run):
    name, run, result = golden_run
    l2 = result.history["L2"][:, :, 0]
    reference = run["l2_per_sample_per_step"]
    np.testing.assert_allclose(l2[0], reference[0], rtol=1e-5)  # same start, same loss
    np.testing.assert_allclose(l2, reference, rtol=RUNS[name])
    total = result.history["TOTAL"][:, :, 0].sum(axis=1)  # the reference sums the batch
    np.testing.assert_allclose(total[0], run["total_per_step"][0], rtol=1e-5)


@pytest.mark.slow
def test_success_agrees_with_reference_where_it_can_decide(golden_run):
    name, run, result = golden_run
    if name == "succeeds":  # batch of one: the reference's batch-wide success is per sample
        assert bool(run["succeeded"]) and result.success.all()
    assert result.success.shape == run["l2_per_sample_per_step"].shape[1:] + (1,)
    np.testing.assert_array_equal(
        result.success[:, 0], result.l2[:, 0] <= json.loads(str(run["config"]))["eps"]
    )


@pytest.mark.slow
def test_ill_conditioned_element_is_a_cancellation(golden_dir, tiny_stylegan):
    run, ref, init, options = load_run(golden_dir, "succeeds")
    full = {"latent": run["init_latent"], "noise": [x[:, 0] for x in init["noise"]]}
    search = SearchOptions(bad_noise_layers=(11,))

    def parts(latent):
        images, dlatents = tiny_stylegan.arch.render(
            tiny_stylegan.params, dict(full, latent=latent), search
        )
        gen_lr = bicubic_downscale(images, 8)
        l2 = 100 * jnp.sum(losses.l2_error(gen_lr, ref))
        return l2, 0.05 * jnp.sum(losses.geocross(dlatents))

    latent = jnp.asarray(full["latent"])
    g_l2 = np.asarray(jax.grad(lambda x: parts(x)[0])(latent))[0, 0]
    g_geo = np.asarray(jax.grad(lambda x: parts(x)[1])(latent))[0, 0]
    total = g_l2 + g_geo
    i = int(np.argmin(np.abs(total)))
    assert abs(total[i]) < 0.06 * min(abs(g_l2[i]), abs(g_geo[i]))
    assert np.median(np.abs(total)) > 100 * abs(total[i])


# -- properties -------------------------------------------------------------------------
# On a 16 px StyleGAN v1 with random weights (6 style rows, 6 noise layers): what they
# assert holds for any generator, and its programs compile in a fraction of the 128 px
# golden generator's time.


@pytest.fixture(scope="module")
def small():
    return small_stylegan_generator(1)


@pytest.fixture(scope="module")
def targets():
    rng = np.random.default_rng(0)
    return rng.uniform(0.2, 0.8, (3, 4, 4, 3)).astype(np.float32)


FAST = {"steps": 3, "bad_noise_layers": (5,)}


@pytest.fixture(scope="module")
def tiny_target():
    """One 16 x 16 target for the golden tiny StyleGAN (128 px, 12 noise layers), for the
    tests that need its numbers."""
    return np.random.default_rng(0).uniform(0.2, 0.8, (1, 16, 16, 3)).astype(np.float32)


TINY_FAST = dict(FAST, bad_noise_layers=(11,))


def random_start(rng, images: int, samples: int) -> dict:
    """A start of the small StyleGAN for `solve(init=...)`: [images, samples, ...] standard
    normal."""
    return {
        "latent": rng.standard_normal((images, samples, 6, 512)).astype(np.float32),
        "noise": [
            rng.standard_normal((images, samples, r, r, 1)).astype(np.float32)
            for r in (2 ** (i // 2 + 2) for i in range(6))
        ],
    }


def test_a_sample_does_not_depend_on_the_rest_of_the_batch(small, targets):
    """With a fixed `batch_per_device` every sample runs through the same compiled group
    program, so adding images and samples around it changes nothing, bit for bit."""
    kwargs = dict(FAST, batch_per_device=2, devices=jax.devices()[:1])
    alone = pulse_jax.solve(targets[1:2], small, image_ids=[1], **kwargs)
    together = pulse_jax.solve(targets, small, num_samples=2, **kwargs)
    np.testing.assert_array_equal(together.latent[1, 0], alone.latent[0, 0])
    np.testing.assert_array_equal(together.hr[1, 0], alone.hr[0, 0])
    np.testing.assert_array_equal(
        together.history["TOTAL"][:, 1, 0], alone.history["TOTAL"][:, 0, 0]
    )
    # Without it, XLA:CPU rounds a batch of one and a batch of six differently; the first
    # loss, computed before any update, shows that this is rounding only.
    default = pulse_jax.solve(targets, small, num_samples=2, **FAST)
    single = pulse_jax.solve(targets[1:2], small, image_ids=[1], **FAST)
    np.testing.assert_allclose(
        default.history["TOTAL"][0, 1, 0], single.history["TOTAL"][0, 0, 0], rtol=1e-5
    )


def test_same_seed_same_result_and_other_seed_differs(small, targets):
    a = pulse_jax.solve(targets[:1], small, seed=5, **FAST)
    b = pulse_jax.solve(targets[:1], small, seed=5, **FAST)
    c = pulse_jax.solve(targets[:1], small, seed=6, **FAST)
    np.testing.assert_array_equal(a.latent, b.latent)
    np.testing.assert_array_equal(a.hr, b.hr)
    assert np.abs(a.latent - c.latent).max() > 0.1


def test_radii_are_preserved(small, targets):
    init = random_start(np.random.default_rng(3), images=1, samples=2)
    result = pulse_jax.solve(targets[:1], small, num_samples=2, init=init, **FAST)

    def radius(x, axes):
        return np.sqrt(np.sum(x.astype(np.float64) ** 2, axis=axes) + 1e-9)

    np.testing.assert_allclose(radius(result.latent, -1), radius(init["latent"], -1), rtol=1e-5)
    for i in range(5):  # the trainable noise layers
        np.testing.assert_allclose(
            radius(result.noise[i], (2, 3)), radius(init["noise"][i], (2, 3)), rtol=1e-5
        )
    assert np.abs(result.latent - init["latent"]).max() > 0.01  # it did move


def test_second_call_does_not_recompile(small, targets, monkeypatch):
    """The search is traced (and so compiled) once per program and shapes: a second call
    that differs only in traced values (the seed) reuses it."""
    run_rows, traces = search.run_rows, []

    def counted(*args):
        traces.append(args[0])
        return run_rows(*args)

    monkeypatch.setattr(search, "run_rows", chex.assert_max_traces(counted, n=1))
    kwargs = dict(FAST, learning_rate=0.3)  # a program no other test compiles: it traces here
    pulse_jax.solve(targets[:2], small, seed=1, **kwargs)
    pulse_jax.solve(targets[:2], small, seed=2, **kwargs)  # a second trace would raise
    assert len(traces) == 1


def test_stepping_by_hand_gives_solve_s_result(tiny_stylegan, tiny_target):
    """init, step and finalize are the functions solve scans. Stepped one call at a time,
    each step is its own compiled program, which XLA:CPU rounds differently from the loop
    body, and Adam grows rounding into visible differences: the same result within atol
    1e-4 + rtol 1e-4 (measured here: latents 2.6e-5, images 1.5e-5, L2 5e-8; the DCGAN's
    are bitwise equal, and so is the 16 px StyleGAN's). The first step's losses, before any
    update, agree to 1e-6."""
    kwargs = dict(TINY_FAST, num_samples=2, seed=4, keep_intermediate=True)
    expected = pulse_jax.solve(tiny_target, tiny_stylegan, devices=jax.devices()[:1], **kwargs)
    state = pulse_jax.init(tiny_target, tiny_stylegan, **kwargs)
    outputs = []
    for _ in range(FAST["steps"]):
        state, out = pulse_jax.step(state)
        outputs.append(out)
    assert int(state.count) == FAST["steps"]
    result = pulse_jax.finalize(state, outputs)
    chex.assert_trees_all_close(
        {k: v[0] for k, v in result.history.items()},
        {k: v[0] for k, v in expected.history.items()},
        rtol=1e-6,
    )
    chex.assert_trees_all_close(
        dataclasses.asdict(result), dataclasses.asdict(expected), atol=1e-4, rtol=1e-4
    )


def test_lower_is_the_program_solve_runs(small, targets):
    lowered = pulse_jax.lower(targets[:2], small, **FAST)
    assert isinstance(lowered, jax.stages.Lowered)
    # Same arguments, same program: what solve runs is this lowering's compilation.
    assert lowered.as_text() == pulse_jax.lower(targets[:2], small, **FAST).as_text()
    grouped = pulse_jax.lower(targets, small, batch_per_device=2, **FAST)
    assert "while" in grouped.as_text() and grouped.as_text() != lowered.as_text()
    with pytest.raises(TypeError, match="stepz"):
        pulse_jax.lower(targets[:2], small, stepz=2)


def test_nan_in_one_sample_leaves_the_others_as_they_were(small, targets):
    init = random_start(np.random.default_rng(4), images=2, samples=1)
    clean = pulse_jax.solve(targets[:2], small, init=init, **FAST)
    init["latent"][1, 0, 3, 7] = np.nan
    broken = pulse_jax.solve(targets[:2], small, init=init, **FAST)
    assert broken.failed.tolist() == [[False], [True]]
    assert not broken.success[1, 0]
    np.testing.assert_array_equal(broken.latent[0], clean.latent[0])
    np.testing.assert_array_equal(broken.hr[0], clean.hr[0])
    assert np.isnan(broken.history["TOTAL"][:, 1, 0]).all()


def test_any_differentiable_degradation_can_be_passed(tiny_stylegan, tiny_target):
    # On the golden tiny StyleGAN: the small one's random weights clip every 4x4 block.

    def average_pool(images):  # [N, 128, 128, 3] -> [N, 16, 16, 3]
        n = images.shape[0]
        return images.reshape(n, 16, 8, 16, 8, 3).mean(axis=(2, 4))

    result = pulse_jax.solve(tiny_target, tiny_stylegan, downscale=average_pool, **TINY_FAST)
    assert result.lr.shape == (1, 1, 16, 16, 3)
    # Where no pixel of an 8x8 block was clipped, the reported LR is the pool of the HR.
    hr = result.hr[0]
    unclipped = ((hr > 0) & (hr < 1)).reshape(1, 16, 8, 16, 8, 3).all(axis=(2, 4))
    pooled = np.asarray(average_pool(hr))
    assert unclipped.mean() > 0.25
    np.testing.assert_allclose(result.lr[0][unclipped], pooled[unclipped], rtol=0, atol=1e-5)
    bicubic = pulse_jax.solve(tiny_target, tiny_stylegan, **TINY_FAST)
    assert not np.allclose(bicubic.history["L2"], result.history["L2"])


def test_result_shapes(small, targets):
    result = pulse_jax.solve(
        targets[:2], small, num_samples=3, keep_intermediate=True, loss_str="1*L1", **FAST
    )
    assert result.hr.shape == (2, 3, 16, 16, 3)
    assert result.lr.shape == (2, 3, 4, 4, 3)
    assert result.l2.shape == result.success.shape == result.best_step.shape == (2, 3)
    assert result.latent.shape == (2, 3, 6, 512)
    assert len(result.noise) == 6 and result.noise[5].shape == (2, 3, 16, 16, 1)
    assert set(result.history) == {"L1", "L2", "TOTAL"}
    assert result.history["L2"].shape == (3, 2, 3)
    assert result.intermediate.shape == (3, 2, 3, 16, 16, 3)
    assert 0 <= result.hr.min() and result.hr.max() <= 1


def test_tiled_latent_has_one_row(small, targets):
    result = pulse_jax.solve(targets[:1], small, tile_latent=True, **FAST)
    assert result.latent.shape == (1, 1, 1, 512)
    np.testing.assert_array_equal(
        result.history["TOTAL"], 100 * np.maximum(result.history["L2"], 2e-3)
    )


@pytest.mark.parametrize(
    "change, message",
    [
        ({"images": np.zeros((1, 4, 2, 3), np.float32)}, "square"),
        ({"images": np.zeros((1, 6, 6, 3), np.float32)}, "does not divide"),
        ({"images": np.zeros((1, 4, 4, 1), np.float32)}, "3 channels"),
        ({"images": np.full((1, 4, 4, 3), 1.5, np.float32)}, r"\[0, 1\]"),
        ({"loss_str": "100*L3"}, "L3"),
        ({"opt_name": "rmsprop"}, "rmsprop"),
        ({"lr_schedule": "cosine"}, "cosine"),
        ({"steps": 0}, "steps"),
        ({"eps": 0.0}, "eps"),
        ({"noise_type": "random"}, "noise_type"),
        ({"bad_noise_layers": "5.17"}, r"bad_noise_layers 17 do not exist.*0\.\.5"),
    ],
)
def test_clear_errors_for_inputs_that_cannot_work(small, targets, change, message):
    kwargs = dict(FAST)
    images = change.pop("images", targets[:1])
    kwargs.update(change)
    with pytest.raises(ValueError, match=message):
        pulse_jax.solve(images, small, **kwargs)


def test_default_bad_noise_layers_follow_the_generator(small, targets):
    """PULSE's 17 where a StyleGAN v1 has it (1024 px), none on a smaller one."""
    assert small.arch.default_bad_noise_layers == ()
    full = dataclasses.replace(small.arch, channels=(512,) * 9)
    assert full.num_noise_layers == 18 and full.default_bad_noise_layers == (17,)
    default = pulse_jax.solve(targets[:1], small, steps=2)
    explicit = pulse_jax.solve(targets[:1], small, steps=2, bad_noise_layers="")
    np.testing.assert_array_equal(default.latent, explicit.latent)
