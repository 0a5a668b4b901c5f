"""Helpers for the hostile-file tests (not library code).

`Asm` writes pickles opcode by opcode, so a test can build what no pickler would
write. `read_isolated` runs readers on files in a fresh Python process
(programs/read_isolated.py) under an address-space limit (`resource.setrlimit`) and a
timeout, and reports how each read ended.
"""

# ruff: noqa: B018  (the pickle assembler's opcodes are properties: `a.mark.tuple`)

from __future__ import annotations

import dataclasses
import json
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]  # the repository
MEMORY_LIMIT = 2 << 30  # bytes of address space for a reader's process (JAX needs ~1.5 GB)
TIME_LIMIT = 60.0  # seconds before a reader's process counts as hung
# What each reader name calls in the child on the file: module:function[:argument ...].
READERS = {
    "torch": "pulse_jax.checkpoints.torch_format:load_torch_checkpoint",
    "state_dict": "pulse_jax.checkpoints.torch_format:load_state_dict",
    "nvidia": "pulse_jax.checkpoints.stylegan_tf:read_nvidia_pickle",
    "stylegan2": "pulse_jax.checkpoints.stylegan2_formats:read_stylegan2",
    "weights": "pulse_jax.checkpoints.weights_file:load_weights",
    "lpips": "pulse_jax.checkpoints.fetch.lpips:read_ckpt:alexnet",
    "generator": "pulse_jax.checkpoints.loading:load_generator",
    "image": "pulse_jax.images:load_image",
}
PROGRAMS = Path(__file__).parent / "programs"


@dataclasses.dataclass
class Outcome:
    refused: str | None  # the CheckpointError/ImageError message, None if it read
    seconds: float
    max_rss_mb: float  # of the child process so far (its peak, JAX's import included)


def read_isolated(cases: dict[str, tuple[str, Path]], *, memory: int = MEMORY_LIMIT):
    """Runs each case's reader (`READERS[reader]`) on its file, in turn, in one child process
    under an address-space limit; fails the test on a crash, another exception or a hang.

    Args:
      cases: name -> (reader, path).

    Returns:
      name -> `Outcome`.
    """
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    listing = [(name, READERS[reader], str(path)) for name, (reader, path) in cases.items()]
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, PROGRAMS / "read_isolated.py", str(memory), json.dumps(listing)],
        capture_output=True,
        text=True,
        timeout=TIME_LIMIT,
        env=env,
    )
    outcomes = {}
    last = None
    for line in done.stdout.splitlines():
        if line.startswith("START "):
            last = line[len("START ") :]
        elif line.startswith("OUTCOME "):
            found = json.loads(line[len("OUTCOME ") :])
            name = found.pop("name")
            outcomes[name] = Outcome(**found)
    assert done.returncode == 0 and len(outcomes) == len(cases), (
        f"the reader of case {last} ended with status {done.returncode} after "
        f"{time.perf_counter() - start:.1f} s: {done.stderr[-2000:]}"
    )
    return outcomes


def assert_refused(outcome: Outcome, path, match: str | None = None) -> None:
    """The reader refused `path` in one short line naming it, within a few seconds."""
    assert outcome.refused is not None, f"{path} was read without being refused"
    assert "\n" not in outcome.refused and str(path) in outcome.refused
    assert len(outcome.refused) < 1000, outcome.refused[:200]
    assert outcome.seconds < 10, outcome.seconds
    if match is not None:
        assert match in outcome.refused, outcome.refused


class Asm:
    """A pickle written opcode by opcode (protocol-2 forms plus what a test needs)."""

    def __init__(self, proto: int = 2):
        self.data = bytearray(b"\x80" + bytes([proto]))
        self.memo = 0

    def op(self, code: bytes) -> Asm:
        self.data += code
        return self

    def glob(self, module: str, name: str) -> Asm:
        return self.op(b"c" + f"{module}\n{name}\n".encode())

    def str(self, text: str) -> Asm:
        raw = text.encode()
        return self.op(b"X" + struct.pack("<I", len(raw)) + raw)

    def bytes(self, raw: bytes) -> Asm:
        return self.op(b"B" + struct.pack("<I", len(raw)) + raw)

    def int(self, value: int) -> Asm:
        if 0 <= value < 1 << 31:
            return self.op(b"J" + struct.pack("<i", value))
        raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
        return self.op(b"\x8a" + bytes([len(raw)]) + raw)

    def put(self) -> int:
        self.op(b"r" + struct.pack("<I", self.memo))
        self.memo += 1
        return self.memo - 1

    def get(self, index: int) -> Asm:
        return self.op(b"j" + struct.pack("<I", index))

    mark = property(lambda self: self.op(b"("))
    tuple = property(lambda self: self.op(b"t"))
    empty_tuple = property(lambda self: self.op(b")"))
    empty_dict = property(lambda self: self.op(b"}"))
    empty_list = property(lambda self: self.op(b"]"))
    none = property(lambda self: self.op(b"N"))
    false = property(lambda self: self.op(b"\x89"))
    reduce = property(lambda self: self.op(b"R"))
    build = property(lambda self: self.op(b"b"))
    setitem = property(lambda self: self.op(b"s"))
    setitems = property(lambda self: self.op(b"u"))
    append = property(lambda self: self.op(b"a"))
    dup = property(lambda self: self.op(b"2"))
    newobj = property(lambda self: self.op(b"\x81"))
    binpersid = property(lambda self: self.op(b"Q"))

    def tuple2(self) -> Asm:
        return self.op(b"\x86")

    def stop(self) -> bytes:
        return bytes(self.data + b".")


# --- pickle pieces: numpy arrays as NVIDIA's pickles hold them, the formats' first globals -----

NUMPY = "numpy.core.multiarray"
PERSISTENCE = ("torch_utils.persistence", "_reconstruct_persistent_obj")
NETWORK = ("dnnlib.tflib.network", "Network")


def dtype(a: Asm, code: str) -> Asm:
    return a.glob("numpy", "dtype").mark.str(code).false.op(b"\x88").tuple.reduce


def simple_dtype(a: Asm, code="f4", state=None) -> Asm:
    dtype(a, code).mark.int(3).str("<").none.none.none.int(-1).int(-1).int(0).tuple
    return a.build if state is None else a


def array(a: Asm, shape, raw: bytes, make_dtype=simple_dtype) -> Asm:
    a.glob(NUMPY, "_reconstruct").glob("numpy", "ndarray").mark.int(0).tuple
    a.op(b"C\x01b").op(b"\x87").reduce
    a.mark.int(1).mark
    for n in shape:
        a.int(n)
    a.tuple
    make_dtype(a)
    return a.false.bytes(raw).tuple.build


def dag(a: Asm, depth=40) -> Asm:
    """`depth` nested pairs of one object: 2**depth leaves from a few bytes."""
    a.empty_tuple
    for _ in range(depth):
        a.dup.tuple2()
    return a


def ada(a: Asm) -> Asm:
    """Starts an ADA pickle: names the persistence global first (how the format is told)."""
    return a.glob(*PERSISTENCE).op(b"0")


def tf(a: Asm) -> Asm:
    return a.glob(*NETWORK).op(b"0")


# --- images -----------------------------------------------------------------------------


def png_with_size(path, width, height):
    """A valid small PNG whose IHDR then claims `width` x `height` (CRC recomputed)."""
    Image.fromarray(np.full((4, 4, 3), 128, np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
