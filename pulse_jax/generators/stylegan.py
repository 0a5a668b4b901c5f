"""StyleGAN (v1) as PULSE uses it: its mapping and synthesis, pure (docs/method.md section 9.1).

Parameters are nested dicts whose keys follow PULSE's checkpoints
(`params["synthesis"]["blocks"]["8x8"]["conv0_up"]["weight"]`), stored unscaled
in JAX layouts (conv kernels [kh, kw, in, out], dense [in, out]); the equalized
learning-rate multipliers are applied at run time, as in the original.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from pulse_jax.generators import ops
from pulse_jax.generators.base import Prepared
from pulse_jax.generators.style_search import StyleSearchSpace

SQRT2 = math.sqrt(2.0)
MAPPING_LRMUL = 0.01
INSTANCE_NORM_EPS = 1e-5  # PULSE's nn.InstanceNorm2d default (TF's StyleGAN uses 1e-8)
FUSED_MIN_RESOLUTION = 128  # blocks with output >= 128 px take the fused upscale path
MAX_BLOCKS = 12  # 4x4 .. 8192x8192


@dataclasses.dataclass(frozen=True)
class StyleGANArch(StyleSearchSpace):
    """Static structure of a StyleGAN generator, inferred from its weights; PULSE's search
    over it is `StyleSearchSpace`'s."""

    resolution: int
    channels: tuple[int, ...]  # per block, 4x4 first
    mapping_layers: int = 8
    latent_size: int = 512
    dlatent_size: int = 512
    precision: str = "highest"

    @property
    def num_layers(self) -> int:
        return 2 * len(self.channels)

    @property
    def block_names(self) -> tuple[str, ...]:
        return tuple(f"{4 * 2**i}x{4 * 2**i}" for i in range(len(self.channels)))

    @property
    def num_noise_layers(self) -> int:
        return self.num_layers

    @property
    def default_bad_noise_layers(self) -> tuple[int, ...]:
        """PULSE's default 17 (the last noise layer at 1024 px); none where there is no 17."""
        return (17,) if self.num_noise_layers > 17 else ()

    def noise_resolution(self, layer: int) -> int:
        return 2 ** (layer // 2 + 2)

    # -- the networks ---------------------------------------------------------------------

    def map(self, params: dict, z: jax.Array) -> jax.Array:
        """Mapping network: z [B, 512] -> w [B, 512]."""
        x = z * jax.lax.rsqrt(jnp.mean(z * z, axis=1, keepdims=True) + 1e-8)
        for i in range(self.mapping_layers):
            dense = _scaled_dense(params[f"dense{i}"], SQRT2, MAPPING_LRMUL)
            x = _affine(dense, x, self.precision)
            x = ops.leaky_relu(x, 0.2)
        return x

    def synthesize(self, params: dict, dlatents: jax.Array, noise) -> jax.Array:
        """Synthesis network: dlatents [B, L, 512] and L noise maps [B, r, r, 1] -> [B, R, R, 3].

        Returns the raw output (roughly [-1, 1]), before PULSE's `(x + 1) / 2`. `params` is
        params["synthesis"], raw or as `prepare` returns it (raw ones are prepared here).
        """
        if not isinstance(params, Prepared):
            params = self._prepare_synthesis(params)
        p = self.precision
        blocks = params["blocks"]
        first = blocks["4x4"]
        batch = dlatents.shape[0]
        x = jnp.broadcast_to(first["const"], (batch,) + first["const"].shape[1:])  # [B, 4, 4, C]
        x = x + first["bias"]
        x = _epilogue(first["epi1"], x, noise[0], dlatents[:, 0], p)
        x = _conv(first["conv"], x, p)
        x = _epilogue(first["epi2"], x, noise[1], dlatents[:, 1], p)
        for i, name in enumerate(self.block_names[1:], start=1):
            block = blocks[name]
            x = _upscale_conv(block["conv0_up"], x, p)
            x = _epilogue(block["epi1"], x, noise[2 * i], dlatents[:, 2 * i], p)
            x = _conv(block["conv1"], x, p)
            x = _epilogue(block["epi2"], x, noise[2 * i + 1], dlatents[:, 2 * i + 1], p)
        return _conv(params["torgb"], x, p, padding=0)

    def prepare(self, params: dict) -> dict:
        """The parameters with every synthesis layer's run-time kernels computed once.

        The equalized-learning-rate multipliers, the fused and nearest upscale kernels, and
        the flipped or transposed kernels of the convs' input gradients (`ops.prepare_conv`,
        `ops.prepare_upsample`) depend on the weights alone. `solve` prepares once per call,
        before its optimization loop; left inside it, XLA:CPU keeps the 17 kernel transposes
        of a 1024 px network in the loop body and a step takes about 4% longer (measured
        A/B: 0.70-0.73 against 0.68 s). `synthesize` and `render` accept raw or prepared
        parameters and give the same numbers: the same float32 operations run on the same
        values, only outside the loop.

        Args:
          params: {"synthesis", ...} as `render` takes them (other entries pass through).

        Returns:
          The same structure; each conv, upscale and style layer holds "prepared" in place
          of its "weight" (parameters already prepared are returned as they are).
        """
        if isinstance(params["synthesis"], Prepared):
            return params
        return dict(params, synthesis=self._prepare_synthesis(params["synthesis"]))

    def _prepare_synthesis(self, synthesis: dict) -> dict:
        blocks = {}
        for i, name in enumerate(self.block_names):
            block = dict(synthesis["blocks"][name])
            if i == 0:
                block["conv"] = _prepare_conv(block["conv"], SQRT2)
            else:
                fused = 4 * 2**i >= FUSED_MIN_RESOLUTION
                block["conv0_up"] = _prepare_upscale(block["conv0_up"], fused)
                block["conv1"] = _prepare_conv(block["conv1"], SQRT2)
            for epi in ("epi1", "epi2"):
                style = block[epi]["style_mod"]
                lin = {"prepared": _scaled_dense(style["lin"], 1.0, 1.0)}
                block[epi] = dict(block[epi], style_mod=dict(style, lin=lin))
            blocks[name] = block
        torgb = _prepare_conv(synthesis["torgb"], 1.0)
        return Prepared(synthesis, blocks=blocks, torgb=torgb)


# The synthesis layers take their parameters as `StyleGANArch.prepare` leaves them: each
# "weight" replaced by "prepared" (multipliers applied, kernels in the forms the ops run).


def _with_prepared(p: dict, prepared) -> dict:
    """A layer's parameters with its raw "weight" replaced by `prepared`."""
    return dict({k: v for k, v in p.items() if k != "weight"}, prepared=prepared)


def _scaled_dense(p: dict, gain: float, lrmul: float) -> dict:
    """A dense layer's weight and bias with the equalized-learning-rate multipliers applied."""
    w_mul = gain * p["weight"].shape[0] ** -0.5 * lrmul
    return {"weight": p["weight"] * w_mul, "bias": p["bias"] * lrmul}


def _affine(dense: dict, x: jax.Array, precision: str) -> jax.Array:
    return ops.dot(x, dense["weight"], precision) + dense["bias"]


def _conv(p: dict, x, precision, *, padding: int = 1):
    return ops.conv2d(x, p["prepared"], padding, precision) + p["bias"]


def _prepare_conv(p: dict, gain: float) -> dict:
    kernel = p["weight"]  # [k, k, in, out]
    w_mul = gain * (kernel.shape[0] * kernel.shape[1] * kernel.shape[2]) ** -0.5
    return _with_prepared(p, ops.prepare_conv(kernel * w_mul))


def fused_upscale_kernel(kernel: jax.Array) -> jax.Array:
    """3x3 kernel [3, 3, in, out] -> the 4x4 kernel of StyleGAN's fused upscale-conv:
    zero-padded to 5x5 and summed with its three one-pixel shifts."""
    k = jnp.pad(kernel, ((1, 1), (1, 1), (0, 0), (0, 0)))
    return k[1:, 1:] + k[:-1, 1:] + k[1:, :-1] + k[:-1, :-1]


def _upscale_conv(p: dict, x: jax.Array, precision: str) -> jax.Array:
    """Upscale x2 and 3x3 conv (fused: StyleGAN's transposed conv; else nearest upsample
    first), blur, bias. Both paths run as `ops.upsample_conv2x` with a 4x4 kernel."""
    x = ops.upsample_conv2x(x, p["prepared"], precision)
    x = ops.depthwise_conv2d(x, p["intermediate"]["kernel"], 1, precision)
    return x + p["bias"]


def _prepare_upscale(p: dict, fused: bool) -> dict:
    kernel = p["weight"]  # [3, 3, in, out]
    kernel = kernel * (SQRT2 * (9 * kernel.shape[2]) ** -0.5)
    kernel = fused_upscale_kernel(kernel) if fused else ops.nearest_upsample_kernel(kernel)
    return _with_prepared(p, ops.prepare_upsample(kernel))


def _epilogue(p: dict, x: jax.Array, noise: jax.Array, dlatent: jax.Array, precision: str):
    """noise -> leaky ReLU -> instance norm -> style modulation (docs/method.md section 9.1).

    The instance norm's moments are taken in one pass (variance as E[x^2] - E[x]^2, clamped
    at 0) and the norm and the modulation are folded into one per-channel affine map, so the
    layer's elementwise work and its backward read the large activations fewer times (the
    high-resolution layers are bound by memory traffic, not arithmetic). After the leaky ReLU
    the mean is of the order of the standard deviation, so the one-pass variance loses only a
    few bits: the golden forward stays within 2e-5 and the gradients within 2e-6 (relative)
    of a float64 evaluation.
    """
    x = x + p["noise"]["weight"] * noise  # noise [B, r, r, 1] broadcast over channels
    x = ops.leaky_relu(x, 0.2)
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)  # [B, 1, 1, C]
    var = jnp.maximum(jnp.mean(x * x, axis=(1, 2), keepdims=True) - mean * mean, 0.0)
    style = _affine(p["style_mod"]["lin"]["prepared"], dlatent, precision)  # [B, 2C]
    channels = x.shape[-1]
    scale = jax.lax.rsqrt(var + INSTANCE_NORM_EPS) * (style[:, None, None, :channels] + 1.0)
    shift = style[:, None, None, channels:] - mean * scale
    return x * scale + shift


def arch_from_params(synthesis: dict, mapping: dict | None, precision: str = "highest"):
    """Infers the architecture from converted parameter shapes (never assumes 1024 px)."""
    blocks = synthesis["blocks"]
    if not 1 <= len(blocks) <= MAX_BLOCKS:
        raise ValueError(f"{len(blocks)} synthesis blocks, expected 1..{MAX_BLOCKS} (4..8192 px)")
    names = sorted(blocks, key=lambda n: int(n.split("x")[0]))
    resolutions = [int(n.split("x")[0]) for n in names]
    expected = [4 * 2**i for i in range(len(names))]
    if resolutions != expected:
        raise ValueError(f"synthesis blocks {names} are not 4x4, 8x8, ... in powers of two")
    channels = [int(np.shape(blocks["4x4"]["const"])[-1])]
    channels += [int(np.shape(blocks[n]["conv1"]["weight"])[-1]) for n in names[1:]]
    sizes = {}  # the mapping's depth and widths, where there is a mapping (else the defaults)
    if mapping is not None:
        depth = len([k for k in mapping if k.startswith("dense")])
        sizes = {
            "mapping_layers": depth,
            "latent_size": int(np.shape(mapping["dense0"]["weight"])[0]),
            "dlatent_size": int(np.shape(mapping[f"dense{depth - 1}"]["weight"])[1]),
        }
    return StyleGANArch(resolutions[-1], tuple(channels), precision=precision, **sizes)
