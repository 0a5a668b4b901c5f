"""Helpers for the hostile-file tests (not library code).

`Asm` writes pickles opcode by opcode, so a test can build what no pickler would
write. `read_isolated` runs one reader on one file in a fresh Python process under an
address-space limit (`resource.setrlimit`) and a timeout, and reports how it ended.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MEMORY_LIMIT = 2 << 30  # bytes of address space for a reader's process (JAX needs ~1.5 GB)
TIME_LIMIT = 60.0  # seconds before a reader's process counts as hung
# What each reader name calls in the child; `path` is the file.
READERS = {
    "torch": "from pulse_jax.checkpoints.torch_format import load_torch_checkpoint as r; r(path)",
    "state_dict": "from pulse_jax.checkpoints.torch_format import load_state_dict as r; r(path)",
    "nvidia": "from pulse_jax.checkpoints.stylegan_tf import read_nvidia_pickle as r; r(path)",
    "stylegan2": "from pulse_jax.checkpoints.stylegan2_formats import read_stylegan2 as r; r(path)",
    "weights": "from pulse_jax.checkpoints.weights_file import load_weights as r; r(path)",
    "lpips": "from pulse_jax.checkpoints.fetch.lpips import read_ckpt as r; r(path, 'alexnet')",
    "generator": "from pulse_jax.checkpoints.loading import load_generator as r; r(path)",
    "image": "from pulse_jax.images import load_image as r; r(path)",
}
_CHILD = """
import json, resource, sys, time
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from pulse_jax.checkpoints import CheckpointError
from pulse_jax.images import ImageError
{PEAK}
for name, reader, path in json.loads(sys.argv[2]):
    print("START " + name, flush=True)
    start = time.perf_counter()
    outcome = {"name": name, "refused": None}
    try:
        exec(reader, {"path": path})
    except (CheckpointError, ImageError) as e:
        outcome["refused"] = str(e)
    outcome["seconds"] = time.perf_counter() - start
    outcome["max_rss_mb"] = peak_mb()
    print("OUTCOME " + json.dumps(outcome), flush=True)
"""


# The peak resident memory of this process since it started (VmHWM: unlike ru_maxrss, which
# Linux carries over from the parent that forked the process, it starts again at exec).
PEAK = """
def peak_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
"""
_CHILD = _CHILD.replace("{PEAK}", PEAK)


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
        [sys.executable, "-c", _CHILD, str(memory), json.dumps(listing)],
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
