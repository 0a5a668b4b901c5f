"""`python -m pulse_jax.checkpoints.convert stylegan2` end to end on the fixture files of every
format.

Each converted file is loaded with `load_generator` and synthesizes the goldens' images
(max-abs 1e-4 x max(1, |image|), as tests/test_stylegan2.py). The commands are
docs/converting.md's ("which file do you have"), with the fixture files under the real
files' names;
`--fit_samples` is lowered from PULSE's 1,000,000 where noted, for test time only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import chex
import numpy as np
import pytest
from helpers.stylegan_tf_writer import tf_pickle_from_ada, write_pickle
from helpers.torch_writer import save_torch_zip

import pulse_jax
from pulse_jax.checkpoints import convert, weights_file
from pulse_jax.checkpoints.stylegan2_formats import read_stylegan2

GOLDEN = Path(__file__).parent / "golden" / "stylegan2"
ROOT = Path(__file__).parents[1]
ADA_FORWARD = GOLDEN / "sg2ada_forward.npz"
ROSINALITY_FORWARD = GOLDEN / "sg2_rosinality_forward.npz"


def fixture_files(folder: Path) -> dict[str, Path]:
    """The goldens under the names users' files have, and a TF pickle built from the ADA one."""
    files = {
        "ada-pickle": folder / "ffhq.pkl",
        "rosinality": folder / "stylegan2-ffhq-config-f.pt",
        "tf-pickle": folder / "stylegan2-ffhq-config-f.pkl",
    }
    shutil.copy(GOLDEN / "sg2ada_tiny.pkl", files["ada-pickle"])
    shutil.copy(GOLDEN / "sg2_rosinality_tiny.pt", files["rosinality"])
    ada = read_stylegan2(GOLDEN / "sg2ada_tiny.pkl")
    write_pickle(files["tf-pickle"], tf_pickle_from_ada(ada.state))
    return files


def synthesized(path: Path, forward: Path, *, noise: bool = True) -> tuple[np.ndarray, dict]:
    generator = pulse_jax.load_generator(path)
    golden = np.load(forward)
    maps = [
        np.moveaxis(golden[f"noise_{i}"], 1, -1) for i in range(generator.arch.num_noise_layers)
    ]
    images = np.moveaxis(np.asarray(generator.synthesize(golden["ws"], maps)), -1, 1)
    return images, golden


def assert_image_close(got, want):
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * max(1.0, float(np.abs(want).max())))


# docs/converting.md's commands (and the README's table), one per format.
README_COMMANDS = {
    "ada-pickle": "stylegan2 --checkpoint ffhq.pkl --out weights/ffhq_sg2.npz",
    "rosinality": "stylegan2 --checkpoint stylegan2-ffhq-config-f.pt --out weights/ffhq_sg2.npz",
    "tf-pickle": "stylegan2 --checkpoint stylegan2-ffhq-config-f.pkl --out weights/ffhq_sg2.npz",
}


@pytest.mark.parametrize("fmt", sorted(README_COMMANDS))
def test_readme_command_converts_each_format(tmp_path, fmt, monkeypatch):
    fixture_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    argv = README_COMMANDS[fmt].split() + ["--fit_samples", "20000"]  # test time only
    assert convert.main(argv) == 0
    out = tmp_path / "weights" / "ffhq_sg2.npz"
    wf = weights_file.load_weights(out)
    assert wf.kind == "stylegan2"
    assert wf.config["resolution"] == 64 and wf.config["num_ws"] == 10
    assert wf.provenance["source"] == f"StyleGAN2 ({fmt})"
    checkpoint = Path(README_COMMANDS[fmt].split()[2])
    assert wf.provenance["checkpoint"]["sha256"] == weights_file.sha256_of(checkpoint)
    assert wf.provenance["gaussian_fit_computed"] == {"samples": 20000, "seed": 0}
    # w_avg and every noise buffer are in the file.
    assert wf.params["mapping"]["w_avg"].shape == (512,)
    assert wf.params["synthesis"]["b64"]["conv1"]["noise_const"].shape == (64, 64)
    forward = ROSINALITY_FORWARD if fmt == "rosinality" else ADA_FORWARD
    images, golden = synthesized(out, forward)
    assert_image_close(
        images, golden["images"] if fmt == "rosinality" else golden["images_given_noise"]
    )
    expected_clamp = 256.0 if fmt == "ada-pickle" else None  # config-f TF pickles state none
    assert wf.config["conv_clamp"] == expected_clamp


@pytest.mark.slow
def test_readme_command_as_a_process(tmp_path):
    """`python -m pulse_jax.checkpoints.convert` itself (the docs' ADA command, PULSE's full 1e6
    fit)."""
    fixture_files(tmp_path)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pulse_jax.checkpoints.convert",
            *README_COMMANDS["ada-pickle"].split(),
        ],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "wrote weights/ffhq_sg2.npz: StyleGAN2 (ada-pickle, G_ema), 64 px" in proc.stderr
    assert "gaussian fit" in proc.stderr  # progress
    wf = weights_file.load_weights(tmp_path / "weights" / "ffhq_sg2.npz")
    assert wf.provenance["gaussian_fit_computed"] == {"samples": 1_000_000, "seed": 0}


def test_computed_fit_is_pulses_fit_of_the_mapping(tmp_path):
    """The computed fit of the rosinality mapping agrees with PULSE's (1e6 samples, another
    draw) within the statistics of the sample count used here."""
    files = fixture_files(tmp_path)
    out = tmp_path / "sg2.npz"
    samples = 100_000
    assert convert.main(["stylegan2", "--checkpoint", str(files["rosinality"]), "--out", str(out),
                         "--fit_samples", str(samples), "--fit_seed", "3"]) == 0  # fmt: skip
    fit = weights_file.load_weights(out).gaussian_fit
    pulse = np.load(GOLDEN / "sg2_gaussian_fit.npz")
    tol = 5 * pulse["std"] / np.sqrt(samples)
    np.testing.assert_array_less(np.abs(fit["mean"] - pulse["mean"]), tol)
    np.testing.assert_array_less(np.abs(fit["std"] - pulse["std"]), tol)


@pytest.mark.parametrize("suffix", [".npz", ".pt"])
def test_gaussian_fit_from_a_file_is_stored_as_given(tmp_path, suffix):
    files = fixture_files(tmp_path)
    pulse = np.load(GOLDEN / "sg2_gaussian_fit.npz")
    fit_path = tmp_path / f"gaussian_fit{suffix}"
    if suffix == ".npz":
        np.savez(fit_path, mean=pulse["mean"], std=pulse["std"])
    else:
        save_torch_zip({"mean": pulse["mean"], "std": pulse["std"]}, fit_path)
    out = tmp_path / "sg2.npz"
    assert convert.main(["stylegan2", "--checkpoint", str(files["rosinality"]), "--out", str(out),
                         "--gaussian_fit", str(fit_path)]) == 0  # fmt: skip
    wf = weights_file.load_weights(out)
    chex.assert_trees_all_equal(wf.gaussian_fit, dict(pulse))
    assert wf.provenance["gaussian_fit"]["file"] == fit_path.name
    assert "gaussian_fit_computed" not in wf.provenance


def test_network_g_is_taken_when_asked(tmp_path):
    files = fixture_files(tmp_path)
    out = tmp_path / "g.npz"
    argv = ["stylegan2", "--checkpoint", str(files["ada-pickle"]), "--network", "G",
            "--out", str(out), "--fit_samples", "20000"]  # fmt: skip
    assert convert.main(argv) == 0
    wf = weights_file.load_weights(out)
    assert wf.provenance["checkpoint"]["network"] == "G"
    images, golden = synthesized(out, ADA_FORWARD)  # the golden's G holds G_ema's numbers
    assert_image_close(images, golden["images_given_noise"])


def test_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    files = fixture_files(tmp_path)
    out = tmp_path / "out.npz"
    checkpoint = str(files["ada-pickle"])
    assert convert.main(["stylegan2", "--checkpoint", checkpoint, "--out", str(out),
                         "--sha256", "0" * 64]) == 1  # fmt: skip
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: {checkpoint}: sha256 ") and "\n" not in error
    good = weights_file.sha256_of(files["ada-pickle"])
    assert convert.main(["stylegan2", "--checkpoint", checkpoint, "--out", str(out),
                         "--sha256", good.upper(), "--fit_samples", "20000"]) == 0  # fmt: skip
    assert "wrote " in capsys.readouterr().err
    out.unlink()

    image = tmp_path / "face.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    assert convert.main(["stylegan2", "--checkpoint", str(image), "--out", str(out)]) == 1
    error = capsys.readouterr().err.strip()
    assert error == f"error: {image}: is a PNG image, not a StyleGAN2 checkpoint"

    wrong_fit = tmp_path / "fit.npz"
    np.savez(wrong_fit, mean=np.zeros(256, np.float32), std=np.ones(256, np.float32))
    assert convert.main(["stylegan2", "--checkpoint", checkpoint, "--out", str(out),
                         "--gaussian_fit", str(wrong_fit)]) == 1  # fmt: skip
    error = capsys.readouterr().err.strip()
    assert "gaussian fit mean has shape (256,), not (512,)" in error and "\n" not in error
    not_a_fit = tmp_path / "other.npz"
    np.savez(not_a_fit, x=np.zeros(3))
    assert convert.main(["stylegan2", "--checkpoint", checkpoint, "--out", str(out),
                         "--gaussian_fit", str(not_a_fit)]) == 1  # fmt: skip
    assert "not a gaussian fit" in capsys.readouterr().err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.npz")]


@pytest.mark.slow
def test_run_py_searches_a_converted_stylegan2(tmp_path):
    """experiments/run.py --generator on a converted StyleGAN2 file, PULSE's defaults."""
    from PIL import Image

    files = fixture_files(tmp_path)
    weights = tmp_path / "sg2.npz"
    assert convert.main(["stylegan2", "--checkpoint", str(files["rosinality"]), "--out",
                         str(weights), "--fit_samples", "20000"]) == 0  # fmt: skip
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(folder / "face.png")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "run.py"), "--steps", "2", "--input_dir",
         str(folder), "--output_dir", str(out), "--generator", str(weights)],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (record,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert record["settings"]["bad_noise_layers"] == ""  # StyleGAN2's default: none
    assert record["factor"] == 4
    assert Image.open(out / "face" / "sample_0_hr.png").size == (64, 64)
