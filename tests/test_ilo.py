"""ILO (pulse_jax/ilo.py, docs/method.md section 12) against ILO's own code
(tests/golden/ilo/, README there), and the l1-ball projection and ramp it uses.

Tolerances, justified (measured on an Intel Xeon, XLA:CPU, against torch 2.14 CPU; figures
sr_default / masked_projected):
- Per-step MSE of every stage, whole run: relative 1e-5 (reached 2.1e-6 / 1.7e-6).
- The run's first update (stage 0, step 1; step 0's learning rate is 0): latent and noise
  max-abs 1e-4 (reached 2.4e-5 / 3.6e-6). The best image: 1e-3 x max(1, max |golden|)
  (reached 2.6e-5 / 2.2e-4 after 10 steps over 4 stages).
- Each stage run from the golden's own variables at the stage's start, every step: latent,
  noise maps and layer max-abs 1e-3 x max(1, max |golden|), and at most 0.1% of elements off
  by more than 1e-4 (reached: latent 6.7e-5 / 1.3e-4, noise 9.7e-5 / 4.2e-6, layer 8.9e-4 /
  8.7e-6, at most 0.05% of elements over 1e-4; MSE relative 1.6e-6 / 1.2e-6). Adam's first
  real step moves an element by about lr x g / |g| wherever the gradient g is tiny, so
  rounding-level differences of g move a few elements visibly; the l1 ball's threshold then
  passes such a difference to every element of the row (tests/test_stylegan2.py says the
  same of PULSE's first step).
- Layer outputs (the next stage's start): max-abs 1e-4 x max(1, max |golden|) (reached
  7.3e-5 / 3.3e-6, outputs up to 4.4).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import pulse_jax
from pulse_jax import ilo
from pulse_jax.checkpoints.convert import write_stylegan2_weights
from pulse_jax.checkpoints.stylegan2_formats import read_stylegan2
from pulse_jax.options import ConfigError

GOLDEN = Path(__file__).parent / "golden"
RUNS = ("sr_default", "masked_projected")


def nhwc(x):
    return np.moveaxis(np.asarray(x), -3, -1)


@pytest.fixture(scope="module")
def tiny_sg2_path(tmp_path_factory) -> Path:
    """The rosinality golden generator with the golden gaussian fit, through the converter."""
    out = tmp_path_factory.mktemp("weights") / "sg2_tiny.npz"
    fit = np.load(GOLDEN / "stylegan2" / "sg2_gaussian_fit.npz")
    write_stylegan2_weights(
        out,
        read_stylegan2(GOLDEN / "stylegan2" / "sg2_rosinality_tiny.pt"),
        gaussian_fit={"mean": fit["mean"], "std": fit["std"]},
        show_progress=False,
    )
    return out


@pytest.fixture(scope="module")
def tiny_sg2(tiny_sg2_path):
    return pulse_jax.load_generator(tiny_sg2_path, precision="highest")


def options_of(config: dict) -> ilo.IloOptions:
    """ILO's config (the golden's) -> IloOptions."""
    n = len(config["steps"])

    def radii(name, flag):
        return tuple(config[name][:n]) if config[flag] else None

    return ilo.IloOptions(
        steps=tuple(config["steps"]),
        learning_rate=tuple(config["lr"][:n]),
        lr_same_pace=config["lr_same_pace"],
        mse=tuple(config["mse"][:n]),
        dead_zone=tuple(config["dead_zone_linear"][:n]),
        dead_zone_alpha=config["dead_zone_linear_alpha"],
        geocross=config["geocross"],
        sphere=config["project"],
        mask_black_pixels=config["mask_black_pixels"],
        radius_layer=radii("max_radius_gen_out", "do_project_gen_out"),
        radius_latent=radii("max_radius_latent", "do_project_latent"),
        radius_noise=radii("max_radius_noises", "do_project_noises"),
    )


class Golden:
    """One golden run; record r holds the variables before forward pass r (stage k's records
    are its start, then the variables after each of its steps)."""

    def __init__(self, name: str):
        self.run = dict(np.load(GOLDEN / "ilo" / f"ilo_{name}.npz"))
        self.config = json.loads(str(self.run["config"]))
        self.options = options_of(self.config)
        self.ref = jnp.asarray(nhwc(self.run["ref"]))
        self.num_noise = len([k for k in self.run if k.startswith("final_noise_")])

    def first_record(self, stage: int) -> int:
        return sum(s + 1 for s in self.options.steps[:stage])

    def variables(self, stage: int, step: int) -> dict:
        """The variables after `step` steps of `stage` (0: the stage's start)."""
        r = self.first_record(stage) + step
        layer = None
        if stage:
            layer = jnp.asarray(nhwc(self.run[f"gen_out_{stage}_per_record"][step]))
        return {
            "latent": jnp.asarray(self.run["latent_per_record"][r]),
            "noise": [
                jnp.asarray(nhwc(self.run[f"noise_{i}_per_record"][r]))
                for i in range(self.num_noise)
            ],
            "layer": layer,
        }

    def mse(self, stage: int) -> np.ndarray:
        first = sum(self.options.steps[:stage])
        return self.run["mse_per_step"][first : first + self.options.steps[stage]]


def assert_trajectory_close(got: dict, want: dict, where: str):
    for name in ("latent", "noise", "layer"):
        for g, w in zip(jax.tree.leaves(got[name]), jax.tree.leaves(want[name]), strict=True):
            g, w = np.asarray(g), np.asarray(w)
            diff = np.abs(g - w)
            tol = 1e-3 * max(1.0, float(np.abs(w).max()))
            assert diff.max() <= tol, (where, name, diff.max())
            assert np.mean(diff > 1e-4) <= 1e-3, (where, name, np.mean(diff > 1e-4))


@pytest.fixture(scope="module", params=RUNS)
def golden_search(request, tiny_sg2):
    golden = Golden(request.param)
    start = golden.variables(0, 0)
    start = {"latent": start["latent"], "noise": start["noise"]}
    _, stages = ilo.search(tiny_sg2, golden.ref, start, golden.options, keep=True)
    return golden, stages


@pytest.mark.slow
def test_whole_run_follows_ilos_mse_and_first_update(golden_search):
    golden, stages = golden_search
    mse = np.concatenate([np.asarray(s["history"]["MSE"][:, 0]) for s in stages])
    np.testing.assert_allclose(mse, golden.run["mse_per_step"], rtol=1e-5)
    first = jax.tree.map(lambda x: x[1], stages[0]["trajectory"])
    want = golden.variables(0, 2)
    np.testing.assert_allclose(first["latent"], want["latent"], rtol=0, atol=1e-4)
    for got, ref in zip(first["noise"], want["noise"], strict=True):
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4)
    # The best image is the last stage's lowest-MSE step's, as ILO returns it.
    best = nhwc(golden.run["best"])
    tol = 1e-3 * max(1.0, float(np.abs(best).max()))
    np.testing.assert_allclose(stages[-1]["best"], best, rtol=0, atol=tol)


@pytest.mark.slow
def test_each_stage_from_ilos_start_follows_ilo(golden_search, tiny_sg2):
    golden, _ = golden_search
    arch = tiny_sg2.arch
    params = {
        "synthesis": arch.prepare(tiny_sg2.params)["synthesis"],
        "gaussian_fit": tiny_sg2.params["gaussian_fit"],
    }
    factor = arch.resolution // golden.ref.shape[1]
    last = len(golden.options.steps) - 1
    for stage in range(last + 1):
        start = golden.variables(stage, 0)
        _, out = ilo.run_stage(arch, golden.options, stage, factor, True, params, golden.ref, start)
        np.testing.assert_allclose(out["history"]["MSE"][:, 0], golden.mse(stage), rtol=1e-5)
        for step in range(golden.options.steps[stage]):
            got = jax.tree.map(lambda x, s=step: x[s], out["trajectory"])
            assert_trajectory_close(got, golden.variables(stage, step + 1), (stage, step))
        want = golden.run["last_layer_out"] if stage == last else None
        if want is None:
            want = golden.run[f"gen_out_{stage + 1}_per_record"][0]
        want = nhwc(want)
        tol = 1e-4 * max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(out["layer_out"], want, rtol=0, atol=tol)


# -- the parts ---------------------------------------------------------------------------


def l1_projection_by_bisection(x: np.ndarray, radius: float) -> np.ndarray:
    """The l1-ball projection from its definition: theta >= 0 with sum(max(|x| - theta, 0))
    = radius, found by bisection in float64."""
    out = np.array(x, np.float64)
    for row in out.reshape(x.shape[0], -1):
        if np.abs(row).sum() < radius:
            continue
        lo, hi = 0.0, np.abs(row).max()
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if np.maximum(np.abs(row) - mid, 0).sum() > radius else (lo, mid)
        row[:] = np.sign(row) * np.maximum(np.abs(row) - lo, 0)
    return out


def test_l1_ball_projection():
    x = np.array(jax.random.normal(jax.random.key(0), (4, 3, 5, 2)))
    x[1] *= 0.01  # inside the ball: unchanged
    radius = 6.0
    got = np.asarray(ilo.project_l1_ball(jnp.asarray(x), radius))
    np.testing.assert_array_equal(got[1], x[1])
    np.testing.assert_allclose(got, l1_projection_by_bisection(x, radius), rtol=0, atol=1e-5)
    norms = np.abs(got).reshape(4, -1).sum(axis=1)
    np.testing.assert_allclose(norms[[0, 2, 3]], radius, rtol=1e-5)
    # a projection: applying it again changes nothing (up to rounding)
    again = np.asarray(ilo.project_l1_ball(jnp.asarray(got), radius + 1e-4))
    np.testing.assert_array_equal(again, got)


def test_learning_rate_ramp():
    assert ilo.ramp(0.0, 0.1) == 0.0  # every stage's first step only moves Adam's moments
    assert ilo.ramp(0.025, 0.1) == pytest.approx(0.05)  # half-way up the 5% ramp
    assert ilo.ramp(0.2, 0.1) == pytest.approx(0.1)
    assert ilo.ramp(0.625, 0.1) == pytest.approx(0.05)  # half-way down the cosine
    assert ilo.ramp(1.0, 0.1) == pytest.approx(0.0)
    options = ilo.IloOptions(steps=(4, 6), lr_same_pace=True)
    assert options.learning_rates(1) == [ilo.ramp(i / 10, 0.1) for i in range(6)]


def test_options_are_checked_against_the_generator():
    with pytest.raises(ValueError, match="steps"):
        ilo.IloOptions(steps=(1,) * 6).check(5)
    with pytest.raises(ValueError, match="learning_rate"):
        ilo.IloOptions(steps=(1,) * 5, learning_rate=(0.1,) * 4).check(5)
    with pytest.raises(ValueError, match="radius_latent"):
        ilo.IloOptions(radius_latent=(1.0, 2.0)).check(5)


@pytest.mark.slow
def test_rows_are_independent_and_black_pixels_unobserved(tiny_sg2):
    golden = Golden("masked_projected")
    options = ilo.IloOptions(steps=(3, 2), radius_latent=(30.0, 30.0), dead_zone=(1.0, 1.0))
    start = {k: v for k, v in golden.variables(0, 0).items() if k != "layer"}
    other = ilo.sample_start(tiny_sg2.arch, jax.random.key(7), 1)
    both = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), start, other)
    ref = jnp.concatenate([golden.ref, golden.ref])
    alone, _ = ilo.search(tiny_sg2, golden.ref, start, options)
    pair, stages = ilo.search(tiny_sg2, ref, both, options)
    for a, p in zip(jax.tree.leaves(alone), jax.tree.leaves(pair), strict=True):
        np.testing.assert_allclose(np.asarray(p)[:1], a, rtol=0, atol=1e-5)
    mask = ilo.observed(golden.ref, options)
    assert 0 < int(jnp.sum(mask == 0)) == golden.config["black"]
    assert ilo.result(stages)["hr"].shape == (2, 64, 64, 3)


# -- ILO as a mode of solve ------------------------------------------------------------------


def test_steps_split_over_the_stages_as_ilo():
    assert ilo.stage_steps(150, 9) == (50, 50, 25, 25)
    assert ilo.stage_steps(100, 9) == (33, 33, 17, 17)
    assert ilo.stage_steps(10, 5) == (3, 3, 2, 2)
    assert ilo.stage_steps(4, 5) == (1, 1, 1, 1)
    assert ilo.stage_steps(7, 2) == (4, 3)
    with pytest.raises(ValueError, match="steps >= 4"):
        ilo.stage_steps(3, 5)


def test_mode_ilo_refuses_what_it_cannot_run(tiny_sg2, tiny_stylegan):
    lr = np.full((1, 16, 16, 3), 0.5, np.float32)
    for bad in (
        dict(learning_rate=0.1),
        dict(loss_str="100*L2"),
        dict(operator="box"),
        dict(steps=3),
    ):
        with pytest.raises(ConfigError):
            pulse_jax.solve(lr, tiny_sg2, mode="ilo", **bad)
    with pytest.raises(ConfigError, match="intermediate layer"):
        pulse_jax.solve(np.full((1, 32, 32, 3), 0.5, np.float32), tiny_stylegan, mode="ilo")
    with pytest.raises(ConfigError, match="solve"):
        pulse_jax.init(lr, tiny_sg2, mode="ilo")


@pytest.mark.slow
def test_solve_in_mode_ilo_is_ilos_search(tiny_sg2):
    golden = Golden("sr_default")
    start = {k: v for k, v in golden.variables(0, 0).items() if k != "layer"}
    lr = np.clip((np.asarray(golden.ref) + 1.0) / 2.0, 0.0, 1.0)
    init = jax.tree.map(lambda x: np.asarray(x)[:, None], start)
    result = pulse_jax.solve(lr, tiny_sg2, mode="ilo", steps=10, init=init, keep_intermediate=True)
    options = ilo.IloOptions(steps=(3, 3, 2, 2))
    _, stages = ilo.search(tiny_sg2, ilo.to_raw(jnp.asarray(lr)), start, options)
    mse = np.concatenate([np.asarray(s["history"]["MSE"]) for s in stages])
    np.testing.assert_allclose(result.history["MSE"][:, :, 0], mse, rtol=1e-5)
    np.testing.assert_allclose(result.hr[:, 0], ilo.result(stages)["hr"], rtol=0, atol=1e-4)
    assert result.history["L2"].shape == (10, 1, 1) and result.intermediate.shape[0] == 10
    assert 8 <= int(result.best_step[0, 0]) <= 9  # within the last stage
    best = int(result.best_step[0, 0])  # its L2 is the history's at that step
    np.testing.assert_allclose(result.l2[0, 0], result.history["L2"][best, 0, 0], rtol=1e-4)


@pytest.mark.slow
def test_run_py_in_mode_ilo(tiny_sg2_path, tmp_path):
    root = Path(__file__).resolve().parents[1]
    folder = tmp_path / "in"
    folder.mkdir()
    golden = Golden("sr_default")
    face = np.clip((nhwc(golden.run["ref"])[0] + 1.0) * 127.5, 0, 255).round().astype(np.uint8)
    Image.fromarray(face).save(folder / "face.png")
    out = tmp_path / "out"
    args = ["--input_dir", folder, "--output_dir", out, "--generator", tiny_sg2_path]
    command = [sys.executable, root / "experiments" / "run.py", "--steps", "4", "--mode", "ilo"]
    env = dict(os.environ, PYTHONPATH=str(root))
    proc = subprocess.run([*map(str, command + args)], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (record,) = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert record["settings"]["mode"] == "ilo" and record["factor"] == 4
    assert record["best_step"] == 3 and np.isfinite(record["l2"])  # the last stage's only step
    with Image.open(out / "face" / "sample_0_hr.png") as im:
        assert im.size == (64, 64)
