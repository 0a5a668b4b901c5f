"""Reading rosinality's StyleGAN2 port (`stylegan2-ffhq-config-f.pt`, ...) into the ADA layout.

The file is a `torch.save` dict (zip or legacy format, read by `torch_format`
on the shared bounded interpreter, without torch): `{"g_ema": state_dict, "latent_avg": [w_dim]}` as
`convert_weight.py` writes it, or a training checkpoint of `train.py` with
`"g"`, `"d"`, `"g_optim"`, `"d_optim"`, `"args"` (an argparse Namespace,
read as data) and `"ada_aug_p"`. Only the selected generator and
`latent_avg` are converted; every other entry is skipped and listed in the
provenance.

rosinality's `Generator` computes NVIDIA's function with other conventions
(rosinality/stylegan2-pytorch `model.py`):
  - conv weights are `[1, out, in, k, k]`, multiplied at run time by
    `1/sqrt(in*k*k)` before modulation and demodulation. ADA multiplies by
    nothing there, so the factor is folded into the 3x3 weights; ToRGB's
    factor is the same as ADA's `weight_gain` and stays a run-time factor;
  - the upsampling conv is `conv_transpose2d(x, w.transpose(0, 1), stride 2)`
    followed by the [1,3,3,1] blur with padding 1 and gain 4: exactly
    `conv2d_resample(up=2)` on ADA's `conv0.weight`, with no flip;
  - noise strengths are `noise.weight` `[1]`, biases `activate.bias`,
    the mapping is `style.1..n` (same scales as ADA's `FullyConnectedLayer`),
    the noise buffers `noises.noise_i` `[1, 1, r, r]`.
"""

from __future__ import annotations

import os
import re

import numpy as np

from pulse_jax.checkpoints import (
    CheckpointError,
    FileBytes,
    read_regular,
    refuses,
    stylegan2_layout,
    torch_format,
)
from pulse_jax.checkpoints.safe_pickle import Limits

# rosinality's `Generator(lr_mlp=0.01)`: the mapping's learning-rate multiplier is not stored.
LR_MULTIPLIER = 0.01
# When a training checkpoint has no `latent_avg`, it is estimated the way rosinality's own
# scripts do (`g_ema.mean_latent(4096)`): the mean of the mapping over these many z.
MEAN_LATENT_SAMPLES = 4096
MEAN_LATENT_SEED = 0


def _tensor(path, sd: dict, key: str, rank: int) -> np.ndarray:
    if key not in sd:
        raise CheckpointError(path, f"the generator has no {key!r}")
    value = sd[key]
    if not isinstance(value, np.ndarray) or value.ndim != rank or value.dtype.kind != "f":
        raise CheckpointError(
            path,
            f"{key} is {getattr(value, 'shape', type(value).__name__)}, expected a {rank}-D "
            "float tensor",
        )
    return value.astype(np.float32)


def _conv_weight(path, sd, key: str, fold: bool) -> np.ndarray:
    w = _tensor(path, sd, key, 5)  # [1, out, in, k, k]
    if w.shape[0] != 1:
        raise CheckpointError(path, f"{key} has shape {w.shape}, expected [1, out, in, k, k]")
    w = w[0]
    if fold:  # rosinality's ModulatedConv2d.scale, applied before (de)modulation
        w = w * np.float32(1 / np.sqrt(w.shape[1] * w.shape[2] * w.shape[3]))
    return w


def _layer(path, sd, rosi: str, ada: str, noise: np.ndarray, filt: np.ndarray) -> dict:
    """One StyledConv (`convs.i` / `conv1`) -> one ADA SynthesisLayer."""
    strength = _tensor(path, sd, f"{rosi}.noise.weight", 1)
    if strength.shape != (1,):
        raise CheckpointError(
            path, f"{rosi}.noise.weight has shape {strength.shape}, expected (1,)"
        )
    return {
        f"{ada}.weight": _conv_weight(path, sd, f"{rosi}.conv.weight", fold=True),
        f"{ada}.noise_strength": strength.reshape(()),
        f"{ada}.bias": _tensor(path, sd, f"{rosi}.activate.bias", 1),
        f"{ada}.resample_filter": filt,
        f"{ada}.noise_const": noise,
        f"{ada}.affine.weight": _tensor(path, sd, f"{rosi}.conv.modulation.weight", 2),
        f"{ada}.affine.bias": _tensor(path, sd, f"{rosi}.conv.modulation.bias", 1),
    }


def _torgb(path, sd, rosi: str, ada: str) -> dict:
    bias = _tensor(path, sd, f"{rosi}.bias", 4)  # [1, 3, 1, 1]
    return {
        f"{ada}.weight": _conv_weight(path, sd, f"{rosi}.conv.weight", fold=False),
        f"{ada}.bias": bias.reshape(-1),
        f"{ada}.affine.weight": _tensor(path, sd, f"{rosi}.conv.modulation.weight", 2),
        f"{ada}.affine.bias": _tensor(path, sd, f"{rosi}.conv.modulation.bias", 1),
    }


def _filter(path, sd: dict) -> np.ndarray:
    """ADA's `resample_filter` from rosinality's blur kernels (stored times 4); all must agree."""
    kernels = {k: v for k, v in sd.items() if re.fullmatch(r".+\.(blur|upsample)\.kernel", k)}
    if not kernels:
        return stylegan2_layout.resample_filter()
    normalised = {}
    for key, kernel in kernels.items():
        if not isinstance(kernel, np.ndarray) or kernel.ndim != 2 or kernel.sum() == 0:
            raise CheckpointError(path, f"{key} is not a 2-D blur kernel")
        normalised[key] = (kernel / kernel.sum()).astype(np.float32)
    first = next(iter(normalised.values()))
    for key, kernel in normalised.items():
        if kernel.shape != first.shape or np.abs(kernel - first).max() > 1e-6:
            raise CheckpointError(path, f"{key} differs from the other blur kernels")
    return first


def convert_state_dict(path, sd: dict, latent_avg: np.ndarray | None) -> dict[str, np.ndarray]:
    """rosinality `Generator.state_dict()` (+ `latent_avg`) -> the ADA generator state dict."""
    for key in sd:
        if re.search(r"(^|[._])0\d", key):  # "noises.noise_01" beside "noises.noise_1"
            raise CheckpointError(path, f"the key {key[:80]!r} has a number with a leading zero")
    n_mlp = 0
    while f"style.{n_mlp + 1}.weight" in sd:
        n_mlp += 1
    if n_mlp == 0:
        raise CheckpointError(path, "the generator has no mapping layers 'style.1.weight'")
    blocks = 0
    while f"convs.{2 * blocks}.conv.weight" in sd:
        blocks += 1
    filt = _filter(path, sd)

    def noise(i: int) -> np.ndarray:
        n = _tensor(path, sd, f"noises.noise_{i}", 4)
        if n.shape[:2] != (1, 1):
            raise CheckpointError(path, f"noises.noise_{i} has shape {n.shape}")
        return n[0, 0]

    const = _tensor(path, sd, "input.input", 4)
    if const.shape[0] != 1:
        raise CheckpointError(path, f"input.input has shape {const.shape}, expected [1, C, 4, 4]")
    state = {"synthesis.b4.const": const[0], "synthesis.b4.resample_filter": filt}
    state |= _layer(path, sd, "conv1", "synthesis.b4.conv1", noise(0), filt)
    state |= _torgb(path, sd, "to_rgb1", "synthesis.b4.torgb")
    for k in range(blocks):
        b = f"synthesis.b{2 ** (k + 3)}"
        state[f"{b}.resample_filter"] = filt
        state |= _layer(path, sd, f"convs.{2 * k}", f"{b}.conv0", noise(2 * k + 1), filt)
        state |= _layer(path, sd, f"convs.{2 * k + 1}", f"{b}.conv1", noise(2 * k + 2), filt)
        state |= _torgb(path, sd, f"to_rgbs.{k}", f"{b}.torgb")
    for i in range(n_mlp):
        state[f"mapping.fc{i}.weight"] = _tensor(path, sd, f"style.{i + 1}.weight", 2)
        state[f"mapping.fc{i}.bias"] = _tensor(path, sd, f"style.{i + 1}.bias", 1)
    if latent_avg is None:  # computed by the caller once the sizes are checked
        w_dim = state[f"mapping.fc{n_mlp - 1}.weight"].shape[0]
        latent_avg = np.broadcast_to(np.float32(0), (w_dim,))
    state["mapping.w_avg"] = latent_avg
    known = {
        "input.input",
        *(f"style.{i + 1}.{p}" for i in range(n_mlp) for p in ("weight", "bias")),
    }
    for key in sd:
        if key in known or re.fullmatch(
            r"(conv1|to_rgb1|(convs|to_rgbs)\.\d+)\..+|noises\.noise_\d+", key
        ):
            continue
        raise CheckpointError(path, f"the generator has an unexpected tensor {key!r:.80}")
    used = {f"convs.{i}" for i in range(2 * blocks)} | {f"to_rgbs.{k}" for k in range(blocks)}
    extra = sorted(
        {m.group(1) for k in sd if (m := re.match(r"((convs|to_rgbs)\.\d+)\.", k))} - used
    ) + sorted(
        k
        for k in sd
        if (m := re.fullmatch(r"noises\.noise_(\d+)", k)) and int(m.group(1)) > 2 * blocks
    )
    if extra:
        raise CheckpointError(path, f"the generator has layers beyond its last block: {extra[:6]}")
    return state


def mean_latent(state: dict, n_mlp: int, z: np.ndarray | None = None) -> np.ndarray:
    """rosinality's `mean_latent`: the mean of the mapping network's output over z [N, z_dim]
    (default: `MEAN_LATENT_SAMPLES` draws of N(0, I) with `MEAN_LATENT_SEED`)."""
    if z is None:
        z_dim = state["mapping.fc0.weight"].shape[1]
        rng = np.random.default_rng(MEAN_LATENT_SEED)
        z = rng.standard_normal((MEAN_LATENT_SAMPLES, z_dim))
    x = np.asarray(z, np.float32)
    x = x / np.sqrt(np.mean(x**2, axis=1, keepdims=True) + 1e-8)
    for i in range(n_mlp):
        w, b = state[f"mapping.fc{i}.weight"], state[f"mapping.fc{i}.bias"]
        x = x @ (w.T * np.float32(LR_MULTIPLIER / np.sqrt(w.shape[1]))) + b * LR_MULTIPLIER
        x = np.where(x >= 0, x, 0.2 * x) * np.float32(np.sqrt(2))
    return x.mean(axis=0).astype(np.float32)


@refuses
def read_rosinality(
    path: str | os.PathLike,
    *,
    network: str = "G_ema",
    limits: Limits | None = None,
    file: FileBytes | None = None,
):
    """Reads rosinality's StyleGAN2 `.pt` into the ADA layout, without torch or its code.

    Args:
      path: the checkpoint (`convert_weight.py` output or a `train.py` checkpoint).
      network: "G_ema" (the file's `g_ema`, default) or "G" (`g`).
      limits: bounds of the read (`safe_pickle.Limits`; the defaults fit honest files).
      file: its bytes when the caller read them already (`read_regular`).

    Returns:
      A `stylegan2_layout.StyleGAN2Checkpoint` of format "rosinality". When
      the file has no `latent_avg`, `mapping.w_avg` is the mean of the mapping
      over `MEAN_LATENT_SAMPLES` random z (as rosinality's scripts compute
      it), and the provenance says so.

    Raises:
      CheckpointError: the file is not a torch checkpoint, names a global
        outside the torch reader's allow-list, lacks the generator, or its
        tensors do not fit one StyleGAN2 configuration.
    """
    path = os.fspath(path)
    entry = {"G_ema": "g_ema", "G": "g"}.get(network)
    if entry is None:
        raise CheckpointError(path, f"network {network!r:.40}: choose 'G_ema' or 'G'")
    file = file or read_regular(path)
    checkpoint = torch_format.load_torch_checkpoint(path, limits=limits, file=file)
    names = stylegan2_layout.entry_names(path, checkpoint, "a dict", 12)
    if entry not in checkpoint:
        raise CheckpointError(path, f"has no {entry!r} generator (entries: {names})")
    sd = checkpoint[entry]
    if not isinstance(sd, dict) or not all(isinstance(k, str) for k in sd):
        raise CheckpointError(path, f"{entry} is a {type(sd).__name__}, not a state dict")
    latent_avg = checkpoint.get("latent_avg")
    if latent_avg is not None:
        if not isinstance(latent_avg, np.ndarray) or latent_avg.dtype.kind != "f":
            raise CheckpointError(path, f"latent_avg is a {type(latent_avg).__name__}")
        latent_avg = latent_avg.astype(np.float32).reshape(-1)
    state = convert_state_dict(path, sd, latent_avg)
    if latent_avg is None:
        # Every size checked (infer_config: widths and depth in the weights file's ranges)
        # and every mapping weight finite before the draw these sizes decide.
        config, _ = stylegan2_layout.infer_config(path, state)
        n_mlp = config["mapping_layers"]
        for i in range(n_mlp):
            for part in ("weight", "bias"):
                if not np.isfinite(state[f"mapping.fc{i}.{part}"]).all():
                    raise CheckpointError(path, f"style.{i + 1}.{part} holds non-finite values")
        state["mapping.w_avg"] = mean_latent(state, n_mlp)
    sha256 = file.sha256
    args = checkpoint.get("args")
    source = {
        "file": os.path.basename(path),
        "sha256": sha256,
        "format": "rosinality",
        "network": entry,
        "entries": names,
        "skipped": sorted(str(k)[:40] for k in checkpoint if k not in (entry, "latent_avg")),
        "w_avg": "latent_avg"
        if latent_avg is not None
        else f"mean of the mapping over {MEAN_LATENT_SAMPLES} z (seed {MEAN_LATENT_SEED})",
        "lr_multiplier": f"{LR_MULTIPLIER} (rosinality's lr_mlp default; not stored)",
    }
    if isinstance(args, torch_format.Namespace):
        source["args"] = stylegan2_layout.plain(
            {k: v for k, v in args.fields.items() if isinstance(v, bool | int | float | str)}
        )
    return stylegan2_layout.finish(
        path, "rosinality", state, conv_clamp=None, lr_multiplier=LR_MULTIPLIER, source=source
    )
