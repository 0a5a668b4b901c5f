"""experiments/run.py and the run it calls (`engine.Work.for_run`, pulse_jax/runs/engine.py).

Most runs are in-process through `run.run(argv)` so the compiled search is shared;
the refusal of flags is also checked through the real command line.
"""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import chex
import numpy as np
import pytest
from helpers.launchers import launcher
from PIL import Image

from pulse_jax import SearchOptions
from pulse_jax.runs import engine, layout, store
from pulse_jax.runs import sweep as sweeps
from pulse_jax.runs.config import ConfigError, SearchConfig
from pulse_jax.runs.inputs import InputImage, load_inputs

ROOT = Path(__file__).resolve().parents[1]
RUN_PY = ROOT / "experiments" / "run.py"
EXAMPLES = ROOT / "experiments" / "examples"
STEPS = "3"
FIELDS = {
    "input", "input_sha256", "image_id", "sample", "seed", "l2", "success", "failed",
    "best_step", "steps", "seconds", "generator", "factor", "hr", "lr", "comparison",
    "intermediate", "settings", "group", "machine", "process",
}  # fmt: skip


@pytest.fixture(scope="module")
def run_py():
    return launcher("run")


@pytest.fixture
def inputs(tmp_path, dcgan64):
    """Three 16 x 16 examples (one JPEG), so batch_size 2 pads its second batch."""
    del dcgan64  # weights ready before the first run
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("dcgan_seed0.png", "dcgan_seed13.png", "dcgan_seed18.jpg", "README.md"):
        shutil.copy(EXAMPLES / name, folder / name)  # the README is left out
    return folder


def _run(run_py, *args) -> int:
    return run_py.run(["run.py", "--steps", STEPS, *map(str, args)])


def _manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.load()  # a complete, valid PNG
        assert im.format == "PNG"
        return im.size


def test_outputs_and_manifest(run_py, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(run_py, "--input_dir", inputs, "--output_dir", out, "--samples", 2,
                "--batch_size", 2) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert "samples: 6 written" in captured.out and "latent-steps/s" in captured.out
    assert "pulse 100% 18/18" in captured.err  # the progress line, in latent-steps

    records = _manifest(out)
    assert [(r["input"], r["sample"]) for r in records] == [
        (name, s) for name in ("dcgan_seed0.png", "dcgan_seed13.png", "dcgan_seed18.jpg")
        for s in (0, 1)
    ]  # fmt: skip
    for r in records:
        assert set(r) == FIELDS
        # Groups of two inputs with both samples, fixed by the input list: (seed0, seed13),
        # (seed18 + padding); an input's samples side by side.
        row = ["dcgan_seed0.png", "dcgan_seed13.png", "dcgan_seed18.jpg"].index(r["input"])
        members = [[i, 0, s] for i in [[0, 1], [2]][row // 2] for s in (0, 1)]
        assert r["group"] == {"index": row // 2, "position": 2 * (row % 2) + r["sample"],
                              "batch_per_device": 4, "batch_size": 2,
                              "members": members}  # fmt: skip
        assert r["process"] == 0
        assert set(r["machine"]) == {"jax", "jaxlib", "platform", "device_kind", "cpu"}
        assert r["seed"] == 0 and r["steps"] == 3 and r["generator"] == "dcgan64"
        assert r["factor"] == 4 and r["intermediate"] is None
        assert r["image_id"] == ["dcgan_seed0.png", "dcgan_seed13.png",
                                 "dcgan_seed18.jpg"].index(r["input"])  # fmt: skip
        assert isinstance(r["success"], bool) and r["l2"] > 0
        assert _size(out / r["hr"]) == (64, 64)
        assert _size(out / r["lr"]) == (16, 16)
        assert _size(out / r["comparison"])[0] > 4 * 128  # input, bicubic, two samples
        if not r["success"]:
            assert f"{r['input']} sample {r['sample']} did not reach eps" in captured.err
    assert (out / "dcgan_seed18" / "sample_1_hr.png").exists()
    assert not list(out.rglob(".*.tmp"))  # no temporary file left behind


def test_result_reproducible_from_its_manifest_line(run_py, inputs, tmp_path, dcgan64):
    out = tmp_path / "out"
    assert _run(run_py, "--input_dir", inputs, "--output_dir", out, "--samples", 2,
                "--batch_size", 2, "--seed", 7) == 0  # fmt: skip
    record = _manifest(out)[3]  # dcgan_seed13.png, sample 1
    from pulse_jax import solve
    from pulse_jax.images import load_image

    lr = load_image(inputs / record["input"])
    again = solve(lr[None], dcgan64, seed=record["seed"], image_ids=[record["image_id"]],
                  num_samples=record["sample"] + 1, steps=record["steps"])  # fmt: skip
    # Alone, in another batch: equal up to rounding (measured relative 0 on Intel Xeon).
    np.testing.assert_allclose(again.l2[0, record["sample"]], record["l2"], rtol=1e-4)
    # Its own batch again: bitwise, by construction (the same program on the same rows).
    search = SearchConfig(seed=7, options=SearchOptions(steps=3))
    loaded, _ = load_inputs(inputs, 64)
    result, row = engine.recompute(record, loaded, dcgan64, search)
    assert float(result.l2[row, 0]) == record["l2"]
    assert int(result.best_step[row, 0]) == record["best_step"]


def test_manifest_from_before_operators_resumes(run_py, inputs, tmp_path, capsys):
    # Lines written before the operator settings existed imply PULSE's bicubic downscale.
    out = tmp_path / "out"
    assert _run(run_py, "--input_dir", inputs, "--output_dir", out) == 0
    old = _manifest(out)
    for r in old:
        for name in ("operator", "blur_sigma", "noise_std", "mask"):
            del r["settings"][name]
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    capsys.readouterr()
    assert _run(run_py, "--input_dir", inputs, "--output_dir", out) == 0
    assert "3 inputs already done" in capsys.readouterr().err
    assert _run(run_py, "--input_dir", inputs, "--output_dir", out, "--operator", "box") == 2
    assert "operator 'bicubic' -> 'box'" in capsys.readouterr().err


def test_resumed_run_equals_an_uninterrupted_one_byte_for_byte(run_py, inputs, tmp_path, capsys):
    # A batch half recorded (one of its two inputs lost its lines and files): the resumed
    # run recomputes the batch as a whole and writes only what is missing.
    args = ("--samples", 2, "--batch_size", 2)
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    for out in (whole, resumed):
        assert _run(run_py, "--input_dir", inputs, "--output_dir", out, *args) == 0
    kept = [r for r in _manifest(resumed) if r["input"] != "dcgan_seed13.png"]
    (resumed / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    shutil.rmtree(resumed / "dcgan_seed13")
    capsys.readouterr()
    assert _run(run_py, "--input_dir", inputs, "--output_dir", resumed, *args) == 0
    assert "2 inputs already done" in capsys.readouterr().err
    files = sorted(p.relative_to(whole) for p in whole.rglob("*.png"))
    assert files == sorted(p.relative_to(resumed) for p in resumed.rglob("*.png"))
    for f in files:
        assert (whole / f).read_bytes() == (resumed / f).read_bytes(), f
    strip = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    want = sorted(map(strip, _manifest(whole)), key=lambda r: (r["input"], r["sample"]))
    got = sorted(map(strip, _manifest(resumed)), key=lambda r: (r["input"], r["sample"]))
    assert got == want
    # Another batch size would form other batches: refused, nothing written.
    before = (resumed / "results.jsonl").read_bytes()
    assert _run(run_py, "--input_dir", inputs, "--output_dir", resumed, "--samples", 2,
                "--batch_size", 3) == 2  # fmt: skip
    assert "made with --batch_size 2, not 3" in capsys.readouterr().err
    assert (resumed / "results.jsonl").read_bytes() == before


def _as_before_the_engine(record: dict) -> dict:
    """A line as runs wrote it before the one engine: no `process`, its group images x
    samples (`image_ids`, `rows`, `samples`, the image's `position`)."""
    old = {k: v for k, v in record.items() if k != "process"}
    group = record["group"]
    image_ids = list(dict.fromkeys(i for i, _, _ in group["members"]))
    old["group"] = {
        "index": group["index"],
        "batch_size": group["batch_size"],
        "rows": group["batch_per_device"] // 2,
        "samples": 2,
        "image_ids": image_ids,
        "position": image_ids.index(record["image_id"]),
    }
    return old  # fmt: skip


def test_manifest_of_runs_before_the_engine_resumes(run_py, inputs, tmp_path, capsys, dcgan64):
    # Old lines are read (group, settings), recomputed bit for bit, and resumed into.
    args = ("--samples", 2, "--batch_size", 2)
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    for out in (whole, resumed):
        assert _run(run_py, "--input_dir", inputs, "--output_dir", out, *args) == 0
    old = [_as_before_the_engine(r) for r in _manifest(resumed)]
    record = old[1]  # dcgan_seed0.png, sample 1
    result, row = engine.recompute(
        record, load_inputs(inputs, 64)[0], dcgan64, SearchConfig(options=SearchOptions(steps=3))
    )
    assert (float(result.l2[row, 0]), int(result.best_step[row, 0])) == (
        record["l2"], record["best_step"]
    )  # fmt: skip
    kept = [r for r in old if r["input"] != "dcgan_seed13.png"]
    (resumed / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    shutil.rmtree(resumed / "dcgan_seed13")
    capsys.readouterr()
    assert _run(run_py, "--input_dir", inputs, "--output_dir", resumed, *args) == 0
    assert "2 inputs already done" in capsys.readouterr().err
    for f in sorted(p.relative_to(whole) for p in whole.rglob("*.png")):
        assert (whole / f).read_bytes() == (resumed / f).read_bytes(), f
    assert _run(run_py, "--input_dir", inputs, "--output_dir", resumed, "--samples", 2,
                "--batch_size", 1) == 2  # fmt: skip
    assert "made with --batch_size 2, not 1" in capsys.readouterr().err


def test_rerun_skips_done_and_refuses_other_settings(run_py, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    args = ("--input_dir", inputs, "--output_dir", out, "--samples", 2, "--batch_size", 2)
    assert _run(run_py, *args) == 0
    before = (out / "results.jsonl").read_bytes()
    sheet = (out / "dcgan_seed0" / "comparison.png").read_bytes()
    capsys.readouterr()

    assert _run(run_py, *args) == 0
    assert "3 inputs already done" in capsys.readouterr().err
    assert (out / "results.jsonl").read_bytes() == before

    assert _run(run_py, *args, "--learning_rate", 0.1) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "learning_rate 0.4 -> 0.1" in err
    assert (out / "results.jsonl").read_bytes() == before
    assert (out / "dcgan_seed0" / "comparison.png").read_bytes() == sheet

    shutil.copy(EXAMPLES / "dcgan_seed14.png", inputs / "dcgan_seed0.png")  # same name, new face
    assert _run(run_py, *args) == 2
    assert "dcgan_seed0.png: made from a different file" in capsys.readouterr().err
    assert (out / "results.jsonl").read_bytes() == before

    (inputs / "dcgan_seed13.png").rename(inputs / "dcgan_seed13.webp")  # same folder, new input
    (inputs / "dcgan_seed0.png").unlink()
    assert _run(run_py, *args) == 2
    assert "its folder dcgan_seed13/ holds the results of dcgan_seed13.png" in (
        capsys.readouterr().err
    )
    assert (out / "results.jsonl").read_bytes() == before


def test_bad_files_named_good_ones_processed_nothing_lost(run_py, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(run_py, "--input_dir", inputs, "--output_dir", out, "--samples", 2,
                "--batch_size", 2) == 0  # fmt: skip
    (out / "notes.md").write_text("mine")
    earlier = (out / "results.jsonl").read_text().splitlines()
    earlier_hr = (out / "dcgan_seed0" / "sample_0_hr.png").read_bytes()

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(EXAMPLES / "dcgan_seed14.png", mixed / "good.png")
    (mixed / "notes.txt").write_text("not an image\n")
    data = (EXAMPLES / "astronaut.png").read_bytes()
    (mixed / "truncated.png").write_bytes(data[: len(data) // 2])
    capsys.readouterr()

    assert _run(run_py, "--input_dir", mixed, "--output_dir", out, "--samples", 2,
                "--batch_size", 2) == 1  # fmt: skip
    captured = capsys.readouterr()
    for name, reason in (("notes.txt", "not an image"), ("truncated.png", "truncated")):
        assert f"error: {mixed / name}: {reason}" in captured.err
        assert f"{mixed / name}: {reason}" in captured.out  # and again in the summary
    assert "2 of 3 input files could not be used" in captured.err
    assert "inputs: 3 files, 2 failed" in captured.out

    lines = (out / "results.jsonl").read_text().splitlines()
    assert lines[: len(earlier)] == earlier  # earlier lines kept, in place
    assert [json.loads(line)["input"] for line in lines[len(earlier) :]] == ["good.png"] * 2
    assert _size(out / "good" / "sample_1_hr.png") == (64, 64)
    assert (out / "notes.md").read_text() == "mine"
    assert (out / "dcgan_seed0" / "sample_0_hr.png").read_bytes() == earlier_hr
    assert not (out / "notes").exists() and not (out / "truncated").exists()


def test_save_intermediate(run_py, inputs, tmp_path):
    single = tmp_path / "single"
    single.mkdir()
    shutil.copy(inputs / "dcgan_seed0.png", single / "face.png")
    out = tmp_path / "out"
    assert _run(run_py, "--input_dir", single, "--output_dir", out, "--save_intermediate") == 0
    frames = sorted((out / "face" / "intermediate").iterdir())
    assert [f.name for f in frames] == [f"sample_0_step_{j}.png" for j in range(3)]
    assert all(_size(f) == (64, 64) for f in frames)
    assert _manifest(out)[0]["intermediate"] == "face/intermediate"


def test_tiny_stylegan_with_noise_flags(run_py, tiny_stylegan_path, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(EXAMPLES / "dcgan_seed14.png", folder / "face.png")
    out = tmp_path / "out"
    status = _run(run_py, "--input_dir", folder, "--output_dir", out, "--generator",
                  tiny_stylegan_path, "--noise_type", "fixed", "--tile_latent")  # fmt: skip
    assert status == 0
    (record,) = _manifest(out)
    assert record["factor"] == 8
    assert record["settings"]["noise_type"] == "fixed" and record["settings"]["tile_latent"]
    assert _size(out / "face" / "sample_0_hr.png") == (128, 128)
    assert _size(out / "face" / "sample_0_lr.png") == (16, 16)


@pytest.mark.slow
def test_noise_flags_refused_for_dcgan(tmp_path, inputs):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(RUN_PY), "--input_dir", str(inputs), "--output_dir", str(out),
         "--noise_type", "zero", "--tile_latent=false"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "--noise_type, --tile_latent apply to StyleGAN generators only" in proc.stderr
    assert not out.exists()


def test_missing_or_empty_input_folder(run_py, tmp_path, capsys, dcgan64):
    del dcgan64
    assert _run(run_py, "--input_dir", tmp_path / "nowhere", "--output_dir", tmp_path / "o") == 2
    assert "nowhere: no such folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert _run(run_py, "--input_dir", tmp_path / "empty", "--output_dir", tmp_path / "o") == 2
    assert "holds no files" in capsys.readouterr().err
    assert _run(run_py, "--output_dir", tmp_path / "o") == 2
    assert "--input_dir is required" in capsys.readouterr().err


def test_align_without_the_extra_is_a_clear_error(run_py, inputs, tmp_path, capsys):
    if importlib.util.find_spec("dlib") is not None:
        pytest.skip("dlib is installed: --align would really align")
    assert _run(run_py, "--input_dir", inputs, "--output_dir", tmp_path / "o", "--align") == 2
    err = capsys.readouterr().err
    assert "--align" in err and ("dlib" in err or "pulse_jax.align" in err)


def test_manifest_appends_cuts_a_torn_line_and_refuses_garbage(tmp_path):
    path = tmp_path / "results.jsonl"
    store.append_records(path, [{"input": "a", "seed": 0, "sample": 0, "l2": 1.0},
                                {"input": "b", "seed": 0, "sample": 0, "l2": 2.0}])  # fmt: skip
    store.append_records(path, [{"input": "a", "seed": 0, "sample": 1, "l2": 4.0}])
    assert [(r["input"], r["sample"], r["l2"]) for r in store.read_manifest(path)] == [
        ("a", 0, 1.0), ("b", 0, 2.0), ("a", 1, 4.0)
    ]  # fmt: skip
    with open(path, "a") as f:
        f.write('{"input": "c", "se')  # a kill while appending: not a record
    assert len(store.read_manifest(path)) == 3
    store.cut_torn_line(path)
    assert path.read_text().endswith('"l2": 4.0}\n')
    path.write_text(path.read_text() + "{half a line\n")
    with pytest.raises(ConfigError, match="line 4: not JSON"):
        store.read_records(tmp_path, store.RUN_MANIFEST)


def test_groups_hold_whole_inputs_of_one_size_and_pad():
    def item(i, side):
        return InputImage(i, Path(f"{i}.png"), str(i), np.zeros((side, side, 3)), 1)

    items = engine.work_list([item(0, 16), item(1, 32), item(2, 16), item(3, 16)], (5,), 2)
    groups = engine.work_groups(items, 4, fit=True)  # --batch_size 2 --samples 2
    assert [[(w.input.image_id, w.sample) for w in g.items] for g in groups] == [
        [(0, 0), (0, 1), (2, 0), (2, 1)], [(3, 0), (3, 1)], [(1, 0), (1, 1)]
    ]  # fmt: skip
    assert [g.size for g in groups] == [4, 4, 2]  # one 32 px input: no padding
    last = groups[1].items[-1]
    assert groups[1].rows() == [*groups[1].items, last, last]  # padded by repeating the last


def test_a_run_is_a_sweep_with_one_seed(run_py, inputs, tmp_path, dcgan64):
    # The same groups by construction (two inputs with both samples = four results per
    # device), so the same results bit for bit, in the run's and the sweep's layouts.
    run_out, sweep_out = tmp_path / "run", tmp_path / "sweep"
    assert _run(run_py, "--input_dir", inputs, "--output_dir", run_out, "--samples", 2,
                "--batch_size", 2, "--seed", 3) == 0  # fmt: skip
    config = engine.Work.for_sweep(
        str(inputs),
        str(sweep_out),
        SearchConfig(options=SearchOptions(steps=int(STEPS))),
        seeds=(3,),
        samples=2,
        batch_per_device=4,
        log_interval=0,
    )
    sweeps.run_sweep(config, dcgan64, log=io.StringIO())

    def results(out, pattern):
        records = store.read_records(out, pattern)
        return {
            store.key(r): {
                "figures": np.array([r["l2"], r["best_step"], r["success"]], np.float64),
                "hr": np.frombuffer((out / r["hr"]).read_bytes(), np.uint8),
                "lr": np.frombuffer((out / r["lr"]).read_bytes(), np.uint8),
                "members": np.array(r["group"]["members"]),
            }
            for r in records
        }

    ran = results(run_out, store.RUN_MANIFEST)
    swept = results(sweep_out, store.SWEEP_MANIFEST)
    assert sorted(ran) == sorted(swept) and len(ran) == 6
    chex.assert_trees_all_equal(ran, swept)
    record = store.read_records(sweep_out, store.SWEEP_MANIFEST)[0]
    assert record["hr"] == "seed_3/dcgan_seed0/sample_0_hr.png"
    assert record["comparison"] is None and (run_out / "dcgan_seed0" / "comparison.png").exists()


def _huge_png(path: Path, side: int = 100_000) -> None:
    """A valid 1x1 PNG whose header is patched to claim side x side pixels."""
    import io
    import struct
    import zlib

    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    ihdr = 8  # length, "IHDR", 13 bytes of data, CRC
    data[ihdr + 8 : ihdr + 16] = struct.pack(">II", side, side)
    crc = zlib.crc32(bytes(data[ihdr + 4 : ihdr + 21]))
    data[ihdr + 21 : ihdr + 25] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))


def test_every_bad_kind_named_convertible_ones_processed(run_py, tmp_path, capsys, dcgan64):
    """One good image and one of each bad kind: the good and the convertible ones are
    processed, each bad one is named with its reason, exit status 1 with the count."""
    del dcgan64
    folder = tmp_path / "in"
    folder.mkdir()
    good = np.asarray(Image.open(EXAMPLES / "dcgan_seed0.png").convert("RGB"))
    Image.fromarray(good).save(folder / "good.png")
    rgba = np.concatenate([good, np.full(good.shape[:2] + (1,), 200, np.uint8)], axis=-1)
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    grey16 = (good.mean(axis=-1) * 257).astype(np.uint16)
    Image.fromarray(grey16).save(folder / "grey16.png")
    assert Image.open(folder / "grey16.png").mode == "I;16"
    (folder / "notes.txt").write_text("not an image\n")
    data = (EXAMPLES / "astronaut.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "empty.png").write_bytes(b"")
    Image.fromarray(np.zeros((16, 12, 3), np.uint8)).save(folder / "nonsquare.png")
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(folder / "toosmall.png")
    _huge_png(folder / "huge.png")
    out = tmp_path / "out"
    capsys.readouterr()
    assert _run(run_py, "--input_dir", folder, "--output_dir", out) == 1
    err = capsys.readouterr().err
    reasons = {
        "notes.txt": "not an image",
        "truncated.png": "truncated",
        "empty.png": "empty file",
        "nonsquare.png": "16",
        "toosmall.png": "12",
        "huge.png": "100000",
    }
    for name, reason in reasons.items():
        line = next(line for line in err.splitlines() if f"{folder / name}:" in line)
        assert reason in line, line
    assert "6 of 9 input files could not be used" in err
    done = sorted(record["input"] for record in _manifest(out))
    assert done == ["good.png", "grey16.png", "rgba.png"]
    for stem in ("good", "grey16", "rgba"):
        assert _size(out / stem / "sample_0_hr.png") == (64, 64)


def test_operator_and_plots(run_py, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(run_py, "--input_dir", inputs, "--output_dir", out, "--samples", 2,
                "--operator", "inpaint", "--mask", "random", "--plots") == 0  # fmt: skip
    records = _manifest(out)
    assert len(records) == 6
    settings = records[0]["settings"]
    assert settings["operator"] == "inpaint" and settings["mask"] == "random"
    assert settings["blur_sigma"] is None and settings["noise_std"] is None
    for name in ("dcgan_seed0", "dcgan_seed13", "dcgan_seed18"):
        assert _size(out / name / layout.L2_PLOT)[0] > 0
        assert _size(out / name / "comparison.png")[0] > 0
    # The loss compared the masked input: sample_0_lr.png is black where the mask is 0.
    from pulse_jax.degrade import operators

    mask = operators.make_operator("inpaint", 16, 4, mask="random").mask
    with Image.open(out / "dcgan_seed0" / "sample_0_lr.png") as im:
        lr = np.asarray(im)
    assert np.all(lr[mask == 0] == 0) and lr[mask == 1].max() > 0
    # Other operator settings are other settings: refused into the same folder.
    capsys.readouterr()
    assert _run(run_py, "--input_dir", inputs, "--output_dir", out, "--samples", 2,
                "--operator", "gaussian", "--blur_sigma", 1.5) == 2  # fmt: skip
    assert "operator 'inpaint' -> 'gaussian'" in capsys.readouterr().err


def test_bad_operator_settings_stop_before_anything_is_written(run_py, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    mask = tmp_path / "mask.png"
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(mask)
    assert _run(run_py, "--input_dir", inputs, "--output_dir", out,
                "--operator", "inpaint", "--mask", mask) == 2  # fmt: skip
    assert "the mask is 8x8, the observation 16x16" in capsys.readouterr().err
    assert _run(run_py, "--input_dir", inputs, "--output_dir", out,
                "--operator", "gaussian", "--blur_sigma", 0) == 2  # fmt: skip
    assert "--blur_sigma must be > 0" in capsys.readouterr().err
    assert not out.exists()
