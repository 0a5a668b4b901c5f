"""The CPU batch curve: latent-steps/s of one sample per call against several, in one run.

Each case is (samples per call, how the call runs its rows): "batched" (all rows through
the generator at once), "rows" (one group, each step's generator passes one row after the
other, `search.Program.rows_one_at_a_time`, what `solve` does on CPU at 1024 px) or "apart"
(`batch_per_device=1`: every row its own group, whole searches one after the other, what
the launchers do on CPU at 1024 px, `engine.groups_apart`). The script switches `solve`'s
rule (`pulse_jax.solve.rows_one_at_a_time`) per case. Every case is compiled first; then
`--rounds` rounds time every case in turn, so each round's figures come from the same
conditions. Seconds per step: the call with `2 * steps` steps minus the call with
`steps`, divided by `steps` (the once-per-call work cancels); per round, and from the
fastest call of each length over all rounds (on a shared machine, the least disturbed).

    python experiments/batch_curve.py --generator stylegan2_1024 --cases 1:batched,4:rows
"""

from __future__ import annotations

import importlib
import json
import sys
import time

import benchmark_lib as benchmark
import numpy as np
from absl import app, flags

import pulse_jax
from pulse_jax.runs.distributed import cpu_model

_GENERATOR = flags.DEFINE_string("generator", "stylegan2_1024", "A benchmark generator name.")
_CASES = flags.DEFINE_list(
    "cases", ["1:batched", "4:batched", "4:rows"], "samples:batched, samples:rows or samples:apart."
)
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Rounds over every case.")
_STEPS = flags.DEFINE_integer("steps", 1, "Steps of the shorter timed call.")

_HOW = {
    "batched": "batched",
    "rows": "rows one at a time",
    "apart": "groups of one (launchers)",
}
_SOLVE = importlib.import_module("pulse_jax.solve")  # the module (pulse_jax.solve is the function)


def main(argv: list[str]) -> None:
    del argv
    generator = benchmark.make_generator(_GENERATOR.value)
    size = benchmark.lr_size(generator.resolution)
    lr = np.random.default_rng(0).uniform(size=(1, size, size, 3)).astype(np.float32)
    cases = [(int(c.split(":")[0]), c.split(":")[1]) for c in _CASES.value]
    if any(how not in _HOW for _, how in cases):
        raise app.UsageError(f"--cases: samples:how, how one of {', '.join(_HOW)}")

    def seconds(samples: int, how: str, steps: int) -> float:
        _SOLVE.rows_one_at_a_time = lambda resolution, devices: how == "rows"
        apart = {"batch_per_device": 1} if how == "apart" else {}
        start = time.perf_counter()
        pulse_jax.solve(lr, generator, num_samples=samples, steps=steps, seed=0, **apart)
        return time.perf_counter() - start

    steps = _STEPS.value
    for case in cases:  # compiles both step counts of every case
        seconds(*case, steps), seconds(*case, 2 * steps)
    timed = {case: [] for case in cases}  # (short, long) call seconds per round
    for round_ in range(_ROUNDS.value):
        for samples, how in cases:
            short, long = seconds(samples, how, steps), seconds(samples, how, 2 * steps)
            timed[(samples, how)].append((short, long))
            rate = samples * steps / (long - short)
            print(round_, samples, how, f"{short:.2f} {long:.2f} {rate:.4f}", file=sys.stderr)
    print(f"{_GENERATOR.value} on {cpu_model()}, latent-steps/s per round, then from the")
    print("fastest short and fastest long call of all rounds:")
    for (samples, how), calls in timed.items():
        rates = [samples * steps / (long - short) for short, long in calls]
        shortest, longest = min(c[0] for c in calls), min(c[1] for c in calls)
        rates.append(samples * steps / (longest - shortest))
        print(
            f"| {_GENERATOR.value} | {samples} | {_HOW[how]} | "
            + " | ".join(f"{v:.3f}" for v in rates)
            + " |"
        )
    print(json.dumps({f"{s}:{how}": calls for (s, how), calls in timed.items()}))


if __name__ == "__main__":
    app.run(main)
