"""The plan command (`experiments/plan.py`, `plan_lib`) and the device check's dry run
(`experiments/device_check.sh --dry_run`), on the CPU."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import plan_lib
import pytest

ROOT = Path(__file__).resolve().parents[1]

# A while loop whose body calls a computation holding an all-reduce; one more outside it.
HLO = """HloModule m

%add (a: f32[], b: f32[]) -> f32[] {
  ROOT %s = f32[] add(f32[] %a, f32[] %b)
}

%inner (x: f32[4]) -> f32[4] {
  %x = f32[4] parameter(0)
  ROOT %r = f32[4] all-reduce(f32[4] %x), replica_groups={}, to_apply=%add
}

%body (p: f32[4]) -> f32[4] {
  %p = f32[4] parameter(0)
  ROOT %c = f32[4] call(f32[4] %p), to_apply=%inner
}

%cond (p: f32[4]) -> pred[] {
  ROOT %t = pred[] constant(false)
}

ENTRY %main (x: f32[4]) -> f32[4] {
  %x = f32[4] parameter(0)
  %g = f32[4] all-gather(f32[4] %x), dimensions={0}
  ROOT %w = f32[4] while(f32[4] %g), condition=%cond, body=%body
}
"""


def test_loop_collectives_finds_those_inside_a_loop_only():
    assert plan_lib.loop_collectives(HLO) == ["all-reduce in inner"]
    assert plan_lib.loop_collectives(HLO.replace("all-reduce(", "add(")) == []


def test_largest_fitting_batch_extrapolates_linearly():
    target = plan_lib.TARGETS["tpu-v5e:2x2"]
    gib = 2**30
    rows = [
        {"compiles": True, "batch_per_device": b, "total_bytes": (1 + b) * gib, "fits": True}
        for b in (1, 4)
    ]
    fit = plan_lib.largest_fitting(rows + [{"compiles": False, "batch_per_device": 64}], target)
    assert fit["measured"] == 4 and fit["per_sample_bytes"] == gib
    assert fit["estimate"] == int(target.headroom * target.memory_bytes // gib) - 1


def test_every_target_states_its_peaks_and_sources():
    for target in plan_lib.TARGETS.values():
        assert set(target.peaks) == {"highest", "high", "default"} and target.source
        peaks = target.peaks
        assert peaks["default"] >= peaks["high"] > peaks["highest"] > 0
        assert 0 < target.headroom < 1 and target.hbm_bytes_per_s > 0
        if target.config_file:
            assert (plan_lib.TARGET_DIR / target.config_file).read_text().startswith("#")


@pytest.mark.skipif(
    importlib.util.find_spec("jax_cuda12_plugin") is not None, reason="the cuda extra is here"
)
def test_plan_without_the_extra_is_a_one_line_error():
    done = subprocess.run(
        [sys.executable, "experiments/plan.py", "--target", "h100", "--generator", "stylegan8"],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'experiments'}"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "'cuda' extra" in lines[0], done.stderr


@pytest.mark.slow
def test_device_check_dry_run(tmp_path):
    """The GPU host's script, end to end at tiny sizes on the CPU: every case, the parity,
    both files."""
    done = subprocess.run(
        ["bash", "experiments/device_check.sh", "--dry_run", "--out_dir", str(tmp_path)],
        cwd=ROOT,
        env=dict(os.environ, PYTHON=sys.executable),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "benchmark_gpu.json").read_text())
    cases = {(c["generator"], c["precision"]) for c in results["cases"]}
    assert cases | {tuple(s.split()[:2]) for s in results["skipped"]} == {
        (g, p) for g in ("stylegan8", "stylegan2_8") for p in ("highest", "default")
    }
    assert [p["generator"] for p in results["parity"]] == ["stylegan8", "stylegan2_8"]
    for p in results["parity"]:
        assert all(math.isfinite(p[k]) for k in ("hr_max_abs", "latent_max_abs"))
    assert "Parity" in (tmp_path / "benchmark_gpu.md").read_text()
