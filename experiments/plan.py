"""Will a search compile and fit on a GPU or TPU, and what may a step cost there? Found
without the chip (`plan_lib`: ahead-of-time compilation for compile-only devices).

    python experiments/plan.py --generator weights/ffhq1024.npz --target h100,tpu-v5e:2x2 \
        --lr_size 32 --batch_per_device 1,4,16,64 --precision highest,default

Targets: h100, h200, a100 (need the 'cuda' extra: pip install -e ".[cuda]"), tpu-v4:2x2x1,
tpu-v5e:2x2, tpu-v5p:2x2x1, tpu-v6e:2x2 (the 'tpu' extra). --generator also takes the
benchmark's random-weight generators of the FFHQ layouts (stylegan1024, stylegan2_1024), and
several names separated by commas. The search options are the launchers' flags (docs/usage.md).
Writes `<out_dir>/<name>.json` and `<out_dir>/<name>.md`; the table goes to stdout.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

# A plan compiles for compile-only devices: the process itself runs on the CPU (libtpu
# would otherwise try to open a TPU at start-up), and takes no TPU's lock.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # opens no TPU: may run beside a job

import benchmark_lib  # noqa: E402
import plan_lib  # noqa: E402
from absl import app, flags  # noqa: E402

from pulse_jax import load_generator  # noqa: E402
from pulse_jax.runs import cli

cli.define_search_flags()
_TARGET = flags.DEFINE_list(
    "target", ["h100"], "Chips to compile for: " + ", ".join(plan_lib.TARGETS) + "."
)
_LR_SIZE = flags.DEFINE_integer("lr_size", 32, "Side of the low-resolution inputs.", lower_bound=1)
_BATCH = flags.DEFINE_list(
    "batch_per_device", ["1", "2", "4", "8", "16", "32", "64"], "Samples per device to compile."
)
_PRECISION = flags.DEFINE_list(
    "precision", ["highest"], "Generator precisions to compile: highest, high and/or default."
)
_REMAT = flags.DEFINE_bool("remat", False, "Rematerialize activations in the backward pass.")
_CHIPS = flags.DEFINE_integer(
    "chips", 1, "Chips one sweep group spans (the rows sharded over them).", lower_bound=1
)
_OUT_DIR = flags.DEFINE_string("out_dir", "results/plan", "Where the JSON and table go.")
_NAME = flags.DEFINE_string("name", "plan", "File stem: <out_dir>/<name>.json and .md.")
_MERGE = flags.DEFINE_list(
    "merge", [], "Instead of compiling: merge these plans' JSON files into one table."
)
FLAGS = flags.FLAGS


def generator_for(name: str, precision: str):
    """A registered generator or weights file, or a benchmark name (random FFHQ weights)."""
    if re.fullmatch(r"stylegan2?_?\d+", name) and not os.path.exists(name):
        return benchmark_lib.make_generator(name, precision=precision)
    return load_generator(name, precision=precision)


def execute() -> int:
    """Runs with the parsed flags; returns the exit status."""
    if _MERGE.value:
        parts = [json.loads(Path(p).read_text()) for p in _MERGE.value]
        return _report(plan_lib.merge(parts))
    try:
        unknown = [t for t in _TARGET.value if t not in plan_lib.TARGETS]
        if unknown:
            raise cli.ConfigError(
                f"unknown --target {', '.join(unknown)}: use one of " + ", ".join(plan_lib.TARGETS)
            )
        for name in _TARGET.value:
            plan_lib.check_installed(plan_lib.TARGETS[name])
        search, cases = cli.search_config(), []
        for name in FLAGS.generator.split(","):
            for precision in _PRECISION.value:
                generator = generator_for(name, precision)
                search.options.degradation(_LR_SIZE.value, generator.resolution)  # checked here
                cases.append(
                    {
                        "name": name,
                        "precision": precision,
                        "generator": generator,
                        "options": search.options,
                        "remat": _REMAT.value,
                    }
                )
        results = plan_lib.run(
            cases,
            _TARGET.value,
            [int(b) for b in _BATCH.value],
            chips=_CHIPS.value,
            lr_size=_LR_SIZE.value,
            log=lambda line: print(line, file=sys.stderr, flush=True),
            checkpoint=lambda partial: plan_lib.write(partial, _OUT_DIR.value, _NAME.value),
        )
    except plan_lib.MissingExtra as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - user errors end in one line; bugs are raised again
        return cli.exit_status(e, 2)
    return _report(results)


def _report(results: dict) -> int:
    json_path, md_path = plan_lib.write(results, _OUT_DIR.value, _NAME.value)
    print(plan_lib.markdown(results))
    print(f"wrote {json_path} and {md_path}")
    return 0


run, main = cli.entry_points(execute)


if __name__ == "__main__":
    app.run(main)
