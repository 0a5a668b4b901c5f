"""Sweeps: shared by two processes joined by `jax.distributed`, killed and resumed.

The sweeps here run `experiments/sweep.py` in subprocesses (the two-process run and the
killed run need separate interpreters) and compare against one uninterrupted
single-process sweep run in this process with the same settings. Results are compared
exactly: the manifest's float L2 and best step, and the bytes of every PNG.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers.two_processes import run_two_processes

from pulse_jax import SearchOptions, solve
from pulse_jax.images import load_image, save_image
from pulse_jax.runs import distributed, engine, layout, store
from pulse_jax.runs import sweep as sweeps
from pulse_jax.runs.config import ConfigError, SearchConfig
from pulse_jax.runs.inputs import load_inputs

ROOT = Path(__file__).resolve().parents[1]
SEEDS = (0, 1)
SAMPLES = 2
INPUTS = 4
STEPS = 4
FLAGS = [
    f"--seeds={','.join(map(str, SEEDS))}",
    f"--samples={SAMPLES}",
    f"--steps={STEPS}",
    "--batch_per_device=1",
    "--log_interval=0",
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    for i in range(INPUTS):
        save_image(folder / f"face{i}.png", rng.uniform(0.2, 0.8, (16, 16, 3)))
    return folder


def sweep_config(inputs: Path, out: Path, **changes) -> engine.Work:
    """The sweep of `FLAGS` over `inputs` into `out`, with `changes`."""
    fields = dict(search=SearchConfig(options=SearchOptions(steps=STEPS)), seeds=SEEDS,
                  samples=SAMPLES, batch_per_device=1, log_interval=0)  # fmt: skip
    return engine.Work.for_sweep(str(inputs), str(out), **fields | changes)


@pytest.fixture(scope="module")
def reference(inputs, dcgan64, tmp_path_factory) -> Path:
    """One uninterrupted single-process sweep."""
    out = tmp_path_factory.mktemp("reference")
    summary = sweeps.run_sweep(sweep_config(inputs, out), dcgan64, log=io.StringIO())
    assert summary.total("done") == INPUTS * len(SEEDS) * SAMPLES
    return out


def read_records(out: Path) -> list[dict]:
    """Every record of every process's shard."""
    return store.read_records(out, store.SWEEP_MANIFEST)


def sweep_command(inputs: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "experiments/sweep.py",
        f"--input_dir={inputs}",
        f"--output_dir={out}",
        *FLAGS,
        *extra,
    ]


def results(out: Path) -> dict:
    """(input, seed, sample) -> (l2, best_step, hr bytes, lr bytes); asserts each is
    recorded once."""
    records = read_records(out)
    keys = [(r["input"], r["seed"], r["sample"]) for r in records]
    assert len(keys) == len(set(keys)), "a result is recorded twice"
    return {
        key: (r["l2"], r["best_step"], (out / r["hr"]).read_bytes(), (out / r["lr"]).read_bytes())
        for key, r in zip(keys, records, strict=True)
    }


def assert_same_results(out: Path, reference: Path) -> None:
    got, want = results(out), results(reference)
    assert len(want) == INPUTS * len(SEEDS) * SAMPLES
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == want[key], f"{key} differs"


def kill_after_lines(command: list[str], env: dict, shard: Path, lines: int) -> None:
    """Runs `command` and kills it (SIGKILL) once `shard` holds `lines` complete lines."""
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 300
        while not (shard.exists() and shard.read_bytes().count(b"\n") >= lines):
            assert proc.poll() is None, "the sweep ended before the kill"
            assert time.monotonic() < deadline, f"not {lines} results within 300 s"
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_two_processes_share_one_sweep(inputs, reference, tmp_path):
    out = tmp_path / "out"
    logs = run_two_processes(
        lambda address, i: sweep_command(
            inputs,
            out,
            f"--coordinator_address={address}",
            "--num_processes=2",
            f"--process_id={i}",
        )
    )
    # Each process wrote its own shard, half of the results, and nothing twice.
    records = read_records(out)
    half = INPUTS * len(SEEDS) * SAMPLES // 2
    assert [sum(r["process"] == i for r in records) for i in range(2)] == [half, half]
    assert sorted(p.name for p in out.glob("manifest.*.jsonl")) == [
        "manifest.0.jsonl",
        "manifest.1.jsonl",
    ]
    assert_same_results(out, reference)
    # The summary of both hosts was gathered on process 0.
    assert "on 2 processes" in logs[0] and "process 1: 8 computed" in logs[0]
    summary = json.loads((out / sweeps.SUMMARY).read_text())
    assert [p["done"] for p in summary["per_process"]] == [8.0, 8.0]


@pytest.mark.slow
def test_killed_sweep_resumes_without_losing_or_repeating_results(inputs, reference, tmp_path):
    out = tmp_path / "out"
    shard = out / "manifest.0.jsonl"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    kill_after_lines(sweep_command(inputs, out), env, shard, 1)
    total = INPUTS * len(SEEDS) * SAMPLES
    done = read_records(out)
    assert 1 <= len(done) < total, f"killed after {len(done)} of {total}: not midway"
    # Every visible file is whole (temporary files are hidden until renamed).
    for png in out.rglob("*.png"):
        load_image(png)
    # Also what a kill can leave in between: a torn manifest line, and the images of a
    # result without its line (written, not recorded).
    recorded = {(r["input"], r["seed"], r["sample"]) for r in done}
    orphan = next(
        (f"face{i}.png", s, k)
        for i in range(INPUTS)
        for s in SEEDS
        for k in range(SAMPLES)
        if (f"face{i}.png", s, k) not in recorded
    )
    orphan_png = out / f"seed_{orphan[1]}" / orphan[0].removesuffix(".png")
    orphan_png = orphan_png / f"sample_{orphan[2]}_hr.png"
    save_image(orphan_png, np.zeros((64, 64, 3)))
    with open(shard, "ab") as f:
        f.write(b'{"input": "face3.png", "se')

    done = subprocess.run(
        sweep_command(inputs, out), cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert f"{len(recorded)} of its {total} results already done" in done.stderr
    assert shard.read_bytes().endswith(b"\n")
    assert_same_results(out, reference)


EIGHT_SEEDS = (0, 1, 2, 3, 4, 5)  # 48 results: 24 groups of 2, three calls on 8 devices


@pytest.fixture(scope="module")
def reference_groups_of_two(inputs, dcgan64, tmp_path_factory) -> Path:
    """One uninterrupted sweep on one device, `batch_per_device` 2."""
    out = tmp_path_factory.mktemp("reference2")
    config = sweep_config(inputs, out, seeds=EIGHT_SEEDS, batch_per_device=2)
    sweeps.run_sweep(config, dcgan64, devices=jax.local_devices()[:1], log=io.StringIO())
    return out


@pytest.mark.slow
def test_killed_and_resumed_on_eight_devices_equals_one_device_byte_for_byte(
    inputs, reference_groups_of_two, tmp_path
):
    # Groups of two on 8 forced devices, SIGKILL at a random point between calls, one
    # recorded line dropped (a half-recorded group), then resumed: every result equals
    # the uninterrupted 1-device sweep bit for bit (the same fixed groups).
    out = tmp_path / "out"
    shard = out / "manifest.0.jsonl"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    command = sweep_command(inputs, out, "--batch_per_device=2")
    command[command.index(f"--seeds={','.join(map(str, SEEDS))}")] = (
        f"--seeds={','.join(map(str, EIGHT_SEEDS))}"
    )
    total = INPUTS * len(EIGHT_SEEDS) * SAMPLES
    kill_after = int(np.random.default_rng(int(time.time())).integers(1, total - 16))
    kill_after_lines(command, env, shard, kill_after)
    lines = shard.read_bytes().split(b"\n")[:-1]
    assert 16 <= len(lines) < total, f"killed after {len(lines)} of {total}: not midway"
    shard.write_bytes(b"\n".join(lines[:-1]) + b"\n")  # the last group now half recorded
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    assert f"{len(lines) - 1} of its {total} results already done" in done.stderr
    got, want = results(out), results(reference_groups_of_two)
    assert len(want) == total and got.keys() == want.keys()
    for key in want:
        assert got[key] == want[key], f"{key} differs (killed after {kill_after} lines)"
    # Another batch_per_device would form other groups: refused before anything is written.
    before = shard.read_bytes()
    other = [c if c != "--batch_per_device=2" else "--batch_per_device=4" for c in command]
    refused = subprocess.run(other, cwd=ROOT, env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "--batch_per_device 2, not 4" in refused.stderr
    assert shard.read_bytes() == before


def test_groups_are_fixed_chunks_of_the_work_list(inputs):
    loaded, _ = load_inputs(inputs, 64)
    items = engine.work_list(loaded, (3, 5), 2)
    groups = engine.work_groups(items, 3)
    assert [len(g.items) for g in groups] == [3, 3, 3, 3, 3, 1]
    assert [w for g in groups for w in g.items] == items
    assert groups[-1].rows() == [items[-1]] * 3  # padded by repeating the last result
    assert groups[1].record(2) == {"index": 1, "position": 2, "batch_per_device": 3,
                                   "members": [[0, 5, 1], [1, 3, 0], [1, 3, 1]]}  # fmt: skip
    # Dealt to processes whole: a group never spans two processes.
    assert distributed.process_share(groups, 1, 2) == groups[1::2]


def test_settings_that_differ_are_refused(inputs, reference, dcgan64, tmp_path):
    out = tmp_path / "out"
    first = read_records(reference)[0]
    out.mkdir()
    (out / "manifest.0.jsonl").write_text(json.dumps(first) + "\n")
    search = SearchConfig(options=SearchOptions(steps=STEPS + 1))
    config = sweep_config(inputs, out, search=search)
    with pytest.raises(ConfigError, match="steps 4 -> 5"):
        sweeps.run_sweep(config, dcgan64)
    # More seeds or samples with the same settings extend the sweep instead.
    loaded = load_inputs(inputs, 64)[0]
    folders = {f"seed_{s}/{i.name}": i.path.name for i in loaded for s in (*SEEDS, 7)}
    store.check_records([first], loaded, _settings(dcgan64), ("batch_per_device", 1), folders)


def _settings(generator) -> dict:
    settings = SearchConfig(options=SearchOptions(steps=STEPS)).settings(generator)
    settings.pop("seed")
    return settings


def test_every_item_has_exactly_one_owner():
    items = list(range(23))
    shares = [distributed.process_share(items, i, 4) for i in range(4)]
    assert sorted(sum(shares, [])) == items
    assert all(abs(len(a) - len(b)) <= 1 for a in shares for b in shares)
    with pytest.raises(ValueError):
        distributed.process_share(items, 4, 4)


def test_a_torn_last_line_is_not_a_record(tmp_path):
    shard = tmp_path / "manifest.3.jsonl"
    record = {"input": "a.png", "seed": 1, "sample": 0}
    shard.write_text(json.dumps(record) + "\n" + '{"input": "b.png", "se')
    assert read_records(tmp_path) == [record]
    store.cut_torn_line(shard)
    assert shard.read_text() == json.dumps(record) + "\n"


def test_gather_on_one_process_is_the_row_itself():
    np.testing.assert_array_equal(distributed.gather([1, 2.5]), [[1, 2.5]])


def test_work_list_order_and_paths(inputs):
    items, _ = load_inputs(inputs, 64)
    work = engine.work_list(items, (3, 5), 2)
    assert [(w.input.image_id, w.seed, w.sample) for w in work[:5]] == [
        (0, 3, 0),
        (0, 3, 1),
        (0, 5, 0),
        (0, 5, 1),
        (1, 3, 0),
    ]
    folder = layout.result_folder(work[3].input.name, work[3].seed, seed_folders=True)
    assert layout.sample_paths(folder, work[3].sample)["hr"] == "seed_5/face0/sample_1_hr.png"
    assert dataclasses.replace(work[0], sample=1).key == ("face0.png", 3, 1)


def test_a_manifest_line_is_reproducible_on_its_own(inputs, reference, dcgan64):
    record = read_records(reference)[5]
    lr = load_image(inputs / record["input"])
    result = solve(
        lr[None],
        dcgan64,
        steps=STEPS,
        seed=record["seed"],
        image_ids=[record["image_id"]],
        sample_ids=[[record["sample"]]],
        batch_per_device=1,
        devices=jax.local_devices()[:1],
    )
    assert float(result.l2[0, 0]) == record["l2"]
    assert int(result.best_step[0, 0]) == record["best_step"]
    # The same through the line's own group (here a group of one), as the sweep ran it.
    loaded, _ = load_inputs(inputs, 64)
    search = SearchConfig(options=SearchOptions(steps=STEPS))
    again, row = engine.recompute(record, loaded, dcgan64, search)
    assert float(again.l2[row, 0]) == record["l2"]
    assert record["group"]["members"] == [[record["image_id"], record["seed"], record["sample"]]]
    assert set(record["machine"]) == {"jax", "jaxlib", "platform", "device_kind", "cpu"}


def test_sweep_with_an_operator(inputs, dcgan64, tmp_path):
    out = tmp_path / "out"
    search = SearchConfig(options=SearchOptions(steps=2, operator="colorize"))
    config = sweep_config(inputs, out, search=search, seeds=(0,), samples=1)
    sweeps.run_sweep(config, dcgan64, log=io.StringIO())
    records = read_records(out)
    assert len(records) == INPUTS and all(r["settings"]["operator"] == "colorize" for r in records)
    lr = load_image(out / records[0]["lr"])  # the generated face's grey downscale
    np.testing.assert_allclose(lr[..., 0], lr[..., 2], atol=1 / 255)
