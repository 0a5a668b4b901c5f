"""Runs the readers' promise cases in one process under an address-space limit
(tests/test_hostile_promises.py): for each case how it ended, its time, peak memory, what
reference cycles it left, what it wrote on stderr, and whether the good files still read
exactly.

    python tests/helpers/programs/promises.py LIMIT_BYTES GOOD_JSON CASES_JSON

Prints one line "OUTCOME {json}" per case.
"""

# ruff: noqa: E402  (the address-space limit and the path to helpers/ come before imports)

import gc
import hashlib
import json
import os
import resource
import sys
import tempfile
import time
import traceback

limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
import numpy as np

from pulse_jax.checkpoints import CheckpointError, convert
from pulse_jax.checkpoints.loading import load_generator
from pulse_jax.checkpoints.stylegan2_formats import read_stylegan2
from pulse_jax.checkpoints.stylegan_tf import read_nvidia_pickle
from pulse_jax.checkpoints.torch_format import load_torch_checkpoint
from pulse_jax.checkpoints.weights_file import load_weights
from pulse_jax.images import ImageError, load_image
from pulse_jax.runs.inputs import load_inputs

READ = {
    "torch": load_torch_checkpoint,
    "stylegan2": read_stylegan2,
    "nvidia": read_nvidia_pickle,
    "generator": load_generator,
    "image": load_image,
}


def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024


def digest(value):
    h = hashlib.sha256()

    def walk(v):
        if isinstance(v, dict):
            for k in v:
                h.update(repr(k).encode())
                walk(v[k])
        elif hasattr(v, "__array__") and not isinstance(v, str):
            v = np.asarray(v)
            h.update(v.dtype.str.encode() + repr(v.shape).encode() + v.tobytes())
        elif hasattr(v, "state") and isinstance(v.state, dict):
            walk(v.state)
        elif hasattr(v, "params"):
            walk(v.params)

    walk(value)
    return h.hexdigest()


def in_cycles():
    # MB that reference cycles left by the case hold: what a collection would free (the
    # objects in cycles, and the arrays, bytes and strings they reach within 3 steps).
    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.collect()
    held, seen, level = 0, set(), list(gc.garbage)
    for _ in range(3):
        following = []
        for o in level:
            if id(o) in seen:
                continue
            seen.add(id(o))
            held += o.nbytes if isinstance(o, np.ndarray) else sys.getsizeof(o)
            following += gc.get_referents(o)
        level = following
    gc.garbage.clear()
    gc.set_debug(0)
    return held / 2**20


good = json.loads(sys.argv[2])


def read_good():
    return [
        digest(READ[kind](path) if kind != "weights" else load_weights(path)) for kind, path in good
    ]


reference = read_good()
err = tempfile.TemporaryFile()
saved = os.dup(2)
for name, kind, target in json.loads(sys.argv[3]):
    gc.collect()
    open("/proc/self/clear_refs", "w").write("5")
    outcome = {"name": name, "base_mb": status("VmRSS:")}
    sys.stderr.flush()
    err.seek(0)
    err.truncate()
    os.dup2(err.fileno(), 2)
    start = time.perf_counter()
    try:
        if kind == "convert":
            outcome["status"] = convert.main(target)
        elif kind == "inputs":
            inputs, errors = load_inputs(target, 64)
            outcome["refused"] = " | ".join(str(e) for e in errors) if errors else None
        else:
            READ[kind](target)
            outcome["refused"] = None
    except (CheckpointError, ImageError) as e:
        outcome["refused"] = str(e)
    except BaseException as e:
        outcome["crash"] = "".join(traceback.format_exception(e))[-3000:]
    outcome["seconds"] = time.perf_counter() - start
    sys.stderr.flush()
    os.dup2(saved, 2)
    err.seek(0)
    outcome["stderr"] = err.read().decode("utf-8", "replace")
    outcome["peak_mb"] = status("VmHWM:")
    outcome["cycles_mb"] = in_cycles()
    outcome["good"] = read_good() == reference
    print("OUTCOME " + json.dumps(outcome), flush=True)
