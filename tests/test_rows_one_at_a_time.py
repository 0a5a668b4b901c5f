"""`search.Program.rows_one_at_a_time`: a step's generator passes one row after the other.

The rows are independent (the loss is a sum of per-row terms), so the result is the
batched one up to rounding: a row's generator pass runs at batch 1 instead of at its
position in a batch (XLA:CPU may round by position on some machines, tests/test_sharding.py).
Measured here: max-abs 1.3e-4 on Intel Xeon (AVX-512) after 5 steps (images, L2, latents,
noise, history); asserted 1e-3, the tolerance of a row in another group.
"""

from __future__ import annotations

import importlib
import types

import jax
import numpy as np
import pytest
from helpers.generators import OTHER_GROUP_TOLERANCE, small_stylegan_generator

import pulse_jax

solve_module = importlib.import_module("pulse_jax.solve")  # the module, not the function

KWARGS = {"steps": 5, "num_samples": 2, "bad_noise_layers": ()}


@pytest.fixture(scope="module")
def small():
    return small_stylegan_generator(1)


def _gap(a, b) -> float:
    def arrays(r):
        return [r.hr, r.lr, r.l2, r.latent, *r.noise, *r.history.values()]

    pairs = zip(arrays(a), arrays(b), strict=True)
    return max(float(np.max(np.abs(np.float64(x) - np.float64(y)))) for x, y in pairs)


def test_one_row_at_a_time_gives_the_batched_result(small, monkeypatch):
    lr = np.random.default_rng(1).uniform(0.2, 0.8, (2, 8, 8, 3)).astype(np.float32)
    batched = pulse_jax.solve(lr, small, **KWARGS)
    monkeypatch.setattr(solve_module, "rows_one_at_a_time", lambda resolution, devices: True)
    text = pulse_jax.lower(lr, small, **KWARGS).as_text()
    assert text.count("stablehlo.while") == 2  # the step loop and, inside it, the rows' loop
    one_by_one = pulse_jax.solve(lr, small, **KWARGS)
    assert _gap(batched, one_by_one) <= OTHER_GROUP_TOLERANCE
    np.testing.assert_array_equal(batched.best_step, one_by_one.best_step)


def test_rows_run_one_at_a_time_only_for_1024_px_on_cpu():
    cpu = jax.devices("cpu")[:1]
    gpu = [types.SimpleNamespace(platform="gpu")]
    assert solve_module.rows_one_at_a_time(1024, cpu)
    assert not solve_module.rows_one_at_a_time(256, cpu)
    assert not solve_module.rows_one_at_a_time(1024, gpu)
    assert not solve_module.rows_one_at_a_time(1024, cpu + gpu)
