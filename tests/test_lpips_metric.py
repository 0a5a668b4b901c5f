"""LPIPS in the evaluation (pulse_jax/evaluation/evaluate.py): per sample, per face, the aggregate,
the tables and the grid; a note instead when the weights are absent."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.lpips_fixtures import random_weights

from pulse_jax import SearchOptions, lpips
from pulse_jax.evaluation import evaluate as evaluation
from pulse_jax.runs.config import SearchConfig


def config(**changes) -> evaluation.EvalConfig:
    return evaluation.EvalConfig(
        search=SearchConfig(options=SearchOptions(steps=2)),
        output_dir="",
        synthetic=2,
        samples=2,
        lr_size=16,
        **changes,
    )


@pytest.fixture(scope="module")
def alexnet():
    return lpips.LPIPSWeights("alexnet", random_weights("alexnet"))


@pytest.fixture(scope="module")
def report(dcgan64, alexnet):
    return evaluation.evaluate(config(), dcgan64, lpips_weights=alexnet)


def test_measure_matches_distance_in_chunks(alexnet):
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 1, (2, 2, 2, 32, 32, 3)).astype(np.float32)  # 4 pairs, 3 per call
    got = lpips.measure(alexnet, x, y, rows=3)
    assert got.shape == (2, 2) and got.dtype == np.float64
    np.testing.assert_allclose(got, np.asarray(alexnet(x, y)), atol=1e-6)


def test_report_has_lpips_to_the_truth(report, alexnet):
    arrays = report["_arrays"]
    hr, truth = arrays["hr"], arrays["truth"]
    expected = lpips.measure(alexnet, hr, np.broadcast_to(truth[:, None], hr.shape))
    got = np.array([[s["hr_lpips"] for s in report["samples"] if s["face"] == name]
                    for name in arrays["names"]])  # fmt: skip
    np.testing.assert_allclose(got, expected, atol=1e-4)  # rounded to 4 digits
    agg = report["aggregate"]
    assert agg["hr_lpips"] == pytest.approx(expected.mean(), abs=1e-4)
    assert agg["bicubic_hr_lpips"] > 0 and "alexnet" in agg["lpips"]
    for face, values in zip(report["faces"], expected, strict=True):
        assert face["hr_lpips"] == pytest.approx(values.mean(), abs=1e-4)
    markdown = evaluation.markdown_report(report)
    assert "HR LPIPS" in markdown and f"| {agg['hr_lpips']} |" in markdown
    assert "LPIPS" in " ".join(evaluation.summary_table([report]).splitlines()[:1])
    grid = evaluation.image_grid(report, 1)
    assert grid.ndim == 3


def test_without_weights_lpips_is_left_out_with_a_note(dcgan64, monkeypatch):
    def absent(backbone):
        raise FileNotFoundError("no LPIPS weights")

    monkeypatch.setattr(lpips, "load_lpips", absent)
    report = evaluation.evaluate(config(), dcgan64)
    agg = report["aggregate"]
    assert "hr_lpips" not in agg and "convert lpips" in agg["lpips"]
    assert all("hr_lpips" not in s for s in report["samples"])
    row = evaluation.summary_table([report]).splitlines()[2]
    assert "n/a" in row
    assert "not measured" in evaluation.markdown_report(report)
