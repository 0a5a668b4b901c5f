"""The precision measurement (experiments/precision.py): the golden runs and the evaluation
at each precision, and docs/precision.md's tables."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import benchmark_lib
import jax
import jax.numpy as jnp
import numpy as np

import pulse_jax
from pulse_jax.checkpoints import torch_format
from pulse_jax.checkpoints.convert import write_stylegan2_weights, write_stylegan_weights
from pulse_jax.checkpoints.stylegan2_formats import read_stylegan2
from pulse_jax.degrade.downscale import bicubic_downscale
from pulse_jax.evaluation import evaluate as evaluation
from pulse_jax.evaluation import metrics
from pulse_jax.files import atomic_write
from pulse_jax.options import SearchOptions
from pulse_jax.runs.config import SearchConfig

# The golden families: (runs, noise layers, the PULSE layers the tiny generator lacks).
V1_LAYERS, SG2_LAYERS = 12, 9
OPTION_KEYS = (
    "steps loss_str eps noise_type num_trainable_noise_layers tile_latent "
    "bad_noise_layers opt_name learning_rate lr_schedule"
).split()


def write_tiny_stylegan(golden: Path, out: Path, source: str = "golden tiny synthesis") -> Path:
    """The golden tiny StyleGAN (128 px, 12 style layers) with the golden mapping network and
    PULSE's real gaussian fit, as a weights file at `out` (tests/conftest.py's too)."""
    fit = np.load(golden / "gaussian_fit.npz")
    write_stylegan_weights(
        out,
        torch_format.load_state_dict(golden / "stylegan_tiny_synthesis.pt"),
        torch_format.load_state_dict(golden / "stylegan_mapping.pt"),
        gaussian_fit={"mean": fit["mean"], "std": fit["std"]},
        provenance={"source": source},
        show_progress=False,
    )
    return out


def tiny_generators(golden: Path, folder: Path) -> dict[str, Path]:
    """The golden tiny generators as weights files: {"stylegan": path, "stylegan2": path}."""
    fit2 = np.load(golden / "stylegan2" / "sg2_gaussian_fit.npz")
    v2 = folder / "tiny_stylegan2.npz"
    write_stylegan2_weights(
        v2,
        read_stylegan2(golden / "stylegan2" / "sg2_rosinality_tiny.pt"),
        gaussian_fit={"mean": fit2["mean"], "std": fit2["std"]},
        show_progress=False,
    )
    return {"stylegan": write_tiny_stylegan(golden, folder / "tiny_stylegan.npz"), "stylegan2": v2}


def golden_problem(path: Path, layers: int):
    """A golden run's (reference L2 [steps, B], LR target, init, solve options)."""
    run = dict(np.load(path))
    config = json.loads(str(run["config"]))
    options = {k: config[k] for k in OPTION_KEYS}
    # PULSE ignores a bad noise layer the tiny generator lacks; solve refuses it.
    bad = [v for v in options["bad_noise_layers"].split(".") if v.strip()]
    options["bad_noise_layers"] = ".".join(v for v in bad if int(v) < layers)
    init = {
        "latent": run["init_latent"][:, None],
        "noise": [np.moveaxis(run[f"init_noise_{i}"], -3, -1)[:, None] for i in range(layers)],
    }
    target = np.moveaxis(run["ref_im"], -3, -1)
    return run["l2_per_sample_per_step"], target, init, options


def golden_rows(precisions: list[str], golden: Path, folder: Path) -> list[dict]:
    """One row per (family, run, precision): the L2 trajectory against the reference's."""
    paths = tiny_generators(golden, folder)
    families = [
        ("stylegan", sorted(golden.glob("run_*.npz")), V1_LAYERS),
        ("stylegan2", sorted((golden / "stylegan2").glob("sg2_run_*.npz")), SG2_LAYERS),
    ]
    rows = []
    for family, runs, layers in families:
        generators = {p: pulse_jax.load_generator(paths[family], precision=p) for p in precisions}
        for path in runs:
            reference, target, init, options = golden_problem(path, layers)
            ours = {}
            for p in precisions:
                result = pulse_jax.solve(target, generators[p], init=init, **options)
                ours[p] = np.asarray(result.history["L2"][:, :, 0], np.float64)  # [steps, B]
            for p in precisions:
                rows.append(trajectory_row(family, path.stem, p, ours, reference, options))
            print(f"golden {family} {path.stem}: done", file=sys.stderr, flush=True)
    return rows


def trajectory_row(family, run, p, ours, reference, options) -> dict:
    """How precision `p`'s L2 trajectory [steps, B] departs from the reference's and from
    float32's (ours[precisions[0]])."""
    l2, base = ours[p], next(iter(ours.values()))
    per_step = (np.abs(l2 - reference) / reference).max(axis=1)  # worst sample per step
    return {
        "family": family,
        "run": run,
        "precision": p,
        "steps": int(l2.shape[0]),
        "samples": int(l2.shape[1]),
        "max_rel_dev_vs_reference": float(per_step.max()),
        "last_rel_dev_vs_reference": float(per_step[-1]),
        "start_rel_dev_vs_reference": float(per_step[0]),
        "max_rel_dev_vs_float32": float((np.abs(l2 - base) / base).max()),
        "final_l2_ratio_vs_reference": float(np.mean(l2[-1] / reference[-1])),
        "successes": int((l2.min(axis=0) <= options["eps"]).sum()),
        "reference_successes": int((reference.min(axis=0) <= options["eps"]).sum()),
        "rel_dev_per_step": [round(float(v), 6) for v in per_step],
    }


def evaluation_rows(
    precisions: list[str],
    lr_sizes: list[int],
    out: Path,
    *,
    synthetic: int,
    seeds: int,
    rerun: bool,
) -> list[dict]:
    """One row per (precision, observation size): the evaluation's aggregate (`synthetic`
    faces, `seeds` samples each), and how far that precision's synthetic truth faces lie
    from float32's. An existing report with the same settings is read unless `rerun`."""
    search = SearchConfig()
    generators = {p: pulse_jax.load_generator(search.generator, precision=p) for p in precisions}
    faces = {
        p: evaluation.synthetic_faces(g, synthetic, evaluation.EvalConfig.data_seed)
        for p, g in generators.items()
    }
    base = faces[precisions[0]]
    reports = {}
    for p in precisions:
        for lr_size in lr_sizes:
            config = evaluation.EvalConfig(
                search=search,
                output_dir=str(out / f"eval_{p}_x{64 // lr_size}"),
                synthetic=synthetic,
                samples=seeds,
                lr_size=lr_size,
            )
            reports[p, lr_size] = evaluation_report(generators[p], config, rerun)
    rows = []
    for (p, lr_size), report in reports.items():
        paired = _paired(report["samples"], reports[precisions[0], lr_size]["samples"])
        rows.append(
            {
                "precision": p,
                **report["aggregate"],
                **paired,
                "truth_max_abs_vs_float32": float(np.abs(faces[p] - base).max()),
                "truth_psnr_vs_float32_db": _psnr(faces[p], base),
            }
        )
    return rows


def _paired(samples: list[dict], float32: list[dict]) -> dict:
    """Sample by sample against float32's run: how many samples' outcome (success) agree,
    and the mean and standard error of the HR PSNR difference."""
    pairs = list(zip(samples, float32, strict=True))
    same = [a["success"] == b["success"] for a, b in pairs]
    diff = np.array([a["hr_psnr_db"] - b["hr_psnr_db"] for a, b in pairs])
    return {
        "success_agrees_with_float32": float(np.mean(same)),
        "hr_psnr_diff_vs_float32_db": float(diff.mean()),
        "hr_psnr_diff_stderr_db": float(diff.std(ddof=1) / np.sqrt(diff.size)),
    }


def evaluation_report(generator, config: evaluation.EvalConfig, rerun: bool) -> dict:
    """The evaluation's report, read from its report.json when that report has these
    settings (and not `rerun`), else run and written to `config.output_dir`."""
    report_path = Path(config.output_dir) / "report.json"
    if report_path.is_file() and not rerun:
        report = json.loads(report_path.read_text())
        settings = report["settings"]
        same = (settings["samples"], settings["lr_size"]) == (config.samples, config.lr_size)
        if same and settings["source"].startswith(f"synthetic {config.synthetic} "):
            print(f"{config.output_dir}: read", file=sys.stderr, flush=True)
            return report
    report = evaluation.evaluate(config, generator, log=sys.stderr)
    evaluation.write_report(report, config.output_dir)
    return report


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return round(float(np.mean(metrics.psnr(a, b))), 2)  # capped: identical images


def render_rows(precisions: list[str], names: list[str], lr_size: int = 32) -> list[dict]:
    """One row per (benchmark generator, precision): one sample's image, PULSE's L2 against
    the observation of another sample, and that L2's gradient, each against float32's."""
    rows = []
    for name in names:
        options = SearchOptions()
        figures = {}
        for p in precisions:
            generator = benchmark_lib.make_generator(name, precision=p)
            figures[p] = _render_and_gradient(generator, options, lr_size)
        image, l2, grad = figures[precisions[0]]
        for p in precisions:
            image_p, l2_p, grad_p = figures[p]
            rows.append(
                {
                    "generator": name,
                    "precision": p,
                    "image_max_abs_vs_float32": float(np.abs(image_p - image).max()),
                    "image_psnr_vs_float32_db": _psnr(image_p, image),
                    "l2": l2_p,
                    "l2_rel_dev_vs_float32": abs(l2_p - l2) / l2,
                    "grad_cosine_vs_float32": float(
                        grad_p @ grad / np.linalg.norm(grad_p) / np.linalg.norm(grad)
                    ),
                    "grad_rel_error_vs_float32": float(
                        np.linalg.norm(grad_p - grad) / np.linalg.norm(grad)
                    ),
                }
            )
            print(f"render {name} {p}: done", file=sys.stderr, flush=True)
    return rows


def _render_and_gradient(generator, options, lr_size):
    """(image [R, R, 3], L2 against the observation of sample 1, gradient of the L2 with
    respect to every search variable, flattened) for sample 0 of seed 0."""
    arch, params = generator.arch, generator.params
    starts = [arch.sample_start(jax.random.key(i), options) for i in (0, 1)]
    variables, other = (jax.tree.map(lambda x: x[None], s) for s in starts)
    factor = arch.resolution // lr_size
    target = bicubic_downscale(generator.render(other, options)[0], factor)

    @jax.jit
    def value_and_grad(v):
        def loss(v):
            images = arch.render(params, v, options)[0]
            return jnp.mean((bicubic_downscale(images, factor) - target) ** 2), images

        return jax.value_and_grad(loss, has_aux=True)(v)

    (l2, images), grad = value_and_grad(variables)
    flat = np.concatenate([np.ravel(g) for g in jax.tree.leaves(grad)]).astype(np.float64)
    return np.asarray(images[0], np.float64), float(l2), flat


def render_table(rows: list[dict]) -> list[str]:
    """Markdown: the 1024 px renders and gradients against float32's."""
    head = (
        "generator | precision | image vs float32: max-abs, PSNR dB | L2 vs float32 | "
        "gradient vs float32: cosine, relative error"
    )
    lines = ["| " + head + " |", "|" + "---|" * (head.count("|") + 1)]
    for r in rows:
        psnr = "identical" if r["image_max_abs_vs_float32"] == 0 else r["image_psnr_vs_float32_db"]
        cells = [
            r["generator"],
            r["precision"],
            f"{r['image_max_abs_vs_float32']:.1e}, {psnr}",
            f"{100 * r['l2_rel_dev_vs_float32']:.3f}%",
            f"{r['grad_cosine_vs_float32']:.6f}, {r['grad_rel_error_vs_float32']:.1e}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def golden_table(rows: list[dict], precisions: list[str]) -> list[str]:
    """Markdown: per golden run, each precision's relative L2 deviation from the reference
    (the worst sample: at the start, at any step, at the last step)."""
    head = ["family", "run", "steps x samples"]
    head += [f"{p}: start / max / last" for p in precisions]
    head += ["successes: reference / " + " / ".join(precisions)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    keyed = {(r["family"], r["run"], r["precision"]): r for r in rows}
    for family, run in dict.fromkeys((r["family"], r["run"]) for r in rows):
        got = [keyed[family, run, p] for p in precisions]
        cells = [family, run, f"{got[0]['steps']} x {got[0]['samples']}"]
        for r in got:
            devs = ("start", "max", "last")
            cells.append(" / ".join(f"{100 * r[f'{d}_rel_dev_vs_reference']:.2f}%" for d in devs))
        successes = [got[0]["reference_successes"]] + [r["successes"] for r in got]
        cells.append(" / ".join(str(v) for v in successes))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def evaluation_table(rows: list[dict]) -> list[str]:
    """Markdown: the evaluation's aggregate per precision and observation size."""
    head = (
        "precision | x | success | faces with a success | LR PSNR dB | HR PSNR dB | HR SSIM | "
        "samples whose outcome agrees with float32's | HR PSNR - float32's, dB (paired, "
        "+- s.e.) | truth faces vs float32's: max-abs, PSNR dB | solve s (CPU, emulated)"
    )
    lines = ["| " + head + " |", "|" + "---|" * (head.count("|") + 1)]
    for r in sorted(rows, key=lambda r: (r["factor"], 0)):
        psnr = "identical" if r["truth_max_abs_vs_float32"] == 0 else r["truth_psnr_vs_float32_db"]
        cells = [
            r["precision"],
            r["factor"],
            f"{100 * r['success_rate']:.0f}%",
            r["faces_with_a_success"],
            f"{r['lr_psnr_db']:.2f}",
            f"{r['hr_psnr_db']:.2f}",
            f"{r['hr_ssim']:.4f}",
            f"{100 * r['success_agrees_with_float32']:.0f}%",
            f"{r['hr_psnr_diff_vs_float32_db']:+.3f} +- {r['hr_psnr_diff_stderr_db']:.3f}",
            f"{r['truth_max_abs_vs_float32']:.1e}, {psnr}",
            r["solve_seconds"],
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines


def write_docs(figures: dict, stem: Path) -> None:
    """<stem>.json (every figure) and <stem>.md (the tables)."""
    md = [
        "# Precision: what TF32 and bfloat16 do to PULSE",
        "",
        f"Made by `{figures['command']}` on {figures['machine']} (jax {figures['jax']}, "
        f"{figures['date']}), the CPU emulating each precision (`pulse_jax.precision`): "
        "tf32 and bf16 round every conv and matmul operand of the generator, forward and "
        "backward, to a 10-bit or 7-bit mantissa and sum the products in float32; bf16_3x "
        "sums three such bfloat16 products of the operands' high and low parts (a TPU's "
        '"high"). The bicubic downscale stays float32 (HIGHEST) at every precision. '
        f"The whole run took {figures['seconds']:.0f} s (an evaluation whose report existed "
        "with the same settings is read, not run again); the default precision each platform "
        'takes from these figures, and why: "Precision on GPUs and TPUs" in docs/parity.md.',
    ]
    if figures["goldens"]:
        md += [
            "",
            "## Golden runs",
            "",
            "The reference's float32 searches replayed from their own starts (as "
            "tests/test_solve.py and tests/test_stylegan2.py do): the largest relative "
            "deviation of any sample's L2 from the reference's at the start (the rendering "
            "alone), at any step, and at the last step; and how many samples reached `eps`. "
            "The JSON has every step, and the deviation from this implementation's float32 "
            "run.",
            "",
            *golden_table(figures["goldens"], figures["precisions"]),
        ]
    if figures["evaluation"]:
        md += [
            "",
            "## Evaluation",
            "",
            f"`experiments/evaluate.py --synthetic {figures['synthetic']} --samples "
            f"{figures['seeds']}` on the default DCGAN (64 px faces), x = 64 / observation "
            "side; each precision draws its own truth faces (their distance from float32's "
            "is given). Solve seconds are the CPU's, emulation included, under contention: "
            "they say nothing of an accelerator's speed.",
            "",
            *evaluation_table(figures["evaluation"]),
        ]
    if figures["renders"]:
        md += [
            "",
            "## 1024 px: one render and one gradient",
            "",
            "The benchmark's 1024 px generators (random weights of the FFHQ layouts; no FFHQ "
            "weights on this machine): one sample's image, its L2 against the 32 px "
            "observation of another sample, and that L2's gradient with respect to every "
            "search variable, each against float32's. How far the rounding carries through "
            "18 layers of 512 channels, where the tiny goldens have few.",
            "",
            *render_table(figures["renders"]),
        ]
    atomic_write(
        stem.with_suffix(".json"), lambda f: f.write(json.dumps(figures, indent=1).encode())
    )
    atomic_write(stem.with_suffix(".md"), lambda f: f.write(("\n".join(md) + "\n").encode()))
