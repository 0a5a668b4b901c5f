"""The search flags that every launcher shares (experiments/run.py, experiments/sweep.py).

Names and defaults are PULSE's own command-line flags; `search_config` turns the
parsed values into the `pipeline.SearchConfig` the library takes.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable

from absl import app, flags, logging

from pulse_jax import operators, pipeline
from pulse_jax.checkpoints import CheckpointError
from pulse_jax.checkpoints.dcgan_package import FetchError
from pulse_jax.images import ImageError
from pulse_jax.loading import DEFAULT_GENERATOR
from pulse_jax.optim import OPTIMIZERS, SCHEDULES

# The flags of `pipeline.SearchConfig`'s fields; the seed has launcher-specific flags.
SEARCH_FLAGS = tuple(f.name for f in dataclasses.fields(pipeline.SearchConfig) if f.name != "seed")


def define_search_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines the generator and search flags (everything but seeds and folders)."""
    d = pipeline.SearchConfig()
    fv = {"flag_values": flag_values}
    flags.DEFINE_string(
        "generator",
        DEFAULT_GENERATOR,
        "A registered generator name (dcgan64: the embedded 64 px face DCGAN) or the path of "
        "a weights file written by `python -m pulse_jax.convert` (e.g. weights/ffhq1024.npz).",
        **fv,
    )
    flags.DEFINE_string(
        "loss_str",
        d.loss_str,
        "'+'-separated weight*TERM, TERM in L2, L1, GEOCROSS. GEOCROSS is 0 for the DCGAN "
        "(it has no style layers) and with --tile_latent.",
        **fv,
    )
    flags.DEFINE_float("eps", d.eps, "Success threshold on L2 (and the clamp of L2/L1).", **fv)
    flags.DEFINE_enum(
        "noise_type",
        d.noise_type,
        ["zero", "fixed", "trainable"],
        "StyleGAN only: noise maps all zero, random and fixed, or random and optimized.",
        **fv,
    )
    flags.DEFINE_integer(
        "num_trainable_noise_layers",
        d.num_trainable_noise_layers,
        "StyleGAN only, with --noise_type trainable: noise layers 0..n-1 are optimized.",
        lower_bound=0,
        **fv,
    )
    flags.DEFINE_boolean(
        "tile_latent", d.tile_latent, "StyleGAN only: one latent row for every style layer.", **fv
    )
    flags.DEFINE_string(
        "bad_noise_layers",
        d.bad_noise_layers,
        "StyleGAN only: '.'-separated noise layers that are always zero. Default: the "
        "generator's (PULSE's 17 for a 1024 px StyleGAN v1, none for StyleGAN2).",
        **fv,
    )
    flags.DEFINE_enum("opt_name", d.opt_name, list(OPTIMIZERS), "Optimizer.", **fv)
    flags.DEFINE_float("learning_rate", d.learning_rate, "Base learning rate.", **fv)
    flags.DEFINE_integer("steps", d.steps, "Optimizer steps.", lower_bound=1, **fv)
    flags.DEFINE_enum(
        "lr_schedule", d.lr_schedule, list(SCHEDULES), "Learning-rate schedule.", **fv
    )
    flags.DEFINE_enum(
        "operator",
        d.operator,
        list(operators.OperatorName),
        "The degradation the loss compares through (PULSE's is bicubic): box (area average), "
        "gaussian (blur, then one sample per block), nearest (one pixel per block), inpaint "
        "(bicubic where --mask observes), denoise (bicubic plus noise of --noise_std), "
        "colorize (grey of the bicubic). The factor is the generator's resolution / input size.",
        **fv,
    )
    defines = {float: flags.DEFINE_float, str: flags.DEFINE_string}
    for parameter in operators.PARAMETERS:
        defines[parameter.type](parameter.name, getattr(d, parameter.name), parameter.help, **fv)
    flags.DEFINE_boolean(
        "resize",
        False,
        "Centre-crop and resize inputs whose size does not divide the generator's resolution "
        "(default: refuse them).",
        **fv,
    )


def search_config(flag_values: flags.FlagValues = flags.FLAGS, **extra) -> pipeline.SearchConfig:
    """The parsed search flags (plus `extra` fields, e.g. `seed`) as a `SearchConfig`."""
    values = {name: flag_values[name].value for name in SEARCH_FLAGS}
    return pipeline.SearchConfig(**values, **extra)


def one_line(error: Exception, width: int = 500) -> str:
    """An error's message as the one line a launcher prints (cut at `width` characters)."""
    text = " / ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return text if len(text) <= width else text[:width] + "..."


# Errors a user can cause: bad settings, inputs, weights files or checkpoints, a failed fetch.
USER_ERRORS = (pipeline.ConfigError, ImageError, CheckpointError, FetchError)


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
        print(f"error: {error.filename}: {error.strerror or error}", file=sys.stderr)
        return status
    raise error


def entry_points(execute: Callable[[], int]) -> tuple[Callable, Callable]:
    """A launcher's `run(argv)` (for tests and in-process callers: flags of an earlier call
    are reset first) and `main(argv)` (the `app.run` entry point, JAX's start-up notes kept
    out of the output), both around `execute()`, which runs with the parsed flags."""

    def run(argv: list[str]) -> int:
        flags.FLAGS.unparse_flags()
        flags.FLAGS(argv)
        return execute()

    def main(argv: list[str]) -> int:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)
        return execute()

    return run, main
