"""`load_generator`: a registered name or a weights file -> a `Generator` ready for `solve`."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp

from pulse_jax import precision as precisions
from pulse_jax.checkpoints import CheckpointError, refusing, weights_file
from pulse_jax.checkpoints.fetch.dcgan import ensure_dcgan64
from pulse_jax.generators import dcgan, stylegan, stylegan2
from pulse_jax.generators.base import Generator
from pulse_jax.options import Scope

# Registered names -> a function that returns the path of their weights file,
# obtaining it first where the project can (the embedded default).
REGISTRY: dict[str, Callable[[Path], Path]] = {"dcgan64": ensure_dcgan64}


def weights_dir() -> Path:
    """Where downloaded and converted weights live.

    `$PULSE_JAX_WEIGHTS_DIR` if set; else the repository's git-ignored `weights/`
    folder when running from a source checkout; else `~/.cache/pulse_jax/weights`.
    """
    env = os.environ.get("PULSE_JAX_WEIGHTS_DIR")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[1] / "weights"
    if checkout.is_dir() and os.access(checkout, os.W_OK):
        return checkout
    return Path.home() / ".cache" / "pulse_jax" / "weights"


def load_generator(name_or_path: str | os.PathLike, *, precision: str | None = None) -> Generator:
    """Loads a generator for `solve` and notebooks.

    Args:
      name_or_path: a registered name (`"dcgan64"`, the embedded default, fetched and
        converted on first use) or the path of a weights file written by
        `python -m pulse_jax.checkpoints.convert`.
      precision: matmul/conv precision (`pulse_jax.precision`): "highest" (full float32
        everywhere, what parity with the original needs), "high" or "default" (faster
        reduced-precision passes on GPU/TPU), "bf16" or "tf32" (their emulation); None: the
        platform's default, `precision.PLATFORM_DEFAULTS` ("highest" on CPU; the README's
        "Precision on GPUs and TPUs" says why).

    Returns:
      A `Generator` exposing `resolution`, `num_layers`, `gaussian_fit`, `map`,
      `synthesize` and `render`.
    """
    key = str(name_or_path)
    if key in REGISTRY:
        path = REGISTRY[key](weights_dir())
    else:
        path = Path(name_or_path)
        if not path.exists():
            raise CheckpointError(
                path, f"no such weights file, and not a registered name ({', '.join(REGISTRY)})"
            )
    wf = weights_file.load_weights(path)
    with refusing(path):  # a value the schema let through that still fails: one line
        return from_weights_file(wf, precision=precision, path=path)


def _stylegan(params: dict, wf: weights_file.WeightsFile, precision: str):
    return stylegan.arch_from_params(
        params["synthesis"], params.get("mapping"), precision=precision
    )


def _stylegan2(params: dict, wf: weights_file.WeightsFile, precision: str):
    return stylegan2.arch_from_params(
        params,
        conv_clamp=wf.config.get("conv_clamp"),
        mapping_lr=wf.config.get("mapping_lr", stylegan2.MAPPING_LR),
        precision=precision,
    )


def _dcgan(params: dict, wf: weights_file.WeightsFile, precision: str):
    return dcgan.arch_from_params(params, precision=precision)


# Weights-file kinds -> (arch class, builder from the parameters and the file's config).
ARCHS: dict[str, tuple[type, Callable]] = {
    "stylegan": (stylegan.StyleGANArch, _stylegan),
    "stylegan2": (stylegan2.StyleGAN2Arch, _stylegan2),
    "dcgan": (dcgan.DCGANArch, _dcgan),
}


def from_weights_file(
    wf: weights_file.WeightsFile, *, precision: str | None = None, path: Path | None = None
) -> Generator:
    """A `Generator` from a loaded weights file (`weights_file.load_weights`), at
    `precision` (`load_generator`'s).

    Raises:
      CheckpointError: an unknown kind, or parameters that do not fit it.
    """
    precision = precisions.resolve(precision)
    params = jax.tree.map(jnp.asarray, wf.params)
    try:
        if wf.kind not in ARCHS:
            raise ValueError(f"unknown generator kind {wf.kind!r}")
        arch_type, build = ARCHS[wf.kind]
        if Scope.STYLE in arch_type.option_scopes:  # style rows are searched through the fit
            if wf.gaussian_fit is None:
                raise ValueError(f"{wf.kind} weights without a gaussian fit")
            params = dict(params)
            params["gaussian_fit"] = {k: jnp.asarray(v) for k, v in wf.gaussian_fit.items()}
        arch = build(params, wf, precision)
    except (KeyError, ValueError, IndexError, TypeError) as e:
        raise CheckpointError(path or "<weights>", f"inconsistent weights file: {e}") from None
    return Generator(kind=wf.kind, arch=arch, params=params, provenance=wf.provenance)
