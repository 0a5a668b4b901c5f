"""pulse_jax.evaluation.metrics, pulse_jax.evaluation.evaluate and experiments/evaluate.py
(tiny: 2 faces, 3 steps)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import benchmark_lib
import jax
import numpy as np
import pytest
from PIL import Image

from pulse_jax import SearchOptions
from pulse_jax.evaluation import evaluate as evaluation
from pulse_jax.evaluation import metrics
from pulse_jax.runs.config import SearchConfig

ROOT = Path(__file__).resolve().parents[1]
EVALUATE_PY = ROOT / "experiments" / "evaluate.py"
STEPS = 3


# -- metrics ------------------------------------------------------------------------------


def test_psnr_known_values_and_cap():
    a = np.zeros((2, 4, 4, 3))
    assert metrics.psnr(a, a).tolist() == [metrics.PSNR_CAP_DB] * 2  # identical: capped
    np.testing.assert_allclose(metrics.psnr(a, a + 0.1), 20.0, atol=1e-9)  # mse 0.01
    # A mask: only observed pixels count, whatever the others hold.
    b = a + 0.1
    b[:, 0, 0] = 1.0
    mask = np.ones((4, 4))
    mask[0, 0] = 0
    np.testing.assert_allclose(metrics.psnr(a, b, mask), 20.0, atol=1e-9)
    assert metrics.psnr(a, b).max() < 20.0


def test_ssim_properties_and_closed_form():
    rng = np.random.default_rng(1)
    x = rng.random((24, 24, 3))
    assert metrics.ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    y = np.clip(x + 0.2 * rng.standard_normal(x.shape), 0, 1)
    assert metrics.ssim(x, y) == pytest.approx(metrics.ssim(y, x), abs=1e-12)
    assert 0 < metrics.ssim(x, y) < 1
    # Constant images: no variance, so SSIM is the luminance term alone.
    c1 = metrics.SSIM_K1**2
    p, q = 0.3, 0.6
    expected = (2 * p * q + c1) / (p**2 + q**2 + c1)
    assert metrics.ssim(np.full((16, 16, 3), p), np.full((16, 16, 3), q)) == pytest.approx(
        expected, abs=1e-12
    )
    with pytest.raises(ValueError, match="at least 11 x 11"):
        metrics.ssim(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)))


def test_ssim_matches_scikit_image():
    # Values from scikit-image 0.26.0, structural_similarity(a, b, gaussian_weights=True,
    # sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=-1), on these
    # exact arrays (numpy's PCG64 stream is fixed across versions); computed once in a
    # scratch environment, scikit-image is no dependency. Ours agreed to 1e-15.
    rng = np.random.default_rng(0)
    a = rng.random((32, 32, 3))
    b = np.clip(a + 0.1 * rng.standard_normal((32, 32, 3)), 0, 1)
    y = np.linspace(0, 1, 32)
    c = np.broadcast_to((y[:, None] * y[None, :])[:, :, None], (32, 32, 3)).copy()
    d = np.clip(c * 0.8 + 0.1 + 0.05 * rng.standard_normal((32, 32, 3)), 0, 1)
    expected = {
        (0, 1): 0.9457193505422428,
        (2, 3): 0.49888254500611745,
        (0, 2): 0.00818167295665523,
    }
    images = [a, b, c, d]
    for (i, j), value in expected.items():
        assert metrics.ssim(images[i], images[j]) == pytest.approx(value, abs=1e-10)


def test_mean_pairwise_distance():
    samples = np.stack([np.zeros((2, 2, 3)), np.full((2, 2, 3), 0.5), np.ones((2, 2, 3))])
    # pairs: 0.5, 1.0, 0.5
    assert metrics.mean_pairwise_distance(samples) == pytest.approx(2.0 / 3.0)
    assert metrics.mean_pairwise_distance(samples[:1]) == 0.0


# -- the evaluation -----------------------------------------------------------------------


def test_synthetic_faces_are_the_generators_own(dcgan64):
    faces = evaluation.synthetic_faces(dcgan64, 2, data_seed=5)
    start = dcgan64.arch.sample_start(jax.random.fold_in(jax.random.key(5), 1), SearchOptions())
    image, _ = dcgan64.render({"latent": start["latent"][None]})
    np.testing.assert_allclose(faces[1], np.clip(image[0], 0, 1), atol=1e-6)
    assert faces.shape == (2, 64, 64, 3) and faces.min() >= 0 and faces.max() <= 1


@pytest.fixture(scope="module")
def report(dcgan64):
    config = evaluation.EvalConfig(
        search=SearchConfig(options=SearchOptions(steps=STEPS, operator="inpaint")),
        output_dir="",
        synthetic=2,
        samples=2,
    )
    return evaluation.evaluate(config, dcgan64)


def test_report_values_are_sane(report):
    agg = report["aggregate"]
    assert agg["faces"] == 2 and agg["samples_per_face"] == 2 and agg["factor"] == 4
    assert agg["operator"] == "inpaint 75% observed"
    assert agg["eps"] == pytest.approx(2e-3 * 0.75)  # the operator's eps rule
    assert 0.0 <= agg["success_rate"] <= 1.0
    curve = np.asarray(report["success_curve"])
    assert curve.shape == (STEPS,) and np.all(np.diff(curve) >= 0)  # reached stays reached
    assert curve[-1] == pytest.approx(agg["success_rate"])  # DCGAN: best = lowest L2
    assert len(report["faces"]) == 2 and len(report["samples"]) == 4
    for sample in report["samples"]:
        assert 0 < sample["lr_psnr_db"] < metrics.PSNR_CAP_DB
        assert 0 < sample["hr_psnr_db"] < metrics.PSNR_CAP_DB and -1 <= sample["hr_ssim"] <= 1
        # LR consistency is the returned L2 as a PSNR over the observed pixels (up to the
        # clipping of the returned image to [0, 1]).
        assert sample["lr_psnr_db"] == pytest.approx(10 * np.log10(0.75 / sample["l2"]), abs=0.5)
    assert all(f["diversity_rms"] > 0 for f in report["faces"])
    assert agg["latent_steps_per_second"] > 0 and report["machine"]["backend"] == "cpu"
    assert report["settings"]["operator"] == "inpaint" and report["settings"]["mask"] == "center"
    assert report["settings"]["blur_sigma"] is None  # not this operator's parameter


def test_write_report(report, tmp_path):
    written = evaluation.write_report(report, tmp_path, plot_faces=2)
    assert set(written) == {"report.json", "report.md", "grid.png", "l2_curves.png",
                            "success_curve.png"}  # fmt: skip
    for name in written:
        assert (tmp_path / name).stat().st_size > 0
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["aggregate"] == report["aggregate"] and "_arrays" not in on_disk
    markdown = (tmp_path / "report.md").read_text()
    assert "| inpaint 75% observed | 4 | 2 | 2 |" in markdown and "| synthetic_1 |" in markdown
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size[0] >= 4 * 128 and grid.size[1] >= 2 * 128  # 2 rows of 4 panels
    table = evaluation.summary_table([on_disk, on_disk])
    assert len(table.strip().splitlines()) == 4 and table.startswith("| inputs |")


def test_hr_faces_from_a_folder(dcgan64, tmp_path):
    folder = tmp_path / "hr"
    folder.mkdir()
    face = (evaluation.synthetic_faces(dcgan64, 1, data_seed=3)[0] * 255).astype(np.uint8)
    Image.fromarray(face).save(folder / "a.png")
    Image.fromarray(face[:32, :32]).save(folder / "small.png")
    (folder / "README.md").write_text("left out")
    names, faces, errors = evaluation.load_faces(folder, 64)
    assert names == ["a"] and faces.shape == (1, 64, 64, 3) and len(errors) == 1
    assert "small.png: is 32x32; HR faces must be 64x64" in str(errors[0])
    names, faces, errors = evaluation.load_faces(folder, 64, resize=True)
    assert names == ["a", "small"] and not errors


# -- side by side: PULSE, ILO and the projector on the same faces ---------------------------

TINY_SG2 = "stylegan2_16_c8"  # random weights, 3 blocks: ILO runs 3 stages
METHODS = ("pulse", "ilo", "projector")


def side_config(method: str, operator: str = "bicubic") -> evaluation.EvalConfig:
    options = SearchOptions(steps=STEPS, mode=method, operator=operator)
    search = SearchConfig(generator=TINY_SG2, options=options)
    return evaluation.EvalConfig(search, "", synthetic=2, samples=2, lr_size=4)


@pytest.fixture(scope="module")
def tiny_sg2():
    return benchmark_lib.make_generator(TINY_SG2)


@pytest.fixture(scope="module")
def side_reports(tiny_sg2):
    return {m: evaluation.evaluate(side_config(m), tiny_sg2) for m in METHODS}


@pytest.mark.slow
def test_methods_see_the_same_faces_and_observations(side_reports):
    pulse = side_reports["pulse"]["_arrays"]
    for method, report in side_reports.items():
        assert evaluation.method_of(report) == method
        arrays = report["_arrays"]
        # Made by the same code from the same data seed: equal by construction.
        np.testing.assert_array_equal(arrays["truth"], pulse["truth"])
        np.testing.assert_array_equal(arrays["observations"], pulse["observations"])
        assert arrays["hr"].shape == (2, 2, 16, 16, 3)
        assert np.asarray(report["success_curve"]).shape == (STEPS,)
        assert report["aggregate"]["factor"] == 4 and report["aggregate"]["faces"] == 2
    assert not np.array_equal(side_reports["ilo"]["_arrays"]["hr"], pulse["hr"])
    assert not np.array_equal(side_reports["projector"]["_arrays"]["hr"], pulse["hr"])
    assert "mode" not in side_reports["pulse"]["settings"]  # PULSE's reports as before


def test_summary_has_a_method_column_and_not_run_rows(tiny_sg2, tmp_path):
    reason = "mode ilo runs the bicubic operator only, not gaussian"
    skipped = evaluation.not_run_report(side_config("ilo", "gaussian"), tiny_sg2, reason)
    assert evaluation.write_report(skipped, tmp_path) == ["report.json"]
    on_disk = evaluation.read_report(tmp_path / "report.json")
    assert on_disk["not_run"] == reason and on_disk["aggregate"]["operator"].startswith("gaussian")
    assert on_disk["settings"]["mode"] == "ilo" and on_disk["aggregate"]["faces"] == 2
    measured = {"operator": "bicubic", "factor": 4, "success_rate": 0.25, "hr_psnr_db": 20.5}
    old = {"settings": {"source": "faces"}, "aggregate": measured}  # before the modes
    projector = {"settings": {"source": "faces", "mode": "projector"}, "aggregate": measured}
    lines = evaluation.summary_table([old, projector, on_disk]).splitlines()
    assert lines[0].startswith("| inputs | method | operator | x |")
    assert lines[2].startswith("| faces | pulse | bicubic | 4 | n/a | n/a | 25% |")
    assert lines[3].startswith("| faces | projector | bicubic | 4 |") and "| 20.5 |" in lines[3]
    assert lines[4].count("| n/a ") == 11 and lines[4].endswith("| n/a |")  # every measure
    assert "| ilo | gaussian sigma 2 | 4 | 2 | 2 | n/a |" in lines[4]


@pytest.mark.slow
def test_side_by_side_grid_and_summary(side_reports, tmp_path):
    reports = list(side_reports.values())
    lines = evaluation.summary_table(reports).splitlines()
    assert [line.split(" | ")[1] for line in lines[2:]] == list(METHODS)
    # Every measure up to the bicubic baseline is there (LPIPS is n/a: 16 px is below its
    # minimum; lpips.min_size).
    assert all("n/a" not in line.split(" | ")[:12] for line in lines[2:])
    assert evaluation.write_summary(reports, tmp_path)[0] == "summary.md"
    grid = evaluation.side_by_side_grid(reports, 2)
    one = evaluation.image_grid(side_reports["pulse"], 1)
    assert grid.shape == (2 * 3 * one.shape[0], one.shape[1], 3)  # per face, a row per method
    assert evaluation.markdown_report(side_reports["ilo"]).startswith("# ILO evaluation")


# -- the launcher -------------------------------------------------------------------------


def _launch(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(EVALUATE_PY), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=600,
    )


@pytest.mark.slow
def test_launcher_end_to_end(dcgan64, tmp_path):
    del dcgan64  # weights ready
    out = tmp_path / "eval"
    args = ("--synthetic", 2, "--samples", 2, "--steps", STEPS, "--operator", "colorize")
    done = _launch(*args, "--output_dir", out)
    assert done.returncode == 0, done.stderr
    assert "| colorize | 4 | 2 | 2 |" in done.stdout
    for name in ("report.json", "report.md", "grid.png", "l2_curves.png", "success_curve.png"):
        assert (out / name).is_file()
    summary = _launch(
        "--summarize", tmp_path / "*" / "report.json", "--output_dir", tmp_path / "summary"
    )
    assert summary.returncode == 0
    assert "| synthetic 2 (data_seed 1) | pulse | colorize |" in summary.stdout
    assert "| colorize |" in (tmp_path / "summary" / "summary.md").read_text()
    assert (tmp_path / "summary" / "success_curves.png").stat().st_size > 0
    bad = _launch("--synthetic", 2, "--lr_size", 5, "--output_dir", tmp_path / "bad")
    assert bad.returncode == 2 and "--lr_size 5 does not divide 64" in bad.stderr
    both = _launch("--synthetic", 2, "--input_dir", tmp_path, "--output_dir", tmp_path / "bad")
    assert both.returncode == 2 and "not both" in both.stderr
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_launcher_side_by_side(tmp_path):
    out = tmp_path / "side"
    args = ("--generator", TINY_SG2, "--synthetic", 2, "--samples", 2, "--steps", STEPS)
    args += ("--lr_size", 4, "--operator", "gaussian", "--output_dir", out)
    done = _launch(*args, "--method", "pulse,projector,ilo")
    assert done.returncode == 0, done.stderr
    assert "n/a: ilo: mode ilo runs the bicubic operator only, not gaussian" in done.stderr
    for method in ("pulse", "projector"):
        report = evaluation.read_report(out / method / "report.json")
        assert evaluation.method_of(report) == method and (out / method / "grid.png").is_file()
        assert report["aggregate"]["samples_per_face"] == 2
    assert "not_run" in evaluation.read_report(out / "ilo" / "report.json")
    summary = (out / "summary.md").read_text()
    assert "| method |" in summary and "| projector | gaussian" in summary
    assert "| ilo | gaussian" in summary and (out / "grid.png").is_file()
    both = _launch(*args, "--method", "pulse", "--mode", "ilo")
    assert both.returncode == 2 and "not both" in both.stderr
    unknown = _launch(*args, "--method", "pulse,pulse2")
    assert unknown.returncode == 2 and "give distinct methods" in unknown.stderr
    only_ilo = _launch(*args, "--method", "ilo,ilo")
    assert only_ilo.returncode == 2
