"""Writing a file whole or not at all: the one `atomic_write` of the library.

Result images, manifests, summaries, reports and weights files are all written through
it, so a crash or a kill midway never leaves half a file under a result's name.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Calls `write(file_object)` on a hidden temporary file beside `path`, flushes it to
    disk, then renames it over `path` (parent folders are created).

    A crash midway leaves either the old file or none, never half a file; the temporary
    file is removed when `write` raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results and weights are ordinary files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
