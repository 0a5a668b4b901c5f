"""Small generators and parameter trees with random weights, for tests (not library code)."""

from __future__ import annotations

import jax
import numpy as np

from pulse_jax import testing
from pulse_jax.generators import stylegan
from pulse_jax.generators.base import Generator

# A row in another group or position, after 3 steps (hr in [0, 1], latents): measured
# 0 on Intel Xeon (AVX-512), 1.03e-5 on AMD EPYC; asserted with a 100x margin.
OTHER_GROUP_TOLERANCE = 1e-3


def small_stylegan_generator(seed: int) -> Generator:
    """A 16 px StyleGAN (6 style layers, 16 channels) with random weights.

    Drawn with numpy on `testing.random_stylegan_params`'s layout: its own jax draws compile one
    small program per weight, seconds on a two-core machine.
    """
    shapes = jax.eval_shape(
        lambda: testing.random_stylegan_params(
            jax.random.key(0), 16, fmap_base=32, fmap_max=16, mapping_layers=1
        )
    )
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda x: rng.standard_normal(x.shape, np.float32), shapes)
    blur = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0]).astype(np.float32) / 16
    for name, block in params["synthesis"]["blocks"].items():
        if name != "4x4":
            block["conv0_up"]["intermediate"]["kernel"] = blur
    fit = params["gaussian_fit"]
    fit["mean"], fit["std"] = 0.1 * fit["mean"] - 0.27, 0.48 + 0.05 * np.abs(fit["std"])
    arch = stylegan.arch_from_params(params["synthesis"], params["mapping"])
    return Generator(kind="stylegan", arch=arch, params=jax.tree.map(jax.numpy.asarray, params))


def tiny_dcgan_params(latent: int = 4, width: int = 2) -> dict:
    """A DCGAN-shaped parameter tree with few channels (the schema checks shapes only)."""
    rng = np.random.default_rng(0)
    main, channels = {}, latent
    for conv in (0, 3, 6, 9, 12):
        out = 3 if conv == 12 else width
        main[str(conv)] = {"weight": rng.standard_normal((4, 4, channels, out), np.float32)}
        if conv != 12:
            main[str(conv + 1)] = {
                k: np.ones(out, np.float32) for k in ("weight", "bias", "running_mean")
            } | {"running_var": np.full(out, 2.0, np.float32)}
        channels = out
    return {"main": main}
