"""What a search needs of a GPU or TPU, found without one: `experiments/plan.py`.

For each target chip and samples per device, the program `pulse_jax.solve` runs (one sweep
group: `batch_per_device` rows on each of `chips` devices) is lowered from abstract values
(`pulse_jax.lower`) and compiled ahead of time for compile-only devices
(`jax.experimental.topologies`: a TPU slice through libtpu, a GPU through jax's CUDA plugin
and the chip's target description in `experiments/targets/`). Read from the compiled
program:

- whether it compiles, and the seconds lowering and compiling took on this machine;
- per-device memory (XLA's buffer assignment: arguments, outputs, temporaries) against the
  chip's memory with `HEADROOM`, and from it the largest batch per device that fits;
- the collectives inside the step loop (any `while` body): there must be none, rows are
  independent;
- FLOPs and bytes accessed (XLA's cost analysis of the compiled program where the backend
  gives one, else of the lowered program); XLA counts a `while` body once, so the count is
  one step plus the once-per-call work;
- a roofline lower bound on seconds per step, max(FLOPs / matmul peak at the precision,
  bytes / HBM bandwidth), from the chip's published peaks (`TARGETS`, each with its source),
  and on TPU XLA's own estimate ("optimal_seconds") where it is positive.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import time
from pathlib import Path

import jax
import numpy as np

import pulse_jax
from pulse_jax.options import SearchOptions
from pulse_jax.runs.cli import one_line

TARGET_DIR = Path(__file__).parent / "targets"
# A batch fits when its total memory is at most this share of the chip's: on a GPU, JAX's
# default preallocation (XLA_PYTHON_CLIENT_MEM_FRACTION, 75%); on a TPU, 90%.
GPU_HEADROOM, TPU_HEADROOM = 0.75, 0.9
COLLECTIVES = ("all-reduce", "all-gather", "collective-permute", "all-to-all", "reduce-scatter")

_NVIDIA = "NVIDIA {} datasheet"
_GOOGLE = "Cloud TPU documentation, {} page (bf16 peak per chip, HBM)"
# XLA on TPU runs a float32 matmul at HIGHEST as 6 bf16 passes (jax.lax.DotAlgorithmPreset
# BF16_BF16_F32_X6), at DEFAULT as one: the "highest" peak is the bf16 peak / 6 (derived).
_TPU_HIGHEST_PASSES = 6
# At HIGH (pulse_jax.precision's TPU default) in 3 passes (BF16_BF16_F32_X3).
_TPU_HIGH_PASSES = 3


@dataclasses.dataclass(frozen=True)
class Target:
    """A chip to compile for: how to get compile-only devices of it, and its published peaks.

    peaks: matmul FLOP/s per precision name ("highest", "high", "default"), memory_bytes,
      hbm_bytes_per_s;
    source: where each figure comes from.
    """

    name: str
    platform: str  # "tpu" or "cuda"
    topology: str  # a TPU topology name, or "1x1x1" for one GPU
    memory_bytes: float
    hbm_bytes_per_s: float
    peaks: dict
    source: str
    config_file: str | None = None  # GPU: the GpuTargetConfigProto text in TARGET_DIR
    headroom: float = TPU_HEADROOM

    @property
    def extra(self) -> str:
        return "tpu" if self.platform == "tpu" else "cuda"


def _tpu(version: str, topology: str, bf16: float, memory: float, hbm: float) -> Target:
    return Target(
        name=f"tpu-{version}:{topology}",
        platform="tpu",
        topology=f"{version}:{topology}",
        memory_bytes=memory,
        hbm_bytes_per_s=hbm,
        peaks={
            "default": bf16,
            "high": bf16 / _TPU_HIGH_PASSES,
            "highest": bf16 / _TPU_HIGHEST_PASSES,
        },
        source=_GOOGLE.format(f"TPU {version}")
        + f"; 'highest' = bf16 peak / {_TPU_HIGHEST_PASSES} (6-pass bf16 float32 matmul),"
        + f" 'high' = bf16 peak / {_TPU_HIGH_PASSES} (3 passes)",
    )


def _gpu(name, config, fp32, tf32, memory, hbm, model) -> Target:
    return Target(
        name=name,
        platform="cuda",
        topology="1x1x1",
        memory_bytes=memory,
        hbm_bytes_per_s=hbm,
        peaks={"highest": fp32, "high": tf32, "default": tf32},
        source=_NVIDIA.format(model)
        + " (FP32 for 'highest', dense TF32 tensor core for 'default' and 'high', which JAX"
        + " runs on TF32 where the chip has it)",
        config_file=config,
        headroom=GPU_HEADROOM,
    )


GIB = 2**30
TARGETS = {
    t.name: t
    for t in (
        # Memory: what the device reports (its target description's device_memory_size).
        # NVIDIA H100 SXM5 80 GB: 67 TFLOP/s FP32, 494.7 TF32 dense, 3.35 TB/s HBM3.
        _gpu(
            "h100", "h100_sxm.txtpb", 67e12, 494.7e12, 84929347584, 3.35e12, "H100 Tensor Core GPU"
        ),
        # NVIDIA H200 SXM 141 GB: the H100's compute, 4.8 TB/s HBM3e.
        _gpu("h200", "h200.txtpb", 67e12, 494.7e12, 151397597184, 4.8e12, "H200 Tensor Core GPU"),
        # NVIDIA A100 SXM4 80 GB: 19.5 TFLOP/s FP32, 156 TF32 dense, 2.039 TB/s HBM2e.
        _gpu(
            "a100",
            "a100_sxm_80.txtpb",
            19.5e12,
            156e12,
            85100068864,
            2.039e12,
            "A100 Tensor Core GPU",
        ),
        _tpu("v4", "2x2x1", 275e12, 32 * GIB, 1.2e12),
        _tpu("v5e", "2x2", 197e12, 16 * GIB, 819e9),
        _tpu("v5p", "2x2x1", 459e12, 95 * GIB, 2.765e12),
        _tpu("v6e", "2x2", 918e12, 32 * GIB, 1.64e12),
    )
}


class MissingExtra(RuntimeError):
    """The packages a target compiles with are not installed."""


def check_installed(target: Target) -> None:
    """Raises `MissingExtra` (one line naming the extra) unless the target's compiler is here."""
    module = "libtpu" if target.platform == "tpu" else "jax_cuda12_plugin"
    if importlib.util.find_spec(module) is None:
        raise MissingExtra(
            f"--target {target.name} needs the '{target.extra}' extra "
            f'(pip install -e ".[{target.extra}]"): {module} is not installed'
        )


def devices(target: Target) -> list:
    """Compile-only devices of the target (`jax.experimental.topologies`)."""
    from jax.experimental import topologies

    check_installed(target)
    if target.platform == "tpu":
        topo = topologies.get_topology_desc(topology_name=target.topology, platform="tpu")
    else:
        config = (TARGET_DIR / target.config_file).read_text()
        topo = topologies.get_topology_desc(
            platform="cuda", topology=target.topology, target_config=config
        )
    return list(topo.devices)


def loop_collectives(hlo_text: str) -> list[str]:
    """The collective ops inside any `while` body of an HLO module's text (and the
    computations such a body calls), as "opcode in computation" strings."""
    computations, current = {}, None
    for line in hlo_text.splitlines():
        header = re.match(r"^(?:ENTRY )?%?([\w.-]+) .*\{\s*$", line)
        if header and not line[0].isspace():
            current = header.group(1)
            computations[current] = []
        elif current is not None:
            computations[current].append(line)
    called = r"(?:body|condition|to_apply|calls|branch_computations)=\{?([%\w.,\s-]+)\}?"
    bodies = set(re.findall(r"body=%?([\w.-]+)", hlo_text))
    todo, inside = list(bodies), set()
    while todo:
        name = todo.pop()
        if name in inside or name not in computations:
            continue
        inside.add(name)
        for line in computations[name]:
            for group in re.findall(called, line):
                todo += [n.strip().lstrip("%") for n in group.split(",") if n.strip()]
    found = []
    for name in sorted(inside):
        for line in computations[name]:
            match = re.search(r"= \S+ (" + "|".join(COLLECTIVES) + r")(?:-start|-done)?\(", line)
            if match:
                found.append(f"{match.group(1)} in {name}")
    return found


def compile_case(
    generator,
    target: Target,
    devices_: list,
    batch: int,
    options: SearchOptions | None = None,
    *,
    chips: int = 1,
    lr_size: int = 32,
    precision: str = "highest",
    remat: bool = False,
) -> dict:
    """Compiles one sweep group (`batch` samples on each of `chips` devices) for the target
    and reads it (module docstring); a failure to compile is a row with its one-line error.

    options: the search options (default `SearchOptions()`).
    precision: the generator's precision (the peak the roofline takes).
    remat: `solve`'s.
    """
    row = {"target": target.name, "precision": precision, "batch_per_device": batch, "chips": chips}
    images = np.zeros((1, lr_size, lr_size, 3), np.float32)

    def lower(devs):
        return pulse_jax.lower(
            images,
            generator,
            options,
            num_samples=batch * len(devs),
            devices=devs,
            batch_per_device=batch,
            remat=remat,
        )

    try:
        start = time.perf_counter()
        lowered = lower(devices_[:chips])
        row["lower_s"] = time.perf_counter() - start
        start = time.perf_counter()
        compiled = lowered.compile()
        row["compile_s"] = time.perf_counter() - start
    except Exception as e:  # noqa: BLE001 - a target that does not compile is a finding
        return dict(row, compiles=False, error=one_line(e, 300))
    row["compiles"] = True
    row.update(_memory(compiled.memory_analysis(), target))
    row["loop_collectives"] = loop_collectives(compiled.as_text())
    row.update(_cost(compiled, lambda: lower(jax.devices("cpu")[:1]), target, precision))
    return row


def _memory(stats, target: Target) -> dict:
    out = {
        "argument_bytes": int(stats.argument_size_in_bytes),
        "output_bytes": int(stats.output_size_in_bytes),
        "temp_bytes": int(stats.temp_size_in_bytes),
        "alias_bytes": int(stats.alias_size_in_bytes),
    }
    total = out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"] - out["alias_bytes"]
    return dict(out, total_bytes=total, fits=total <= target.headroom * target.memory_bytes)


def _cost(compiled, cpu_lowering, target: Target, precision: str) -> dict:
    """FLOPs and bytes, the roofline bound at the program's precision, XLA's own estimate
    where positive. The compiled program's count where the backend gives one (TPU); else
    the CPU lowering's (`cpu_lowering()`, the same program before fusion): its FLOPs hold,
    its bytes count every unfused operand, so the bound then uses the FLOPs alone."""
    cost, source = _first(compiled.cost_analysis()), "compiled"
    if not cost.get("flops"):
        cost, source = _first(cpu_lowering().cost_analysis()), "cpu lowering (unfused)"
    flops = float(cost.get("flops", float("nan")))
    nbytes = float(cost.get("bytes accessed", float("nan")))
    compute_s = flops / target.peaks[precision]
    memory_s = nbytes / target.hbm_bytes_per_s if source == "compiled" else 0.0
    estimate = float(cost.get("optimal_seconds", 0.0))
    return {
        "flops": flops,
        "bytes_accessed": nbytes,
        "cost_source": source,
        "roofline_s": max(compute_s, memory_s),
        "bound": "compute" if compute_s >= memory_s else "memory",
        "xla_estimate_s": estimate if estimate > 0 else None,
    }


def _first(cost):
    if isinstance(cost, list | tuple):
        return cost[0] if cost else {}
    return cost or {}


def largest_fitting(rows: list[dict], target: Target) -> dict:
    """The largest measured batch per device that fits, and a linear extrapolation of the
    total memory over the two largest compiled batches to the chip's memory with headroom."""
    done = sorted((r for r in rows if r.get("compiles")), key=lambda r: r["batch_per_device"])
    fitting = [r["batch_per_device"] for r in done if r["fits"]]
    out = {"measured": max(fitting) if fitting else 0, "per_sample_bytes": None, "estimate": None}
    if len(done) >= 2:
        a, b = done[-2], done[-1]
        step = b["batch_per_device"] - a["batch_per_device"]
        slope = (b["total_bytes"] - a["total_bytes"]) / step
        if slope > 0:
            fixed = b["total_bytes"] - slope * b["batch_per_device"]
            out["per_sample_bytes"] = slope
            out["estimate"] = int((target.headroom * target.memory_bytes - fixed) // slope)
    return out


def run(
    cases: list[dict],
    targets: list[str],
    batches: list[int],
    *,
    chips: int = 1,
    lr_size: int = 32,
    log=None,
    checkpoint=None,
) -> dict:
    """Compiles every (target, case, batch); a case is {"name", "precision", "generator",
    "options", "remat"} (the generator built at that precision, the search options, remat
    or not). Returns
    {"machine", "config", "targets", "rows", "largest"}; `checkpoint(results so far)` is
    called after every row (a long plan keeps what it has)."""
    from benchmark_lib import machine_info

    log = log or (lambda msg: None)
    results = {
        "machine": machine_info(),
        "config": {"batches": batches, "chips": chips, "lr_size": lr_size},
        "targets": {n: dataclasses.asdict(TARGETS[n]) for n in targets},
        "rows": [],
        "largest": [],
    }
    for name in targets:
        target = TARGETS[name]
        devs = devices(target)
        for case in cases:
            done = []
            for batch in batches:
                row = compile_case(
                    case["generator"],
                    target,
                    devs,
                    batch,
                    case.get("options"),
                    chips=chips,
                    lr_size=lr_size,
                    precision=case["precision"],
                    remat=bool(case.get("remat")),
                )
                row["generator"] = case["name"]
                row["remat"] = bool(case.get("remat"))
                done.append(row)
                results["rows"].append(row)
                log(format_row(row))
                jax.clear_caches()
                if checkpoint is not None:
                    checkpoint(results)
            fit = largest_fitting(done, target)
            results["largest"].append(
                dict(fit, target=name, generator=_label(done[0]), precision=case["precision"])
            )
    return results


HEADER = (
    "| target | generator | precision | batch/device | compiles | compile s | arguments GiB "
    "| outputs GiB | temporaries GiB | total GiB | fits | loop collectives | GFLOP/step "
    "| GB/step | roofline s/step | bound | XLA estimate s |"
)


def format_row(r: dict) -> str:
    """One markdown table row (columns of `HEADER`)."""
    head = f"| {r['target']} | {_label(r)} | {r['precision']} "
    head += f"| {r['batch_per_device']} "
    if not r["compiles"]:
        return head + f"| no: {r['error'][:120]} |" + " |" * 12
    parts = ("argument_bytes", "output_bytes", "temp_bytes", "total_bytes")
    gib = [f"{r[k] / GIB:.2f}" for k in parts]
    est = "n/a" if r["xla_estimate_s"] is None else f"{r['xla_estimate_s']:.3g}"
    return (
        head
        + f"| yes | {r['lower_s'] + r['compile_s']:.0f} | "
        + " | ".join(gib)
        + f" | {'yes' if r['fits'] else 'no'} | {len(r['loop_collectives']) or 'none'} "
        f"| {r['flops'] / 1e9:.4g} | {r['bytes_accessed'] / 1e9:.3g} | {r['roofline_s']:.3g} "
        f"| {r['bound']} | {est} |"
    )


def markdown(results: dict) -> str:
    """The results as a markdown section: machine, the table, the largest batch per chip,
    the peaks and their sources."""
    m, cfg = results["machine"], results["config"]
    lines = [
        f"Compiled on: {m['cpu']} ({m['cpu_cores']} cores), JAX {m['jax']}, {m['date']}. "
        f"Inputs {cfg['lr_size']} px, one sweep group on {cfg['chips']} chip(s); "
        f"fits = total at most {100 * GPU_HEADROOM:.0f}% of a GPU's memory (JAX's default "
        f"preallocation), {100 * TPU_HEADROOM:.0f}% of a TPU's. FLOPs and bytes: XLA's count of "
        "the compiled program where it gives one (TPU), else the CPU lowering's; one step "
        "plus the once-per-call work (XLA counts a loop body once). " + results.get("note", ""),
        "",
        summary(results),
        "Every row in full (bound and XLA estimate at the compiled precision):",
        "",
        HEADER,
        "|---|---|---|---:|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---|---:|",
    ]
    lines += [format_row(r) for r in results["rows"]]
    lines += [
        "",
        "| target | generator | precision | largest measured batch that fits | memory per sample "
        "GiB | largest batch (linear estimate) |",
        "|---|---|---|---:|---:|---:|",
    ]
    for f in results["largest"]:
        per = "n/a" if f["per_sample_bytes"] is None else f"{f['per_sample_bytes'] / GIB:.3f}"
        lines.append(
            f"| {f['target']} | {f['generator']} | {f['precision']} | {f['measured']} | {per} "
            f"| {f['estimate'] if f['estimate'] is not None else 'n/a'} |"
        )
    lines += ["", "Peaks (roofline):", ""]
    for name, t in results["targets"].items():
        peaks = ", ".join(f"{k} {v / 1e12:.1f} TFLOP/s" for k, v in t["peaks"].items())
        lines.append(
            f"- {name}: {peaks}; HBM {t['hbm_bytes_per_s'] / 1e12:.2f} TB/s, "
            f"{t['memory_bytes'] / GIB:.0f} GiB. Source: {t['source']}."
        )
    return "\n".join(lines) + "\n"


def bound_s(row: dict, target: Target, precision: str) -> float:
    """The row's roofline bound in s/step at `precision`'s matmul peak (the FLOPs of the
    program as compiled; the bytes where XLA's compiled count gives them)."""
    memory_s = row["bytes_accessed"] / target.hbm_bytes_per_s
    return max(
        row["flops"] / target.peaks[precision],
        memory_s if row["cost_source"] == "compiled" else 0.0,
    )


def summary(results: dict) -> str:
    """The short table (docs/sweeps.md): per row, memory, fit and the bound at both peaks (from the
    compiled program's FLOPs and bytes, whatever precision it was compiled at)."""
    lines = [
        "| target | generator | compiled at | samples/chip | compile s | GiB/chip | fits "
        "| bound s/step 'highest' | bound s/step 'default' | latent-steps/s bound ('default') |",
        "|---|---|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in results["rows"]:
        head = f"| {r['target']} | {_label(r)} | {r['precision']} | {r['batch_per_device']} "
        if not r.get("compiles"):
            found = re.search(r"memory required for HLO temporaries \(([\d.]+\w?)\)", r["error"])
            why = f"XLA: out of memory ({found.group(1)} of temporaries)" if found else "error"
            lines.append(head + f"| does not compile | | no: {why} | | | |")
            continue
        t = TARGETS[r["target"]]
        fast = bound_s(r, t, "default")
        lines.append(
            head + f"| {r['lower_s'] + r['compile_s']:.0f} | {r['total_bytes'] / GIB:.2f} "
            f"| {'yes' if r['fits'] else 'no'} | {bound_s(r, t, 'highest'):.3g} | {fast:.3g} "
            f"| {r['batch_per_device'] / fast:.3g} |"
        )
    return "\n".join(lines) + "\n"


def merge(parts: list[dict]) -> dict:
    """Several plans' results as one (the first one's machine and config), each row's fit
    and the largest batches taken again from the targets here."""
    out = dict(parts[0], rows=[], largest=[], targets={})
    for part in parts:
        out["targets"].update({n: dataclasses.asdict(TARGETS[n]) for n in part["targets"]})
        out["rows"] += part["rows"]
        out["config"] = dict(
            out["config"],
            batches=sorted(set(out["config"]["batches"]) | set(part["config"]["batches"])),
        )
    groups = {}
    for row in out["rows"]:
        target = TARGETS[row["target"]]
        if row.get("compiles"):
            row["fits"] = row["total_bytes"] <= target.headroom * target.memory_bytes
        key = (row["target"], _label(row), row["precision"])
        groups.setdefault(key, []).append(row)
    for (name, generator, precision), rows in groups.items():
        fit = largest_fitting(rows, TARGETS[name])
        out["largest"].append(dict(fit, target=name, generator=generator, precision=precision))
    return out


def _label(row: dict) -> str:
    """The generator's name, marked where the program rematerializes or spans chips."""
    chips = row.get("chips", 1)
    marks = (["remat"] if row.get("remat") else []) + ([f"{chips} chips"] if chips > 1 else [])
    return row.get("generator", "") + (f" ({', '.join(marks)})" if marks else "")


def write(results: dict, out_dir: str | os.PathLike, stem: str = "plan") -> tuple[Path, Path]:
    """Writes `<stem>.json` and `<stem>.md` into `out_dir`; returns their paths."""
    from benchmark_lib import write as write_report

    return write_report(results, out_dir, stem, markdown)
