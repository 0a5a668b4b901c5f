"""One entry point for the StyleGAN2 files users hold; the format is told from the content.

- "ada-pickle": NVIDIA StyleGAN2-ADA / StyleGAN3-release `.pkl` (`torch_utils.persistence`
  objects), read by `stylegan2_ada`;
- "rosinality": rosinality's `.pt` (torch zip or legacy format), `stylegan2_rosinality`;
- "tf-pickle": NVIDIA's TensorFlow StyleGAN2 `.pkl` (`dnnlib.tflib.network.Network`),
  `stylegan2_tf`.

All three end in the same `StyleGAN2Checkpoint` (NVIDIA StyleGAN2-ADA's
generator state dict, checked against one inferred configuration).
"""

from __future__ import annotations

import io
import os
import pickletools
import zipfile

from pulse_jax.checkpoints import (
    CheckpointError,
    FileBytes,
    read_regular,
    refuses,
    stylegan2_ada,
    stylegan2_rosinality,
    stylegan2_tf,
    torch_format,
)
from pulse_jax.checkpoints.safe_pickle import Limits
from pulse_jax.checkpoints.stylegan2_layout import StyleGAN2Checkpoint

__all__ = ["StyleGAN2Checkpoint", "detect_format", "read_stylegan2"]

FORMATS = ("ada-pickle", "rosinality", "tf-pickle")
# A pickle of the legacy torch format's first record, the magic number (protocol 2, LONG1).
_TORCH_LEGACY_HEAD = b"\x80\x02\x8a\x0a" + torch_format.MAGIC_NUMBER.to_bytes(10, "little")
_ZIP_MAGIC = b"PK\x03\x04"
_OTHER_MAGICS = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"\x1f\x8b": "a gzip file (unpack it first)",
    b"\x89HDF": "an HDF5 file (a Keras .h5?)",
    b"\x93NUMPY": "a numpy .npy array",
    b"BZh": "a bzip2 file (unpack it first)",
    b"\xfd7zXZ": "an xz file (unpack it first)",
}
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING"}
_MEMO_OPS = {"BINPUT", "LONG_BINPUT", "PUT"}
_GET_OPS = {"BINGET", "LONG_BINGET", "GET"}
_MAX_SCANNED_GLOBALS = 64
# The scan keeps at most this many memoized names, each of at most _MAX_NAME characters
# (a global's module or name; longer strings are remembered as "not a name"), and looks
# at most this many opcodes: its memory and time are bounded whatever the file holds.
_MAX_SCANNED_MEMO = 1 << 16
_MAX_NAME = 200
_MAX_SCANNED_OPS = 1 << 22
_DECISIVE = ("torch_utils.persistence.", "dnnlib.tflib.network.")


def _pickle_globals(data) -> list[str]:  # data: bytes or a binary file
    """The globals a pickle names, in order, read from its opcodes without building anything
    (memory: at most `_MAX_SCANNED_MEMO` short names; time: at most `_MAX_SCANNED_OPS`)."""
    found: list[str] = []
    pushed: list = []  # the last two pushes; short strings as themselves, else None
    memo: dict = {}
    source = data if hasattr(data, "read") else io.BytesIO(data)
    for count, (opcode, arg, _) in enumerate(pickletools.genops(source)):
        name = opcode.name
        if name == "GLOBAL":
            found.append(arg.replace(" ", ".")[: 2 * _MAX_NAME])
        elif name == "STACK_GLOBAL":
            module, qualname = ([None, None] + pushed)[-2:]
            found.append(f"{module}.{qualname}")
        elif name in _STRING_OPS:
            pushed.append(arg if len(arg) <= _MAX_NAME else None)
        elif name in _MEMO_OPS or name == "MEMOIZE":
            index = len(memo) if name == "MEMOIZE" else arg
            if pushed and pushed[-1] is not None and len(memo) < _MAX_SCANNED_MEMO:
                memo[index] = pushed[-1]
        elif name in _GET_OPS:
            pushed.append(memo.get(arg))
        elif name != "FRAME":
            pushed.append(None)
        del arg
        pushed = pushed[-2:]
        if found and (found[-1].startswith(_DECISIVE) or len(found) >= _MAX_SCANNED_GLOBALS):
            break
        if count >= _MAX_SCANNED_OPS:
            break
    return found


def detect_format(path: str | os.PathLike, data: bytes | None = None) -> str:
    """Tells which StyleGAN2 file `path` is from its bytes (`data`, when already read).

    Returns:
      "ada-pickle", "rosinality" or "tf-pickle".

    Raises:
      CheckpointError: one line naming what the file is instead.
    """
    path = os.fspath(path)
    data = read_regular(path).data if data is None else data
    head = data[:16]
    if not head:
        raise CheckpointError(path, "is empty, not a StyleGAN2 checkpoint")
    if head.startswith(_ZIP_MAGIC):
        return _detect_zip(path, data)
    if head.startswith(_TORCH_LEGACY_HEAD):
        return "rosinality"
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:
        try:
            names = _pickle_globals(data)
        except Exception as e:  # noqa: BLE001 - genops raises ValueError and others on bad bytes
            kind = type(e).__name__
            raise CheckpointError(path, f"is a truncated or corrupt pickle ({kind})") from None
        if any(n.startswith("torch_utils.persistence.") for n in names):
            return "ada-pickle"
        if any(n.startswith("dnnlib.tflib.network.") for n in names):
            return "tf-pickle"
        shown = ", ".join(n[:60] for n in dict.fromkeys(names))
        raise CheckpointError(
            path,
            f"is a pickle naming {shown[:300] or 'no globals'}: not an NVIDIA "
            "StyleGAN2-ADA, TF StyleGAN2 or rosinality checkpoint",
        )
    for magic, what in _OTHER_MAGICS.items():
        if head.startswith(magic):
            raise CheckpointError(path, f"is {what}, not a StyleGAN2 checkpoint")
    if len(head) >= 10 and head[8:10] == b'{"':
        raise CheckpointError(path, "is a safetensors file, not a StyleGAN2 checkpoint")
    raise CheckpointError(
        path,
        f"starts with {head[:8]!r}: not a pickle, a torch checkpoint or a zip archive, so "
        "not a StyleGAN2 checkpoint",
    )


def _detect_zip(path: str, data: bytes) -> str:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(path, f"is a zip archive that cannot be read ({e})") from None
    if any(n.endswith("/data.pkl") and n.count("/") == 1 for n in names):
        return "rosinality"
    if names and all(n.endswith(".npy") for n in names):
        arrays = ", ".join(n[:-4][:40] for n in names[:5])
        raise CheckpointError(
            path,
            f"is a numpy .npz archive ({arrays}{', ...' if len(names) > 5 else ''}), not a "
            "StyleGAN2 checkpoint (a converted pulse_jax weights file is loaded, not converted)",
        )
    shown = ", ".join(n[:40] for n in names[:5])
    raise CheckpointError(
        path,
        f"is a zip archive of {len(names)} files ({shown}) without <name>/data.pkl: not a "
        "torch checkpoint",
    )


_READERS = {
    "ada-pickle": stylegan2_ada.read_ada_pickle,
    "rosinality": stylegan2_rosinality.read_rosinality,
    "tf-pickle": stylegan2_tf.read_tf_pickle,
}


@refuses
def read_stylegan2(
    path: str | os.PathLike,
    *,
    network: str = "G_ema",
    limits: Limits | None = None,
    file: FileBytes | None = None,
) -> StyleGAN2Checkpoint:
    """Reads any supported StyleGAN2 generator file safely (no code from it runs).

    Args:
      path: an NVIDIA StyleGAN2-ADA pickle, a rosinality `.pt` or an NVIDIA TF
        StyleGAN2 pickle; the format is detected from the content.
      network: "G_ema" (the averaged generator: ADA's `G_ema`, TF's `Gs`,
        rosinality's `g_ema`; default) or "G" (the training generator).
      limits: bounds of the read (`safe_pickle.Limits`; the defaults fit honest files; a
        genuine file refused as needing more than it could hold passes a larger `expansion`).
      file: its bytes when the caller read them already (`read_regular`); else read here.

    Returns:
      The generator in NVIDIA StyleGAN2-ADA's state-dict layout, its config and provenance.

    Raises:
      CheckpointError: one line naming the file and the problem: an unknown
        format (naming what was found), a refused global, an unsupported
        network (class-conditional, StyleGAN3, not "skip"), inconsistent shapes.
    """
    file = file or read_regular(path)
    reader = _READERS[detect_format(path, file.data)]
    return reader(path, network=network, limits=limits, file=file)
