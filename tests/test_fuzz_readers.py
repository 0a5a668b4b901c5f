"""Seeded fuzzing of every foreign-file reader (issue 16): valid torch checkpoints (legacy
and zip), an NVIDIA pickle, a weights file, an NVIDIA StyleGAN2-ADA pickle and a
rosinality StyleGAN2 `.pt`, mutated thousands of times (bytes flipped,
the file cut, pickle opcodes swapped, chunks repeated, length fields overwritten; inside
a zip the member is mutated and packed again so the mutation reaches the parser). Half the
mutations aim at issue 21's classes: one SETITEMS of hash-colliding keys, floods of empty
containers or memo entries, names made long or given control characters, sizes set to 0 or
10^9. Every case must read or be refused with a one-line `CheckpointError` without control
characters, nothing else, in a child process under an address-space limit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import ada_writer
import numpy as np
import pytest
import test_nvidia_pickle as official
from hostile import MEMORY_LIMIT, PEAK, ROOT
from test_convert import tiny_dcgan_params
from torch_writer import TensorView, save_torch_legacy, save_torch_zip

from pulse_jax.checkpoints import torch_format, weights_file

pytestmark = pytest.mark.slow  # thousands of mutated files in a child process

GOLDEN = Path(__file__).parent / "golden" / "stylegan2"

# The StyleGAN2 readers take longer per case (every tensor of an ADA pickle is a torch
# payload of its own), so their files get fewer cases.
CASES = {"torch_legacy": 800, "torch_zip": 800, "nvidia": 800, "weights": 800}
CASES |= {"ada": 300, "rosinality": 300}
SEED = 16

_CHILD = r"""
import io, json, pickletools, resource, sys, time, traceback, zipfile
limit, counts, seed = int(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
import numpy as np
from pulse_jax.checkpoints import CheckpointError, weights_file
from pulse_jax.checkpoints.stylegan_tf import read_nvidia_pickle
from pulse_jax.checkpoints.stylegan2_formats import read_stylegan2
from pulse_jax.checkpoints.torch_format import load_torch_bytes

{PEAK}
OPCODES = [op.code.encode("latin1") for op in pickletools.opcodes]
import re
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
files = json.loads(sys.argv[4])
scratch = sys.argv[5]

P = 2**61 - 1  # k * P hashes to 0 for every integer k

def long1(value):
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw

PAIRS = [long1(k * P) + b"N" for k in range(1, 20_001)]

def aimed(data, rng, kind):
    # Mutations aimed at issue 21's classes, each placed where a reader meets it: a
    # self-contained value pushed and popped right after PROTO, or a value of the file
    # rewritten in place.
    at = 2 if data[:1] == b"\x80" else int(rng.integers(len(data)))
    n = int(rng.integers(1_000, 20_000))
    if kind == 5:  # one SETITEMS of keys that all hash alike
        pairs = b"".join(PAIRS[:n])
        data[at:at] = b"}(" + pairs + b"u0"
    elif kind == 6:  # a flood of empty containers or of memo entries
        data[at:at] = rng.choice([b"}", b"]", b"\x8f", b"N\x94"]) * n * 4 + b"1"
    elif kind in (7, 9):  # a name made long, or given control characters
        spots = [m.start() for m in re.finditer(rb"\x8c[\x01-\xff]", data)]
        if spots:
            i = spots[int(rng.integers(len(spots)))]
            length = data[i + 1]
            text = bytes(data[i + 2 : i + 2 + length])
            text = text + b"x" * n if kind == 7 else text[:1] + b"\n\x1b[1A\x1b[2K" + text[1:]
            data[i : i + 2 + length] = b"X" + len(text).to_bytes(4, "little") + text
    else:  # kind 8: a size of 0 or 10^9 where the file has a small integer
        spots = [m.start() for m in re.finditer(rb"K.", data, re.DOTALL)]
        if spots:
            i = spots[int(rng.integers(len(spots)))]
            value = int(rng.choice([0, 10**9, 2**31 - 1]))
            data[i : i + 2] = b"J" + value.to_bytes(4, "little")
    return bytes(data)

def mutate(data, rng):
    data = bytearray(data)
    kind = rng.integers(10)
    if kind >= 5:
        return aimed(data, rng, kind)
    if kind == 0:
        for _ in range(rng.integers(1, 4)):
            data[rng.integers(len(data))] = rng.integers(256)
    elif kind == 1:
        del data[rng.integers(len(data)):]
    elif kind == 2:
        spots = [i for i in rng.integers(len(data), size=64) if bytes([data[i]]) in OPCODES]
        for i in spots[: rng.integers(1, 4)]:
            data[i] = OPCODES[rng.integers(len(OPCODES))][0]
    elif kind == 3:
        a = rng.integers(len(data)); b = min(len(data), a + rng.integers(1, 64))
        at = rng.integers(len(data)); data[at:at] = data[a:b] * int(rng.integers(1, 4))
    else:
        at = rng.integers(max(1, len(data) - 8))
        data[at:at + 4] = int(rng.integers(2**31)).to_bytes(4, "little")
    return bytes(data)

def mutate_member(data, rng, member):
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        records = [(i.filename, archive.read(i)) for i in archive.infolist()]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, raw in records:
            archive.writestr(name, mutate(raw, rng) if name.endswith(member) else raw)
    return buffer.getvalue()

def read(fmt, data):
    if fmt in ("torch_legacy", "torch_zip"):
        return load_torch_bytes("case", data)
    path = f"{scratch}/case.{fmt}"
    with open(path, "wb") as f:
        f.write(data)
    if fmt == "nvidia":
        return read_nvidia_pickle(path)
    if fmt in ("ada", "rosinality"):
        return read_stylegan2(path)
    return weights_file.load_weights(path)

members = {"torch_zip": "data.pkl", "weights": ".npy", "rosinality": "data.pkl"}
report = {"cases": 0, "read": 0, "refused": 0, "unchecked": 0, "worst_seconds": 0.0}
report["failures"] = []
for fmt, path in files.items():
    base = open(path, "rb").read()
    read(fmt, base)  # the unmutated file reads
    for case in range(counts[fmt]):
        rng = np.random.default_rng([seed, case, len(fmt)])
        if fmt in members and case % 2:
            data = mutate_member(base, rng, members[fmt])
        else:
            data = mutate(base, rng)
        start = time.perf_counter()
        try:
            read(fmt, data)
            report["read"] += 1
        except CheckpointError as e:
            assert not CONTROL.search(str(e)) and len(str(e)) < 2000, str(e)[:300]
            report["unchecked"] += "unchecked" in str(e)
            report["refused"] += 1
        except BaseException as e:
            report["failures"].append(f"{fmt} case {case}: {traceback.format_exc()[-1500:]}")
        report["worst_seconds"] = max(report["worst_seconds"], time.perf_counter() - start)
        report["cases"] += 1
report["max_rss_mb"] = peak_mb()
print("REPORT " + json.dumps(report))
"""


def _base_files(folder) -> dict[str, str]:
    rng = np.random.default_rng(0)
    checkpoint = {
        "w": rng.standard_normal((3, 4)).astype(np.float32),
        "n": np.array([1, 2], np.int64),
        "view": TensorView(np.arange(8, dtype=np.float32), 2, (2, 2), (1, 2)),
        "meta": {"epoch": 3, "name": "tiny", "sizes": (1, 2.5, None, True)},
    }
    save_torch_legacy(checkpoint, folder / "legacy.pt")
    save_torch_zip(checkpoint, folder / "zip.pt")
    saved, official.DLATENT = official.DLATENT, 8
    try:
        nvidia, *_ = official.make_case(folder, 16, fmap_base=16, fmap_max=4)
    finally:
        official.DLATENT = saved
    weights = folder / "w.npz"
    config = {"latent_size": 4, "resolution": 64}
    weights_file.save_weights(weights, kind="dcgan", params=tiny_dcgan_params(), config=config)
    ada_writer.write_ada_pickle(
        folder / "ada.pkl", ada_writer.small_tree(GOLDEN / "sg2ada_clamp.pkl")
    )
    golden = torch_format.load_state_dict(GOLDEN / "sg2_rosinality_tiny.pt", "g_ema")
    rosinality = {"g_ema": ada_writer.small_rosinality_state(golden)}
    save_torch_zip(rosinality | {"latent_avg": np.ones(8, np.float32)}, folder / "rosinality.pt")
    files = {"torch_legacy": "legacy.pt", "torch_zip": "zip.pt", "nvidia": nvidia.name}
    files |= {"weights": "w.npz", "ada": "ada.pkl", "rosinality": "rosinality.pt"}
    return {fmt: str(folder / name) for fmt, name in files.items()}


def test_mutated_files_are_read_or_refused_with_a_checkpoint_error(tmp_path):
    files = _base_files(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    argv = [
        sys.executable,
        "-c",
        _CHILD.replace("{PEAK}", PEAK),
        str(MEMORY_LIMIT),
        json.dumps(CASES),
        str(SEED),
    ]
    argv += [json.dumps(files), str(tmp_path)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("REPORT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    report = json.loads(lines[-1][len("REPORT ") :])
    print(
        f"fuzz: {report['cases']} cases, {report['read']} read, {report['refused']} refused "
        f"({report['unchecked']} by the unchecked-error boundary), "
        f"worst {report['worst_seconds']:.3f} s, peak {report['max_rss_mb']:.0f} MB"
    )
    assert not report["failures"], "\n".join(report["failures"][:5])
    assert report["cases"] == sum(CASES.values())
    assert report["refused"] > report["cases"] // 4  # the mutations do reach the parsers
    assert report["worst_seconds"] < 5 and report["max_rss_mb"] < 1024
