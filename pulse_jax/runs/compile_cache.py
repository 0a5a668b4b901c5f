"""JAX's persistent compilation cache, as the launchers use it: a program compiled once on a
host is read back by every later process there (a resumed or repeated sweep, a second run
of the same shapes) instead of compiled again.

JAX 0.10.2 caches CPU programs as well as GPU and TPU ones. By default it writes only
programs that took at least a second to compile; here every program is written (minimum
compile time 0, no minimum size), so that a second launch compiles nothing, the small CPU
searches included.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
from jax.experimental.compilation_cache import compilation_cache

# Sets the launchers' default folder; "" turns the cache off (the test suite does).
ENV = "PULSE_JAX_COMPILATION_CACHE"


def default_dir() -> str:
    """`$PULSE_JAX_COMPILATION_CACHE` if set (may be "": no cache), else the user's cache
    folder: `$XDG_CACHE_HOME/pulse_jax/compilation` (`~/.cache/...` without it)."""
    if ENV in os.environ:
        return os.environ[ENV]
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return str(Path(base) / "pulse_jax" / "compilation")


def enable(folder: str | os.PathLike | None) -> Path | None:
    """Compiled programs are read from and written to `folder` from now on in this process
    (None or "": left as it is). Returns the folder, or None."""
    if not folder:
        return None
    path = Path(folder).expanduser()
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # -1: no minimum
    # JAX decides once per process, at its first compilation, whether a cache is in use:
    # start over so that one compiled before this call does not leave it off.
    compilation_cache.reset_cache()
    return path
