"""Reading weight files: foreign checkpoints (torch, NVIDIA pickle) and the project's own.

What every reader shares lives here: `CheckpointError` (the one way a reader says "this
file is bad"), `shown` (text from a file made safe to print), `read_regular` (a file's
bytes, read once, from a regular file only, with their sha256) and `refusing` (the
boundary between a bad file and a bug in the reader; see its docstring).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re
import stat
import traceback
from collections.abc import Callable

# C0 and C1 control characters, DEL, and the invisible format characters that reorder or
# hide text (bidirectional overrides and isolates, zero-width marks, line separators).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def shown(text, width: int | None = None) -> str:
    """`text` (anything; str() of it) with every control character escaped (`\\n` -> `\\x0a`,
    ESC -> `\\x1b`, ...), cut at `width` characters when given: the form in which any string
    from a file or a file name reaches a message, a log or a summary."""
    text = str(text)
    if width is not None and len(text) > width:
        text = text[:width] + "..."
    return _CONTROL.sub(_escape, text)


class CheckpointError(ValueError):
    """A weight file that cannot be read; the message names the file and what is wrong.

    The path and the message are shown with control characters escaped (`shown`), so
    neither a file's name nor what it holds can forge a line on a terminal or in a log.
    """

    def __init__(self, path, message: str):
        self.path = str(path)
        self.reason = shown(message)
        super().__init__(f"{shown(self.path)}: {self.reason}")


@dataclasses.dataclass(frozen=True)
class FileBytes:
    """A file's content, read once, and the sha256 of exactly those bytes."""

    data: bytes
    sha256: str


def check_regular(path, what: str = "file") -> os.stat_result:
    """Refuses `path` unless it is a regular file after following links (a FIFO would block,
    a device such as /dev/zero never ends), before anything opens it.

    Raises:
      CheckpointError: no such file, or what it is instead.
    """
    try:
        info = os.stat(path)
    except OSError as e:
        raise CheckpointError(path, f"cannot be read ({e.strerror or e})") from None
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointError(path, f"is {file_kind(info.st_mode)}, not a regular {what}")
    return info


def read_regular(path, what: str = "file") -> FileBytes:
    """The bytes of a regular file, read once, and their sha256 (what a provenance records
    and a `--sha256` check compares is what the reader parsed).

    The file is opened without blocking and checked again on its descriptor, so one
    swapped for a FIFO or a device between the check and the open is refused too; it is
    read up to the size it had when opened (a file that grows meanwhile is refused).

    Raises:
      CheckpointError: not a regular file, unreadable, or changing while read.
    """
    check_regular(path, what)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise CheckpointError(path, f"cannot be read ({e.strerror or e})") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CheckpointError(path, f"is {file_kind(info.st_mode)}, not a regular {what}")
        try:
            data = f.read(info.st_size + 1)
        except OSError as e:
            raise CheckpointError(path, f"cannot be read ({e.strerror or e})") from None
    if len(data) != info.st_size:
        raise CheckpointError(path, "changed while it was being read")
    return FileBytes(data, hashlib.sha256(data).hexdigest())


def file_kind(mode: int) -> str:
    """What a file that is not a regular one is, from its `st_mode` ("a FIFO", ...)."""
    kinds = {
        stat.S_ISDIR: "a folder",
        stat.S_ISFIFO: "a FIFO",
        stat.S_ISSOCK: "a socket",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
    }
    return next((k for test, k in kinds.items() if test(mode)), "a special file")


# What Python raises on data it cannot take (a wrong type, a value out of range, a missing
# key, an overflow, a division by a size that is zero, a float overflow under np.errstate).
DATA_ERRORS = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    ZeroDivisionError,
    OverflowError,
    FloatingPointError,
    UnicodeError,
    EOFError,
)


class refusing:
    """The boundary of a read (`with refusing(path): ...`): inside, every way the file's data
    can make Python fail becomes a one-line `CheckpointError` naming the file; bugs stay bugs.

    The split, explicitly:
    - a refusal the reader meant (`CheckpointError`, raised where a check failed) passes
      as it is;
    - `MemoryError` and `RecursionError` are refusals: the file asked for more than the
      process has (the budget of `safe_pickle.Session` refuses honest-looking sizes first);
      so is `FloatingPointError`: the file's numbers overflow float32 in a conversion;
    - `DATA_ERRORS` (a `TypeError`, `ValueError`, ... raised while the file's values were
      used) are refusals too, but marked: the message says "unchecked", names the
      exception and the reader's line that raised it (`stylegan2_ada.py:123`), so a reader
      bug that a file triggers still shows where it is, and with the environment variable
      `PULSE_JAX_DEBUG=1` it is raised again with its traceback instead; the hostile-file
      tests require every case they build to be refused by a check, never "unchecked";
    - anything else (`AttributeError`, `NameError`, `AssertionError`, ...) is a bug in the
      reader and propagates with its traceback.
    Numeric warnings are errors inside (`np.errstate`: overflow, invalid, divide; underflow
    stays silent): a float overflow in a conversion is a refusal, never an extra line on
    stderr. A refused read's frames are
    dropped from the error it raises, so nothing the read made stays alive with it.
    """

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        import numpy as np

        # Overflow, invalid operations and division by zero raise (FloatingPointError: a
        # refusal); underflow of honest small numbers to zero stays silent.
        self.errstate = np.errstate(over="raise", invalid="raise", divide="raise", under="ignore")
        self.errstate.__enter__()
        return self

    def __exit__(self, kind, error, tb):
        self.errstate.__exit__(kind, error, tb)
        message = _refusal_message(error)
        if message is None:
            return False
        drop_frames(error)
        raise CheckpointError(self.path, message) from None


def refuses(reader: Callable) -> Callable:
    """Decorates a reader whose first argument is the file: its body runs in `refusing`."""

    @functools.wraps(reader)
    def read(path, *args, **kwargs):
        with refusing(path):
            return reader(path, *args, **kwargs)

    return read


def _refusal_message(error: BaseException | None) -> str | None:
    if error is None or isinstance(error, CheckpointError):
        return None
    if isinstance(error, MemoryError):
        return "needs more memory than is available to read"
    if isinstance(error, RecursionError):
        return "nests too deeply to read"
    if isinstance(error, FloatingPointError):  # np.errstate in `refusing`, on the file's values
        return f"holds numbers that overflow or are not finite in float32 ({error})"
    if isinstance(error, DATA_ERRORS) and not os.environ.get("PULSE_JAX_DEBUG"):
        detail = str(error).splitlines()[0] if str(error) else ""
        return f"is malformed (unchecked {type(error).__name__} at {_where(error)}: {detail:.200})"
    return None


def drop_frames(error: BaseException | None) -> None:
    """Clears the tracebacks of `error` and the errors it chains to: their frames (and what
    the failed read held in them) are freed with the read, not with the error."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        error.__traceback__ = None
        error = error.__context__ or error.__cause__


def _where(error: BaseException) -> str:
    """`module.py:line` of the last frame of pulse_jax's own code that `error` went through."""
    found = "?"
    for frame in traceback.extract_tb(error.__traceback__):
        if f"{os.sep}pulse_jax{os.sep}" in frame.filename:
            found = f"{os.path.basename(frame.filename)}:{frame.lineno}"
    return found


__all__ = [
    "CheckpointError",
    "FileBytes",
    "check_regular",
    "drop_frames",
    "read_regular",
    "refuses",
    "refusing",
    "shown",
]
