"""StyleGAN2 (config F, "skip") as pure functions in NHWC (docs/method.md section 9.2).

The function is NVIDIA's StyleGAN2-ADA generator (`training/networks.py`) in float32.
Parameters are nested dicts built from the generator's state dict under NVIDIA's names
(`params["synthesis"]["b8"]["conv0"]["weight"]`, `params["mapping"]["fc0"]`), in JAX
layouts (conv kernels [kh, kw, in, out], dense [in, out]), unscaled; the noise buffers
(`noise_const`) live beside the layer they feed, and `w_avg` in the mapping.

How a modulated conv runs: the reference multiplies each sample's copy of the weight by
its styles, demodulates it and runs a grouped conv, one group per sample. Here the
activations are scaled by the styles, convolved with the one *shared* weight, and the
output scaled by the demodulation coefficients `rsqrt(styles**2 @ sum_k(weight**2) +
1e-8)`: the same function (conv is linear in each input channel and the coefficients
are per output channel), with every conv an ordinary batched conv that XLA runs at its
best, and the per-sample work a few elementwise products it fuses with the epilogue.
The x2 upsampling conv (transposed conv, stride 2, then the [1,3,3,1] FIR, gain 4) is
the transposed conv of the 4x4 kernel `weight * [1, 1]` (per axis) through
`ops.upsample_conv2x` followed by the [1, 2, 1] blur, since [1,3,3,1] = [1,1] * [1,2,1]:
the same structure as StyleGAN v1's fused upscale, at 16 instead of 36 multiply-adds per
input pixel of a single fused 6x6 kernel.
"""

from __future__ import annotations

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import numpy as np

from pulse_jax.generators import ops
from pulse_jax.generators.base import Prepared
from pulse_jax.generators.style_search import StyleSearchSpace
from pulse_jax.generators.stylegan import fused_upscale_kernel

SQRT2 = math.sqrt(2.0)
DEMODULATION_EPS = 1e-8
MAPPING_LR = 0.01  # NVIDIA's and rosinality's lr multiplier of the mapping network
# The FIR filter of every resampling, [1, 3, 3, 1] x [1, 3, 3, 1] normalised (NVIDIA's
# `upfirdn2d.setup_filter([1, 3, 3, 1])`): the filter files must hold it.
RESAMPLE_FILTER = np.outer([1.0, 3.0, 3.0, 1.0], [1.0, 3.0, 3.0, 1.0]) / 64.0
# [1, 3, 3, 1] / 4 = [1, 1] * [1, 2, 1] / 4 per axis: the blur after the 4x4 transposed conv.
_BLUR = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0]) / 16.0


@dataclasses.dataclass(frozen=True)
class StyleGAN2Arch(StyleSearchSpace):
    """Static structure of a StyleGAN2 generator, inferred from its weights.

    Attributes:
      resolution: output size R (a power of two >= 4).
      channels: channels of each block, 4 px first.
      mapping_layers: dense layers of the mapping network.
      z_dim, w_dim: widths of z and w.
      conv_clamp: the network's clamp of every layer's output (None: no clamp); a
        hyperparameter of the checkpoint, not a weight.
      mapping_lr: the mapping's learning-rate multiplier (its weight and bias gains).
      precision: matmul/conv precision (`ops.lax_precision`).
    """

    resolution: int
    channels: tuple[int, ...]
    mapping_layers: int = 8
    z_dim: int = 512
    w_dim: int = 512
    conv_clamp: float | None = None
    mapping_lr: float = MAPPING_LR
    precision: str = "highest"

    @property
    def block_resolutions(self) -> tuple[int, ...]:
        return tuple(4 * 2**i for i in range(len(self.channels)))

    @property
    def num_ws(self) -> int:
        """Rows of W+: 2 log2(R) - 2 (18 at 1024 px)."""
        return 2 * len(self.channels)

    @property
    def num_layers(self) -> int:
        """Style rows, the latent's rows in PULSE's search (= num_ws)."""
        return self.num_ws

    @property
    def num_noise_layers(self) -> int:
        """2 log2(R) - 3 (17 at 1024 px): conv1 of the 4 px block, conv0 and conv1 of the rest."""
        return self.num_ws - 1

    @property
    def default_bad_noise_layers(self) -> tuple[int, ...]:
        """None: PULSE's 17 is StyleGAN v1's last 1024 px layer, which StyleGAN2 lacks."""
        return ()

    @property
    def latent_size(self) -> int:
        return self.z_dim

    @property
    def dlatent_size(self) -> int:
        return self.w_dim

    def noise_resolution(self, layer: int) -> int:
        return 2 ** ((layer + 5) // 2)

    # -- the networks ---------------------------------------------------------------------

    def map(self, params: dict, z: jax.Array, truncation_psi: float = 1.0) -> jax.Array:
        """Mapping network: z [B, z_dim] -> w [B, w_dim], truncated toward `w_avg` by
        `w_avg + psi * (w - w_avg)` when `truncation_psi` (a Python float) is not 1.

        `params` is params["mapping"]; broadcast w to [B, num_ws, w_dim] for `synthesize`.
        """
        x = z * jax.lax.rsqrt(jnp.mean(z * z, axis=1, keepdims=True) + 1e-8)
        for i in range(self.mapping_layers):
            fc = params[f"fc{i}"]
            gain = self.mapping_lr / math.sqrt(fc["weight"].shape[0])
            x = ops.dot(x, fc["weight"] * gain, self.precision) + fc["bias"] * self.mapping_lr
            x = ops.leaky_relu(x, 0.2) * SQRT2
        if truncation_psi != 1:
            x = params["w_avg"] + truncation_psi * (x - params["w_avg"])
        return x

    def synthesize(self, params: dict, ws: jax.Array, noise=None) -> jax.Array:
        """Synthesis network: ws [B, num_ws, w_dim] -> raw image [B, R, R, 3] (roughly [-1, 1]).

        Args:
          params: params["synthesis"], raw or as `prepare` leaves it.
          ws: the W+ rows; block 4 px uses rows 0 (conv1) and 1 (torgb), block 2**k rows
            2k - 5 and 2k - 4 (conv0, conv1) and 2k - 3 (torgb).
          noise: `num_noise_layers` maps [B, r, r, 1] (layer i at `noise_resolution(i)`),
            each scaled by its layer's noise strength; `noise_buffers(params)` for the
            checkpoint's own ("const"); None for none.
        """
        params = self._checked(params, noise)
        x = self.const_input(params, ws.shape[0])
        return self.run_blocks(params, ws, noise, x, None, 0, self.num_blocks - 1)[1]

    # -- running part of the network (ILO's intermediate layers, docs/method.md section 12) --

    @property
    def num_blocks(self) -> int:
        """Blocks of the synthesis network, 4 px first: ILO's layers 0 .. num_blocks - 1."""
        return len(self.channels)

    def const_input(self, params: dict, batch: int) -> jax.Array:
        """The learned constant, the input of block 0: [batch, 4, 4, C]."""
        const = params["b4"]["const"]  # [1, 4, 4, C]
        return jnp.broadcast_to(const, (batch,) + const.shape[1:])

    def synthesize_to(self, params: dict, ws: jax.Array, noise, layer: int):
        """Blocks 0 .. `layer` from the constant: (block `layer`'s output features [B, r, r, C],
        the running RGB image (the skip) at r px). `synthesize_from(layer + 1, *these)` is
        `synthesize`, op for op."""
        params = self._checked(params, noise)
        x = self.const_input(params, ws.shape[0])
        return self.run_blocks(params, ws, noise, x, None, 0, layer)

    def synthesize_from(
        self, params: dict, ws: jax.Array, noise, layer: int, x: jax.Array, rgb=None
    ) -> jax.Array:
        """Blocks `layer` .. last with `x` [B, r, r, C] as the input of block `layer` (the
        output of block `layer - 1`): the raw image [B, R, R, 3]. `rgb` is the running RGB
        image at r px the earlier blocks made; None (as ILO runs it) starts the sum at
        block `layer`."""
        params = self._checked(params, noise)
        return self.run_blocks(params, ws, noise, x, rgb, layer, self.num_blocks - 1)[1]

    def run_blocks(self, params, ws, noise, x, rgb, first: int, last: int):
        """Blocks `first` .. `last` (inclusive; block 0 is the 4 px conv on the constant `x`):
        (the features after block `last`, the running RGB image or, from rgb None, the sum of
        these blocks' RGB only). `params` prepared (`prepare`)."""
        if not 0 <= first <= last < self.num_blocks:
            raise ValueError(f"blocks {first}..{last} are not within 0..{self.num_blocks - 1}")

        def layer(p, x, row, up=False):
            maps = None if noise is None else noise[row]
            return _layer(p, x, ws[:, row], maps, self.conv_clamp, self.precision, up)

        def torgb(block, row, x):
            return _torgb(block["torgb"], x, ws[:, row], self.conv_clamp, self.precision)

        for j in range(first, last + 1):
            block = params[f"b{self.block_resolutions[j]}"]
            if j == 0:
                x = layer(block["conv1"], x, 0)
                out = torgb(block, 1, x)
            else:
                x = layer(block["conv0"], x, 2 * j - 1, up=True)
                x = layer(block["conv1"], x, 2 * j)
                out = torgb(block, 2 * j + 1, x)
            rgb = out if rgb is None else upsample_skip(rgb) + out
        return x, rgb

    def _checked(self, params: dict, noise) -> dict:
        if not isinstance(params, Prepared):
            params = self._prepare_synthesis(params)
        if noise is not None and len(noise) != self.num_noise_layers:
            raise ValueError(f"expected {self.num_noise_layers} noise maps, got {len(noise)}")
        return params

    def noise_buffers(self, params: dict) -> list[jax.Array]:
        """The checkpoint's own noise maps (NVIDIA's `noise_mode='const'`, rosinality's
        `randomize_noise=False`), [1, r, r, 1] each, broadcast over the batch by
        `synthesize`. `params` is params["synthesis"]."""
        layers = [params["b4"]["conv1"]]
        for r in self.block_resolutions[1:]:
            layers += [params[f"b{r}"]["conv0"], params[f"b{r}"]["conv1"]]
        return [jnp.asarray(p["noise_const"])[None, :, :, None] for p in layers]

    def prepare(self, params: dict) -> dict:
        """The parameters with every synthesis layer's run-time forms computed once (as
        StyleGAN v1's `prepare`): affine gains applied, conv kernels with their
        input-gradient kernels (`ops.prepare_conv`), the upsampling convs' sub-pixel and
        adjoint kernels (`ops.prepare_upsample`), and each layer's `sum_k(weight**2)` for
        the demodulation. `solve` calls it once per call, before its loop.

        Args:
          params: {"synthesis", ...} (other entries pass through).

        Returns:
          The same structure, synthesis layers prepared (already prepared: as given).
        """
        if isinstance(params["synthesis"], Prepared):
            return params
        return dict(params, synthesis=self._prepare_synthesis(params["synthesis"]))

    def _prepare_synthesis(self, synthesis: dict) -> dict:
        prepared = {}
        for r in self.block_resolutions:
            block = dict(synthesis[f"b{r}"])
            if r > 4:
                block["conv0"] = _prepare_layer(block["conv0"], up=True)
            block["conv1"] = _prepare_layer(block["conv1"], up=False)
            block["torgb"] = _prepare_torgb(block["torgb"])
            prepared[f"b{r}"] = block
        return Prepared(prepared)


# -- layers ----------------------------------------------------------------------------


def _styles(affine: dict, w: jax.Array, precision: str) -> jax.Array:
    """The affine map of one w row [B, w_dim] -> styles [B, in] (gains applied by prepare)."""
    return ops.dot(w, affine["weight"], precision) + affine["bias"]


def _scaled_affine(affine: dict, gain: float = 1.0) -> dict:
    """NVIDIA's FullyConnectedLayer gain 1 / sqrt(w_dim) (bias gain 1), times `gain`."""
    scale = gain / math.sqrt(affine["weight"].shape[0])
    return {"weight": affine["weight"] * scale, "bias": affine["bias"] * gain}


def _prepare_layer(p: dict, *, up: bool) -> dict:
    weight = p["weight"]  # [3, 3, in, out]
    if up:
        kernel = ops.prepare_upsample(fused_upscale_kernel(weight))
    else:
        kernel = ops.prepare_conv(weight)
    return {
        "affine": _scaled_affine(p["affine"]),
        "kernel": kernel,
        "weight_sq": jnp.sum(weight * weight, axis=(0, 1)),  # [in, out]
        "bias": p["bias"],
        "noise_strength": p["noise_strength"],
        "noise_const": p["noise_const"],
    }


def _prepare_torgb(p: dict) -> dict:
    weight = p["weight"]  # [in, 3]
    # ToRGB's styles carry the weight gain 1 / sqrt(in): folded into the affine map.
    return {
        "affine": _scaled_affine(p["affine"], 1.0 / math.sqrt(weight.shape[0])),
        "weight": weight,
        "bias": p["bias"],
    }


def _layer(p, x, w, noise, clamp, precision, up):
    """Modulated 3x3 conv (x2 upsampling with `up`), demodulation, noise, bias, leaky ReLU
    times sqrt(2), clamp: NVIDIA's SynthesisLayer. x [B, H, W, in] -> [B, H', W', out]."""
    styles = _styles(p["affine"], w, precision)  # [B, in]
    demod = jax.lax.rsqrt(
        ops.dot(styles * styles, p["weight_sq"], precision) + DEMODULATION_EPS
    )  # [B, out]
    x = x * styles[:, None, None, :]
    if up:
        x = ops.upsample_conv2x(x, p["kernel"], precision, full=True)  # [B, 2H + 2, 2W + 2, out]
        x = ops.depthwise_conv2d(x, jnp.asarray(_BLUR, x.dtype), 0, precision)  # [B, 2H, 2W, out]
    else:
        x = ops.conv2d(x, p["kernel"], 1, precision)
    x = x * demod[:, None, None, :]
    if noise is not None:
        x = x + noise * p["noise_strength"]  # [B, r, r, 1] broadcast over channels
    x = ops.leaky_relu(x + p["bias"], 0.2) * SQRT2
    return x if clamp is None else jnp.clip(x, -clamp, clamp)


def _torgb(p, x, w, clamp, precision):
    """1x1 modulated conv without demodulation, bias, clamp: x [B, H, W, in] -> [B, H, W, 3]."""
    styles = _styles(p["affine"], w, precision)  # [B, in]
    y = ops.dot(x * styles[:, None, None, :], p["weight"], precision)
    y = y + p["bias"]
    return y if clamp is None else jnp.clip(y, -clamp, clamp)


def upsample_skip(img: jax.Array) -> jax.Array:
    """NVIDIA's `upfirdn2d.upsample2d` with the [1,3,3,1] filter, gain 4: [B, H, W, C] ->
    [B, 2H, 2W, C], zero outside the image.

    Per axis the filter is [1, 3, 3, 1] / 4 over the zero-stuffed signal: output 2j is
    (x[j - 1] + 3 x[j]) / 4 and 2j + 1 is (3 x[j] + x[j + 1]) / 4, computed separably as
    two shifted sums and an interleave (the running RGB image has 3 channels: this is
    memory traffic, which a sum of shifted slices keeps to one fused pass per axis).
    """

    def along(x, axis):
        n = x.shape[axis]
        pad = [(0, 0)] * x.ndim
        pad[axis] = (1, 1)
        xp = jnp.pad(x, pad)
        prev, here, nxt = (jax.lax.slice_in_dim(xp, i, i + n, axis=axis) for i in range(3))
        even = 0.25 * prev + 0.75 * here
        odd = 0.75 * here + 0.25 * nxt
        out = jnp.stack([even, odd], axis=axis + 1)
        return out.reshape(x.shape[:axis] + (2 * n,) + x.shape[axis + 1 :])

    return along(along(img, 1), 2)


# -- building the parameters -------------------------------------------------------------


def params_from_state(state: dict[str, np.ndarray]) -> dict:
    """NVIDIA-named generator state (`StyleGAN2Checkpoint.state`) -> {"mapping", "synthesis"}.

    One small function per block: the conv weights [out, in, kh, kw] become [kh, kw, in,
    out] (for conv0 the transposed conv's kernel, as NVIDIA's `conv2d_resample` runs it,
    unflipped), dense weights [out, in] become [in, out], the constant [C, 4, 4] becomes
    [1, 4, 4, C]; the resampling filters are checked, not kept.

    Raises:
      ValueError: a missing or misshapen entry, a filter other than [1, 3, 3, 1], an
        architecture other than "skip", or entries this layout does not know.
    """
    used: set[str] = set()

    def take(name: str, ndim: int, optional: bool = False) -> np.ndarray | None:
        if name not in state:
            if optional:
                return None
            raise ValueError(f"the state has no {name}")
        value = np.asarray(state[name], np.float32)
        if value.ndim != ndim:
            raise ValueError(f"{name} has shape {value.shape}, expected {ndim} dimensions")
        used.add(name)
        return value

    resolutions = sorted(
        {int(k.split(".")[1][1:]) for k in state if re.match(r"synthesis\.b\d+\.", k)}
    )
    if not resolutions or resolutions != [4 * 2**i for i in range(len(resolutions))]:
        raise ValueError(f"synthesis blocks at {resolutions} px are not 4, 8, 16, ... px")
    synthesis = {}
    for r in resolutions:
        prefix = f"synthesis.b{r}"
        _check_filter(take, f"{prefix}.resample_filter")
        block = {}
        if r == 4:
            block["const"] = np.transpose(take(f"{prefix}.const", 3), (1, 2, 0))[None]
        else:
            block["conv0"] = _layer_params(take, f"{prefix}.conv0", r)
        block["conv1"] = _layer_params(take, f"{prefix}.conv1", r)
        block["torgb"] = _torgb_params(take, f"{prefix}.torgb")
        synthesis[f"b{r}"] = block
    mapping = {}
    i = 0
    while f"mapping.fc{i}.weight" in state:
        mapping[f"fc{i}"] = {
            "weight": take(f"mapping.fc{i}.weight", 2).T,
            "bias": take(f"mapping.fc{i}.bias", 1),
        }
        i += 1
    if not i:
        raise ValueError("the state has no mapping network (mapping.fc0.weight)")
    mapping["w_avg"] = take("mapping.w_avg", 1)
    unknown = sorted(set(state) - used)
    if unknown:
        raise ValueError(
            f"unknown entries {', '.join(unknown[:3])}{' ...' if len(unknown) > 3 else ''}: "
            "only the 'skip' StyleGAN2 generator (config F, unconditional) is supported"
        )
    params = {"mapping": mapping, "synthesis": synthesis}
    arch_from_params(params)  # every shape consistent
    return params


def _check_filter(take, name: str) -> None:
    """A resampling filter buffer, where the state has one, must be [1, 3, 3, 1]'s."""
    value = take(name, 2, optional=True)
    if value is None:
        return
    if value.shape != RESAMPLE_FILTER.shape or not np.allclose(value, RESAMPLE_FILTER, atol=1e-7):
        raise ValueError(f"{name} is not the [1, 3, 3, 1] filter this generator implements")


def _layer_params(take, prefix: str, resolution: int) -> dict:
    _check_filter(take, f"{prefix}.resample_filter")
    weight = take(f"{prefix}.weight", 4)  # [out, in, 3, 3]
    if weight.shape[2:] != (3, 3):
        raise ValueError(f"{prefix}.weight has shape {weight.shape}, expected 3x3 kernels")
    noise = take(f"{prefix}.noise_const", 2)
    if noise.shape != (resolution, resolution):
        raise ValueError(f"{prefix}.noise_const has shape {noise.shape}, expected {resolution}^2")
    return {
        "weight": np.transpose(weight, (2, 3, 1, 0)),
        "affine": {
            "weight": take(f"{prefix}.affine.weight", 2).T,
            "bias": take(f"{prefix}.affine.bias", 1),
        },
        "bias": take(f"{prefix}.bias", 1),
        "noise_strength": take(f"{prefix}.noise_strength", 0),
        "noise_const": noise,
    }


def _torgb_params(take, prefix: str) -> dict:
    weight = take(f"{prefix}.weight", 4)  # [3, in, 1, 1]
    if weight.shape[0] != 3 or weight.shape[2:] != (1, 1):
        raise ValueError(f"{prefix}.weight has shape {weight.shape}, expected (3, in, 1, 1)")
    return {
        "weight": weight[:, :, 0, 0].T,
        "affine": {
            "weight": take(f"{prefix}.affine.weight", 2).T,
            "bias": take(f"{prefix}.affine.bias", 1),
        },
        "bias": take(f"{prefix}.bias", 1),
    }


def arch_from_params(
    params: dict,
    *,
    conv_clamp: float | None = None,
    mapping_lr: float = MAPPING_LR,
    precision: str = "highest",
) -> StyleGAN2Arch:
    """Infers the architecture from the parameters' shapes (never assumes FFHQ).

    Args:
      params: {"mapping", "synthesis", ...} as `params_from_state` builds them.
      conv_clamp, mapping_lr: the checkpoint's hyperparameters (not in the weights).
      precision: see `ops.lax_precision`.

    Raises:
      ValueError: shapes that do not chain (naming the layer).
    """
    synthesis, mapping = params["synthesis"], params["mapping"]
    resolutions = sorted(int(name[1:]) for name in synthesis)
    if resolutions != [4 * 2**i for i in range(len(resolutions))]:
        raise ValueError(f"synthesis blocks at {resolutions} px are not 4, 8, 16, ... px")
    mapping_layers = len([k for k in mapping if k.startswith("fc")])
    z_dim = int(np.shape(mapping["fc0"]["weight"])[0])
    w_dim = int(np.shape(mapping[f"fc{mapping_layers - 1}"]["weight"])[1])
    if np.shape(mapping["w_avg"]) != (w_dim,):
        raise ValueError(f"mapping w_avg has shape {np.shape(mapping['w_avg'])}, not ({w_dim},)")
    channels = [int(np.shape(synthesis["b4"]["const"])[-1])]
    for r in resolutions:
        block = synthesis[f"b{r}"]
        layers = ["conv1"] if r == 4 else ["conv0", "conv1"]
        for name in layers:
            shape = np.shape(block[name]["weight"])  # [3, 3, in, out]
            if shape[2] != channels[-1] or np.shape(block[name]["affine"]["weight"]) != (
                w_dim,
                shape[2],
            ):
                raise ValueError(f"b{r}.{name} has weight {shape}, after {channels[-1]} channels")
            if name == "conv0":
                channels.append(int(shape[3]))
            elif shape[3] != channels[-1]:
                raise ValueError(f"b{r}.conv1 has weight {shape}, not {channels[-1]} channels")
        if np.shape(block["torgb"]["weight"]) != (channels[-1], 3):
            raise ValueError(f"b{r}.torgb has weight {np.shape(block['torgb']['weight'])}")
    return StyleGAN2Arch(
        resolution=resolutions[-1],
        channels=tuple(channels),
        mapping_layers=mapping_layers,
        z_dim=z_dim,
        w_dim=w_dim,
        conv_clamp=None if conv_clamp is None else float(conv_clamp),
        mapping_lr=float(mapping_lr),
        precision=precision,
    )
