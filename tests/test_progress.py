"""Progress from inside the compiled search: `solve(progress=fn, progress_every=k)`.

What is bitwise by construction: the program with reports is the program without, plus a
conditional host callback that only reads the state (its compiled instructions contain
every instruction of the plain program, `test_reports_add_instructions_and_change_none`),
so the results are equal to the last bit.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import re
import shutil
from pathlib import Path

import chex
import jax
import numpy as np
import pytest
from helpers.generators import small_stylegan_generator

import pulse_jax
from pulse_jax import SearchOptions, search
from pulse_jax.runs import engine
from pulse_jax.runs.config import SearchConfig

EXAMPLES = Path(__file__).resolve().parents[1] / "experiments" / "examples"
KWARGS = {"steps": 5, "num_samples": 2, "bad_noise_layers": ()}


@pytest.fixture(scope="module")
def small():
    return small_stylegan_generator(0)


@pytest.fixture(scope="module")
def targets():
    return np.random.default_rng(0).uniform(0.2, 0.8, (2, 8, 8, 3)).astype(np.float32)


def _fields(result):
    return [getattr(result, f.name) for f in dataclasses.fields(result)]


def _best_l2_after(result, steps: int) -> np.ndarray:
    """Each sample's L2 at its lowest-total step among the first `steps` (the first such
    step on ties, as the search keeps it), from the result's history."""
    total, l2 = result.history["TOTAL"][:steps], result.history["L2"][:steps]
    best = np.argmin(total, axis=0)
    return np.take_along_axis(l2, best[None], axis=0)[0]


def test_reports_steps_best_l2_and_successes(small, targets):
    reports = []
    plain = pulse_jax.solve(targets, small, **KWARGS)
    result = pulse_jax.solve(targets, small, progress=reports.append, progress_every=2, **KWARGS)
    assert [r.step for r in reports] == [2, 4, 5]  # every 2 steps and after the last
    assert [r.fraction for r in reports] == [0.4, 0.8, 1.0]
    for r in reports:
        assert (r.steps, r.group, r.groups) == (5, 0, 1)
        assert r.l2.shape == r.success.shape == (2, 2)
        np.testing.assert_array_equal(r.l2, _best_l2_after(result, r.step))
        assert r.best_l2 == float(r.l2.min())
        assert r.below_eps == int(r.success.sum())
    np.testing.assert_array_equal(reports[-1].l2, result.l2)
    np.testing.assert_array_equal(reports[-1].success, result.success)
    for a, b in zip(jax.tree.leaves(_fields(plain)), jax.tree.leaves(_fields(result)), strict=True):
        np.testing.assert_array_equal(a, b)  # bitwise


def _instructions(lowered) -> collections.Counter:
    """The compiled program's instructions without metadata (and so without the source
    locations of the trace) and with every number replaced."""
    lines = lowered.compile().as_text().splitlines()
    lines = (x for x in lines if re.match(r"\s*(ROOT )?%\S+ = ", x))
    lines = (re.sub(r"[0-9]+", "N", re.sub(r", metadata=\{[^}]*\}", "", x)) for x in lines)
    return collections.Counter(x.strip() for x in lines)


def test_reports_add_instructions_and_change_none(small, targets):
    plain = _instructions(pulse_jax.lower(targets, small, **KWARGS))
    reporting = _instructions(pulse_jax.lower(targets, small, progress_every=2, **KWARGS))
    assert not plain - reporting  # every instruction of the plain program is still there
    added = "\n".join(reporting - plain)
    assert "python_cpu_callback" in added and "conditional" in added


def test_groups_report_one_after_the_other(small, targets):
    reports = []
    result = pulse_jax.solve(
        targets,
        small,
        progress=reports.append,
        progress_every=5,
        devices=jax.devices()[:1],
        batch_per_device=3,  # 4 rows: 2 groups of 3, the last padded
        **KWARGS,
    )
    assert [(r.group, r.groups, r.step) for r in reports] == [(0, 2, 5), (1, 2, 5)]
    assert [r.fraction for r in reports] == [0.5, 1.0]
    assert np.isinf(reports[0].l2.reshape(-1)[3]) and np.isfinite(reports[0].l2).sum() == 3
    np.testing.assert_array_equal(reports[1].l2, result.l2)


def test_no_retrace_for_another_listener(small, targets, monkeypatch):
    run_rows, traces = search.run_rows, []

    def counted(*args):
        traces.append(args[0])
        return run_rows(*args)

    monkeypatch.setattr(search, "run_rows", chex.assert_max_traces(counted, n=1))
    kwargs = dict(KWARGS, learning_rate=0.3)  # a program no other test compiles
    first, second = [], []
    pulse_jax.solve(targets, small, seed=1, progress=first.append, **kwargs)
    pulse_jax.solve(targets, small, seed=2, progress=second.append, **kwargs)
    assert len(traces) == 1
    assert [r.step for r in first] == [r.step for r in second] == [1, 2, 3, 4, 5]


def test_an_error_in_the_callback_is_raised_when_the_search_ends(small, targets):
    def fail(report):
        raise RuntimeError(f"stop at {report.step}")

    with pytest.raises(RuntimeError, match="stop at 2"):
        pulse_jax.solve(targets, small, progress=fail, progress_every=2, **KWARGS)
    with pytest.raises(ValueError, match="progress_every"):
        pulse_jax.solve(targets, small, progress=print, progress_every=0, **KWARGS)
    reports = []  # the listener slot is free again
    pulse_jax.solve(targets, small, progress=reports.append, progress_every=2, **KWARGS)
    assert [r.step for r in reports] == [2, 4, 5]


def test_the_progress_line_moves_during_a_call(tmp_path, dcgan64):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(EXAMPLES / "dcgan_seed0.png", folder / "a.png")
    work = engine.Work.for_run(
        str(folder), str(tmp_path / "out"), SearchConfig(options=SearchOptions(steps=4)),
        samples=2, progress_every=2,
    )  # fmt: skip
    work = dataclasses.replace(work, log_interval=0.0)
    log = io.StringIO()
    engine.run(work, dcgan64, log=log)
    lines = [x for x in log.getvalue().splitlines() if x.startswith("pulse ")]
    # One call of 2 rows x 4 steps: reports after steps 2 and 4, then the call's end.
    assert [x.split()[2] for x in lines] == ["4/8", "8/8", "8/8"]
    assert "best_l2=" in lines[0] and re.search(r"below_eps=[0-2]/2", lines[0])
    assert "reached_eps=" in lines[-1]


def test_launchers_report_during_a_call_from_256_px(tmp_path):
    """Below 256 px a call runs for seconds and its program stays cacheable (JAX keeps no
    program with a host callback in its persistent cache): no reports during a call."""
    work = engine.Work.for_run(str(tmp_path), str(tmp_path / "o"))
    assert work.report_every(64) == 0
    assert work.report_every(engine.IN_CALL_PROGRESS_SIDE) == 5
    assert work.report_every(1024) == 5
    assert dataclasses.replace(work, progress_every=3).report_every(64) == 3
    assert dataclasses.replace(work, progress_every=0).report_every(1024) == 0
