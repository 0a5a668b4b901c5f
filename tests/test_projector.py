"""The projector (pulse_jax/projector.py) against NVIDIA's `projector.project` run on the
tiny random StyleGAN2-ADA generator (tests/golden/projector/README.md)."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pulse_jax
from pulse_jax import projector, testing
from pulse_jax.checkpoints.stylegan2_formats import read_stylegan2
from pulse_jax.degrade.downscale import bicubic_downscale
from pulse_jax.generators import stylegan2
from pulse_jax.generators.base import Generator
from pulse_jax.options import ConfigError, SearchOptions
from pulse_jax.runs import config

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="module")
def ada():
    ck = read_stylegan2(GOLDEN / "stylegan2" / "sg2ada_tiny.pkl")
    params = stylegan2.params_from_state(ck.state)
    arch = stylegan2.arch_from_params(
        params, conv_clamp=ck.config["conv_clamp"], mapping_lr=ck.config["lr_multiplier"]
    )
    return arch, params


def load_run(factor: int) -> dict:
    return dict(np.load(GOLDEN / "projector" / f"projector_x{factor}.npz"))


def settings_of(run: dict) -> projector.ProjectorSettings:
    config = json.loads(str(run["config"]))
    return projector.ProjectorSettings(
        num_steps=config["num_steps"],
        **{k: config[k] for k in ("initial_learning_rate", "initial_noise_factor")},
        **{k: config[k] for k in ("lr_rampdown_length", "lr_rampup_length")},
        noise_ramp_length=config["noise_ramp_length"],
        regularize_noise_weight=config["regularize_noise_weight"],
    )


def target_and_distance(run: dict, factor: int):
    """The golden's distance: PULSE's L2 between the bicubic downscales of the render and of
    the target (uint8 [3, 64, 64] / 255), at the low resolution."""
    hr = jnp.asarray(np.moveaxis(run["target"], 0, -1)[None], jnp.float32) / 255.0
    down = (lambda x: x) if factor == 1 else (lambda x: bicubic_downscale(x, factor))
    return down(hr), projector.l2_through(down)


def test_w_stats_match_nvidia(ada):
    arch, params = ada
    run = load_run(1)
    z = np.random.RandomState(123).randn(10000, arch.z_dim).astype(np.float32)
    w_avg, w_std = projector.w_stats(arch, params["mapping"], jnp.asarray(z))
    # A mean of 10000 float32 rows, summed in another order: measured 3.9e-6 (|w_avg| < 2).
    np.testing.assert_allclose(w_avg, run["w_avg"], rtol=0, atol=2e-5)
    np.testing.assert_allclose(float(w_std), float(run["w_std"]), rtol=1e-5)


def test_schedules_match_nvidia():
    run = load_run(1)
    settings = settings_of(run)
    np.testing.assert_allclose(settings.learning_rates(), run["lr"], rtol=0, atol=1e-15)
    # The w fed to the synthesis at step k is w before the step plus the scaled draw.
    w_before = np.concatenate([run["w_avg"][None], run["w_per_step"][:-1]])
    scale = float(run["w_std"]) * settings.w_noise_factors()
    want = run["ws"][:, 0]
    np.testing.assert_allclose(w_before + run["w_noise_unit"] * scale[:, None], want, atol=1e-6)
    assert np.all(run["ws"] == run["ws"][:, :1])  # one w tiled over every row


def golden_noise(run: dict, key: str) -> list:
    """The 9 maps `key.format(i)` of a golden as [1, r, r, 1]."""
    return [jnp.asarray(run[key.format(i)])[None, :, :, None] for i in range(9)]


def test_regularizer_and_renormalisation(ada):
    run = load_run(1)
    noise = golden_noise(run, "init_noise_{}")
    reg = float(projector.noise_regularizer(noise)[0])
    want = (run["loss"][0] - run["dist"][0]) / 1e5  # the loss is float32: 1e-3 of 1.4e4
    np.testing.assert_allclose(reg, want, rtol=0, atol=2e-8)
    normed = projector.normalize_noise(golden_noise(run, "noise_{}_step0"))
    means = [float(m.mean()) for m in normed]
    squares = [float((m * m).mean()) for m in normed]
    np.testing.assert_allclose(means, 0.0, atol=1e-7)
    np.testing.assert_allclose(squares, 1.0, atol=1e-6)


def run_steps(ada, run: dict, factor: int):
    """Our steps from the golden's start, fed the golden's w draws."""
    arch, params = ada
    settings = settings_of(run)
    target, distance = target_and_distance(run, factor)
    w = jnp.asarray(run["w_avg"])[None]
    state = projector.start(w, golden_noise(run, "init_noise_{}"), settings)
    params = arch.prepare(params)
    step = jax.jit(
        lambda s, u: projector.step(
            arch, params, settings, distance, s, target, u, jnp.float32(run["w_std"])
        )
    )
    states, reports = [], []
    for k in range(settings.num_steps):
        state, report, _ = step(state, jnp.asarray(run["w_noise_unit"][k])[None])
        states.append(state)
        reports.append(report)
    return states, reports


# Max-abs tolerances, stated. Measured on an Intel Xeon (AVX-512), jax 0.10.2: w within
# 3.1e-6 at every step (|w| up to about 2), the final noise maps within 4.6e-6, distance
# and loss within 2e-6 relative; the tolerances leave about ten times that for another
# machine's rounding (tests/golden/projector/README.md).
FIRST_STEPS_ATOL = 1e-5
W_ATOL = 3e-5
NOISE_ATOL = 5e-5
LOSS_RTOL = 2e-5


@pytest.mark.parametrize("factor", [1, pytest.param(4, marks=pytest.mark.slow)])
def test_steps_match_nvidia(ada, factor):
    run = load_run(factor)
    states, reports = run_steps(ada, run, factor)
    w = np.stack([np.asarray(s.w[0]) for s in states])
    dist = np.array([float(r.distance[0]) for r in reports])
    loss = np.array([float(r.loss[0]) for r in reports])
    np.testing.assert_allclose(w[:3], run["w_per_step"][:3], rtol=0, atol=FIRST_STEPS_ATOL)
    np.testing.assert_allclose(w, run["w_per_step"], rtol=0, atol=W_ATOL)
    np.testing.assert_allclose(dist, run["dist"], rtol=LOSS_RTOL)
    np.testing.assert_allclose(loss, run["loss"], rtol=LOSS_RTOL)
    for i in range(9):
        for k in (0, 1):
            noise_k = states[k].noise[i][0, :, :, 0]
            want = run[f"noise_{i}_step{k}"]
            want = (want - want.mean()) / np.sqrt(((want - want.mean()) ** 2).mean())
            np.testing.assert_allclose(noise_k, want, rtol=0, atol=FIRST_STEPS_ATOL)
        final = states[-1].noise[i][0, :, :, 0]
        np.testing.assert_allclose(final, run[f"final_noise_{i}"], rtol=0, atol=NOISE_ATOL)


@pytest.fixture(scope="module")
def tiny():
    make = jax.jit(lambda k: testing.random_stylegan2_params(k, 16, channel_base=64, channel_max=8))
    params = make(jax.random.key(1))
    return stylegan2.arch_from_params(params), params


@pytest.mark.slow  # two compilations of a 3-step run: ~20 s on 2 shared cores
def test_a_sample_does_not_depend_on_the_others(tiny):
    """Two rows run together give what each gives alone (same starts)."""
    arch, params = tiny
    settings = projector.ProjectorSettings(num_steps=3, w_avg_samples=256)
    w_avg, w_std = projector.sample_w_stats(arch, params["mapping"], jax.random.key(2), settings)
    keys = jax.vmap(lambda n: jax.random.fold_in(jax.random.key(3), n))(jnp.arange(2))
    starts = jax.vmap(lambda k: projector.sample_start(arch, k))(keys)
    target = jax.random.uniform(jax.random.key(4), (2, 4, 4, 3))
    distance = projector.l2_through(lambda x: bicubic_downscale(x, 4))
    run = jax.jit(
        lambda t, s: projector.run(
            arch, params, t, s, settings=settings, distance=distance, w_avg=w_avg, w_std=w_std
        )[0]
    )
    both = run(target, starts)
    # Equal but for rounding (XLA sums a batch of 2 in another order; Adam's m / sqrt(v)
    # magnifies a gradient's last bits where it is small): measured 3.8e-6 on |w| < 2.
    for i in range(2):
        alone = run(target[i : i + 1], jax.tree.map(lambda x, i=i: x[i : i + 1], starts))
        np.testing.assert_allclose(both.w[i], alone.w[0], rtol=0, atol=2e-5)
        for m_both, m_alone in zip(both.noise, alone.noise, strict=True):
            np.testing.assert_allclose(m_both[i], m_alone[0], rtol=0, atol=2e-5)


@pytest.mark.slow
def test_project_lowers_the_distance_and_keeps_the_noise_normalised(tiny):
    arch, params = tiny
    settings = projector.ProjectorSettings(num_steps=30, w_avg_samples=256)
    w_avg, w_std = projector.sample_w_stats(arch, params["mapping"], jax.random.key(2), settings)
    truth = projector.render(
        arch,
        params,
        arch.map(params["mapping"], jax.random.normal(jax.random.key(6), (2, 512))),
        arch.noise_buffers(params["synthesis"]),
    )
    distance = projector.l2_through(lambda x: bicubic_downscale(x, 4))
    run = jax.jit(
        lambda t, k: projector.project(
            arch, params, t, k, settings=settings, distance=distance, w_avg=w_avg, w_std=w_std
        )
    )
    final, reports = run(bicubic_downscale(truth, 4), jax.random.key(7))
    assert reports.distance.shape == (30, 2) and final.w.shape == (2, arch.w_dim)
    assert np.all(reports.distance[-1] < 0.5 * reports.distance[0])
    assert int(final.count) == 30
    for maps in final.noise:
        np.testing.assert_allclose(maps.mean(axis=(1, 2, 3)), 0.0, atol=1e-6)
        np.testing.assert_allclose((maps * maps).mean(axis=(1, 2, 3)), 1.0, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_generator(tiny):
    arch, params = tiny
    return Generator("stylegan2", arch, params)


@pytest.mark.slow  # the mode's 10000 mapping samples and two compilations: ~40 s on 2 cores
def test_solve_runs_the_projector_mode(tiny_generator):
    lr = jax.random.uniform(jax.random.key(8), (2, 4, 4, 3))
    result = pulse_jax.solve(lr, tiny_generator, mode="projector", steps=4, num_samples=2)
    arch = tiny_generator.arch
    assert result.hr.shape == (2, 2, 16, 16, 3) and result.latent.shape == (2, 2, 1, 512)
    assert set(result.history) == {"L2", "GEOCROSS", "NOISE_REG", "TOTAL"}
    assert result.history["TOTAL"].shape == (4, 2, 2) and np.all(result.best_step == 4)
    # The result is the render of the final w and noise, judged by PULSE's L2 at the LR size.
    w = result.latent.reshape(4, 512)
    noise = [m.reshape((4,) + m.shape[2:]) for m in result.noise]
    images = projector.render(arch, tiny_generator.params, jnp.asarray(w), noise)
    l2 = np.mean(
        (np.asarray(bicubic_downscale(images, 4)) - np.repeat(lr, 2, axis=0)) ** 2, (1, 2, 3)
    )
    np.testing.assert_allclose(result.l2.reshape(4), l2, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(result.hr.reshape(images.shape), np.clip(images, 0, 1), atol=1e-5)
    again = pulse_jax.solve(lr, tiny_generator, mode="projector", steps=4, num_samples=2)
    np.testing.assert_array_equal(again.latent, result.latent)  # the same seed, the same program
    assert not np.array_equal(result.latent[:, 0], result.latent[:, 1])  # samples differ


def test_projector_mode_refuses_pulse_options():
    arch = stylegan2.StyleGAN2Arch(resolution=16, channels=(8, 8, 8))
    with pytest.raises(ConfigError, match="learning_rate, lr_schedule"):
        SearchOptions(mode="projector", learning_rate=0.1, lr_schedule="fixed").for_arch(arch)
    assert SearchOptions(mode="projector").for_arch(arch).bad_noise_layers == ()
    assert SearchOptions().mode == "pulse"


def test_manifest_settings_record_the_projector_mode_only():
    """PULSE's lines stay byte for byte as before the modes; a projector line says so, so
    the two never mix in one folder."""
    generator = Generator("stylegan2", stylegan2.StyleGAN2Arch(resolution=16, channels=(8,)), {})
    pulse = config.SearchConfig(generator="x.npz").settings(generator)
    proj = config.SearchConfig(generator="x.npz", options=SearchOptions(mode="projector")).settings(
        generator
    )
    assert "mode" not in pulse and proj["mode"] == "projector"
    assert config.settings_diff(pulse, proj) == "mode None -> 'projector'"
    assert config.settings_diff(proj, pulse) == "mode 'projector' -> None"
