"""Hostile weights files and the launchers that read them (issue 16, kinds 5 and 7): each
is refused in one line naming the file and the field, in bounded time and memory; the
launchers print that line, exit 2 and write nothing; the next good file reads exactly."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import chex
import numpy as np
import pytest
from helpers.generators import tiny_dcgan_params
from helpers.hostile import ROOT, assert_refused, read_isolated
from helpers.torch_writer import save_torch_legacy

from pulse_jax.checkpoints import CheckpointError, weights_file

CONFIG = {"latent_size": 4, "resolution": 64}


def meta(**changes) -> dict:
    base = {"format": weights_file.FORMAT, "format_version": 1, "kind": "dcgan",
            "config": CONFIG, "provenance": {}}  # fmt: skip
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def arrays(**changes) -> dict:
    flat = {f"params/{k}": v for k, v in weights_file.flatten(tiny_dcgan_params()).items()}
    flat["__meta__"] = meta()
    flat.update(changes)
    return {k: v for k, v in flat.items() if v is not None}


def encode(value) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    text = value if isinstance(value, str) else json.dumps(value)
    return np.frombuffer(text.encode(), np.uint8)


def writer(entries: dict, compress=False):
    def write(path: Path) -> Path:
        save = np.savez_compressed if compress else np.savez
        save(path, **{k: encode(v) for k, v in entries.items()})
        return path

    return write


def _encrypted(path: Path) -> Path:
    writer(arrays())(path)
    data = bytearray(path.read_bytes())
    for signature, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = 0
        while (start := data.find(signature, start)) >= 0:
            data[start + flag_at] |= 1
            start += 4
    path.write_bytes(bytes(data))
    return path


def _huge_resolution(path: Path) -> Path:
    blocks = {f"params/synthesis/blocks/{4 * 2**i}x{4 * 2**i}/conv1/weight": np.ones(
        (1, 1, 1, 1), np.float32) for i in range(32)}  # fmt: skip
    blocks["params/synthesis/blocks/4x4/const"] = np.ones((1, 4, 4, 1), np.float32)
    config = {"resolution": 2**33, "channels": [1] * 32}
    return writer({**blocks, "__meta__": meta(kind="stylegan", config=config)})(path)


def _bomb(path: Path) -> Path:
    entries = arrays()
    entries["params/main/0/weight"] = np.zeros((64 << 20) // 4, np.float32)
    return writer(entries, compress=True)(path)


NAN = tiny_dcgan_params()["main"]["3"]["weight"].copy()
NAN[0, 0, 0, 0] = np.nan
# name -> (write it, expected words in the refusal)
VARIANTS = {
    "meta_list": (writer(arrays(__meta__=[1, 2])), "not an object"),
    "meta_not_json": (writer(arrays(__meta__="{not json")), "corrupt __meta__"),
    "meta_version_string": (writer(arrays(__meta__=meta(format_version="1"))), "format_version"),
    "meta_deep": (writer(arrays(__meta__="[" * 100_000 + "]" * 100_000)), "__meta__"),
    "meta_huge": (writer(arrays(__meta__={"x": "y" * (2 << 20)})), "more than 1 MiB"),
    "meta_missing_kind": (writer(arrays(__meta__=meta(kind=None))), "__meta__.kind"),
    "meta_config_list": (writer(arrays(__meta__=meta(config=[1]))), "__meta__.config"),
    "meta_float_array": (writer(arrays(__meta__=np.ones(3, np.float32))), "__meta__"),
    "unknown_kind": (writer(arrays(__meta__=meta(kind="stylegan9"))), "kind"),
    "mean_without_std": (
        writer(arrays(**{"gaussian_fit/mean": np.ones(4, np.float32)})),
        "without the other",
    ),  # fmt: skip
    "fit_of_strings": (
        writer(
            arrays(**{"gaussian_fit/mean": np.array(["a"]), "gaussian_fit/std": np.array(["b"])})
        ),
        "<U1",
    ),  # fmt: skip
    "clashing_paths": (
        writer(arrays(**{"params/main/0/weight/x": np.ones(1, np.float32)})),
        "unexpected",
    ),  # fmt: skip
    "strings_for_weights": (
        writer(arrays(**{"params/main/3/weight": np.array(["abc"])})),
        "not numbers",
    ),  # fmt: skip
    "wrong_shape": (
        writer(arrays(**{"params/main/3/weight": np.ones((4, 4, 2, 5), np.float32)})),
        "expected",
    ),  # fmt: skip
    "float64_weights": (
        writer(arrays(**{"params/main/6/weight": NAN.astype(np.float64)})),
        "float32",
    ),  # fmt: skip
    "nan_weights": (writer(arrays(**{"params/main/3/weight": NAN})), "NaN"),
    "missing_weight": (writer(arrays(**{"params/main/12/weight": None})), "missing"),
    "bad_config": (
        writer(arrays(__meta__=meta(config={"latent_size": -1, "resolution": 64}))),
        "config.latent_size",
    ),  # fmt: skip
    "encrypted": (_encrypted, "encrypted"),
    "huge_resolution": (_huge_resolution, "config.resolution"),
    "zip_bomb": (_bomb, "more than the file could honestly hold"),
    "not_a_zip": (lambda p: (p.write_bytes(b"\x93NUMPY" * 100), p)[1], "not a pulse_jax"),
}


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("good") / "good.npz"
    weights_file.save_weights(path, kind="dcgan", params=tiny_dcgan_params(), config=CONFIG)
    return path


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    paths = {name: write(folder / f"{name}.npz") for name, (write, _) in VARIANTS.items()}
    cases = {name: ("weights", path) for name, path in paths.items()}
    cases["generator_huge_resolution"] = ("generator", paths["huge_resolution"])
    found = read_isolated(cases)
    return {name: (cases[name][1], outcome) for name, outcome in found.items()}


def assert_good_reads_exactly(good):
    wf = weights_file.load_weights(good)
    expected = weights_file.flatten(tiny_dcgan_params())
    got = weights_file.flatten(wf.params)
    assert list(got) == list(expected) and wf.config == CONFIG
    chex.assert_trees_all_equal(got, expected)


@pytest.mark.parametrize("name", VARIANTS)
def test_malformed_weights_files_are_refused_in_one_line(outcomes, good, name):
    path, outcome = outcomes[name]
    assert_refused(outcome, path, VARIANTS[name][1])
    assert outcome.max_rss_mb < 1024
    with pytest.raises(CheckpointError) as e:
        weights_file.load_weights(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    assert_good_reads_exactly(good)


def test_a_resolution_of_2_to_the_33_is_refused_not_looped_over(outcomes):
    path, outcome = outcomes["generator_huge_resolution"]
    assert_refused(outcome, path, "config.resolution")


def test_save_refuses_what_load_would_refuse(tmp_path):
    params = tiny_dcgan_params()
    params["main"]["3"]["weight"] = NAN
    with pytest.raises(ValueError, match="params/main/3/weight holds NaN"):
        weights_file.save_weights(tmp_path / "w.npz", kind="dcgan", params=params, config=CONFIG)
    assert not (tmp_path / "w.npz").exists()
    with pytest.raises(ValueError, match="kind"):
        weights_file.save_weights(tmp_path / "w.npz", kind="gan", params=params, config=CONFIG)


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher,name", [("run", "wrong_shape"), ("run", "meta_deep"), ("sweep", "encrypted")]
)
def test_launchers_print_one_line_and_write_nothing(outcomes, tmp_path, launcher, name):
    path, _ = outcomes[name]
    out = tmp_path / "out"
    command = [sys.executable, str(ROOT / "experiments" / f"{launcher}.py"), "--generator",
               str(path), "--input_dir", str(ROOT / "experiments" / "examples"),
               "--output_dir", str(out), "--steps", "1"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and lines[-1].startswith(f"error: {path}: ")
    assert not out.exists() or not any(out.iterdir())


def test_convert_refuses_a_gaussian_fit_of_strings(tmp_path, golden_dir, capsys):

    from pulse_jax.checkpoints import convert

    fit = tmp_path / "fit.pt"
    save_torch_legacy({"mean": "a" * 100, "std": [1.0] * 3}, fit)
    out = tmp_path / "out.npz"
    argv = ["pulse", "--synthesis", str(golden_dir / "stylegan_tiny_synthesis.pt")]
    argv += ["--gaussian_fit", str(fit), "--out", str(out)]
    assert convert.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(fit) in err and "gaussian fit mean" in err
    assert not out.exists()


def test_zip_member_names_cannot_escape_their_layout(tmp_path, good):
    path = tmp_path / "extra.npz"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            target.writestr(info.filename, source.read(info))
        target.writestr("../evil.npy", source.read("__meta__.npy"))
    with pytest.raises(CheckpointError, match="outside params/"):
        weights_file.load_weights(path)
    assert_good_reads_exactly(good)
