"""The converter: gaussian fit, streaming, the weights file, and its errors."""

from __future__ import annotations

import math

import chex
import numpy as np
import pytest
from helpers.generators import tiny_dcgan_params
from helpers.torch_writer import Call, Global, save_torch_zip

from pulse_jax.checkpoints import CheckpointError, convert, pulse_format, torch_format, weights_file
from pulse_jax.generators import stylegan


@pytest.fixture(scope="module")
def golden_mapping(golden_dir):
    sd = torch_format.load_state_dict(golden_dir / "stylegan_mapping.pt")
    return sd, pulse_format.mapping_params(sd)


def numpy_mapping(sd, z):
    """An independent float64 numpy mapping network (docs/method.md section 9.1)."""
    x = z.astype(np.float64)
    x = x / np.sqrt(np.mean(x**2, axis=1, keepdims=True) + 1e-8)
    for i in range(8):
        w = sd[f"dense{i}.weight"].astype(np.float64) * math.sqrt(2) * 512**-0.5 * 0.01
        x = x @ w.T + sd[f"dense{i}.bias"] * 0.01
        x = np.where(x >= 0, x, 0.2 * x)
    return x


def test_gaussian_fit_agrees_with_direct_numpy_on_the_same_samples(golden_mapping):
    sd, params = golden_mapping
    arch = stylegan.StyleGANArch(resolution=4, channels=(512,))
    samples, seed = 2 * convert.FIT_CHUNK + 1234, 3  # the last chunk is partial
    fit = convert.compute_gaussian_fit(
        arch, params, num_samples=samples, seed=seed, show_progress=False
    )
    z = np.concatenate([np.asarray(convert.fit_chunk_latents(seed, c)) for c in range(3)])[:samples]
    x = numpy_mapping(sd, z)
    x = np.where(x >= 0, x, 5.0 * x)
    np.testing.assert_allclose(fit["mean"], x.mean(0), rtol=0, atol=2e-5)
    np.testing.assert_allclose(fit["std"], x.std(0, ddof=1), rtol=1e-5, atol=2e-6)


def test_gaussian_fit_is_deterministic_per_seed(golden_mapping):
    _, params = golden_mapping
    arch = stylegan.StyleGANArch(resolution=4, channels=(512,))
    a = convert.compute_gaussian_fit(arch, params, num_samples=500, seed=1, show_progress=False)
    b = convert.compute_gaussian_fit(arch, params, num_samples=500, seed=1, show_progress=False)
    c = convert.compute_gaussian_fit(arch, params, num_samples=500, seed=2, show_progress=False)
    chex.assert_trees_all_equal(a, b)
    assert not np.array_equal(a["mean"], c["mean"])


def test_gaussian_fit_streams_in_bounded_chunks(monkeypatch, golden_mapping):
    """A million samples are never materialised: each chunk call sees at most FIT_CHUNK."""
    _, params = golden_mapping
    calls = []

    def fake_moments(arch, mapping, seed_chunk, count):
        calls.append(count)
        return np.zeros(512, np.float32), np.full(512, count, np.float32)

    monkeypatch.setattr(convert, "_fit_chunk_moments", fake_moments)
    arch = stylegan.StyleGANArch(resolution=4, channels=(512,))
    fit = convert.compute_gaussian_fit(arch, params, num_samples=1_000_000, show_progress=False)
    assert len(calls) == 100 and max(calls) == convert.FIT_CHUNK
    np.testing.assert_allclose(fit["std"], math.sqrt(1e6 / (1e6 - 1)), rtol=1e-7)  # M2 = N


def test_real_gaussian_fit_pt_reads_exactly(golden_dir):
    fit = convert._read_gaussian_fit(str(golden_dir / "gaussian_fit.pt"))
    expected = np.load(golden_dir / "gaussian_fit.npz")
    chex.assert_trees_all_equal(fit, dict(expected))


def test_convert_with_gaussian_fit_needs_no_mapping(golden_dir, tmp_path, capsys):
    out = tmp_path / "tiny.npz"
    argv = ["pulse", "--synthesis", str(golden_dir / "stylegan_tiny_synthesis.pt")]
    argv += ["--gaussian_fit", str(golden_dir / "gaussian_fit.pt"), "--out", str(out)]
    assert convert.main(argv) == 0
    wf = weights_file.load_weights(out)
    assert wf.kind == "stylegan" and "mapping" not in wf.params
    assert wf.provenance["gaussian_fit"]["file"] == "gaussian_fit.pt"
    assert wf.config == {"resolution": 128, "channels": [64, 64, 64, 32, 16, 8]}
    np.testing.assert_array_equal(
        wf.gaussian_fit["std"], np.load(golden_dir / "gaussian_fit.npz")["std"]
    )


def test_cli_needs_mapping_or_fit(golden_dir, tmp_path, capsys):
    argv = ["pulse", "--synthesis", str(golden_dir / "stylegan_tiny_synthesis.pt")]
    assert convert.main(argv + ["--out", str(tmp_path / "x.npz")]) == 2
    assert "--mapping" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["truncated", "empty", "text"])
def test_bad_checkpoint_is_a_one_line_error_naming_the_file(golden_dir, tmp_path, capsys, damage):
    bad = tmp_path / "synthesis.pt"
    data = (golden_dir / "stylegan_tiny_synthesis.pt").read_bytes()
    bad.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "text": b"hello\n"}[damage])
    out = tmp_path / "out.npz"
    argv = ["pulse", "--synthesis", str(bad), "--gaussian_fit"]
    argv += [str(golden_dir / "gaussian_fit.pt"), "--out", str(out)]
    assert convert.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err
    assert not out.exists()


def test_mapping_given_as_synthesis_is_named(golden_dir, tmp_path, capsys):
    mapping = golden_dir / "stylegan_mapping.pt"
    argv = ["pulse", "--synthesis", str(mapping), "--mapping", str(mapping)]
    assert convert.main(argv + ["--out", str(tmp_path / "o.npz")]) == 1
    err = capsys.readouterr().err
    assert str(mapping) in err and "not a PULSE synthesis checkpoint" in err


def test_malicious_checkpoint_is_refused_and_nothing_runs(golden_dir, tmp_path, capsys):
    marker = tmp_path / "pwned"
    payload = Call(Global("os", "system"), (f"touch {marker}",))
    save_torch_zip({"blocks.4x4.const": payload}, tmp_path / "evil.pt")
    argv = ["pulse", "--synthesis", str(tmp_path / "evil.pt"), "--gaussian_fit"]
    argv += [str(golden_dir / "gaussian_fit.pt"), "--out", str(tmp_path / "o.npz")]
    assert convert.main(argv) == 1
    assert "os.system" in capsys.readouterr().err
    assert not marker.exists()


def test_weights_file_round_trip_and_no_pickle(tmp_path):
    params = tiny_dcgan_params()
    path = tmp_path / "w.npz"
    config = {"latent_size": 4, "resolution": 64}
    weights_file.save_weights(
        path, kind="dcgan", params=params, config=config, provenance={"src": "t"}
    )
    wf = weights_file.load_weights(path)
    np.testing.assert_array_equal(wf.params["main"]["3"]["weight"], params["main"]["3"]["weight"])
    assert wf.kind == "dcgan" and wf.config == config and wf.gaussian_fit is None
    with np.load(path, allow_pickle=False) as archive:  # readable without pickle
        assert "__meta__" in archive.files


def test_weights_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="bad.npz"):
        weights_file.load_weights(bad)
    np.savez(tmp_path / "plain.npz", x=np.zeros(2))
    with pytest.raises(CheckpointError, match="no __meta__"):
        weights_file.load_weights(tmp_path / "plain.npz")
    with pytest.raises(CheckpointError, match="no such file"):
        weights_file.load_weights(tmp_path / "missing.npz")
