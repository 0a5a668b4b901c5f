"""Import paths of modules that moved when the package was grouped by role.

An old path keeps working for one release: importing it gives the module at its new path
(the same module object) with a FutureWarning naming that path, and `python -m OLD` runs
the new module with a line saying so. A module that no longer exists fails with an
ImportError naming what replaced it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    **{f"pulse_jax.{m}": f"pulse_jax.degrade.{m}" for m in ("downscale", "operators")},
    **{f"pulse_jax.{m}": f"pulse_jax.checkpoints.{m}" for m in ("convert", "loading")},
    **{
        f"pulse_jax.{m}": f"pulse_jax.runs.{m}"
        for m in (
            "cli",
            "compile_cache",
            "config",
            "distributed",
            "engine",
            "inputs",
            "layout",
            "progress",
            "store",
            "sweep",
        )
    },
    **{f"pulse_jax.{m}": f"pulse_jax.evaluation.{m}" for m in ("evaluate", "metrics", "plots")},
    "pulse_jax.checkpoints.nvidia_pickle": "pulse_jax.checkpoints.stylegan_tf",
    "pulse_jax.checkpoints.dcgan_package": "pulse_jax.checkpoints.fetch.dcgan",
}

GONE = {
    "pulse_jax.pipeline": "a run is pulse_jax.runs.engine.run(engine.Work.for_run(...), generator)",
}


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in GONE:
            raise ModuleNotFoundError(f"{name} no longer exists: {GONE[name]}", name=name)
        if name not in MOVED:
            return None
        return importlib.util.spec_from_loader(name, _Alias(MOVED[name]))


class _Alias(importlib.abc.Loader):
    """Loads an old path as the module at its new one."""

    def __init__(self, new: str):
        self.new = new
        self.spec = None

    def create_module(self, spec):
        warnings.warn(
            f"{spec.name} moved to {self.new}; import it from there", FutureWarning, stacklevel=2
        )
        module = importlib.import_module(self.new)
        self.spec = module.__spec__
        return module

    def exec_module(self, module) -> None:
        module.__spec__ = self.spec  # importlib set the old path's spec on the module

    def get_code(self, name: str):
        """`python -m OLD`: the new module's code, run as __main__."""
        print(f"note: python -m {name} is now python -m {self.new}", file=sys.stderr)
        return importlib.util.find_spec(self.new).loader.get_code(self.new)


def install() -> None:
    """Puts the finder for the old paths on `sys.meta_path` (once)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())


install()  # on import: `pulse_jax/__init__.py` imports this module first
