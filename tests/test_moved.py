"""Old names keep working for a release: module paths from before the package was grouped by
role (pulse_jax/_moved.py) and renamed launcher flags (pulse_jax/runs/cli.py:
define_old_name, take_old_names)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.launchers import launcher

from pulse_jax import _moved

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "experiments" / "examples"


def _forget(name: str) -> None:
    """Makes the next import of old path `name` a first one (the warning is given once per
    process); the module at its new path stays loaded."""
    sys.modules.pop(name, None)
    parent, _, child = name.rpartition(".")
    if parent in sys.modules and child in vars(sys.modules[parent]):
        delattr(sys.modules[parent], child)


def _import_fresh(name: str):
    _forget(name)
    return importlib.import_module(name)


# -- module paths ---------------------------------------------------------------------------


@pytest.mark.parametrize("old, new", sorted(_moved.MOVED.items()))
def test_old_module_path_is_the_new_module_with_a_warning(old, new):
    module = importlib.import_module(new)
    with pytest.warns(FutureWarning, match=f"{old} moved to {new}; import it from there"):
        aliased = _import_fresh(old)
    assert aliased is module
    assert module.__name__ == new and module.__spec__.name == new  # its own spec kept


def test_from_package_import_old_name():
    _forget("pulse_jax.engine")
    with pytest.warns(FutureWarning, match="pulse_jax.runs.engine"):
        from pulse_jax import engine
    from pulse_jax.runs import engine as new

    assert engine is new


def test_new_paths_are_not_aliased():
    finder = _moved._Finder()
    for new in _moved.MOVED.values():
        assert finder.find_spec(new) is None and importlib.util.find_spec(new).origin
    assert finder.find_spec("pulse_jax.engine").loader.new == "pulse_jax.runs.engine"


def test_removed_module_names_its_replacement():
    with pytest.raises(ImportError, match=r"pulse_jax.pipeline no longer exists: .*engine.run"):
        import pulse_jax.pipeline  # noqa: F401
    assert "pulse_jax.pipeline" not in sys.modules


def test_old_path_of_an_unknown_module_is_not_aliased():
    with pytest.raises(ModuleNotFoundError) as raised:
        importlib.import_module("pulse_jax.no_such_module")
    assert "moved" not in str(raised.value)


@pytest.mark.slow
def test_python_m_old_path_runs_the_new_module(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pulse_jax.convert", "stylegan2",
         "--checkpoint", str(tmp_path / "missing.pkl"), "--out", str(tmp_path / "out.npz")],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    new = "python -m pulse_jax.checkpoints.convert"
    assert lines[0] == f"note: python -m pulse_jax.convert is now {new}"
    assert proc.returncode == 1 and len(lines) == 2, proc.stderr  # the new module's refusal
    assert lines[1].startswith("error: ") and "missing.pkl" in lines[1]
    assert not (tmp_path / "out.npz").exists()


# -- flag names -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_py():
    return launcher("run")


def test_run_duplicates_is_samples(run_py, tmp_path, capsys, dcgan64):
    del dcgan64  # weights ready
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(EXAMPLES / "dcgan_seed0.png", folder / "face.png")
    out = tmp_path / "out"
    argv = ["run.py", "--input_dir", str(folder), "--output_dir", str(out), "--steps", "1"]
    assert run_py.run([*argv, "--duplicates", "2"]) == 0
    assert "note: --duplicates is now --samples" in capsys.readouterr().err.splitlines()
    lines = (out / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["sample"] for line in lines] == [0, 1]


def test_run_duplicates_and_samples_refused(run_py, tmp_path, capsys):
    argv = ["run.py", "--input_dir", str(tmp_path), "--output_dir", str(tmp_path / "out")]
    assert run_py.run([*argv, "--duplicates", "2", "--samples", "3"]) == 2
    err = capsys.readouterr().err
    assert err == "error: give --samples only (--duplicates is its old name)\n"
    assert not (tmp_path / "out").exists()


def test_run_without_old_names_says_nothing(run_py, tmp_path, capsys):
    # The old name's value is not carried from one in-process call to the next.
    argv = ["run.py", "--input_dir", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path)]
    assert run_py.run([*argv, "--duplicates", "2"]) == 2
    assert "note: --duplicates" in capsys.readouterr().err
    assert run_py.run(argv) == 2
    assert "note:" not in capsys.readouterr().err


def _evaluate(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "evaluate.py"), *map(str, args)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip


@pytest.mark.slow
def test_evaluate_seeds_is_samples(tmp_path, dcgan64):
    del dcgan64  # weights ready
    out = tmp_path / "eval"
    done = _evaluate("--synthetic", 1, "--seeds", 2, "--steps", 1, "--output_dir", out)
    assert done.returncode == 0, done.stderr
    assert "note: --seeds is now --samples" in done.stderr.splitlines()
    report = json.loads((out / "report.json").read_text())
    assert report["aggregate"]["samples_per_face"] == 2
    both = _evaluate("--synthetic", 1, "--seeds", 2, "--samples", 2, "--output_dir", tmp_path / "b")
    assert both.returncode == 2
    assert both.stderr == "error: give --samples only (--seeds is its old name)\n"
    assert not (tmp_path / "b").exists()
