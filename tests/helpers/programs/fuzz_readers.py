"""Mutates each base file many times and reads every mutant, under an address-space limit
(tests/test_fuzz_readers.py): a read must succeed or raise CheckpointError.

    python tests/helpers/programs/fuzz_readers.py LIMIT_BYTES COUNTS_JSON SEED FILES_JSON SCRATCH

Prints one line "REPORT {json}" (cases, read, refused, failures, worst seconds, peak MB).
"""

# ruff: noqa: E402  (the address-space limit and the path to helpers/ come before imports)

import io
import json
import pickletools
import re
import resource
import sys
import time
import traceback
import zipfile
from pathlib import Path

limit, counts, seed = int(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/, for helpers
import numpy as np
from helpers.memory import peak_mb

from pulse_jax.checkpoints import CheckpointError, weights_file
from pulse_jax.checkpoints.stylegan2_formats import read_stylegan2
from pulse_jax.checkpoints.stylegan_tf import read_nvidia_pickle
from pulse_jax.checkpoints.torch_format import load_torch_bytes

OPCODES = [op.code.encode("latin1") for op in pickletools.opcodes]
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
        del data[rng.integers(len(data)) :]
    elif kind == 2:
        spots = [i for i in rng.integers(len(data), size=64) if bytes([data[i]]) in OPCODES]
        for i in spots[: rng.integers(1, 4)]:
            data[i] = OPCODES[rng.integers(len(OPCODES))][0]
    elif kind == 3:
        a = rng.integers(len(data))
        b = min(len(data), a + rng.integers(1, 64))
        at = rng.integers(len(data))
        data[at:at] = data[a:b] * int(rng.integers(1, 4))
    else:
        at = rng.integers(max(1, len(data) - 8))
        data[at : at + 4] = int(rng.integers(2**31)).to_bytes(4, "little")
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
        except BaseException:
            report["failures"].append(f"{fmt} case {case}: {traceback.format_exc()[-1500:]}")
        report["worst_seconds"] = max(report["worst_seconds"], time.perf_counter() - start)
        report["cases"] += 1
report["max_rss_mb"] = peak_mb()
print("REPORT " + json.dumps(report))
