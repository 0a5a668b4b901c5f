"""The embedded default generator: a pretrained 64 px face DCGAN (docs/method.md section 9.3).

`z [B, 100]` -> five transposed convs without bias (100->512 k4 s1 p0, then
k4 s2 p1 each), eval-mode batch norm and ReLU after the first four, tanh last.
Parameters follow the checkpoint's keys (`params["main"]["0"]["weight"]`), with
transposed-conv kernels moved from torch's (in, out, kh, kw) to [kh, kw, in, out].
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from pulse_jax.generators import ops
from pulse_jax.generators.base import Prepared
from pulse_jax.options import Scope, SearchOptions

BATCH_NORM_EPS = 1e-5
# Sequential indices of the five transposed convs and the four batch norms.
CONV_INDICES = (0, 3, 6, 9, 12)
NORM_INDICES = (1, 4, 7, 10)


@dataclasses.dataclass(frozen=True)
class DCGANArch:
    """Static structure of the DCGAN (inferred from its weights)."""

    latent_size: int = 100
    resolution: int = 64
    precision: str = "highest"

    def synthesize(self, params: dict, z: jax.Array) -> jax.Array:
        """z [B, latent_size] -> raw image [B, 64, 64, 3] in [-1, 1]."""
        layers = self.prepare(params)["main"]
        x = z[:, None, None, :]  # [B, 1, 1, 100]
        for i, conv in enumerate(CONV_INDICES):
            stride, padding = (1, 0) if i == 0 else (2, 1)
            layer = layers[str(conv)]
            kernel = layer["weight"] if i == 0 else layer["prepared"]
            x = ops.conv_transpose2d(x, kernel, stride, padding, self.precision)
            if i < len(NORM_INDICES):
                bn = layers[str(NORM_INDICES[i])]
                x = (x - bn["running_mean"]) * jax.lax.rsqrt(bn["running_var"] + BATCH_NORM_EPS)
                x = jax.nn.relu(x * bn["weight"] + bn["bias"])
        return jnp.tanh(x)

    def prepare(self, params: dict) -> dict:
        """The parameters with the upscaling convs' kernels in the forms `ops.upsample_conv2x`
        runs, computed once (`solve` calls this before its optimization loop; see
        `StyleGANArch.prepare`). `synthesize` accepts raw or prepared parameters alike
        (parameters already prepared are returned as they are)."""
        if isinstance(params, Prepared):
            return params
        layers = dict(params["main"])
        for conv in CONV_INDICES[1:]:
            layers[str(conv)] = {"prepared": ops.prepare_upsample(layers[str(conv)]["weight"])}
        return Prepared(params, main=layers)

    # -- the search space: z alone, kept on its sphere, one row per sample -----------------

    # Only the generic options: no noise maps, no style layers.
    option_scopes = frozenset({Scope.GENERIC})

    def option_defaults(self) -> dict:
        """No generator-specific defaults."""
        return {}

    def check_options(self, options: SearchOptions) -> None:
        if options.mode != "pulse":
            raise ValueError(f"mode {options.mode}: the DCGAN has no W space; only mode pulse")

    def sample_start(self, key: jax.Array, options: SearchOptions) -> dict:
        del options
        return {"latent": jax.random.normal(key, (self.latent_size,))}

    def trainable(self, options: SearchOptions) -> dict:
        del options
        return {"latent": True}

    def sphere_axes(self, options: SearchOptions) -> dict:
        del options
        return {"latent": (1,)}

    def render(self, params: dict, variables: dict, options: SearchOptions):
        del options
        return (self.synthesize(params, variables["latent"]) + 1.0) / 2.0, None


def arch_from_params(params: dict, precision: str = "highest") -> DCGANArch:
    layers = params["main"]
    latent_size = int(layers["0"]["weight"].shape[2])
    resolution = 4 * 2 ** (len(CONV_INDICES) - 1)
    if int(layers[str(CONV_INDICES[-1])]["weight"].shape[3]) != 3:
        raise ValueError("the DCGAN's last layer must produce 3 channels")
    return DCGANArch(latent_size=latent_size, resolution=resolution, precision=precision)
