"""Shared fixtures: the golden vectors and small generators built from them."""

from __future__ import annotations

import os
from pathlib import Path

# The suite runs on the CPU: with libtpu installed (CI installs the tpu extra, for compiling
# for TPU topologies) JAX would otherwise try to open a TPU first, and print its failure, in
# every process the tests start.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest

GOLDEN = Path(__file__).parent / "golden"

# Launchers started by tests (subprocesses inherit this) leave the user's compilation cache
# alone; tests/test_compile_cache.py gives them a folder of its own.
os.environ["PULSE_JAX_COMPILATION_CACHE"] = ""


@pytest.fixture(scope="module", autouse=True)
def _compiled_programs_per_module():
    """Each test file starts from JAX's caches empty and leaves them so: the suite's one
    process otherwise holds every program all earlier files compiled (hundreds of them)."""
    yield
    import gc

    import jax

    jax.clear_caches()
    gc.collect()


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return GOLDEN


@pytest.fixture(scope="session")
def tiny_stylegan_path(tmp_path_factory) -> Path:
    """The golden tiny synthesis network (128 px, 12 style layers) with the golden mapping
    network and PULSE's real gaussian fit, converted to a pulse_jax weights file."""
    from precision_lib import write_tiny_stylegan  # experiments/, on the tests' path

    out = tmp_path_factory.mktemp("weights") / "tiny_stylegan.npz"
    return write_tiny_stylegan(GOLDEN, out, "golden tiny synthesis (tests)")


@pytest.fixture(scope="session")
def tiny_stylegan(tiny_stylegan_path):
    from pulse_jax import load_generator

    return load_generator(tiny_stylegan_path, precision="highest")  # parity on any platform


@pytest.fixture(scope="session")
def dcgan64():
    """The embedded default (fetched from the package index and converted on first use)."""
    from pulse_jax import load_generator

    return load_generator("dcgan64")
