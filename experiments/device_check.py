"""The device check's measurements (`experiments/device_check.sh` runs this on a GPU host).

For each precision ("highest", then "default") and generator, the benchmark's cases
(`benchmark_lib.measure`: compile time, steady-state s/step, latent-steps/s, memory) for each
samples-per-call; then the parity of the faster precision against "highest" on the same chip:
one `solve` per precision from the same starts, max-abs of the HR images, the latents and the
per-step L2. Cases run in the order given until `--budget_s` would be passed (each case is
assumed to take as long as the slowest so far); what was left out is listed. Writes
`<out_dir>/<name>.json` and `<out_dir>/<name>.md`.

`--dry_run` runs the same code on whatever device is here (the CPU in tests), with the sizes
the flags give.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import benchmark_lib as benchmark
import jax
import numpy as np
from absl import app, flags

import pulse_jax

_GENERATORS = flags.DEFINE_list(
    "generators", ["stylegan1024", "stylegan2_1024"], "Benchmark generator names."
)
_SAMPLES = flags.DEFINE_list("samples", ["1", "64", "4", "16"], "Samples per call, in order.")
_PRECISIONS = flags.DEFINE_list("precisions", ["highest", "default"], "Precisions to compare.")
_STEPS = flags.DEFINE_integer("steps", 3, "Optimizer steps per timed call.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed calls per step count (fastest kept).")
_PARITY_STEPS = flags.DEFINE_integer("parity_steps", 20, "Steps of the parity solve.")
_BUDGET = flags.DEFINE_float("budget_s", 330.0, "Seconds of measuring before cases are left out.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Run on any device (the CPU in tests).")
_OUT_DIR = flags.DEFINE_string("out_dir", "docs", "Where the JSON and the table go.")
_NAME = flags.DEFINE_string("name", "benchmark_gpu", "File stem.")
_SETTINGS = (_GENERATORS, _SAMPLES, _PRECISIONS, _STEPS, _REPEATS, _PARITY_STEPS, _BUDGET)


def parity(name: str, faster: str, *, steps: int, samples: int = 2) -> dict:
    """`faster` against "highest" on this device: the same starts, `steps` steps."""
    out = {}
    for precision in ("highest", faster):
        generator = benchmark.make_generator(name, precision=precision)
        size = benchmark.lr_size(generator.resolution)
        lr = np.random.default_rng(0).uniform(size=(1, size, size, 3)).astype(np.float32)
        out[precision] = pulse_jax.solve(lr, generator, num_samples=samples, steps=steps, seed=0)
    a, b = out["highest"], out[faster]
    return {
        "generator": name,
        "precision": faster,
        "steps": steps,
        "hr_max_abs": float(np.max(np.abs(a.hr - b.hr))),
        "latent_max_abs": float(np.max(np.abs(a.latent - b.latent))),
        "l2_highest": [float(v) for v in np.ravel(a.l2)],
        "l2_other": [float(v) for v in np.ravel(b.l2)],
        "history_l2_max_abs": float(np.max(np.abs(a.history["L2"] - b.history["L2"]))),
    }


def measure_all(log) -> dict:
    """Every (precision, generator, samples) case within the budget, then the parity."""
    start, slowest = time.perf_counter(), 0.0
    cases, skipped = [], []
    peak = benchmark.matmul_peak((256, 512) if _DRY_RUN.value else (2048, 4096))
    for precision in _PRECISIONS.value:
        for name in _GENERATORS.value:
            generator = benchmark.make_generator(name, precision=precision)
            for n in (int(s) for s in _SAMPLES.value):
                if time.perf_counter() - start + slowest > _BUDGET.value:
                    skipped.append(f"{name} {precision} {n}")
                    continue
                began = time.perf_counter()
                case = benchmark.measure(
                    generator, name, n, steps=_STEPS.value, repeats=_REPEATS.value
                )
                case["precision"] = precision
                case["peak_flops"] = peak["flops"]
                case["utilization"] = case["achieved_flops"] / peak["flops"]
                slowest = max(slowest, time.perf_counter() - began)
                log(benchmark.format_row(case) + f" {precision}")
                cases.append(case)
                jax.clear_caches()
    checks = [
        parity(name, faster_precision(cases, name), steps=_PARITY_STEPS.value)
        for name in _GENERATORS.value
        if len(_PRECISIONS.value) > 1
    ]
    return {
        "machine": benchmark.machine_info(),
        "config": {h.name: h.value for h in _SETTINGS},
        "matmul_peak": peak,
        "cases": cases,
        "skipped": skipped,
        "parity": checks,
        "seconds": time.perf_counter() - start,
    }


def faster_precision(cases: list[dict], name: str) -> str:
    """The precision other than "highest" with the most latent-steps/s summed over the
    sample counts measured at both (the first other one when none was)."""
    others = [p for p in _PRECISIONS.value if p != "highest"]
    rate = {p: {} for p in _PRECISIONS.value}
    for c in cases:
        if c["generator"] == name:
            rate[c["precision"]][c["samples"]] = c["latent_steps_per_s"]
    shared = set.intersection(*(set(r) for r in rate.values())) if rate else set()
    if not shared:
        return others[0]
    return max(others, key=lambda p: sum(rate[p][n] for n in shared))


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"Device: {m['device_kind']} ({m['platform']}, {m['device_count']} device(s)); host "
        f"{m['cpu']} ({m['cpu_cores']} cores), JAX {m['jax']}, {m['date']}. Random weights of "
        "the FFHQ layouts; a case per precision, generator and samples per call; dense float32 "
        f"matmul peak (HIGHEST) {results['matmul_peak']['flops'] / 1e12:.1f} TFLOP/s.",
        "",
        "| generator | samples | compile s | s/step | latent-steps/s | GFLOP/step | GFLOP/s "
        "| peak GFLOP/s | utilization | vs best peak | XLA memory MiB | peak RSS MiB | precision |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    lines += [benchmark.format_row(c) + f" {c['precision']} |" for c in results["cases"]]
    if results["skipped"]:
        lines += ["", "Left out (time budget): " + ", ".join(results["skipped"]) + "."]
    lines += [
        "",
        'Parity against "highest" on this device (same starts, 2 samples):',
        "",
        "| generator | precision | steps | HR max-abs | latent max-abs | per-step L2 max-abs |",
        "|---|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {p['generator']} | {p['precision']} | {p['steps']} | {p['hr_max_abs']:.3g} "
        f"| {p['latent_max_abs']:.3g} | {p['history_l2_max_abs']:.3g} |"
        for p in results["parity"]
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    del argv
    platform = jax.devices()[0].platform
    if platform != "gpu" and not _DRY_RUN.value:
        print(f"error: no GPU here (JAX sees {platform}); use --dry_run", file=sys.stderr)
        return 2
    results = measure_all(lambda line: print(line, file=sys.stderr, flush=True))
    out = Path(_OUT_DIR.value)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{_NAME.value}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / f"{_NAME.value}.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    app.run(main)
