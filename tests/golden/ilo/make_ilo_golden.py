"""Makes tests/golden/ilo/*.npz by running ILO's own code (README.md here says how and on what).

Not part of the project and never imported by it: it runs in a throwaway environment with
torch, on the public ILO repository (`ilo_stylegan.py`, `model.py`, `utils.py`) and
rosinality's CPU ops. Usage:

    python make_ilo_golden.py ILO_GIT_DIR ROSINALITY_GIT_DIR CHECKPOINT GAUSSIAN_FIT OUT_DIR
"""

import json
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
import torch.utils.cpp_extension

ILO_FILES = ("ilo_stylegan.py", "model.py", "utils.py")
OP_FILES = ("__init__.py", "fused_act.py", "upfirdn2d.py", "conv2d_gradfix.py")
SIZE, CHANNEL_DIVISOR, N_MLP = 64, 16, 2

# Two runs: ILO's defaults (LPIPS weight 0) at x4, and every option the defaults leave off.
RUNS = {
    "sr_default": dict(image_size=16, steps=[3, 3, 2, 2], seed=1, black=0),
    "masked_projected": dict(
        image_size=32,
        steps=[3, 3, 2, 2],
        seed=2,
        black=40,
        lr=[0.1, 0.05, 0.2, 0.1],
        lr_same_pace=True,
        dead_zone_linear=[1.0, 1.0, 0.5, 0.5],
        mse=[1.0, 2.0, 1.0, 1.0],
        do_project_gen_out=True,
        do_project_latent=True,
        do_project_noises=True,
        max_radius_gen_out=[0, 30.0, 60.0, 60.0],
        max_radius_latent=[60.0, 80.0, 40.0, 40.0],
        max_radius_noises=[4.0, 6.0, 8.0, 8.0],
    ),
}


def checkout(git_dir: str, files, into: Path, prefix: str = "") -> str:
    into.mkdir(parents=True, exist_ok=True)
    for name in files:
        text = subprocess.run(
            ["git", f"--git-dir={git_dir}", "show", f"HEAD:{prefix}{name}"],
            check=True,
            capture_output=True,
        ).stdout
        (into / name).write_bytes(text)
    rev = ["git", f"--git-dir={git_dir}", "rev-parse", "HEAD"]
    return subprocess.run(rev, check=True, capture_output=True, text=True).stdout.strip()


def import_ilo(ilo_git: str, rosinality_git: str, work: Path):
    commits = {
        "ilo": checkout(ilo_git, ILO_FILES, work),
        "rosinality_op": checkout(rosinality_git, OP_FILES, work / "op", "op/"),
    }
    # The tiny generator: ILO's channel table divided by 16 (32 channels at every block).
    model = (work / "model.py").read_text()
    anchor = "        self.input = ConstantInput(self.channels[4])"
    shrink = (
        f"        self.channels = {{k: v // {CHANNEL_DIVISOR} for k, v in self.channels.items()}}"
    )
    assert model.count(anchor) == 1
    (work / "model.py").write_text(model.replace(anchor, shrink + "\n" + anchor))
    # rosinality's ops run their CPU paths; their CUDA extensions are never built.
    torch.utils.cpp_extension.load = lambda *args, **kwargs: None
    sys.modules["lpips"] = types.ModuleType("lpips")  # the LPIPS weight is 0 (README)
    sys.path.insert(0, str(work))
    import ilo_stylegan  # noqa: PLC0415 - after the path and stubs are in place

    return ilo_stylegan, commits


class Recorder:
    """Wraps ILO's mapping proxy, MSE and GEOCROSS to record the variables before every
    forward pass (= after the previous step's update and projections) and the loss terms."""

    def __init__(self, ilo, opt, proxy):
        self.records, self.mse, self.geocross = [], [], []
        mse_loss, geocross = ilo.F.mse_loss, ilo.loss_geocross

        def mapped(z):
            gen_out = opt.gen_outs[-1]
            self.records.append(
                dict(
                    latent=z.detach().clone().numpy(),
                    noise=[n.detach().clone().numpy() for n in opt.noises],
                    gen_out=None if gen_out is None else gen_out.detach().clone().numpy(),
                )
            )
            return proxy(z)

        def recorded_mse(a, b):
            value = mse_loss(a, b)
            self.mse.append(float(value))
            return value

        def recorded_geocross(latent):
            value = geocross(latent)
            self.geocross.append(float(value))
            return value

        opt.mpl = mapped
        ilo.F = types.SimpleNamespace(mse_loss=recorded_mse)
        ilo.loss_geocross = recorded_geocross


def make_config(run: dict) -> dict:
    stages = len(run["steps"])
    config = dict(
        device="cpu",
        geocross=0.01,
        mse=[1.0] * stages,
        pe=[0.0] * stages,
        dead_zone_linear=[0.0] * stages,
        dead_zone_linear_alpha=0.1,
        reference_loss=0.0,
        lpips_method="fill",
        fast_compress=False,
        image_size=[run["image_size"]] * 2,
        mask_black_pixels=True,
        project=True,
        lr=[0.1] * stages,
        lr_same_pace=False,
        start_layer=0,
        end_layer=8,
        restore=False,
        do_project_gen_out=False,
        do_project_noises=False,
        do_project_latent=False,
        max_radius_gen_out=[1000, 1000, 6000],
        max_radius_noises=[1000, 1000, 6000],
        max_radius_latent=[100, 1000, 6000],
        save_gif=False,
        save_on_ref=False,
    )
    config.update({k: v for k, v in run.items() if k in config or k == "steps"})
    return config


def build(ilo, checkpoint: str, fit: dict):
    import model  # noqa: PLC0415 - ILO's model.py, importable once import_ilo ran

    gen = model.Generator(SIZE, 512, N_MLP, channel_multiplier=2)
    gen.load_state_dict(torch.load(checkpoint)["g_ema"], strict=True)
    gen.eval()
    gen.start_layer, gen.end_layer = 0, 8
    proxy = ilo.MappingProxy({k: torch.from_numpy(v) for k, v in fit.items()})
    return gen, proxy


def target(gen, proxy, down, seed: int, black: int) -> torch.Tensor:
    """A low-resolution target in [-1, 1]: the bicubic downscale of a generated face, clamped,
    with `black` pixels set to -1 (ILO's missing pixels)."""
    g = torch.Generator().manual_seed(1000 + seed)
    z = torch.randn(1, gen.n_latent, 512, generator=g)
    noise = [torch.randn(n.shape, generator=g) for n in gen.make_noise(1)]
    with torch.no_grad():
        gen.start_layer, gen.end_layer = 0, 8
        image, _ = gen([proxy(z)], input_is_latent=True, noise=noise)
        lr = down(image).clamp(-1, 1)
    if black:
        flat = torch.randperm(lr.shape[2] * lr.shape[3], generator=g)[:black]
        lr[:, :, flat // lr.shape[3], flat % lr.shape[3]] = -1.0
    return lr


def run_one(ilo, gen, proxy, name: str, run: dict) -> dict:
    config = make_config(run)
    down = ilo.BicubicDownSample(SIZE // run["image_size"], cuda=False)
    ref = target(gen, proxy, down, run["seed"], run["black"])
    torch.manual_seed(run["seed"])
    opt = ilo.LatentOptimizer.__new__(ilo.LatentOptimizer)
    torch.nn.Module.__init__(opt)
    opt.config, opt.gen, opt.percept = config, gen, None
    opt.downsampler_1024_image = down
    opt.project, opt.steps, opt.layer_in, opt.best, opt.current_step = (
        True,
        run["steps"],
        None,
        None,
        0,
    )
    opt.original_imgs = ref
    # init_state's draws, with the generator's own number of style rows (ILO writes 18).
    opt.noises = [n.normal_() for n in gen.make_noise(1)]
    opt.latent_z = torch.randn((1, gen.n_latent, 512), dtype=torch.float, requires_grad=True)
    opt.gen_outs = [None]
    recorder = Recorder(ilo, opt, proxy)
    _, (latent, noises, gen_outs), best = opt.invert()
    out = {
        "config": json.dumps(dict(config, name=name, seed=run["seed"], black=run["black"])),
        "ref": ref.numpy(),
        "latent_per_record": np.stack([r["latent"] for r in recorder.records]),
        "mse_per_step": np.asarray(recorder.mse, np.float64),
        "geocross_per_step": np.asarray(recorder.geocross, np.float64),
        "best": best.numpy(),
        "final_latent": latent.detach().numpy(),
    }
    for i in range(len(noises)):
        out[f"noise_{i}_per_record"] = np.stack([r["noise"][i] for r in recorder.records])
        out[f"final_noise_{i}"] = noises[i].detach().numpy()
    # gen_outs[k + 1] is the tensor that stage k + 1 then optimizes in place: only the last
    # is still block k's output (the others are gen_out_<k + 1>_per_record[0]).
    out["last_layer_out"] = gen_outs[-1].detach().numpy()
    first = 0
    for stage, steps in enumerate(run["steps"]):
        records = recorder.records[first : first + steps + 1]
        if stage:
            out[f"gen_out_{stage}_per_record"] = np.stack([r["gen_out"] for r in records])
        first += steps + 1
    return out


def main(ilo_git, rosinality_git, checkpoint, fit_file, out_dir):
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        ilo, commits = import_ilo(ilo_git, rosinality_git, Path(tmp))
        fit = dict(np.load(fit_file))
        gen, proxy = build(ilo, checkpoint, {k: fit[k] for k in ("mean", "std")})
        for name, run in RUNS.items():
            out = run_one(ilo, gen, proxy, name, run)
            out["commits"] = json.dumps(dict(commits, torch=torch.__version__))
            np.savez_compressed(Path(out_dir) / f"ilo_{name}.npz", **out)
            print(name, "mse", out["mse_per_step"], "geocross", out["geocross_per_step"])


if __name__ == "__main__":
    main(*sys.argv[1:6])
