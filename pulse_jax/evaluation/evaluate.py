"""What PULSE (or another search mode: ILO, the projector) achieves on faces whose
high-resolution truth is known.

`evaluate` takes HR faces (a folder of them, or `synthetic_faces`: faces the generator
draws from seeded latents, which it can therefore make exactly), degrades each with the
search's operator (`SearchOptions.operator`, `degrade/operators.py`), runs PULSE with K samples
per face and measures, per sample, per face and over all:

- success: whether the sample's L2 reached the operator's eps, and when (the success
  rate as a curve over the steps, from `SolveResult.history["L2"]`);
- LR consistency: the PSNR (dB) of the returned face, degraded again, against the
  observation, over the observed pixels (the paper's "downscales correctly");
- distance to the HR truth: PSNR and SSIM (`metrics.py`) and LPIPS (AlexNet, where its
  converted weights are present; docs/lpips.md), against the bicubic upscale of the
  observation as a baseline (what is *not* recovered);
- diversity: the mean pairwise RMS distance between the K samples of a face;
- time: wall seconds of the solve calls (the first includes compilation) and
  latent-steps per second.

`write_report` writes `report.json`, `report.md` (tables) and the plots: `l2_curves.png`
(per face, every sample's L2 over the steps with the eps line), `success_curve.png` and
`grid.png` (per face: the observation, the truth, then the samples). `summary_table`
puts the aggregate rows of several reports into one markdown table (`write_summary`: with
their success curves in one plot).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from pulse_jax import lpips
from pulse_jax.evaluation import metrics, plots
from pulse_jax.files import atomic_write
from pulse_jax.generators.base import Generator
from pulse_jax.images import (
    ImageError,
    comparison_sheet,
    list_images,
    load_image,
    output_names,
    save_image,
    upscale_bicubic,
)
from pulse_jax.options import SearchOptions
from pulse_jax.runs import engine
from pulse_jax.runs.config import ConfigError, SearchConfig, check_search
from pulse_jax.runs.distributed import cpu_model
from pulse_jax.runs.inputs import is_readme
from pulse_jax.solve import solve

REPORT_JSON, REPORT_MD = "report.json", "report.md"
L2_PLOT, SUCCESS_PLOT, GRID = "l2_curves.png", "success_curve.png", "grid.png"
SUMMARY_MD, SUMMARY_PLOT = "summary.md", "success_curves.png"
# Folded into the data seed for the noise of `denoise` observations, apart from the faces.
_NOISE_STREAM = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """An evaluation: which faces, how degraded (`search.operator`), how many samples.

    Attributes:
      search: the search settings, the operator among them.
      output_dir: where the report and plots go.
      input_dir: a folder of HR faces of the generator's resolution (with
        `search.resize`, centre-cropped and resized to it); or
      synthetic: that many faces drawn by the generator (used when `input_dir` is None).
      data_seed: seeds the synthetic faces' latents and the observation noise.
      samples: K samples per face (seeded as in docs/method.md section 8.1).
      lr_size: the observation's side.
      batch_size: faces per solve call; 0: all at once.
      plot_faces: faces shown in the L2-curve and image grids.
      split_groups: solve every sample as a group of one (`engine.groups_apart`): True,
        False, or None to let `engine.groups_apart` decide (CPU, 1024 px and more).
    """

    search: SearchConfig
    output_dir: str
    input_dir: str | None = None
    synthetic: int = 0
    data_seed: int = 1
    samples: int = 4
    lr_size: int = 16
    batch_size: int = 0
    plot_faces: int = 8
    split_groups: bool | None = None


def synthetic_faces(generator: Generator, count: int, data_seed: int) -> np.ndarray:
    """Faces the generator draws itself: face i from `sample_start(fold_in(key(data_seed),
    i))`, the distribution PULSE's starts come from, so each lies in the search space.

    Returns:
      `[count, R, R, 3]` float32 in [0, 1].
    """
    options = SearchOptions()
    keys = [jax.random.fold_in(jax.random.key(data_seed), i) for i in range(count)]
    starts = [generator.arch.sample_start(k, options) for k in keys]
    batch = jax.tree.map(lambda *xs: np.stack(xs), *starts)
    images, _ = generator.render(batch, options)
    return np.clip(np.asarray(images, np.float32), 0.0, 1.0)


def load_faces(
    folder: str | os.PathLike, resolution: int, *, resize: bool = False
) -> tuple[list[str], np.ndarray, list[ImageError]]:
    """Reads a folder of HR faces (every file but hidden ones and a README).

    Returns:
      `(names, faces [B, R, R, 3], errors)`: one `ImageError` per file that is not an image
      or not `resolution` px square (without `resize`: centre-crop, bicubic resize).

    Raises:
      ImageError: the folder is missing or holds no usable face.
    """
    paths = [p for p in list_images(folder) if not is_readme(p)]
    names = output_names(paths)
    kept, faces, errors = [], [], []
    for path in paths:
        try:
            image = load_image(path)
        except ImageError as e:
            errors.append(e)
            continue
        h, w = image.shape[:2]
        if (h, w) != (resolution, resolution):
            if not resize:
                errors.append(
                    ImageError(path, f"is {w}x{h}; HR faces must be {resolution}x{resolution}")
                )
                continue
            side = min(h, w)
            crop = image[(h - side) // 2 :, (w - side) // 2 :][:side, :side]
            image = upscale_bicubic(crop, resolution)
        kept.append(names[path])
        faces.append(image)
    if not faces:
        raise ImageError(folder, "holds no usable HR face")
    return kept, np.stack(faces).astype(np.float32), errors


def evaluate(config: EvalConfig, generator: Generator, *, log=None, lpips_weights=None) -> dict:
    """Degrades the faces, runs the search (PULSE, or `config.search.options.mode`) and
    measures (module docstring).

    Args:
      config: the evaluation.
      generator: from `pulse_jax.load_generator(config.search.generator)`.
      log: a text stream for one line per solve call (None: quiet).
      lpips_weights: the LPIPS metric's weights (`lpips.LPIPSWeights`); None: the
        converted AlexNet ones if present, else LPIPS is left out with a note.

    Returns:
      The report: {"settings", "machine", "aggregate", "faces": [...], "samples": [...],
      "success_curve": [steps]} (JSON-ready), plus the arrays the plots need under "_arrays".

    Raises:
      ConfigError: bad settings, or not exactly one of a folder and synthetic faces.
      ImageError: the folder is missing or holds no usable face.
    """
    search = config.search
    names, truth, errors = _faces(config, generator)
    operator = search.options.degradation(config.lr_size, generator.resolution)
    eps = operator.success_eps(search.options.eps)
    noise_key = jax.random.fold_in(jax.random.key(config.data_seed), _NOISE_STREAM)
    observations = operator.observe(truth, noise_key)  # [B, h, h, 3]
    out, seconds = _solve_faces(config, generator, observations, log)
    reached = np.minimum.accumulate(out["history"], axis=0) <= eps  # [steps, B, K]
    out["first_step"] = np.where(reached.any(axis=0), reached.argmax(axis=0), -1)
    perceptual, lpips_note = _lpips_metric(lpips_weights, generator.resolution)
    measured = _measures(operator, out["hr"], truth, observations, perceptual)
    count, k = truth.shape[0], config.samples
    latent_steps = count * k * search.options.steps
    aggregate = {
        "operator": operator.describe(),
        "factor": operator.factor,
        "lr_size": config.lr_size,
        "faces": count,
        "samples_per_face": k,
        "eps": eps,
        "success_rate": float(out["success"].mean()),
        "faces_with_a_success": int(out["success"].any(axis=1).sum()),
        **{key: _round(np.mean(v), d) for key, (v, d) in measured.items()},
        "lpips": lpips_note,
        "solve_seconds": round(seconds, 2),
        "latent_steps_per_second": round(latent_steps / seconds, 1) if seconds else None,
        "groups_of_one": out.pop("apart"),
    }
    return {
        "settings": _settings(config, generator),
        "machine": {
            "processor": cpu_model(),
            "backend": jax.default_backend(),
            "devices": jax.device_count(),
            "jax": jax.__version__,
        },
        "unusable_inputs": [str(e) for e in errors],
        "aggregate": aggregate,
        "success_curve": [round(float(v), 4) for v in reached.mean(axis=(1, 2))],
        "faces": _face_rows(names, out, measured),
        "samples": _sample_rows(names, out, measured),
        "_arrays": {
            "truth": truth,
            "observations": observations,
            "hr": out["hr"],
            "l2_history": out["history"],
            "names": names,
            "eps": eps,
        },
    }


def not_run_report(config: EvalConfig, generator: Generator, reason: str) -> dict:
    """The report of a search that cannot run these settings (e.g. ILO on an operator other
    than bicubic, `evaluate` with a mode the generator lacks): its settings, the operator
    and the sizes, and `reason`; every measure is missing (n/a in `summary_table`)."""
    operator = config.search.options.degradation(config.lr_size, generator.resolution)
    return {
        "settings": _settings(config, generator),
        "not_run": reason,
        "aggregate": {
            "operator": operator.describe(),
            "factor": operator.factor,
            "lr_size": config.lr_size,
            "faces": config.synthetic or None,
            "samples_per_face": config.samples,
        },
    }


def _settings(config: EvalConfig, generator: Generator) -> dict:
    """A report's settings: the search's (its manifest settings), the inputs and sizes."""
    source = config.input_dir or f"synthetic {config.synthetic} (data_seed {config.data_seed})"
    return dict(
        config.search.settings(generator),
        source=source,
        samples=config.samples,
        lr_size=config.lr_size,
    )


def _faces(config: EvalConfig, generator: Generator):
    """The evaluation's checked settings and its HR faces: (names, [B, R, R, 3], errors)."""
    search = config.search
    check_search(search, generator)
    resolution = generator.resolution
    if config.lr_size < 1 or resolution % config.lr_size:
        raise ConfigError(f"--lr_size {config.lr_size} does not divide {resolution}")
    if config.samples < 1:
        raise ConfigError("--samples (samples per face) must be >= 1")
    if config.input_dir is not None and config.synthetic:
        raise ConfigError("give --input_dir (HR faces) or --synthetic N, not both")
    if config.input_dir is not None:
        return load_faces(config.input_dir, resolution, resize=search.resize)
    if config.synthetic > 0:
        truth = synthetic_faces(generator, config.synthetic, config.data_seed)
        return [f"synthetic_{i}" for i in range(config.synthetic)], truth, []
    raise ConfigError("give --input_dir (HR faces) or --synthetic N")


def _solve_faces(config: EvalConfig, generator: Generator, observations, log):
    """PULSE on the observations, `config.batch_size` faces per call: ({"hr" [B, K, R, R, 3],
    "l2", "success", "best_step" [B, K], "history" (of L2) [steps, B, K], "apart": whether
    each sample ran as a group of one}, solve seconds)."""
    count = observations.shape[0]
    search = config.search
    apart = config.split_groups
    if apart is None:
        apart = engine.groups_apart(generator.resolution, jax.devices())
    if apart and log is not None:
        log.write("each sample runs as a group of one (docs/batch_curve_cpu.md)\n")
    step = config.batch_size or count
    parts, seconds = [], 0.0
    for start in range(0, count, step):
        stop = min(start + step, count)
        t0 = time.perf_counter()
        ids = np.arange(start, stop)
        parts.append(
            solve(
                observations[start:stop],
                generator,
                search.options,
                num_samples=config.samples,
                seed=search.seed,
                image_ids=ids,
                batch_per_device=1 if apart else None,
            )
        )
        took = time.perf_counter() - t0
        seconds += took
        if log is not None:
            log.write(f"faces {start}..{stop - 1}: {took:.1f} s\n")
            log.flush()
    out = {
        key: np.concatenate([getattr(p, key) for p in parts])
        for key in ("hr", "l2", "success", "best_step")
    }
    out["history"] = np.concatenate([p.history["L2"] for p in parts], axis=1)
    out["apart"] = bool(apart)
    return out, seconds


def _lpips_metric(weights, resolution: int):
    """(the LPIPS weights to measure with or None, a note for the report saying which or why
    not)."""
    if weights is None:
        try:
            weights = lpips.load_lpips(lpips.METRIC_BACKBONE)
        except FileNotFoundError:
            return (
                None,
                "not measured: no LPIPS weights (python -m pulse_jax.checkpoints.convert lpips)",
            )
    if resolution < lpips.min_size(weights.backbone):
        return None, f"not measured: {resolution} px is below LPIPS {weights.backbone}'s minimum"
    return weights, f"LPIPS v0.1 {weights.backbone} (HR result vs truth; lower is closer)"


def _measures(
    operator, hr, truth, observations, perceptual=None
) -> dict[str, tuple[np.ndarray, int]]:
    """The report's measures, {name: (values per face [B] or per sample [B, K], digits)}:
    the LR consistency, the HR PSNR and SSIM (and LPIPS with `perceptual`, its weights),
    the bicubic baseline and the diversity."""
    redegraded = np.asarray(jax.jit(operator)(hr.reshape((-1,) + hr.shape[2:])))
    redegraded = redegraded.reshape(hr.shape[:2] + redegraded.shape[1:])  # [B, K, h, h, 3]
    resolution = truth.shape[1]
    baseline = np.stack([upscale_bicubic(o, resolution) for o in observations])
    diversity = [metrics.mean_pairwise_distance(faces) for faces in hr]
    return {
        "lr_psnr_db": (metrics.psnr(redegraded, observations[:, None], operator.mask), 2),
        "hr_psnr_db": (metrics.psnr(hr, truth[:, None]), 2),
        "hr_ssim": (metrics.ssim(hr, truth[:, None]), 4),
        "bicubic_hr_psnr_db": (metrics.psnr(baseline, truth), 2),
        "diversity_rms": (np.asarray(diversity), 4),
    } | _lpips_measures(perceptual, hr, truth, baseline)


def _lpips_measures(weights, hr, truth, baseline) -> dict[str, tuple[np.ndarray, int]]:
    if weights is None:
        return {}
    samples = lpips.measure(weights, hr, np.broadcast_to(truth[:, None], hr.shape))
    return {
        "hr_lpips": (samples, 4),
        "bicubic_hr_lpips": (lpips.measure(weights, baseline, truth), 4),
    }


def _sample_rows(names: list[str], out: dict, measured: dict) -> list[dict]:
    """The report's row per sample."""
    per_sample = {key: v for key, v in measured.items() if np.ndim(v[0]) == 2}
    return [
        {
            "face": name,
            "sample": s,
            "success": bool(out["success"][b, s]),
            "l2": float(out["l2"][b, s]),
            "best_step": int(out["best_step"][b, s]),
            "first_step_at_eps": int(first) if (first := out["first_step"][b, s]) >= 0 else None,
            **{key: _round(v[b, s], d) for key, (v, d) in per_sample.items()},
        }
        for b, name in enumerate(names)
        for s in range(out["l2"].shape[1])
    ]


def _face_rows(names: list[str], out: dict, measured: dict) -> list[dict]:
    """The report's row per face (its samples' means)."""
    return [
        {
            "face": name,
            "successes": int(out["success"][b].sum()),
            "samples": out["l2"].shape[1],
            "best_l2": float(out["l2"][b].min()),
            **{key: _round(np.mean(v[b]), d) for key, (v, d) in measured.items()},
        }
        for b, name in enumerate(names)
    ]


def _round(value, digits: int = 2) -> float:
    return round(float(value), digits)


# -- writing ----------------------------------------------------------------------------------


def write_report(report: dict, output_dir: str | os.PathLike, *, plot_faces: int = 8) -> list[str]:
    """Writes `report.json`, `report.md` and (with matplotlib) the plots into `output_dir`.

    Returns:
      The file names written.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    public = {k: v for k, v in report.items() if k != "_arrays"}
    text = json.dumps(public, indent=1, ensure_ascii=False) + "\n"
    atomic_write(out / REPORT_JSON, lambda f: f.write(text.encode("utf-8")))
    if "not_run" in public:  # a method that cannot run these settings (`not_run_report`)
        return [REPORT_JSON]
    arrays = report["_arrays"]
    markdown = markdown_report(public)
    atomic_write(out / REPORT_MD, lambda f: f.write(markdown.encode("utf-8")))
    written = [REPORT_JSON, REPORT_MD]
    shown = min(plot_faces, len(arrays["names"]))
    save_image(out / GRID, image_grid(report, shown))
    written.append(GRID)
    if plots.available():
        label = report["aggregate"]["operator"]
        plots.write_l2_grid(
            out / L2_PLOT, arrays["l2_history"][:, :shown], arrays["eps"], arrays["names"][:shown]
        )
        plots.write_success_curve(
            out / SUCCESS_PLOT,
            {label: np.asarray(report["success_curve"])},
            title=f"{report['settings']['source']}, x{report['aggregate']['factor']}",
        )
        written += [L2_PLOT, SUCCESS_PLOT]
    return written


def image_grid(report: dict, count: int) -> np.ndarray:
    """One row per face: the observation, the HR truth, then every sample (with ✓/✗)."""
    return np.concatenate([_face_sheet(report, b) for b in range(count)], axis=0)


def side_by_side_grid(reports: Sequence[dict], count: int) -> np.ndarray:
    """Per face, one row per report that ran (`evaluate`'s, on the same faces): the method,
    the observation, the truth, then its samples."""
    ran = [r for r in reports if "_arrays" in r]
    rows = [_face_sheet(r, b, f"{method_of(r)}: ") for b in range(count) for r in ran]
    return np.concatenate(rows, axis=0)


def _face_sheet(report: dict, b: int, prefix: str = "") -> np.ndarray:
    arrays = report["_arrays"]
    face = report["faces"][b]
    samples = [r for r in report["samples"] if r["face"] == face["face"]]
    labels = [f"{prefix}{face['face']} observed", "truth"] + [
        f"{'✓' if r['success'] else '✗'} {r['hr_psnr_db']:.1f} dB"
        + (f", LPIPS {r['hr_lpips']:.3f}" if "hr_lpips" in r else "")
        for r in samples
    ]
    return comparison_sheet(
        arrays["observations"][b], arrays["truth"][b], arrays["hr"][b], labels=labels
    )


AGGREGATE_COLUMNS = (
    ("operator", "operator"),
    ("factor", "x"),
    ("faces", "faces"),
    ("samples_per_face", "K"),
    ("success_rate", "success"),
    ("faces_with_a_success", "faces with a success"),
    ("lr_psnr_db", "LR PSNR dB"),
    ("hr_psnr_db", "HR PSNR dB"),
    ("hr_ssim", "HR SSIM"),
    ("bicubic_hr_psnr_db", "bicubic HR PSNR dB"),
    ("hr_lpips", "HR LPIPS"),
    ("bicubic_hr_lpips", "bicubic HR LPIPS"),
    ("diversity_rms", "diversity (RMS)"),
    ("solve_seconds", "solve s"),
    ("latent_steps_per_second", "latent-steps/s"),
)


def _cell(key: str, value) -> str:
    if value is None:  # not measured (LPIPS, old reports) or not run (`not_run_report`)
        return "n/a"
    return f"{100 * value:.0f}%" if key == "success_rate" else str(value)


def method_of(report: dict) -> str:
    """The search a report measured: its settings' mode (PULSE's reports, old ones
    included, record none)."""
    return report["settings"].get("mode") or "pulse"


def summary_table(reports: Sequence[dict], *, source: bool = True) -> str:
    """The aggregate rows of several reports as one markdown table (a method that did not
    run: n/a in every measured column)."""
    head = (["inputs"] if source else []) + ["method"] + [t for _, t in AGGREGATE_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for report in reports:
        agg = report["aggregate"]
        cells = ([report["settings"]["source"]] if source else []) + [method_of(report)]
        cells += [_cell(key, agg.get(key)) for key, _ in AGGREGATE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(reports: Sequence[dict], output_dir: str | os.PathLike) -> list[str]:
    """Writes `summary.md` (`summary_table`) and, with matplotlib, `success_curves.png`
    (every report's success-rate curve, labelled by inputs, operator and factor).

    Returns:
      The file names written.
    """
    out = Path(output_dir)
    table = summary_table(reports)
    atomic_write(out / SUMMARY_MD, lambda f: f.write(table.encode("utf-8")))
    if not plots.available():
        return [SUMMARY_MD]
    curves = {}
    for report in reports:
        agg = report["aggregate"]
        method = method_of(report)
        label = f"{report['settings']['source']}: {method} {agg['operator']} x{agg['factor']}"
        if "success_curve" in report:
            curves[label] = np.asarray(report["success_curve"])
    plots.write_success_curve(out / SUMMARY_PLOT, curves)
    return [SUMMARY_MD, SUMMARY_PLOT]


_TITLES = {"pulse": "PULSE", "ilo": "ILO", "projector": "Projector"}


def markdown_report(report: dict) -> str:
    """The report as markdown: the aggregate row, then one row per face."""
    agg = report["aggregate"]
    lines = [
        f"# {_TITLES[method_of(report)]} evaluation: {agg['operator']}, x{agg['factor']} "
        f"({agg['lr_size']} px inputs)",
        "",
        f"Inputs: {report['settings']['source']}; generator {report['settings']['generator']}; "
        f"{agg['samples_per_face']} samples per face, {report['settings']['steps']} steps, "
        f"eps {agg['eps']:.3g}; machine: {report['machine']['processor']} "
        f"({report['machine']['backend']}).",
        "",
        f"LPIPS: {agg.get('lpips') or 'not measured'}.",
        "",
        summary_table([report], source=False),
        "| face | successes | best L2 | LR PSNR dB | HR PSNR dB | HR SSIM | bicubic HR PSNR dB "
        "| HR LPIPS | bicubic HR LPIPS | diversity |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for face in report["faces"]:
        lines.append(
            f"| {face['face']} | {face['successes']}/{face['samples']} | {face['best_l2']:.2e} "
            f"| {face['lr_psnr_db']} | {face['hr_psnr_db']} | {face['hr_ssim']} "
            f"| {face['bicubic_hr_psnr_db']} | {face.get('hr_lpips', 'n/a')} "
            f"| {face.get('bicubic_hr_lpips', 'n/a')} | {face['diversity_rms']} |"
        )
    return "\n".join(lines) + "\n"


def read_report(path: str | os.PathLike) -> dict:
    """A `report.json` written by `write_report`.

    Raises:
      ConfigError: the file is not such a report.
    """
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not a readable report ({e})") from None
    if not isinstance(report, dict) or not {"aggregate", "settings"} <= report.keys():
        raise ConfigError(f"{path}: not an evaluation report")
    return report
