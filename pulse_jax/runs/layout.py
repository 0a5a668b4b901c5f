"""Where a run's or a sweep's results go, and the writers of their files.

For an input whose output name is `<stem>` (`images.output_names`: its file name
without extension, made unique) and a result (seed `<k>`, sample `<s>`), the folder of
the result is `<stem>/` when the work has one seed in its output folder (a run) and
`seed_<k>/<stem>/` when seeds have their own folders (a sweep):

    <folder>/sample_<s>_hr.png          the result's best HR image
    <folder>/sample_<s>_lr.png          its downscale (what the loss compared)
    <folder>/comparison.png             with sheets: observation | bicubic | every sample
    <folder>/l2_curves.png              with plots: every sample's L2 over the steps
    <folder>/intermediate/sample_<s>_step_<j>.png   with intermediate frames

Every file is written atomically (`files.atomic_write`): it appears whole or not at all.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pulse_jax.images import comparison_sheet, save_image, upscale_bicubic

# With plots, beside each comparison.png: every sample's L2 over the steps.
L2_PLOT = "l2_curves.png"


def result_folder(name: str, seed: int, *, seed_folders: bool) -> str:
    """The folder of a result's files, relative to the output folder (see the docstring)."""
    return f"seed_{seed}/{name}" if seed_folders else name


def sample_paths(folder: str, sample: int) -> dict[str, str]:
    """The files of one sample, relative to the output folder."""
    return {"hr": f"{folder}/sample_{sample}_hr.png", "lr": f"{folder}/sample_{sample}_lr.png"}


def write_sample(out_dir: str | os.PathLike, folder: str, sample: int, hr, lr) -> dict[str, str]:
    """Writes one sample's HR image (`[R, R, 3]` in [0, 1]) and its downscale (`[h, w, 3]`).

    Returns:
      The paths written, relative to `out_dir` (`{"hr": ..., "lr": ...}`).
    """
    paths = sample_paths(folder, sample)
    save_image(Path(out_dir) / paths["hr"], hr)
    save_image(Path(out_dir) / paths["lr"], lr)
    return paths


def write_intermediate(out_dir: str | os.PathLike, folder: str, sample: int, frames) -> str:
    """Writes a sample's image after every step, `<folder>/intermediate/sample_<s>_step_<j>.png`
    (j zero-padded to the width of the step count).

    Args:
      frames: `[steps, R, R, 3]` in [0, 1].

    Returns:
      The intermediate folder, relative to `out_dir`.
    """
    intermediate = f"{folder}/intermediate"
    width = len(str(len(frames) - 1))
    for j, frame in enumerate(frames):
        save_image(Path(out_dir) / intermediate / f"sample_{sample}_step_{j:0{width}d}.png", frame)
    return intermediate


def write_comparison(
    out_dir: str | os.PathLike,
    folder: str,
    lr_input: np.ndarray,
    hr_samples: np.ndarray,
    l2: Sequence[float],
    success: Sequence[bool],
    *,
    observation: str = "",
) -> str:
    """Writes `<folder>/comparison.png`: the observation (the LR input as the loss sees it),
    its bicubic upscale, then every sample labelled with its L2 and a check mark (reached
    eps) or a cross.

    Args:
      lr_input: `[h, w, 3]` the observation.
      hr_samples: `[S, R, R, 3]`.
      l2, success: per sample.
      observation: the operator's label (`Degradation.describe`), shown with the input
        unless it is PULSE's bicubic.

    Returns:
      The sheet's path, relative to `out_dir`.
    """
    side = hr_samples.shape[1]
    shown = "" if observation in ("", "bicubic") else f" {observation}"
    labels = [
        f"input {lr_input.shape[1]}x{lr_input.shape[0]}{shown}",
        f"bicubic x{side // lr_input.shape[0]}",
    ]
    labels += [
        f"sample {s} {'✓' if ok else '✗'} L2 {float(e):.1e}"
        for s, (e, ok) in enumerate(zip(l2, success, strict=True))
    ]
    sheet = comparison_sheet(lr_input, upscale_bicubic(lr_input, side), hr_samples, labels=labels)
    path = f"{folder}/comparison.png"
    save_image(Path(out_dir) / path, sheet)
    return path
