"""The search flags that every launcher shares (experiments/run.py, experiments/sweep.py).

One flag per search option (a field of `options.SearchOptions`) and per setting of a launch
(`config.SearchConfig`'s --generator and --resize), derived from the fields: names, types,
defaults, help and checks are the fields'. `search_config` turns the parsed values into
the `SearchConfig` the library takes: its `options` is the one `SearchOptions` value that
reaches the compiled program.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Callable

from absl import app, flags, logging

from pulse_jax.checkpoints import CheckpointError, shown
from pulse_jax.checkpoints.fetch import FetchError
from pulse_jax.images import ImageError
from pulse_jax.options import (
    ConfigError,
    SearchOptions,
    check_value,
    option_fields,
    option_types,
)
from pulse_jax.runs import compile_cache, config

# The classes whose option fields are flags: a launch's settings, then the search options.
_FLAG_SOURCES = (config.SearchConfig, SearchOptions)
# The flags of those fields; the seed has launcher-specific flags.
LAUNCH_FLAGS = tuple(f.name for f in option_fields(config.SearchConfig))
OPTION_FLAGS = tuple(f.name for f in option_fields(SearchOptions))
SEARCH_FLAGS = LAUNCH_FLAGS + OPTION_FLAGS


def define_search_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines the generator and search flags (everything but seeds and folders); a value
    that cannot work is refused when the flags are parsed, naming the flag."""
    for cls in _FLAG_SOURCES:
        for field in option_fields(cls):
            _define(cls, field, option_types(cls)[field.name], flag_values)


def _define(cls: type, field, kind, flag_values: flags.FlagValues) -> None:
    """The flag of one option field, with its checks."""
    spec, name = field.metadata["option"], field.name
    fv = {"flag_values": flag_values}
    if spec.parse is not None:
        default = None if field.default is None else spec.format(field.default)
        flags.DEFINE_string(name, default, spec.help, **fv)
    elif isinstance(kind, type) and issubclass(kind, enum.StrEnum):
        flags.DEFINE_enum(name, str(field.default), [str(m) for m in kind], spec.help, **fv)
    elif kind is bool:
        flags.DEFINE_boolean(name, field.default, spec.help, **fv)
    elif kind in (int, float):
        define = flags.DEFINE_integer if kind is int else flags.DEFINE_float
        define(name, field.default, spec.help, lower_bound=spec.lower, **fv)
    else:
        flags.DEFINE_string(name, field.default, spec.help, **fv)
    flags.register_validator(name, _validator(cls, name), **fv)


def _validator(cls: type, name: str) -> Callable:
    def valid(value) -> bool:
        try:
            check_value(cls, name, value)
        except ConfigError as e:
            raise flags.ValidationError(str(e)) from None
        return True

    return valid


def search_config(flag_values: flags.FlagValues = flags.FLAGS, **extra) -> config.SearchConfig:
    """The parsed search flags (plus `extra` fields, e.g. `seed`) as a `SearchConfig`."""
    launch = {name: flag_values[name].value for name in LAUNCH_FLAGS}
    options = SearchOptions(**{name: flag_values[name].value for name in OPTION_FLAGS})
    return config.SearchConfig(**launch, **extra, options=options)


def one_line(error: Exception, width: int = 500) -> str:
    """An error's message as the one line a launcher prints (cut at `width` characters)."""
    text = " / ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return shown(text, width)  # control characters (ANSI escapes, ...) escaped


# Errors a user can cause: bad settings, inputs, weights files or checkpoints, a failed fetch.
USER_ERRORS = (ConfigError, ImageError, CheckpointError, FetchError)


def exit_status(error: Exception, status: int) -> int:
    """What a launcher does with an error raised by its work: an error the user caused
    (`USER_ERRORS`, or an `OSError` naming a file) is printed as one line on stderr and
    ends the run with `status`; anything else is a bug and is raised again, traceback and all.

    Call it from an `except Exception` block: `return cli.exit_status(e, 2)`.
    """
    if isinstance(error, USER_ERRORS):
        print(f"error: {one_line(error)}", file=sys.stderr)
        return status
    if isinstance(error, OSError) and error.filename is not None:
        print(f"error: {shown(error.filename)}: {error.strerror or error}", file=sys.stderr)
        return status
    raise error


# Old flag name -> its name now (`define_old_name`).
_OLD_NAMES: dict[str, str] = {}


def define_old_name(old: str, new: str) -> None:
    """Keeps --`old`, an integer flag renamed --`new`, working for one release: its value goes
    to --`new`, with a line on stderr saying so (`take_old_names`, run by `entry_points`)."""
    flags.DEFINE_integer(old, None, f"Old name of --{new}; use --{new}.")
    _OLD_NAMES[old] = new


def take_old_names(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Moves the values of old flag names given on the command line to their new names.

    Raises:
      ConfigError: both the old and the new name were given.
    """
    for old, new in _OLD_NAMES.items():
        if old not in flag_values or not flag_values[old].present:
            continue
        if flag_values[new].present:
            raise ConfigError(f"give --{new} only (--{old} is its old name)")
        print(f"note: --{old} is now --{new}", file=sys.stderr)
        flag_values[new].value = flag_values[old].value


def define_cache_flag(default: str | None = None) -> None:
    """Defines --compilation_cache (once per process), the folder of JAX's persistent
    compilation cache (`compile_cache`); `default` None: `compile_cache.default_dir()`."""
    if "compilation_cache" in flags.FLAGS:
        return
    flags.DEFINE_string(
        "compilation_cache",
        compile_cache.default_dir() if default is None else default,
        "Folder of JAX's persistent compilation cache: a later process on this host reads "
        "the programs compiled here instead of compiling them again; '' turns it off "
        f"(${compile_cache.ENV} sets the default).",
    )


SPLIT_GROUPS = {"auto": None, "always": True, "never": False}


def define_split_groups_flag() -> None:
    """Defines --split_groups (`engine.Work.split_groups`); read it with `split_groups()`."""
    flags.DEFINE_enum(
        "split_groups",
        "auto",
        list(SPLIT_GROUPS),
        "Solve each result of a group as a group of one (its result is then that of a group "
        "of 1): auto does so on CPU for 1024 px generators, where bigger groups are no "
        "faster per sample (docs/batch_curve_cpu.md); always; never.",
    )


def split_groups() -> bool | None:
    """The parsed --split_groups as `engine.Work.split_groups`."""
    return SPLIT_GROUPS[flags.FLAGS.split_groups]


def entry_points(execute: Callable[[], int]) -> tuple[Callable, Callable]:
    """A launcher's `run(argv)` (for tests and in-process callers: flags of an earlier call
    are reset first; the compilation cache is the caller's business) and `main(argv)` (the
    `app.run` entry point: JAX's start-up notes kept out of the output, the persistent
    compilation cache of --compilation_cache, defined here, in use), both around
    `execute()`, which runs with the parsed flags."""
    define_cache_flag()

    def start() -> int:
        try:
            take_old_names()
        except ConfigError as e:
            return exit_status(e, 2)
        return execute()

    def run(argv: list[str]) -> int:
        flags.FLAGS.unparse_flags()
        flags.FLAGS(argv)
        return start()

    def main(argv: list[str]) -> int:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)
        compile_cache.enable(flags.FLAGS.compilation_cache)
        return start()

    return run, main
