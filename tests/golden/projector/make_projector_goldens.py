"""Makes tests/golden/projector/*.npz from NVIDIA's own `projector.project` (README here).

Not part of the project and never run by its tests: it needs torch and a checkout of
NVlabs/stylegan2-ada-pytorch (for `projector.py`, `legacy.py` and the networks the pickle
names) and of PULSE (for `bicubic.py`). It runs NVIDIA's `project()` unmodified and only
watches it: `torch.randn_like`, `torch.optim.Adam`, `torch.Tensor.backward` and a forward
pre-hook on the synthesis network record what the loop draws, sets and computes; the VGG16
download is replaced by a stated substitute feature map (README: "The distance").

  python make_projector_goldens.py --nvidia DIR --pulse DIR --pkl sg2ada_tiny.pkl --out DIR
"""

import argparse
import contextlib
import io
import json
import sys

import numpy as np
import torch

STEPS = 20
SEED = 303  # projector.py's --seed default
FULL_MAPS_AT = (0, 1)  # steps whose noise maps are stored whole (besides the final maps)


class Recorder:
    """What the watched loop did, step by step."""

    def __init__(self):
        self.randn = []  # every torch.randn_like output, in call order
        self.ws = []  # synthesis inputs [1, num_ws, C]
        self.noise_in = []  # noise_const buffers at each synthesis call
        self.lr = []
        self.w_after = []
        self.noise_after_step = []  # buffers right after Adam's step (before the renormalisation)
        self.loss = []
        self.dist = []
        self.params = None
        self.w_avg = None
        self.w_std = None


def substitute_vgg16(rec: Recorder, factor: int, bicubic_cls):
    """A stand-in for NVIDIA's LPIPS VGG16 whose squared feature distance is PULSE's L2: the
    mean over (C, h, w) of (D(x / 255) - D(t / 255))^2, D the bicubic downscale by `factor`
    (factor 1: the identity)."""
    down = bicubic_cls(factor=factor, cuda=False) if factor > 1 else None

    class Features:
        target = None

        def eval(self):
            return self

        def to(self, device):
            return self

        def __call__(self, images, resize_images=False, return_lpips=True):
            assert resize_images is False and return_lpips is True
            x = images / 255.0
            if down is not None:
                x = down(x)
            f = x.reshape(x.shape[0], -1) / np.sqrt(x[0].numel())
            if Features.target is None:
                Features.target = f.detach()
            else:
                rec.dist.append(float((Features.target - f).detach().square().sum()))
            return f

    return Features()


def watch(rec: Recorder, G):
    randn_like = torch.randn_like

    def recorded_randn_like(x, *a, **k):
        out = randn_like(x, *a, **k)
        rec.randn.append(out.detach().clone().numpy())
        return out

    class RecordedAdam(torch.optim.Adam):
        def __init__(self, params, **kwargs):
            params = list(params)
            rec.params = params
            rec.w_avg = params[0].detach().clone().numpy()[0, 0]
            super().__init__(params, **kwargs)

        def step(self, closure=None):
            out = super().step(closure)
            rec.lr.append(self.param_groups[0]["lr"])
            rec.w_after.append(rec.params[0].detach().clone().numpy()[0, 0])
            rec.noise_after_step.append([p.detach().clone().numpy() for p in rec.params[1:]])
            return out

    backward = torch.Tensor.backward

    def recorded_backward(self, *a, **k):
        rec.loss.append(float(self))
        return backward(self, *a, **k)

    def pre_hook(module, args, kwargs):
        rec.ws.append(args[0].detach().clone().numpy())
        bufs = [b for n, b in module.named_buffers() if "noise_const" in n]
        rec.noise_in.append([b.detach().clone().numpy() for b in bufs])

    def mapping_hook(module, args, output):
        # The projector's w_std, by its formula, from the w samples its mapping call returned.
        if output.shape[0] == 10000:
            w = output[:, :1, :].numpy().astype(np.float32)
            w_avg = np.mean(w, axis=0, keepdims=True)
            rec.w_std = (np.sum((w - w_avg) ** 2) / 10000) ** 0.5

    torch.randn_like = recorded_randn_like
    torch.optim.Adam = RecordedAdam
    torch.Tensor.backward = recorded_backward
    G.synthesis.register_forward_pre_hook(pre_hook, with_kwargs=True)
    G.mapping.register_forward_hook(mapping_hook)


def run(args, factor: int) -> dict:
    sys.path[:0] = [args.nvidia, args.pulse]
    import bicubic  # PULSE's
    import dnnlib
    import legacy
    import projector

    with open(args.pkl, "rb") as f:
        G = legacy.load_network_pkl(f)["G_ema"].eval().requires_grad_(False)
    # NVIDIA's float16 blocks run in float32 on CPU (as force_fp32=True would).
    for block in G.synthesis.children():
        block.use_fp16 = False
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    z = torch.from_numpy(np.random.RandomState(7).randn(1, G.z_dim).astype(np.float32))
    with torch.no_grad():
        img = G.synthesis(G.mapping(z, None), noise_mode="random")
    target = (img[0] + 1) * (255 / 2)
    target = target.clamp(0, 255).to(torch.uint8)  # [C, H, W], as projector.py's CLI reads files

    rec = Recorder()
    features = substitute_vgg16(rec, factor, bicubic.BicubicDownSample)
    dnnlib.util.open_url = lambda url, *a, **k: contextlib.nullcontext(io.BytesIO())
    torch.jit.load = lambda f, *a, **k: features
    watch(rec, G)
    torch.manual_seed(SEED)
    w_steps = projector.project(G, target, num_steps=STEPS, device=torch.device("cpu"))
    return pack(rec, G, target, w_steps, factor)


def noise_stats(maps):
    """Per map: mean and mean square (what the renormalisation divides by)."""
    return np.array([[m.mean(), (m.astype(np.float64) ** 2).mean()] for m in maps], np.float64)


def pack(rec: Recorder, G, target, w_steps, factor: int) -> dict:
    n_noise = len(rec.params) - 1
    out = {
        "config": json.dumps(
            {
                "num_steps": STEPS,
                "seed": SEED,
                "factor": factor,
                "distance": "L2",
                "w_avg_samples": 10000,
                "initial_learning_rate": 0.1,
                "initial_noise_factor": 0.05,
                "lr_rampdown_length": 0.25,
                "lr_rampup_length": 0.05,
                "noise_ramp_length": 0.75,
                "regularize_noise_weight": 1e5,
            }
        ),
        "target": target.numpy(),  # [3, 64, 64] uint8
        "w_avg": rec.w_avg,  # [C], w_opt as the projector starts it
        "w_std": np.float64(rec.w_std),
    }
    steps = range(STEPS)
    out["w_noise_unit"] = np.stack([rec.randn[n_noise + k][0, 0] for k in steps])  # [S, C]
    out["ws"] = np.stack([rec.ws[k][0] for k in steps])  # [S, num_ws, C]
    out["lr"] = np.array(rec.lr, np.float64)
    out["w_per_step"] = np.stack(rec.w_after)  # [S, C] after each Adam step
    out["w_steps_returned"] = w_steps.numpy()[:, 0]
    out["loss"] = np.array(rec.loss, np.float64)
    out["dist"] = np.array(rec.dist, np.float64)
    for i in range(n_noise):
        out[f"init_noise_{i}"] = rec.randn[i]  # [r, r], the draws before any step
        for k in FULL_MAPS_AT:
            out[f"noise_{i}_step{k}"] = rec.noise_after_step[k][i]
        out[f"final_noise_{i}"] = rec.params[1 + i].detach().numpy()  # after the last renorm
    out["noise_after_step_stats"] = np.stack([noise_stats(m) for m in rec.noise_after_step])
    out["noise_in_stats"] = np.stack([noise_stats(m) for m in rec.noise_in])
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--nvidia", required=True)
    p.add_argument("--pulse", required=True)
    p.add_argument("--pkl", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--factor", type=int, required=True)
    args = p.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    out = run(args, args.factor)
    out["torch_version"] = torch.__version__
    np.savez_compressed(args.out, **out)
    print({k: np.shape(v) for k, v in out.items()})


if __name__ == "__main__":
    main()
