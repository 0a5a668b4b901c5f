"""Reads files with the project's readers in turn, under an address-space limit
(tests/helpers/hostile.py: read_isolated), printing how each read ended.

    python tests/helpers/programs/read_isolated.py LIMIT_BYTES LISTING_JSON

LISTING_JSON: [[name, "module:function", path], ...], the function called on the path.

Prints "START name" before each read and "OUTCOME {json}" after it.
"""

# ruff: noqa: E402  (the address-space limit and the path to helpers/ come before imports)

import importlib
import json
import resource
import sys
import time
from pathlib import Path

limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/, for helpers
from helpers.memory import peak_mb

from pulse_jax.checkpoints import CheckpointError
from pulse_jax.images import ImageError

for name, reader, path in json.loads(sys.argv[2]):
    print("START " + name, flush=True)
    start = time.perf_counter()
    outcome = {"name": name, "refused": None}
    try:
        module, function, *args = reader.split(":")  # module:function[:argument ...]
        getattr(importlib.import_module(module), function)(path, *args)
    except (CheckpointError, ImageError) as e:
        outcome["refused"] = str(e)
    outcome["seconds"] = time.perf_counter() - start
    outcome["max_rss_mb"] = peak_mb()
    print("OUTCOME " + json.dumps(outcome), flush=True)
