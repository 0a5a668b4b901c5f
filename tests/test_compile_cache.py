"""The launchers' persistent compilation cache (pulse_jax/runs/compile_cache.py,
--compilation_cache):
a second process reads what the first compiled."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from pulse_jax.runs import compile_cache

ROOT = Path(__file__).resolve().parents[1]
HIT = "Persistent compilation cache hit"


def test_default_folder(monkeypatch, tmp_path):
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "mine"))
    assert compile_cache.default_dir() == str(tmp_path / "mine")
    monkeypatch.setenv(compile_cache.ENV, "")
    assert compile_cache.default_dir() == ""  # off
    monkeypatch.delenv(compile_cache.ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.default_dir() == str(tmp_path / "xdg" / "pulse_jax" / "compilation")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert compile_cache.default_dir() == str(tmp_path / "home/.cache/pulse_jax/compilation")


def test_empty_folder_leaves_the_cache_off():
    before = jax.config.values["jax_compilation_cache_dir"]
    assert compile_cache.enable("") is None
    assert compile_cache.enable(None) is None
    assert jax.config.values["jax_compilation_cache_dir"] == before


def _launch(inputs: Path, out: Path, cache: Path) -> str:
    """experiments/run.py in its own process; returns its stderr (JAX logs each cache hit)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_LOG_COMPILES="1")
    env.pop("XLA_FLAGS", None)
    command = [sys.executable, "experiments/run.py", "--input_dir", inputs, "--output_dir", out,
               "--steps", "3", "--compilation_cache", cache]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stderr


def _l2(out: Path) -> list[float]:
    lines = (out / "results.jsonl").read_text().splitlines()
    return [row["l2"] for row in map(json.loads, lines) if "l2" in row]


@pytest.mark.slow
def test_a_second_launch_reads_the_programs_the_first_compiled(tmp_path, dcgan64):
    del dcgan64  # weights ready before the launches
    inputs, cache = tmp_path / "in", tmp_path / "cache"
    inputs.mkdir()
    shutil.copy(ROOT / "experiments" / "examples" / "dcgan_seed0.png", inputs)
    first = _launch(inputs, tmp_path / "first", cache)
    entries = sorted(p.name for p in cache.iterdir())
    assert entries and HIT not in first
    second = _launch(inputs, tmp_path / "second", cache)
    assert HIT in second
    assert sorted(p.name for p in cache.iterdir()) == entries  # nothing compiled anew
    assert _l2(tmp_path / "second") == _l2(tmp_path / "first") != []
