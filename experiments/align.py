"""FFHQ-style face alignment of a folder of photos, ready for run.py.

    python experiments/align.py --input_dir photos --output_dir aligned
    python experiments/run.py --input_dir aligned --output_dir results/photos

Writes, for every photo `<stem>`, the LR input `<output_dir>/<stem>.png`
(`--output_size` px, the bicubic downscale PULSE inverts) and the aligned face
`<output_dir>/aligned_<resolution>/<stem>.png`; with `--all_faces`, one
`<stem>_face<k>.png` per face, k = 0 for the largest. `run.py --align` does both
steps in one command. Needs the optional extra: pip install -e ".[align]".

Exit status: 0 when every photo gave a face, 1 when some could not be read or
had no face (each is named, the others are aligned), 2 when the extra is
missing or the settings or folders are wrong and nothing was done.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from pulse_jax import align
from pulse_jax.images import ImageError

_INPUT_DIR = flags.DEFINE_string("input_dir", None, "Folder of photos (every file, any format).")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", "results/aligned", "Folder for the LR inputs (and the aligned faces)."
)
_OUTPUT_SIZE = flags.DEFINE_integer(
    "output_size",
    16,
    "Side of the LR inputs; must divide --resolution. 16 suits the 64 px DCGAN (x4) and the "
    "1024 px StyleGAN (x64); PULSE's paper also uses 32.",
    lower_bound=1,
)
_RESOLUTION = flags.DEFINE_integer(
    "resolution", 1024, "Side of the aligned faces (FFHQ's 1024).", lower_bound=1
)
_ALL_FACES = flags.DEFINE_boolean(
    "all_faces", False, "Align every face of a photo, not only the largest."
)


def main(argv: list[str]) -> int:
    """Aligns `--input_dir` into `--output_dir`; returns the exit status."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # keep JAX's start-up notes out of the output
    if _INPUT_DIR.value is None:
        print("error: --input_dir is required", file=sys.stderr)
        return 2
    try:
        written = align.align_to_folder(
            _INPUT_DIR.value,
            _OUTPUT_DIR.value,
            output_size=_OUTPUT_SIZE.value,
            all_faces=_ALL_FACES.value,
            resolution=_RESOLUTION.value,
        )
    except (align.AlignmentUnavailable, ImageError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} aligned face(s) to {_OUTPUT_DIR.value}")
    if written.skipped:
        print(
            f"error: {len(written.skipped)} file(s) skipped (each is named above): "
            + ", ".join(p.name for p in written.skipped),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    app.run(main)
