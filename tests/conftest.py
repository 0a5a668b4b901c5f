"""Shared fixtures: the golden vectors and small generators built from them."""

from __future__ import annotations

import os
from pathlib import Path

# The suite runs on the CPU: with libtpu installed (the test extra, for compiling for TPU
# topologies) JAX would otherwise try to open a TPU first, and print its failure, in every
# process the tests start.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np
import pytest

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return GOLDEN


@pytest.fixture(scope="session")
def tiny_stylegan_path(tmp_path_factory) -> Path:
    """The golden tiny synthesis network (128 px, 12 style layers) with the golden mapping
    network and PULSE's real gaussian fit, converted to a pulse_jax weights file."""
    from pulse_jax.checkpoints import torch_format
    from pulse_jax.convert import write_stylegan_weights

    out = tmp_path_factory.mktemp("weights") / "tiny_stylegan.npz"
    fit = np.load(GOLDEN / "gaussian_fit.npz")
    write_stylegan_weights(
        out,
        torch_format.load_state_dict(GOLDEN / "stylegan_tiny_synthesis.pt"),
        torch_format.load_state_dict(GOLDEN / "stylegan_mapping.pt"),
        gaussian_fit={"mean": fit["mean"], "std": fit["std"]},
        provenance={"source": "golden tiny synthesis (tests)"},
        show_progress=False,
    )
    return out


@pytest.fixture(scope="session")
def tiny_stylegan(tiny_stylegan_path):
    from pulse_jax import load_generator

    return load_generator(tiny_stylegan_path)


@pytest.fixture(scope="session")
def dcgan64():
    """The embedded default (fetched from the package index and converted on first use)."""
    from pulse_jax import load_generator

    return load_generator("dcgan64")
