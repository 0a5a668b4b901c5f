"""Random generator weights in the converters' layouts: fixtures for tests, benchmarks and
`experiments/make_machine_reference.py`, not models.

Weights are standard normal (the equalized-learning-rate convention: the run-time
multipliers give each layer unit gain), biases and noise strengths small; the gaussian fit
of the latents is random too, at the scale of the real one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pulse_jax.generators import stylegan2


def random_stylegan_params(
    key: jax.Array,
    resolution: int,
    *,
    fmap_base: int = 8192,
    fmap_max: int = 512,
    mapping_layers: int = 8,
) -> dict:
    """Random StyleGAN (v1) weights in the converters' layout; the blur kernel is the real
    one, the gaussian fit's mean near -0.27 and std near 0.48 (PULSE's real fit).

    Args:
      key: a `jax.random` key.
      resolution: output size in pixels, a power of two (1024 for FFHQ).
      fmap_base, fmap_max: StyleGAN's channel plan, FFHQ's by default: block i (output
        `4 * 2**i` px) has `min(fmap_base // 2**(i + 1), fmap_max)` channels, that is
        `channels_for(resolution, 2 * fmap_base, fmap_max)`.
      mapping_layers: dense layers of the mapping network (512 wide, as the latents).

    Returns:
      {"synthesis": ..., "mapping": ..., "gaussian_fit": {"mean", "std"}} of float32 arrays,
      ready for `stylegan.arch_from_params` and `Generator`.
    """
    channels = channels_for(resolution, 2 * fmap_base, fmap_max)
    normal = _normal_draws(key, len(channels), mapping_layers)
    dlatent_size = 512

    def epilogue(c):
        return {
            "noise": {"weight": normal((c,), 0.1)},
            "style_mod": {
                "lin": {"weight": normal((dlatent_size, 2 * c)), "bias": normal((2 * c,), 0.1)}
            },
        }

    def conv(c_in, c):
        return {"weight": normal((3, 3, c_in, c)), "bias": normal((c,), 0.1)}

    blur = jnp.outer(jnp.array([1.0, 2.0, 1.0]), jnp.array([1.0, 2.0, 1.0])) / 16.0
    c0 = channels[0]
    blocks = {
        "4x4": {
            "const": normal((1, 4, 4, c0)),
            "bias": normal((c0,), 0.1),
            "epi1": epilogue(c0),
            "conv": conv(c0, c0),
            "epi2": epilogue(c0),
        }
    }
    for i in range(1, len(channels)):
        c_in, c = channels[i - 1], channels[i]
        blocks[f"{4 * 2**i}x{4 * 2**i}"] = {
            "conv0_up": {**conv(c_in, c), "intermediate": {"kernel": blur}},
            "epi1": epilogue(c),
            "conv1": conv(c, c),
            "epi2": epilogue(c),
        }
    synthesis = {
        "blocks": blocks,
        "torgb": {"weight": normal((1, 1, channels[-1], 3)), "bias": normal((3,), 0.1)},
    }
    mapping = {
        f"dense{i}": {
            "weight": normal((dlatent_size, dlatent_size)),
            "bias": normal((dlatent_size,), 0.1),
        }
        for i in range(mapping_layers)
    }
    fit = _gaussian_fit(normal, dlatent_size, mean=-0.27, std=0.48)
    return {"synthesis": synthesis, "mapping": mapping, "gaussian_fit": fit}


def random_stylegan2_params(
    key: jax.Array,
    resolution: int,
    *,
    channel_base: int = 32768,
    channel_max: int = 512,
) -> dict:
    """Random StyleGAN2 weights in `stylegan2.params_from_state`'s layout.

    At 1024 px with the defaults, the layout is NVIDIA's FFHQ config F
    (`stylegan2_ada_ffhq1024_keys.tsv`). Affine biases are near 1 (their init), noise
    buffers standard normal, the gaussian fit's std near 1.

    Args:
      key: a `jax.random` key.
      resolution: output size in pixels, a power of two.
      channel_base, channel_max: the channel plan (`channels_for`), config F's by default.

    Returns:
      {"mapping", "synthesis", "gaussian_fit"} of float32 arrays, for
      `stylegan2.arch_from_params`.
    """
    channels = channels_for(resolution, channel_base, channel_max)
    mapping_layers, w_dim = 8, 512  # z, w and the mapping network are 512 wide
    normal = _normal_draws(key, len(channels), mapping_layers)

    def affine(c):
        return {"weight": normal((w_dim, c)), "bias": normal((c,), 0.1, 1.0)}

    def layer(c_in, c, r):
        return {
            "weight": normal((3, 3, c_in, c)),
            "affine": affine(c_in),
            "bias": normal((c,), 0.1),
            "noise_strength": normal((), 0.1),
            "noise_const": normal((r, r)),
        }

    def torgb(c):
        return {"weight": normal((c, 3)), "affine": affine(c), "bias": normal((3,), 0.1)}

    synthesis = {
        "b4": {
            "const": normal((1, 4, 4, channels[0])),
            "conv1": layer(channels[0], channels[0], 4),
            "torgb": torgb(channels[0]),
        }
    }
    for i in range(1, len(channels)):
        r, c_in, c = 4 * 2**i, channels[i - 1], channels[i]
        synthesis[f"b{r}"] = {
            "conv0": layer(c_in, c, r),
            "conv1": layer(c, c, r),
            "torgb": torgb(c),
        }
    gain = 1 / stylegan2.MAPPING_LR
    mapping = {
        f"fc{i}": {"weight": normal((w_dim, w_dim), gain), "bias": normal((w_dim,))}
        for i in range(mapping_layers)
    }
    mapping["w_avg"] = normal((w_dim,), 0.1)
    fit = _gaussian_fit(normal, w_dim, mean=0.0, std=1.0)
    return {"synthesis": synthesis, "mapping": mapping, "gaussian_fit": fit}


def channels_for(resolution: int, channel_base: int, channel_max: int) -> tuple[int, ...]:
    """NVIDIA's channel plan, 4 px first: `min(channel_base // r, channel_max)` at r px
    (FFHQ 1024: StyleGAN v1 with `channel_base` 16384 has 512 up to 32 px, then 256, 128,
    64, 32, 16; StyleGAN2 config F with 32768 has 512 up to 64 px, then 256, 128, 64, 32)."""
    if resolution < 4 or resolution & (resolution - 1):
        raise ValueError(f"resolution must be a power of two >= 4, got {resolution}")
    return tuple(min(channel_base // 2**i, channel_max) for i in range(2, resolution.bit_length()))


def _normal_draws(key: jax.Array, blocks: int, mapping_layers: int):
    """`normal(shape, scale=1, shift=0)`: float32 normal draws, each from its own split of
    `key` (enough for `blocks` synthesis blocks and `mapping_layers` dense layers)."""
    keys = iter(jax.random.split(key, 16 * blocks + 2 * mapping_layers + 8))

    def normal(shape, scale=1.0, shift=0.0):
        return shift + scale * jax.random.normal(next(keys), shape, jnp.float32)

    return normal


def _gaussian_fit(normal, width: int, *, mean: float, std: float) -> dict:
    """A random gaussian fit of the latents: mean near `mean`, std a little above `std`."""
    return {
        "mean": normal((width,), 0.1, mean),
        "std": std + 0.05 * jnp.abs(normal((width,))),
    }
