"""What reporting progress from inside the compiled search costs per step.

For each generator, `solve` runs the same search without reports (`progress_every=0`, no
host callback in the program) and with a report after every step (`progress=fn,
progress_every=1`), the two alternated `--repeats` times after both are compiled; the
cost per step is the difference of the median call times divided by the steps. Writes a
Markdown table to `--out` (and prints it).

    python experiments/progress_cost.py --generators dcgan64,stylegan256 --steps 40
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import benchmark_lib as benchmark
import numpy as np
from absl import app, flags

import pulse_jax
from pulse_jax.runs.distributed import cpu_model

_GENERATORS = flags.DEFINE_list("generators", ["dcgan64", "stylegan256"], "Benchmark names.")
_STEPS = flags.DEFINE_integer("steps", 40, "Steps per solve call.")
_SAMPLES = flags.DEFINE_integer("samples", 1, "Samples per call.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Calls of each kind, alternated.")
_OUT = flags.DEFINE_string("out", "results/progress_cost.md", "Where the table goes.")


def measure(name: str, steps: int, samples: int, repeats: int) -> dict:
    """Median call seconds without and with a report every step, and the difference per step."""
    generator = benchmark.make_generator(name)
    size = benchmark.lr_size(generator.resolution)
    lr = np.random.default_rng(0).uniform(size=(1, size, size, 3)).astype(np.float32)
    reports = []

    def call(report: bool) -> float:
        extra = {"progress": reports.append, "progress_every": 1} if report else {}
        start = time.perf_counter()
        pulse_jax.solve(lr, generator, num_samples=samples, steps=steps, **extra)
        return time.perf_counter() - start

    call(False), call(True)  # compiles both programs
    plain, reporting = [], []
    for _ in range(repeats):
        plain.append(call(False))
        reporting.append(call(True))
    plain_s, reporting_s = statistics.median(plain), statistics.median(reporting)
    return {
        "generator": name,
        "samples": samples,
        "steps": steps,
        "plain_s": plain_s,
        "reporting_s": reporting_s,
        "s_per_step": plain_s / steps,
        "cost_per_step_s": (reporting_s - plain_s) / steps,
        "reports_per_call": len(reports) // (repeats + 1),
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        f"Machine: {cpu_model()}; medians of {_REPEATS.value} alternated calls each.",
        "",
        "| generator | samples | steps | call s, no reports | call s, report every step "
        "| s/step (whole call) | cost per report ms | cost share |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['generator']} | {r['samples']} | {r['steps']} | {r['plain_s']:.3f} | "
            f"{r['reporting_s']:.3f} | {r['s_per_step']:.4f} | "
            f"{1e3 * r['cost_per_step_s']:.3f} | "
            f"{100 * r['cost_per_step_s'] / r['s_per_step']:.1f}% |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    del argv
    rows = []
    for name in _GENERATORS.value:
        rows.append(measure(name, _STEPS.value, _SAMPLES.value, _REPEATS.value))
        print(rows[-1], file=sys.stderr, flush=True)
    text = markdown(rows)
    Path(_OUT.value).parent.mkdir(parents=True, exist_ok=True)
    Path(_OUT.value).write_text(text)
    print(text)


if __name__ == "__main__":
    app.run(main)
