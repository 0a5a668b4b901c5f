"""What reduced matmul/conv precision does to PULSE, emulated on the CPU (pulse_jax.precision).

    python experiments/precision.py                        # goldens and evaluation, x4 and x8
    python experiments/precision.py --evaluate=false --renders=   # the golden runs only
    python experiments/precision.py --precisions highest,bf16 --lr_sizes 16

For each precision ("highest" is float32; "tf32" and "bf16" round every conv and matmul
operand of the generator as an H100's TF32 tensor cores and a TPU's one-pass bfloat16 do,
"bf16_3x" emulates a TPU's three-pass "high"):
- the golden runs (StyleGAN v1: tests/golden/run_*.npz, StyleGAN2:
  tests/golden/stylegan2/sg2_run_*.npz, the reference's float32 searches from their own
  starts): each sample's L2 at every step against the reference's, as the tests replay them;
- one render and one gradient at 1024 px (the benchmark's random-weight generators);
- the evaluation (`pulse_jax.evaluation.evaluate`, as experiments/evaluate.py --synthetic N
  --samples K):
  success rate, LR PSNR, HR PSNR, per observation size. Each precision draws the synthetic
  truth faces with its own generator, as a user on that chip would; how far those faces
  lie from float32's is reported beside them.
Writes <docs>.md and <docs>.json; the evaluation reports go to <output_dir>/eval_<p>_x<f>/
(an existing report with the same settings is read instead of run again, unless --rerun).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import jax
from absl import app, flags
from precision_lib import evaluation_rows, golden_rows, render_rows, write_docs

from pulse_jax.runs.distributed import cpu_model

_PRECISIONS = flags.DEFINE_list(
    "precisions", ["highest", "tf32", "bf16", "bf16_3x"], "Precisions, float32 first."
)
_GOLDENS = flags.DEFINE_boolean("goldens", True, "Replay the golden runs.")
_EVALUATE = flags.DEFINE_boolean("evaluate", True, "Run the evaluation.")
_RENDERS = flags.DEFINE_list(
    "renders",
    ["stylegan1024", "stylegan2_1024"],
    "Benchmark generators (experiments/benchmark.py's names) whose render and gradient are "
    "compared; empty: none.",
)
_GOLDEN_DIR = flags.DEFINE_string("golden_dir", "tests/golden", "The golden vectors' folder.")
_SYNTHETIC = flags.DEFINE_integer("synthetic", 32, "Evaluation faces.", lower_bound=1)
_SEEDS = flags.DEFINE_integer("seeds", 4, "Samples per face.", lower_bound=1)
_LR_SIZES = flags.DEFINE_list("lr_sizes", ["16", "8"], "Observation sides (64 px faces).")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "results/precision", "Evaluation reports.")
_RERUN = flags.DEFINE_boolean("rerun", False, "Run evaluations whose report exists again.")
_DOCS = flags.DEFINE_string("docs", "docs/precision", "Writes <docs>.md and <docs>.json.")


def main(argv) -> int:
    del argv
    precisions = _PRECISIONS.value
    if precisions[0] != "highest":
        raise app.UsageError("--precisions: the first is the float32 baseline, 'highest'")
    out = Path(_OUTPUT_DIR.value)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    figures = {
        "command": " ".join(["python experiments/precision.py"] + sys.argv[1:]),
        "machine": f"{cpu_model()} ({jax.default_backend()}, {jax.device_count()} device(s))",
        "jax": jax.__version__,
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "precisions": precisions,
        "synthetic": _SYNTHETIC.value,
        "seeds": _SEEDS.value,
        "goldens": golden_rows(precisions, Path(_GOLDEN_DIR.value), out) if _GOLDENS.value else [],
        "evaluation": (
            evaluation_rows(
                precisions,
                [int(v) for v in _LR_SIZES.value],
                out,
                synthetic=_SYNTHETIC.value,
                seeds=_SEEDS.value,
                rerun=_RERUN.value,
            )
            if _EVALUATE.value
            else []
        ),
    }
    figures["renders"] = render_rows(precisions, _RENDERS.value)
    figures["seconds"] = round(time.perf_counter() - t0, 1)
    write_docs(figures, Path(_DOCS.value))
    print(Path(_DOCS.value).with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    app.run(main)
