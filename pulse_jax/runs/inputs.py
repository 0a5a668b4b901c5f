"""The inputs of a run or a sweep: every file of a folder, read and checked.

Inputs are every file of the folder except hidden files and a README (the folder's
description). An input's `image_id` is its index among the input files, sorted by
name: the id its starts are seeded with (docs/method.md section 8.1), so a result does
not depend on which other inputs are usable.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np

from pulse_jax.images import (
    ImageError,
    list_images,
    load_image,
    output_names,
    prepare_for_generator,
    read_image_file,
)


@dataclasses.dataclass(frozen=True)
class InputImage:
    """One usable input: its id for seeding, its file, its output folder name and its LR image."""

    image_id: int
    path: Path
    name: str  # its results' folder, <out>/<name>/ (a sweep's <out>/seed_<k>/<name>/)
    lr: np.ndarray  # [h, w, 3] in [0, 1]
    factor: int
    sha256: str = ""  # of the file, so a re-run recognises its results

    @property
    def side(self) -> int:
        """The input's side in pixels: inputs of one side share a compiled search."""
        return self.lr.shape[0]


def load_inputs(
    folder: str | os.PathLike, resolution: int, *, resize: bool = False
) -> tuple[list[InputImage], list[ImageError]]:
    """Reads every file of `folder` (any extension) as an LR input for a generator.

    A file named README (any extension, any case) is the folder's description, not an
    input: it is left out, like hidden files.

    Args:
      folder: the input folder (not recursive; hidden files are skipped).
      resolution: the generator's output side.
      resize: centre-crop and resize images whose size does not divide `resolution`
        (`prepare_for_generator`); otherwise they are refused.

    Returns:
      `(inputs, errors)`: the usable images, with `image_id` = index in the sorted
      listing of the input files (README and hidden files left out), and one
      `ImageError` (naming the file and the reason) per bad file.

    Raises:
      ImageError: the folder is missing, not a folder, or holds no file.
    """
    paths = [p for p in list_images(folder) if not is_readme(p)]
    if not paths:
        raise ImageError(folder, "the folder holds no input files (only a README)")
    names = output_names(paths)
    inputs, errors = [], []
    for image_id, path in enumerate(paths):
        try:
            data = read_image_file(path)  # read once: what is decoded is what is hashed
            image = load_image(path, data=data)
            lr, factor = prepare_for_generator(image, path, resolution, resize=resize)
        except ImageError as e:
            errors.append(e)
            continue
        digest = hashlib.sha256(data).hexdigest()
        inputs.append(
            InputImage(image_id, path, names[path], lr.astype(np.float32), factor, digest)
        )
    return inputs, errors


def is_readme(path: Path) -> bool:
    """Whether `path` is a folder's README (README, README.md, readme.txt...)."""
    return path.name.split(".")[0].upper() == "README"
