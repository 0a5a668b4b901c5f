"""StyleGAN parity with the original (golden vectors) and the full FFHQ 1024 layout.

Tolerances (max-abs, float32 on CPU): synthesis images 1e-4 (reached 3.4e-5 on
outputs of magnitude up to 5.9), mapping `w` 2e-5 (reached 5.3e-6), dlatents 1e-6.
"""

from __future__ import annotations

from pathlib import Path

import chex
import numpy as np
import pytest
from helpers.torch_writer import save_torch_legacy

from pulse_jax import load_generator
from pulse_jax.checkpoints import convert, pulse_format, torch_format
from pulse_jax.generators import stylegan
from pulse_jax.generators.base import Generator
from pulse_jax.options import SearchOptions


def nhwc(x):
    return np.transpose(x, (0, 2, 3, 1))


@pytest.fixture(scope="module")
def forward(golden_dir):
    return dict(np.load(golden_dir / "forward.npz"))


def golden_noise(forward):
    return [nhwc(forward[f"noise_{i}"]) for i in range(12)]


@pytest.mark.parametrize(
    "checkpoint", ["stylegan_tiny_synthesis.pt", "stylegan_tiny_synthesis_zip.pt"]
)
def test_synthesis_matches_golden_from_both_torch_formats(golden_dir, forward, checkpoint):
    params = pulse_format.synthesis_params(torch_format.load_state_dict(golden_dir / checkpoint))
    arch = stylegan.arch_from_params(params, None)
    assert arch.resolution == 128 and arch.num_layers == 12
    assert arch.channels == (64, 64, 64, 32, 16, 8)
    gen = Generator("stylegan", arch, {"synthesis": params})
    images = np.asarray(gen.synthesize(forward["dlatents"], golden_noise(forward)))
    assert images.shape == (2, 128, 128, 3)
    np.testing.assert_allclose(images, nhwc(forward["images"]), rtol=0, atol=1e-4)


def test_mapping_matches_golden(tiny_stylegan, forward):
    w = np.asarray(tiny_stylegan.map(forward["z"]))
    np.testing.assert_allclose(w, forward["w"], rtol=0, atol=2e-5)


def test_render_applies_gaussian_fit_and_matches_golden(tiny_stylegan, forward):
    variables = {"latent": forward["latent"], "noise": golden_noise(forward)}
    images, dlatents = tiny_stylegan.render(variables, SearchOptions())
    np.testing.assert_allclose(np.asarray(dlatents), forward["dlatents"], rtol=0, atol=1e-6)
    expected = (nhwc(forward["images"]) + 1) / 2
    np.testing.assert_allclose(np.asarray(images), expected, rtol=0, atol=1e-4)


def test_generator_exposes_what_solve_and_notebooks_need(tiny_stylegan, golden_dir):
    assert tiny_stylegan.resolution == 128
    assert tiny_stylegan.num_layers == 12
    fit = np.load(golden_dir / "gaussian_fit.npz")
    chex.assert_trees_all_equal(tiny_stylegan.gaussian_fit, dict(fit))
    assert tiny_stylegan.provenance["source"] == "golden tiny synthesis (tests)"


def test_tiled_latent_renders_like_repeated_rows(tiny_stylegan, forward):
    row = forward["latent"][:, :1]
    noise = golden_noise(forward)
    tiled, _ = tiny_stylegan.render(
        {"latent": row, "noise": noise}, SearchOptions(tile_latent=True)
    )
    full = {"latent": np.repeat(row, 12, axis=1), "noise": noise}
    repeated, _ = tiny_stylegan.render(full, SearchOptions())
    np.testing.assert_array_equal(np.asarray(tiled), np.asarray(repeated))


def read_key_table(path):
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:] if line.strip()]
    tables = {"synthesis": {}, "mapping": {}}
    for network, key, shape in rows:
        tables[network][key] = tuple(int(v) for v in shape.strip("()").split(",") if v.strip())
    return tables


def random_state_dict(shapes, rng):
    sd = {}
    for key, shape in shapes.items():
        if key.endswith("intermediate.kernel"):
            k = np.array([1.0, 2.0, 1.0], np.float32)
            sd[key] = (np.outer(k, k) / 16).reshape(shape).astype(np.float32)
        elif key.endswith("noise.weight") or key.endswith(".bias"):
            sd[key] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            sd[key] = rng.standard_normal(shape).astype(np.float32)
    return sd


@pytest.mark.slow
def test_full_ffhq_1024_layout_converts_and_synthesizes(tmp_path):
    tables = read_key_table(Path(__file__).parent / "data" / "stylegan_ffhq1024_keys.tsv")
    assert len(tables["synthesis"]) == 100 and len(tables["mapping"]) == 16
    rng = np.random.default_rng(0)
    save_torch_legacy(random_state_dict(tables["synthesis"], rng), tmp_path / "synthesis.pt")
    save_torch_legacy(random_state_dict(tables["mapping"], rng), tmp_path / "mapping.pt")
    out = tmp_path / "ffhq1024.npz"
    argv = ["pulse", "--synthesis", str(tmp_path / "synthesis.pt"), "--mapping"]
    argv += [str(tmp_path / "mapping.pt"), "--out", str(out), "--fit_samples", "20000"]
    assert convert.main(argv) == 0
    gen = load_generator(out)
    assert gen.resolution == 1024 and gen.num_layers == 18
    assert gen.arch.channels == (512, 512, 512, 512, 256, 128, 64, 32, 16)
    assert gen.provenance["synthesis"]["file"] == "synthesis.pt"
    assert len(gen.provenance["synthesis"]["sha256"]) == 64
    assert gen.provenance["gaussian_fit_computed"] == {"samples": 20000, "seed": 0}
    rng = np.random.default_rng(1)
    z = rng.standard_normal((1, 512)).astype(np.float32)
    w = np.asarray(gen.map(z))
    dlatents = np.repeat(w[:, None], 18, axis=1)
    noise = [
        rng.standard_normal((1, r, r, 1)).astype(np.float32)
        for r in (2 ** (i // 2 + 2) for i in range(18))
    ]
    image = np.asarray(gen.synthesize(dlatents, noise))
    assert image.shape == (1, 1024, 1024, 3)
    assert np.all(np.isfinite(image)) and image.std() > 0
