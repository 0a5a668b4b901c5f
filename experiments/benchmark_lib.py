"""Speed of the PULSE search: what `experiments/benchmark.py` measures, and how.

For each generator and samples-per-call, one case measures the program that
`pulse_jax.solve` compiles and runs (the whole search: `steps` optimizer steps
under one `lax.scan`):

- compile time: `lower` (tracing to StableHLO) and XLA `compile`, timed apart;
- steady-state seconds per step: `pulse_jax.solve` is timed (after compilation,
  the fastest of `repeats` calls) with `steps` and with `2 * steps` steps, and
  the difference divided by `steps`, so the once-per-call work (drawing the
  starts, the generator's weight preparation `arch.prepare`, the outputs) is
  reported apart, as the call overhead;
- latent-steps per second: samples / (seconds per step);
- FLOPs per step from XLA's cost analysis of the compiled program (XLA counts a
  `while` body once, so the program's count is one step plus the setup; where the step
  runs its rows one at a time, `pulse_jax.solve.rows_one_at_a_time`, one row's step,
  multiplied by the rows), and the
  achieved FLOP/s = FLOPs per step / seconds per step;
- memory: XLA's buffer assignment of the compiled program (arguments + outputs +
  temporaries - aliased), and the process's peak resident set so far;
- the machine's dense float32 matmul peak, measured in the same run before each
  generator's cases and after the last, so that utilization = achieved FLOP/s /
  matmul peak compares numbers from one machine under the same conditions: against
  the better of the two measurements around the case, and (`utilization_vs_best`)
  against the best of the run.

The compiled program is `pulse_jax.lower(...)` of the case's `solve` arguments (its
`lower_s` includes `solve`'s host-side preparation: the checks and drawing the starts);
`jax.jit` shares the compilation, so the timed `solve` calls that follow run exactly that
executable without compiling again.

`experiments/benchmark.py` is the flag launcher over this module.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import gzip
import json
import os
import platform
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import pulse_jax
from pulse_jax import testing
from pulse_jax.generators import stylegan, stylegan2
from pulse_jax.generators.base import Generator
from pulse_jax.runs.distributed import cpu_model
from pulse_jax.solve import rows_one_at_a_time

FIELDS = (
    "generator",
    "resolution",
    "samples",
    "steps",
    "lower_s",
    "compile_s",
    "first_call_s",
    "call_overhead_s",
    "s_per_step",
    "latent_steps_per_s",
    "flops_per_step",
    "achieved_flops",
    "peak_flops",
    "utilization",
    "utilization_vs_best",
    "xla_bytes",
    "xla_temp_bytes",
    "peak_rss_bytes",
)


@dataclasses.dataclass(frozen=True)
class Case:
    """One measurement: a generator by name and the samples per `solve` call."""

    generator: str
    samples: int


def make_generator(name: str, *, precision: str = "highest", seed: int = 0) -> Generator:
    """A generator by benchmark name.

    Args:
      name: "dcgan64" (the embedded default, real weights), "stylegan<R>" (StyleGAN at R px
        with random weights of the real FFHQ layout, `testing.random_stylegan_params`) or
        "stylegan2_<R>" (StyleGAN2 config F at R px, random weights of NVIDIA's FFHQ layout,
        `testing.random_stylegan2_params`); "stylegan2_<R>_c<C>": the same with at most C
        channels per layer (a narrow network, cheap enough for CPU comparisons).
      precision: the generator's matmul/conv precision ("highest", "high", "default").
      seed: seed of the random weights.

    Returns:
      A `Generator`.
    """
    if name == "dcgan64":
        return pulse_jax.load_generator("dcgan64", precision=precision)
    match = re.fullmatch(r"stylegan2_(\d+)(?:_c(\d+))?", name)
    if match:
        width = {"channel_max": int(match.group(2))} if match.group(2) else {}
        params = testing.random_stylegan2_params(jax.random.key(seed), int(match.group(1)), **width)
        arch = stylegan2.arch_from_params(params, conv_clamp=256, precision=precision)
        return Generator(
            kind="stylegan2", arch=arch, params=params, provenance={"source": "random (benchmark)"}
        )
    match = re.fullmatch(r"stylegan(\d+)", name)
    if not match:
        raise ValueError(
            f"unknown generator {name!r}: use dcgan64, stylegan<resolution> or "
            "stylegan2_<resolution>[_c<channels>]"
        )
    params = testing.random_stylegan_params(jax.random.key(seed), int(match.group(1)))
    arch = stylegan.arch_from_params(params["synthesis"], params["mapping"], precision=precision)
    return Generator(
        kind="stylegan", arch=arch, params=params, provenance={"source": "random (benchmark)"}
    )


def lr_size(resolution: int) -> int:
    """The low-resolution input size a case uses: PULSE's 32 px, or R/4 for small generators."""
    return min(32, resolution // 4)


def matmul_peak(sizes=(2048, 4096), repeats: int = 3) -> dict:
    """The machine's dense float32 matmul rate: best of `repeats` jitted `jnp.dot` calls
    (precision HIGHEST) per size, FLOPs = 2 n**3. Returns {"flops": best, "by_size": {...}}."""
    dot = jax.jit(lambda x, y: jnp.dot(x, y, precision=jax.lax.Precision.HIGHEST))
    by_size = {}
    for n in sizes:
        ka, kb = jax.random.split(jax.random.key(n))
        a = jax.random.normal(ka, (n, n), jnp.float32)
        b = jax.random.normal(kb, (n, n), jnp.float32)
        dot(a, b).block_until_ready()
        best = min(_timed(functools.partial(dot, a, b))[0] for _ in range(repeats))
        by_size[str(n)] = 2.0 * n**3 / best
    return {"flops": max(by_size.values()), "by_size": by_size}


def stream_bandwidth(size: int = 1 << 25, repeats: int = 3) -> float:
    """The machine's elementwise memory bandwidth in bytes/s: best of `repeats` jitted
    `x * 2 + 1` over `size` float32 values (one read and one write per value). The
    large-image layers of a StyleGAN step are bound by it rather than by the matmul peak."""
    scale = jax.jit(lambda x: x * 2.0 + 1.0)
    x = jnp.ones((size,), jnp.float32)
    scale(x).block_until_ready()
    best = min(_timed(functools.partial(scale, x))[0] for _ in range(repeats))
    return 2 * 4 * size / best


# The convolutions of a 1024 px StyleGAN step by kind (name, input [H, W, in], kernel
# [kh, kw, in, out], padding): the few-channel, high-resolution layers and a 512-channel
# one for contrast. "sub-pixel" is the fused upscale's forward conv (`ops.upsample_conv2x`).
LAYER_CONVS = (
    ("conv 3x3, 16->16 at 1024 px", (1024, 1024, 16), (3, 3, 16, 16), 1),
    ("sub-pixel 2x2, 32->4x16 at 512 px", (512, 512, 32), (2, 2, 32, 64), 1),
    ("conv 3x3, 32->32 at 512 px", (512, 512, 32), (3, 3, 32, 32), 1),
    ("sub-pixel 2x2, 64->4x32 at 256 px", (256, 256, 64), (2, 2, 64, 128), 1),
    ("conv 3x3, 512->512 at 32 px", (32, 32, 512), (3, 3, 512, 512), 1),
)


def conv_rates(layers=LAYER_CONVS, repeats: int = 3) -> list[dict]:
    """FLOP/s of single StyleGAN convolutions, each jitted alone (float32, HIGHEST precision,
    one sample): what XLA's convolution kernels reach on the layer shapes of the step.

    Returns:
      [{"layer", "flops", "s", "flops_per_s"}] (FLOPs = 2 x multiply-adds of the output).
    """
    rates = []
    for name, (h, w, c), kernel_shape, pad in layers:
        x = jax.random.normal(jax.random.key(0), (1, h, w, c), jnp.float32)
        kernel = jax.random.normal(jax.random.key(1), kernel_shape, jnp.float32)
        conv = jax.jit(
            lambda x, k, pad=pad: jax.lax.conv_general_dilated(
                x,
                k,
                (1, 1),
                [(pad, pad), (pad, pad)],
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                precision=jax.lax.Precision.HIGHEST,
            )
        )
        out = conv(x, kernel).block_until_ready()
        kh, kw, _, out_c = kernel_shape
        flops = 2.0 * out.shape[1] * out.shape[2] * out_c * kh * kw * c
        best = min(_timed(functools.partial(conv, x, kernel))[0] for _ in range(repeats))
        rates.append({"layer": name, "flops": flops, "s": best, "flops_per_s": flops / best})
    return rates


def measure(generator: Generator, name: str, samples: int, *, steps: int, repeats: int = 3) -> dict:
    """Measures one case (module docstring); returns a dict with the keys in `FIELDS`."""
    size = lr_size(generator.resolution)
    lr_images = np.random.default_rng(0).uniform(size=(1, size, size, 3)).astype(np.float32)

    def solve_call(n):
        return pulse_jax.solve(lr_images, generator, num_samples=samples, steps=n, seed=0)

    lower = functools.partial(
        pulse_jax.lower, lr_images, generator, num_samples=samples, steps=steps
    )
    lower_s, lowered = _timed(lower)
    compile_s, compiled = _timed(lowered.compile)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    mem = compiled.memory_analysis()
    first_call_s, _ = _timed(lambda: solve_call(steps))
    # Two step counts: their difference is the cost of `steps` more steps, free of the
    # once-per-call work (drawing the starts, the generator's weight preparation,
    # the outputs).
    solve_call(2 * steps)  # compiles the longer program
    short = min(_timed(lambda: solve_call(steps))[0] for _ in range(repeats))
    long = min(_timed(lambda: solve_call(2 * steps))[0] for _ in range(repeats))
    s_per_step = (long - short) / steps if long > short else long / (2 * steps)
    flops = float(cost.get("flops", float("nan")))
    if rows_one_at_a_time(generator.resolution, jax.local_devices()[:1]):
        flops *= samples  # the rows' passes are a loop inside the step: counted once too
    xla_bytes = None
    if mem is not None:
        xla_bytes = (
            mem.argument_size_in_bytes
            + mem.output_size_in_bytes
            + mem.temp_size_in_bytes
            - mem.alias_size_in_bytes
        )
    return {
        "generator": name,
        "resolution": generator.resolution,
        "samples": samples,
        "steps": steps,
        "lower_s": lower_s,
        "compile_s": compile_s,
        "first_call_s": first_call_s,
        "call_overhead_s": max(short - steps * s_per_step, 0.0),
        "s_per_step": s_per_step,
        "latent_steps_per_s": samples / s_per_step,
        "flops_per_step": flops,
        "achieved_flops": flops / s_per_step,
        "peak_flops": None,  # filled in by `run`: the matmul peak measured around the case
        "utilization": None,
        "utilization_vs_best": None,
        "xla_bytes": xla_bytes,
        "xla_temp_bytes": None if mem is None else mem.temp_size_in_bytes,
        "peak_rss_bytes": _peak_rss_bytes(),
    }


def profile(generator: Generator, samples: int, *, steps: int = 2, top: int = 12) -> dict:
    """Where a step's time goes: one traced call of the compiled search (`jax.profiler`),
    each executed XLA op matched to its instruction in the optimized HLO.

    Ops of the program's entry computation are the per-call work (setup, the generator's
    weight preparation, outputs); all others run inside the optimization loop (the `while`
    body and the computations it calls), and their time divided by `steps` is one step.
    (Membership is read from the optimized HLO, not from how often an op ran: XLA:CPU
    splits some large ops into parallel partitions, each traced as its own event.)

    XLA:CPU runs its own (Eigen) convolutions asynchronously: the trace marks their dispatch
    and, as "end: <op>", their completion; their time is the span between the two. Ops
    can overlap on the two cores, so the traced time of a step may differ from the wall
    time the benchmark measures, and the shares are of the traced time.

    Returns:
      {"step_s": traced op time per step, "per_call_s", "by_kind": {kind: s per step},
       "by_size": {output spatial size: s per step}, "top": [{"op", "kind", "shape",
       "seconds" per step}]}; kinds: "conv" (convolutions, on CPU mostly run as YNNPACK
      fusions), "elementwise/reduce" (XLA loop fusions, reductions, copies: the memory-bound
      work), "other".
    """
    size = lr_size(generator.resolution)
    lr_images = np.random.default_rng(0).uniform(size=(1, size, size, 3)).astype(np.float32)

    def solve_call():
        return pulse_jax.solve(lr_images, generator, num_samples=samples, steps=steps, seed=0)

    lower = functools.partial(
        pulse_jax.lower, lr_images, generator, num_samples=samples, steps=steps
    )
    instructions, entry = _hlo_instructions(lower().compile().as_text())
    solve_call()  # warm
    seconds = _traced_seconds(solve_call, instructions)
    per_step = {n: t / steps for n, t in seconds.items() if n not in entry}
    by_kind, by_size = {}, {}
    for name, t in per_step.items():
        shape, opcode, line = instructions[name]
        kind = _op_kind(opcode, line)
        by_kind[kind] = by_kind.get(kind, 0.0) + t
        dims = re.findall(r"\d+", shape.partition("[")[2].partition("]")[0])
        spatial = f"{dims[1]}x{dims[2]}" if len(dims) == 4 else "other"
        by_size[spatial] = by_size.get(spatial, 0.0) + t
    top_ops = sorted(per_step.items(), key=lambda kv: -kv[1])[:top]
    return {
        "steps": steps,
        "step_s": sum(per_step.values()),
        "per_call_s": sum(t for n, t in seconds.items() if n not in per_step),
        "by_kind": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
        "by_size": dict(sorted(by_size.items(), key=lambda kv: -kv[1])),
        "top": [
            {
                "op": name,
                "kind": _op_kind(instructions[name][1], instructions[name][2]),
                "shape": instructions[name][0].split("{")[0],
                "seconds": t,
            }
            for name, t in top_ops
        ],
    }


def _hlo_instructions(hlo_text: str) -> tuple[dict, set]:
    """The instructions of an optimized HLO module, {name: (shape, opcode, line)}, and the
    names of those in its entry computation."""
    instructions, entry, in_entry = {}, set(), False
    for line in hlo_text.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith("{"):
            in_entry = line.startswith("ENTRY ")  # a computation's header
        match = re.match(r"\s*(?:ROOT )?%(\S+) = (\S+) ([\w-]+)\(", line)
        if match:
            instructions[match.group(1)] = (match.group(2), match.group(3), line)
            if in_entry:
                entry.add(match.group(1))
    return instructions, entry


def _traced_seconds(call, instructions: dict) -> dict[str, float]:
    """Seconds per HLO instruction in one traced `call()` (`jax.profiler`); an asynchronous
    op counts from its dispatch to its "end: <op>" event (`profile`)."""
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
        try:
            call()
        finally:
            jax.profiler.stop_trace()
        traces = sorted(Path(trace_dir).rglob("*.trace.json.gz"))
        events = json.loads(gzip.decompress(traces[-1].read_bytes()))["traceEvents"]
    seconds, starts, ends = {}, {}, {}
    for event in events:
        name = event.get("name", "")
        if event.get("ph") != "X":
            continue
        if name in instructions:
            seconds[name] = seconds.get(name, 0.0) + event["dur"] / 1e6
            starts.setdefault(name, []).append(event["ts"])
        elif name.startswith("end: ") and name[5:] in instructions:
            ends.setdefault(name[5:], []).append(event["ts"] + event["dur"])
    for name, done in ends.items():  # asynchronous ops: from dispatch to completion
        pairs = zip(sorted(starts.get(name, [])), sorted(done), strict=False)
        seconds[name] = sum(end - start for start, end in pairs) / 1e6
    return seconds


def _op_kind(opcode: str, line: str) -> str:
    if opcode == "convolution" or "__ynn_fusion" in line or "__onednn" in line:
        return "conv"
    if opcode == "fusion" or opcode in ("reduce", "copy", "transpose", "concatenate", "pad"):
        return "elementwise/reduce"
    return "other"


def run(
    generators: list[str],
    samples: list[int],
    *,
    steps: int,
    repeats: int = 3,
    precision: str = "highest",
    matmul_sizes=(2048, 4096),
    profile_cases: bool = False,
    log=None,
) -> dict:
    """Measures every (generator, samples) case and the matmul peak around them.

    Args:
      generators: names for `make_generator`.
      samples: samples per `solve` call, one case each.
      steps: optimizer steps per timed call.
      repeats: timed calls per case after the first (the fastest is kept).
      precision: the generators' matmul/conv precision.
      matmul_sizes: square matrix sizes for the matmul peak.
      profile_cases: also trace each case once (`profile`) and keep the breakdown.
      log: called with a line of progress per case.

    Returns:
      {"machine": ..., "config": ..., "matmul_peak": ..., "cases": [per-case dicts]}.
    """
    log = log or (lambda msg: None)
    # On a shared machine the peak moves with the load (seen here: 303 to 357 GFLOP/s
    # within one run). It is measured before each generator's cases and after the last, so
    # every case has a measurement just before and just after it. A case's utilization is
    # against the better of those two, taken under the conditions the case ran in;
    # `utilization_vs_best` is against the best measurement of the whole run.
    peaks = []
    cases = []
    for g, name in enumerate(generators):
        peaks.append(matmul_peak(matmul_sizes))
        log(f"matmul peak: {peaks[-1]['flops'] / 1e9:.1f} GFLOP/s")
        generator = make_generator(name, precision=precision)
        for n in samples:
            result = measure(generator, name, n, steps=steps, repeats=repeats)
            result["peak_index"] = g
            result["peak_flops"] = peaks[-1]["flops"]  # until the one after is measured
            result["utilization"] = result["achieved_flops"] / result["peak_flops"]
            if profile_cases:
                result["profile"] = profile(generator, n, steps=min(steps, 2))
            log(format_row(result))
            cases.append(result)
    peaks.append(matmul_peak(matmul_sizes))
    log(f"matmul peak after the cases: {peaks[-1]['flops'] / 1e9:.1f} GFLOP/s")
    peak = {"flops": max(p["flops"] for p in peaks), "measurements": peaks}
    for result in cases:
        g = result.pop("peak_index")
        result["peak_flops"] = max(peaks[g]["flops"], peaks[g + 1]["flops"])
        result["utilization"] = result["achieved_flops"] / result["peak_flops"]
        result["utilization_vs_best"] = result["achieved_flops"] / peak["flops"]
    bandwidth = stream_bandwidth()
    layers = conv_rates() if profile_cases else None
    return {
        "machine": machine_info(),
        "config": {
            "generators": list(generators),
            "samples": list(samples),
            "steps": steps,
            "repeats": repeats,
            "precision": precision,
            "solve": "pulse_jax.solve defaults (adam, 100*L2+0.05*GEOCROSS, trainable noise)",
        },
        "matmul_peak": peak,
        "stream_bandwidth": bandwidth,
        "conv_rates": layers,
        "cases": cases,
    }


def machine_info() -> dict:
    """Where the numbers come from: device, CPU model and cores, versions, date."""
    device = jax.devices()[0]
    return {
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def format_row(c: dict) -> str:
    """One markdown table row for a case (columns of `markdown`)."""
    mib = "n/a" if c["xla_bytes"] is None else f"{c['xla_bytes'] / 2**20:,.0f}"
    return (
        f"| {c['generator']} | {c['samples']} | {c['lower_s'] + c['compile_s']:.1f} | "
        f"{c['s_per_step']:.4g} | {c['latent_steps_per_s']:.3g} | "
        f"{c['flops_per_step'] / 1e9:.3g} | {c['achieved_flops'] / 1e9:.1f} | "
        f"{(c['peak_flops'] or 0) / 1e9:.0f} | {100 * (c['utilization'] or 0):.0f}% | "
        f"{100 * (c['utilization_vs_best'] or c['utilization'] or 0):.0f}% | {mib} | "
        f"{c['peak_rss_bytes'] / 2**20:,.0f} |"
    )


def markdown(results: dict) -> str:
    """The results as a markdown section: the machine, the matmul peak, one row per case."""
    m = results["machine"]
    peak = results["matmul_peak"]
    cfg = results["config"]
    lines = [
        f"Machine: {m['cpu']} ({m['cpu_cores']} cores), JAX {m['jax']} on "
        f"{m['platform']} ({m['device_kind']}, {m['device_count']} device(s)), {m['date']}.",
        "Dense float32 matmul peak (HIGHEST precision), measured before each generator's "
        "cases and after the last: "
        + ", ".join(f"{p['flops'] / 1e9:.0f}" for p in peak["measurements"])
        + f" GFLOP/s (best {peak['flops'] / 1e9:.1f}). Utilization is against the better of "
        "the two measurements around the case (the peak column), under the conditions the "
        "case ran in; the next column is against the run's best. "
        f"Elementwise memory bandwidth: {results['stream_bandwidth'] / 1e9:.1f} GB/s. "
        f"Steps per timed call: {cfg['steps']}, best of {cfg['repeats']} calls, "
        f"precision: {cfg['precision']}.",
        "",
        "| generator | samples | compile s | s/step | latent-steps/s | GFLOP/step | GFLOP/s "
        "| peak GFLOP/s | utilization | vs best peak | XLA memory MiB | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [format_row(c) for c in results["cases"]]
    profiled = [c for c in results["cases"] if c.get("profile")]
    if profiled:
        lines += [
            "",
            "Where a step's time goes (one traced call, the loop body; per-call work apart). "
            "Traced s/step sums every op's time; ops overlap on the cores (XLA runs its own "
            "convolutions asynchronously beside other ops), so it exceeds the wall-clock "
            "s/step, and the shares are of that sum:",
            "",
            "| generator | samples | traced s/step | conv | elementwise/reduce | other "
            "| largest sizes | per call s |",
            "|---|---:|---:|---:|---:|---:|---|---:|",
        ]
        for c in profiled:
            prof = c["profile"]
            total = prof["step_s"] or 1.0
            kinds = prof["by_kind"]
            sizes = ", ".join(
                f"{size} {100 * t / total:.0f}%" for size, t in list(prof["by_size"].items())[:3]
            )
            lines.append(
                f"| {c['generator']} | {c['samples']} | {prof['step_s']:.4g} | "
                + " | ".join(
                    f"{100 * kinds.get(k, 0.0) / total:.0f}%"
                    for k in ("conv", "elementwise/reduce", "other")
                )
                + f" | {sizes} | {prof['per_call_s']:.3g} |"
            )
    if results.get("conv_rates"):
        best = results["matmul_peak"]["flops"]
        lines += [
            "",
            "Single convolutions of the 1024 px step's layer shapes, each jitted alone "
            "(`conv_rates`), against the run's best matmul peak:",
            "",
            "| layer | GFLOP | ms | GFLOP/s | of peak |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r['layer']} | {r['flops'] / 1e9:.2f} | {1e3 * r['s']:.1f} | "
            f"{r['flops_per_s'] / 1e9:.0f} | {100 * r['flops_per_s'] / best:.0f}% |"
            for r in results["conv_rates"]
        ]
    return "\n".join(lines) + "\n"


def write(
    results: dict, out_dir: str | os.PathLike, stem: str = "benchmark", render=None
) -> tuple[Path, Path]:
    """Writes `<stem>.json` and `<stem>.md` (`render(results)`, this module's `markdown`
    unless given) into `out_dir`; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    md_path.write_text((render or markdown)(results))
    return json_path, md_path


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    jax.block_until_ready(out)
    return time.perf_counter() - start, out


def _peak_rss_bytes() -> int:
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024
