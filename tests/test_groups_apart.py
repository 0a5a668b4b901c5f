"""Launchers solve a group's results as groups of one where that is not slower
(`engine.groups_apart`: CPU, 1024 px and more; docs/batch_curve_cpu.md).

A result's start depends only on (seed, input, sample), and a group of one inside a call
gives the result of that row alone, bitwise (tests/test_sharding.py), so a sweep of groups
of 3 solved apart must equal, byte for byte, the same sweep with groups of 1. The rule is
forced here on the 64 px DCGAN, whose searches take seconds.
"""

from __future__ import annotations

import io
import types
from pathlib import Path

import jax
import numpy as np
import pytest

from pulse_jax import SearchOptions, solve
from pulse_jax.evaluation import evaluate as evaluation
from pulse_jax.images import save_image
from pulse_jax.runs import engine, store
from pulse_jax.runs import sweep as sweeps
from pulse_jax.runs.config import ConfigError, SearchConfig
from pulse_jax.runs.inputs import load_inputs

STEPS = 3


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    rng = jax.random.key(0)
    for i in range(2):
        image = jax.random.uniform(jax.random.fold_in(rng, i), (16, 16, 3), minval=0.2, maxval=0.8)
        save_image(folder / f"face{i}.png", jax.device_get(image))
    return folder


def _config(inputs: Path, out: Path, batch: int, **changes) -> engine.Work:
    return engine.Work.for_sweep(
        str(inputs),
        str(out),
        SearchConfig(options=SearchOptions(steps=STEPS)),
        seeds=(4,),
        samples=2,
        batch_per_device=batch,
        log_interval=0,
        **changes,
    )


def _results(out: Path) -> dict:
    """(input, seed, sample) -> (L2, best step, the PNG's bytes) of every record."""
    return {
        store.key(r): (r["l2"], r["best_step"], (out / r["hr"]).read_bytes())
        for r in store.read_records(out, store.SWEEP_MANIFEST)
    }


@pytest.fixture(scope="module")
def apart(inputs, dcgan64, tmp_path_factory):
    """Groups of 3 (4 results: a full group and one padded with 2 copies), the rule forced."""
    out = tmp_path_factory.mktemp("apart")
    log = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine, "groups_apart", lambda resolution, devices: True)
        sweeps.run_sweep(_config(inputs, out, 3), dcgan64, log=log)
    return out, log.getvalue()


def test_groups_apart_equal_groups_of_one_byte_for_byte(inputs, dcgan64, apart, tmp_path):
    out, log = apart
    sweeps.run_sweep(_config(inputs, tmp_path, 1), dcgan64, log=io.StringIO())
    ones, split = _results(tmp_path), _results(out)
    assert len(split) == 4
    assert split == ones
    assert "each result of a group of 3 runs as a group of one" in log
    records = store.read_records(out, store.SWEEP_MANIFEST)
    assert all(r["group"]["apart"] and r["group"]["batch_per_device"] == 3 for r in records)


def test_a_line_solved_apart_is_recomputed_apart(inputs, dcgan64, apart):
    out, _ = apart
    loaded, _ = load_inputs(inputs, 64)
    for record in store.read_records(out, store.SWEEP_MANIFEST):
        again, row = engine.recompute(
            record, loaded, dcgan64, SearchConfig(options=SearchOptions(steps=STEPS))
        )
        assert float(again.l2[row, 0]) == record["l2"]
        assert int(again.best_step[row, 0]) == record["best_step"]


def test_resuming_with_groups_together_is_refused(inputs, dcgan64, apart):
    out, _ = apart
    config = _config(inputs, out, 3, split_groups=False)
    with pytest.raises(ConfigError, match="not solved together"):
        sweeps.run_sweep(config, dcgan64, log=io.StringIO())


def test_never_keeps_groups_together(inputs, dcgan64, tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "groups_apart", lambda resolution, devices: True)
    log = io.StringIO()
    sweeps.run_sweep(_config(inputs, tmp_path, 3, split_groups=False), dcgan64, log=log)
    records = store.read_records(tmp_path, store.SWEEP_MANIFEST)
    assert len(records) == 4 and not any("apart" in r["group"] for r in records)
    assert "group of one" not in log.getvalue()


def test_auto_splits_groups_of_more_than_one_on_cpu_at_1024_px(inputs, tmp_path):
    cpu = jax.devices("cpu")[:1]

    def apart(resolution: int, batch: int, split: bool | None = None) -> bool:
        work = _config(inputs, tmp_path, batch, split_groups=split)
        generator = types.SimpleNamespace(resolution=resolution)
        return engine._execution(work, generator, cpu, None)[0].split_groups

    assert apart(1024, 3)
    assert not apart(1024, 1)  # groups of one: nothing to split
    assert not apart(256, 3)
    assert not apart(1024, 3, split=False)
    assert apart(256, 3, split=True)


def test_evaluate_solves_each_sample_apart(dcgan64, monkeypatch):
    monkeypatch.setattr(engine, "groups_apart", lambda resolution, devices: True)
    config = evaluation.EvalConfig(
        search=SearchConfig(options=SearchOptions(steps=STEPS)),
        output_dir="",
        synthetic=2,
        samples=2,
    )
    observations = np.random.default_rng(3).uniform(0.2, 0.8, (2, 16, 16, 3)).astype(np.float32)
    out, _ = evaluation._solve_faces(config, dcgan64, observations, None)
    assert out["apart"]
    options = config.search.options
    alone = solve(observations[1:], dcgan64, options, image_ids=[1], sample_ids=[[1]])
    np.testing.assert_array_equal(alone.hr[0, 0], out["hr"][1, 1])
    np.testing.assert_array_equal(alone.history["L2"][:, 0, 0], out["history"][:, 1, 1])
