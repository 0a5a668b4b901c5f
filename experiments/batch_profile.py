"""Where a step of S rows loses against S steps of one row: per-op profiles side by side.

Each case is traced once (`benchmark_lib.profile`'s procedure: one `jax.profiler` trace of a
compiled `solve` call, each XLA op matched to its instruction in the optimized HLO, loop
ops divided by the steps). Ops are grouped by (kind, output shape without its leading row
axis), so the ops of a row's generator pass line up between a call of one row and a call
whose step runs its rows one at a time; every group's seconds are per step and per
sample.

    python experiments/batch_profile.py --generator stylegan2_1024 --cases 1:batched,4:rows
"""

from __future__ import annotations

import gzip
import importlib
import json
import re
import sys
import tempfile
from pathlib import Path

import benchmark_lib as benchmark
import jax
import numpy as np
from absl import app, flags

import pulse_jax

_GENERATOR = flags.DEFINE_string("generator", "stylegan2_1024", "A benchmark generator name.")
_CASES = flags.DEFINE_list("cases", ["1:batched", "4:rows"], "samples:batched or samples:rows.")
_STEPS = flags.DEFINE_integer("steps", 2, "Steps of the traced call.")
_TOP = flags.DEFINE_integer("top", 25, "Groups shown, by their largest difference.")

_SOLVE = importlib.import_module("pulse_jax.solve")


def _group(shape: str) -> str:
    """An HLO shape without its leading axis: 'f32[4,64,64,3]{...}' -> 'f32[*,64,64,3]'."""
    head, _, rest = shape.split("{")[0].partition("[")
    dims = rest.rstrip("]").split(",")
    return f"{head}[*,{','.join(dims[1:])}]" if len(dims) > 1 else shape.split("{")[0]


def _busy(call, instructions: dict, entry: set) -> tuple[float, float]:
    """(seconds from the first loop op's start to the last one's end in a traced `call()`,
    seconds in which at least one loop op ran: the union of their intervals, asynchronous
    ones from dispatch to completion)."""
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        try:
            call()
        finally:
            jax.profiler.stop_trace()
        trace = sorted(Path(trace_dir).rglob("*.trace.json.gz"))[-1]
        events = json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
    spans = []
    for e in events:
        name = e.get("name", "").removeprefix("end: ")
        if e.get("ph") == "X" and name in instructions and name not in entry:
            spans.append((e["ts"], e["ts"] + e["dur"]))
    busy, reach = 0.0, float("-inf")
    for begin, end in sorted(spans):
        busy += max(0.0, end - max(begin, reach))
        reach = max(reach, end)
    return (reach - min(spans)[0]) / 1e6, busy / 1e6


def per_group(generator, samples: int, rows: bool, steps: int) -> dict:
    """{(kind, shape group): seconds per step and sample} of one traced call, with
    ("wall", "loop") and ("busy", "loop"): the loop's wall seconds and the seconds in which
    a loop op ran (`_busy`, of a second traced call), per step and sample."""
    _SOLVE.rows_one_at_a_time = lambda resolution, devices: rows
    size = benchmark.lr_size(generator.resolution)
    lr = np.random.default_rng(0).uniform(size=(1, size, size, 3)).astype(np.float32)
    kwargs = dict(num_samples=samples, steps=steps, seed=0)
    hlo = pulse_jax.lower(lr, generator, **kwargs).compile().as_text()
    instructions, entry = benchmark._hlo_instructions(hlo)
    call = lambda: pulse_jax.solve(lr, generator, **kwargs)  # noqa: E731
    call()  # warm
    seconds = benchmark._traced_seconds(call, instructions)
    groups = {}
    for name, t in seconds.items():
        if name in entry:
            continue
        shape, opcode, line = instructions[name]
        key = (benchmark._op_kind(opcode, line), _group(shape))
        groups[key] = groups.get(key, 0.0) + t / steps / samples
    wall, busy = _busy(call, instructions, entry)
    groups[("wall", "loop")] = wall / steps / samples
    groups[("busy", "loop")] = busy / steps / samples
    return groups


def main(argv: list[str]) -> None:
    del argv
    generator = benchmark.make_generator(_GENERATOR.value)
    cases = [(int(c.split(":")[0]), c.split(":")[1] == "rows") for c in _CASES.value]
    profiles = [per_group(generator, s, r, _STEPS.value) for s, r in cases]
    names = [f"{s}:{'rows' if r else 'batched'}" for s, r in cases]
    print(f"{_GENERATOR.value}: traced seconds per step and sample")
    print("| kind | shape | " + " | ".join(names) + " |")
    print("|---|---|" + "---:|" * len(names))
    for kind in sorted({k for p in profiles for k, _ in p} - {"wall", "busy"}):
        totals = [sum(t for (k, _), t in p.items() if k == kind) for p in profiles]
        print(f"| {kind} | (all) | " + " | ".join(f"{t:.3f}" for t in totals) + " |")
    ops = [sum(t for (k, _), t in p.items() if k not in ("wall", "busy")) for p in profiles]
    print("| all | (all) | " + " | ".join(f"{t:.3f}" for t in ops) + " |")
    for key in (("busy", "loop"), ("wall", "loop")):
        print(f"| {key[0]} | ({key[1]}) | " + " | ".join(f"{p[key]:.3f}" for p in profiles) + " |")
    keys = {k for p in profiles for k in p if k[0] not in ("wall", "busy")}
    spread = lambda k: max(p.get(k, 0) for p in profiles) - min(p.get(k, 0) for p in profiles)  # noqa: E731
    for key in sorted(keys, key=spread, reverse=True)[: _TOP.value]:
        values = " | ".join(f"{p.get(key, 0.0):.3f}" for p in profiles)
        print(f"| {key[0]} | `{re.sub(r'^f32', '', key[1])}` | {values} |")
    sys.stdout.flush()


if __name__ == "__main__":
    app.run(main)
