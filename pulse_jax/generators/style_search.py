"""PULSE's search space over a style-based generator (docs/method.md sections 2-3, 9.2).

StyleGAN (v1) and StyleGAN2 are searched the same way: a latent of `num_layers` style rows
(or one row, tiled) that reaches the generator as `leaky_relu_0.2(latent * std + mean)`
through the gaussian fit, and the synthesis network's noise maps, some optimized, some
fixed, some ("bad") always zero. `StyleSearchSpace` holds that one definition; an arch
inherits it and supplies

  - `num_layers`: style rows (GEOCROSS runs over them),
  - `num_noise_layers` and `noise_resolution(i)`: the noise maps,
  - `dlatent_size`: width of a row,
  - `default_bad_noise_layers`: the generator's default for PULSE's `bad_noise_layers`
    (`option_defaults`),
  - `synthesize(synthesis_params, dlatents, noise)`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pulse_jax import projector
from pulse_jax.generators import ops
from pulse_jax.options import NoiseType, Scope, SearchMode, SearchOptions


class StyleSearchSpace:
    """The solver's methods (`generators/base.py`) for a generator with style rows and noise."""

    # Every option applies: the generic ones and those of noise maps and style layers.
    option_scopes = frozenset(Scope)

    def option_defaults(self) -> dict:
        """The generator's own defaults for options left unset (None)."""
        return {"bad_noise_layers": self.default_bad_noise_layers}

    def bad_noise_layers(self, options: SearchOptions) -> tuple[int, ...]:
        """The noise layers that are always zero (the generator's default where unset)."""
        given = options.bad_noise_layers
        return self.default_bad_noise_layers if given is None else given

    def check_options(self, options: SearchOptions) -> None:
        """Refuses options this generator cannot run (a ValueError naming the option)."""
        n = self.num_noise_layers
        missing = [i for i in self.bad_noise_layers(options) if not 0 <= i < n]
        if missing:
            raise ValueError(
                f"bad_noise_layers {'.'.join(map(str, missing))} do not exist: this generator's "
                f"noise layers are 0..{n - 1}"
            )

    def latent_rows(self, options: SearchOptions) -> int:
        return 1 if options.tile_latent else self.num_layers

    def sample_start(self, key: jax.Array, options: SearchOptions) -> dict:
        """One sample's start: {"latent": [rows, dlatent_size], "noise": maps [r, r, 1]}
        (the projector's: `projector.sample_start`)."""
        if options.mode == SearchMode.PROJECTOR:
            return projector.sample_start(self, key)
        keys = jax.random.split(key, self.num_noise_layers + 1)
        bad = self.bad_noise_layers(options)
        latent = jax.random.normal(keys[0], (self.latent_rows(options), self.dlatent_size))
        noise = []
        for i in range(self.num_noise_layers):
            r = self.noise_resolution(i)
            if options.noise_type == NoiseType.ZERO or i in bad:
                noise.append(jnp.zeros((r, r, 1), jnp.float32))
            else:
                noise.append(jax.random.normal(keys[i + 1], (r, r, 1)))
        return {"latent": latent, "noise": noise}

    def trainable(self, options: SearchOptions) -> dict:
        """Which leaves of a start are optimized (the rest stay fixed)."""
        bad = self.bad_noise_layers(options)
        noise = [
            options.noise_type == NoiseType.TRAINABLE
            and i < options.num_trainable_noise_layers
            and i not in bad
            for i in range(self.num_noise_layers)
        ]
        return {"latent": True, "noise": noise}

    def sphere_axes(self, options: SearchOptions) -> dict:
        """Axes of a batched leaf [N, ...] over which each row's radius is taken: one row per
        (sample, style row) for the latent, per (sample, channel) for noise (docs/method.md
        section 3)."""
        return {"latent": (2,), "noise": [(1, 2)] * self.num_noise_layers}

    def render(self, params: dict, variables: dict, options: SearchOptions):
        """Batched variables -> (images [N, R, R, 3] in [0, 1], dlatents [N, L, D])."""
        fit = params["gaussian_fit"]
        latent = variables["latent"]  # [N, L or 1, D]
        if options.tile_latent:
            latent = jnp.broadcast_to(latent, (latent.shape[0], self.num_layers, latent.shape[2]))
        dlatents = ops.leaky_relu(latent * fit["std"] + fit["mean"], 0.2)
        images = self.synthesize(params["synthesis"], dlatents, variables["noise"])
        return (images + 1.0) / 2.0, dlatents
