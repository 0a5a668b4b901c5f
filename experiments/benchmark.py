"""Speed of the PULSE search per generator and samples per call (see `benchmark_lib`).

    python experiments/benchmark.py \
        --generators dcgan64,stylegan256,stylegan1024,stylegan2_256,stylegan2_1024 \
        --samples 1,2,4 --steps 3 --out_dir results/benchmark

Writes `<out_dir>/<name>.json` (every measurement, the machine, the matmul peak) and
`<out_dir>/<name>.md` (the table docs/performance.md shows); `--profile` adds where each case's time
goes. docs/performance.md's table comes from

    python experiments/benchmark.py --out_dir docs --name benchmark_cpu --profile
"""

from __future__ import annotations

import sys

import benchmark_lib as benchmark
from absl import app, flags

from pulse_jax.runs import cli, compile_cache

_GENERATORS = flags.DEFINE_list(
    "generators",
    ["dcgan64", "stylegan256", "stylegan1024", "stylegan2_256", "stylegan2_1024"],
    "dcgan64 (real weights), stylegan<R> and/or stylegan2_<R> (random weights of the FFHQ "
    "layouts: StyleGAN v1's and NVIDIA's StyleGAN2 config F).",
)
_SAMPLES = flags.DEFINE_list("samples", ["1", "2", "4"], "Samples per solve call.")
_STEPS = flags.DEFINE_integer("steps", 3, "Optimizer steps per timed solve call.")
_REPEATS = flags.DEFINE_integer(
    "repeats", 3, "Timed calls per step count and case (the fastest is kept, as for the peak)."
)
_PRECISION = flags.DEFINE_enum(
    "precision", "highest", ["highest", "high", "default"], "Generator matmul/conv precision."
)
_PROFILE = flags.DEFINE_bool(
    "profile", False, "Also trace each case once and report where a step's time goes."
)
_OUT_DIR = flags.DEFINE_string("out_dir", "results/benchmark", "Where the JSON and table go.")
_NAME = flags.DEFINE_string(
    "name", "benchmark", "File stem: writes <out_dir>/<name>.json and <out_dir>/<name>.md."
)

# Off by default: the table's compile times would be cache reads on a second run.
cli.define_cache_flag(default="")


def main(argv: list[str]) -> None:
    del argv
    compile_cache.enable(flags.FLAGS.compilation_cache)
    results = benchmark.run(
        _GENERATORS.value,
        [int(s) for s in _SAMPLES.value],
        steps=_STEPS.value,
        repeats=_REPEATS.value,
        precision=_PRECISION.value,
        profile_cases=_PROFILE.value,
        log=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    json_path, md_path = benchmark.write(results, _OUT_DIR.value, _NAME.value)
    print(benchmark.markdown(results))
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    app.run(main)
