"""StyleGAN2 run from an intermediate layer (pulse_jax/generators/stylegan2.py, ILO's split,
docs/method.md section 12): the split composes to the full synthesis, op for op.

Equality is bitwise where the composed program runs the same ops as `synthesize`
(`synthesize` is itself `run_blocks` over every block); under one `jax.jit`, XLA may fuse
the two differently, so the jitted comparisons allow 1e-6 x max(1, max |image|).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pulse_jax.checkpoints.stylegan2_formats import read_stylegan2
from pulse_jax.generators import stylegan2

GOLDEN = Path(__file__).parent / "golden" / "stylegan2"


@pytest.fixture(scope="module")
def tiny():
    ck = read_stylegan2(GOLDEN / "sg2_rosinality_tiny.pt")
    params = stylegan2.params_from_state(ck.state)
    arch = stylegan2.arch_from_params(params, mapping_lr=ck.config["lr_multiplier"])
    prepared = arch.prepare(params)["synthesis"]
    key = jax.random.key(3)
    k_ws, k_noise = jax.random.split(key)
    ws = jax.random.normal(k_ws, (2, arch.num_ws, arch.w_dim))
    keys = jax.random.split(k_noise, arch.num_noise_layers)
    noise = [
        jax.random.normal(keys[i], (2, arch.noise_resolution(i), arch.noise_resolution(i), 1))
        for i in range(arch.num_noise_layers)
    ]
    return arch, prepared, ws, noise


@pytest.mark.parametrize("layer", [0, 1, 2, 3])
def test_split_composes_to_the_full_synthesis_bitwise(tiny, layer):
    arch, params, ws, noise = tiny
    full = arch.synthesize(params, ws, noise)
    x, rgb = arch.synthesize_to(params, ws, noise, layer)
    assert x.shape == (2, 4 * 2**layer, 4 * 2**layer, arch.channels[layer])
    composed = arch.synthesize_from(params, ws, noise, layer + 1, x, rgb)
    np.testing.assert_array_equal(np.asarray(composed), np.asarray(full))


def test_split_under_jit_and_without_noise(tiny):
    arch, params, ws, _ = tiny
    full = jax.jit(lambda w: arch.synthesize(params, w))(ws)

    @jax.jit
    def composed(w):
        x, rgb = arch.synthesize_to(params, w, None, 1)
        return arch.synthesize_from(params, w, None, 2, x, rgb)

    tol = 1e-6 * max(1.0, float(jnp.abs(full).max()))
    np.testing.assert_allclose(composed(ws), full, rtol=0, atol=tol)


def test_blocks_one_at_a_time_and_without_the_earlier_rgb(tiny):
    arch, params, ws, noise = tiny
    x, rgb = arch.synthesize_to(params, ws, noise, 1)
    x2, rgb2 = arch.run_blocks(params, ws, noise, x, rgb, 2, 2)
    x2_to, rgb2_to = arch.synthesize_to(params, ws, noise, 2)
    np.testing.assert_array_equal(np.asarray(x2), np.asarray(x2_to))
    np.testing.assert_array_equal(np.asarray(rgb2), np.asarray(rgb2_to))
    # ILO starts the RGB sum at its layer: the image differs by the earlier blocks' RGB,
    # upsampled (the skip architecture's sum is linear in each block's RGB).
    without = arch.synthesize_from(params, ws, noise, 2, x, None)
    zeros = arch.synthesize_from(params, ws, noise, 2, x, jnp.zeros_like(rgb))
    np.testing.assert_allclose(without, zeros, rtol=0, atol=1e-6)
    full = arch.synthesize(params, ws, noise)
    assert float(jnp.abs(full - without).max()) > 1e-2


def test_raw_parameters_and_bad_block_ranges(tiny):
    arch, params, ws, noise = tiny
    ck = read_stylegan2(GOLDEN / "sg2_rosinality_tiny.pt")
    raw = stylegan2.params_from_state(ck.state)["synthesis"]
    x, rgb = arch.synthesize_to(raw, ws, noise, 0)
    np.testing.assert_array_equal(
        np.asarray(arch.synthesize_from(raw, ws, noise, 1, x, rgb)),
        np.asarray(arch.synthesize(params, ws, noise)),
    )
    with pytest.raises(ValueError, match="not within"):
        arch.synthesize_from(params, ws, noise, arch.num_blocks, x, rgb)
    with pytest.raises(ValueError, match="not within"):
        arch.run_blocks(params, ws, noise, x, rgb, 2, 1)
