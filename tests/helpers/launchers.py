"""The launchers of experiments/ loaded as modules, for their in-process `run(argv)`."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def launcher(name: str):
    """experiments/`name`.py as a module, loaded once per process: its absl flags can be
    defined only once, so every test file that runs it shares this one."""
    module_name = f"pulse_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, EXPERIMENTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
    return sys.modules[module_name]
