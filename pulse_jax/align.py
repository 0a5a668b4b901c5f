"""FFHQ-style face alignment: from a raw photo to the aligned faces PULSE expects.

PULSE's generators were trained on FFHQ, whose faces were cropped by one fixed
procedure (NVlabs/ffhq-dataset, `recreate_aligned_images`): an oriented square
built from the eye and mouth landmarks of dlib's 68-point model, cropped from
the photo, padded with reflected, blurred borders where the square leaves the
photo, and warped to a square image. A face cropped any other way sits
elsewhere in the frame than the generator has ever drawn one. `ffhq_align`
follows that procedure step by step on numpy arrays and Pillow (its gaussian
blur is written here in numpy, so scipy is not needed);
`align_to_folder` runs detection and alignment over a folder and writes the
low-resolution inputs through the project's bicubic operator.

Detection needs an optional extra: dlib (the `dlib-bin` wheel, or `dlib`) and
the 68-point landmark model from a package that ships it
(`face-recognition-models`, or Debian's `libdlib-data`); nothing is downloaded
at run time. Importing this module works without them; using detection raises
`AlignmentUnavailable` with the install hint.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from pathlib import Path
from typing import TextIO

import numpy as np
from PIL import Image

from pulse_jax.degrade.downscale import bicubic_downscale
from pulse_jax.images import (
    ImageError,
    list_images,
    load_image,
    output_names,
    save_image,
    to_uint8,
)

MODEL_NAME = "shape_predictor_68_face_landmarks.dat"
# The pip package that ships the model, and where it keeps it inside the package.
MODEL_PACKAGE = "face_recognition_models"
# Debian's libdlib-data (checked in its file list: the model sits in /usr/share/dlib).
SYSTEM_MODEL_PATHS = (Path("/usr/share/dlib") / MODEL_NAME,)
INSTALL_HINT = (
    'install the optional "align" extra: pip install -e ".[align]" in the pulse_jax '
    "checkout (that is dlib-bin for dlib and face-recognition-models for the 68-point "
    "landmark model); on Debian or Ubuntu the model also comes with "
    "`apt-get install libdlib-data`"
)
# PULSE's align_face.py runs dlib's detector on the photo upsampled once: it finds
# faces down to about 40 px instead of 80 px.
DETECTOR_UPSAMPLE = 1


class AlignmentUnavailable(RuntimeError):
    """dlib or its 68-point landmark model is not installed; the message says what to install."""


def _import_dlib():
    try:
        import dlib
    except ImportError as e:
        raise AlignmentUnavailable(
            f"face alignment needs dlib, which is not importable ({e}); {INSTALL_HINT}"
        ) from e
    return dlib


def landmark_model_path() -> Path:
    """Finds dlib's 68-point landmark model in an installed package, never downloading.

    Looks in the `face_recognition_models` package (located without importing it:
    its `__init__` needs `pkg_resources`, which recent setuptools no longer has),
    then at Debian's `libdlib-data` location.

    Returns:
      The path of `shape_predictor_68_face_landmarks.dat`.

    Raises:
      AlignmentUnavailable: no installed copy was found; the message names where
        it looked and what to install.
    """
    candidates = []
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "models" / MODEL_NAME for p in spec.submodule_search_locations]
    candidates += list(SYSTEM_MODEL_PATHS)
    for path in candidates:
        if path.is_file():
            return path
    looked = ", ".join(str(p) for p in candidates)
    raise AlignmentUnavailable(
        f"face alignment needs dlib's 68-point landmark model {MODEL_NAME}, found in none "
        f"of: {looked}; {INSTALL_HINT}"
    )


@functools.cache
def _dlib_models():
    dlib = _import_dlib()
    model = landmark_model_path()
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(model))


def check_available() -> None:
    """Loads dlib and the landmark model, so a missing extra is reported before any work.

    Raises:
      AlignmentUnavailable: dlib or the model is missing; the message says what
        to install.
    """
    _dlib_models()


def face_size(landmarks: np.ndarray) -> float:
    """The side of the FFHQ crop square of a face, in pixels of its photo (`qsize`)."""
    quad = ffhq_quad(landmarks)
    return float(np.hypot(*(quad[3] - quad[0])))


def detect_landmarks(image: np.ndarray, *, upsample: int = DETECTOR_UPSAMPLE) -> list[np.ndarray]:
    """Finds the faces of a photo and their 68 dlib landmarks, largest face first.

    Faces are ranked by the side of their FFHQ crop square (`face_size`), which
    measures the face itself: dlib's detection boxes come in a few fixed sizes,
    so a face and a face-like patch of the photo can get boxes of equal size.

    Args:
      image: `[H, W, 3]` RGB, uint8 (or float in [0, 1], quantised to uint8).
      upsample: how many times dlib's detector doubles the photo first; 1 (as
        PULSE does) finds faces down to about 40 px.

    Returns:
      One float64 `[68, 2]` array of (x, y) pixel coordinates per face, largest
      first; empty when no face is found.

    Raises:
      AlignmentUnavailable: dlib or the landmark model is not installed.
    """
    detector, predictor = _dlib_models()
    pixels = np.ascontiguousarray(to_uint8(image))  # [H, W, 3]
    faces = []
    for box in detector(pixels, upsample):
        shape = predictor(pixels, box)
        faces.append(np.array([[p.x, p.y] for p in shape.parts()], np.float64))  # [68, 2]
    return sorted(faces, key=face_size, reverse=True)


def ffhq_quad(landmarks: np.ndarray) -> np.ndarray:
    """The oriented crop square of a face, as FFHQ builds it from its landmarks.

    The square is centred a tenth of the way from the eyes to the mouth; its side
    is the larger of 4 eye-to-eye distances and 3.6 eye-to-mouth distances; its
    horizontal axis is the average of the eye line and the normal of the
    eye-to-mouth line.

    Args:
      landmarks: `[68, 2]` (x, y) in dlib's 68-point order.

    Returns:
      float64 `[4, 2]`: the corners that become the aligned image's top-left,
      bottom-left, bottom-right and top-right, in the photo's pixel coordinates.
    """
    landmarks = np.asarray(landmarks, np.float64)
    if landmarks.shape != (68, 2):
        raise ValueError(f"landmarks must be [68, 2], got shape {landmarks.shape}")
    eye_left = landmarks[36:42].mean(axis=0)
    eye_right = landmarks[42:48].mean(axis=0)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (landmarks[48] + landmarks[54]) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    # (a, b) -> (-b, a) turns a vector by a quarter turn: x averages the eye line
    # with the eye-to-mouth line turned to the horizontal.
    x = eye_to_eye - np.array([-eye_to_mouth[1], eye_to_mouth[0]])
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.array([-x[1], x[0]])
    center = eye_avg + eye_to_mouth * 0.1
    return np.stack([center - x - y, center - x + y, center + x + y, center + x - y])


def to_aligned(points: np.ndarray, quad: np.ndarray, output_size: int) -> np.ndarray:
    """Maps photo pixel coordinates to where `ffhq_align` puts them.

    The square `quad` is warped onto the output: a point at
    `center + a * x + b * y` (x, y the half sides) lands at `((a + 1) / 2,
    (b + 1) / 2) * output_size` in continuous coordinates, whose pixel i spans
    [i, i + 1] (Pillow's convention, which is why FFHQ hands Pillow
    `quad + 0.5`), so at pixel index `(a + 1) / 2 * output_size - 0.5`.
    Exact for photos that need no shrinking (face_size < 4 * output_size);
    with shrinking, FFHQ's rounding moves points by up to half a shrunk pixel.

    Args:
      points: `[..., 2]` (x, y) pixel coordinates in the photo.
      quad: `[4, 2]` from `ffhq_quad`.
      output_size: the aligned image's side.

    Returns:
      `[..., 2]` (x, y) pixel coordinates in the aligned image.
    """
    quad = np.asarray(quad, np.float64)
    center = quad.mean(axis=0)
    half_x = (quad[3] - quad[0]) / 2
    half_y = (quad[1] - quad[0]) / 2
    offset = np.asarray(points, np.float64) - center
    a = offset @ half_x / (half_x @ half_x)
    b = offset @ half_y / (half_y @ half_y)
    return np.stack([a, b], axis=-1) * (output_size / 2) + (output_size / 2 - 0.5)


def _gaussian_kernel(sigma: float) -> np.ndarray:
    # scipy.ndimage.gaussian_filter's kernel: truncated at 4 sigma, normalised.
    radius = int(4.0 * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return taps / taps.sum()


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Blurs the two spatial axes of `[H, W, C]` as scipy.ndimage.gaussian_filter does.

    Same kernel (truncated at 4 sigma) and border (scipy's default "reflect",
    numpy's "symmetric": d c b a | a b c d), computed with FFTs in float64 so a
    sigma of tens of pixels on a large photo stays fast.

    Returns:
      float32 `[H, W, C]`.
    """
    kernel = _gaussian_kernel(sigma)
    radius = len(kernel) // 2
    out = np.asarray(image, np.float64)
    for axis in (0, 1):
        n = out.shape[axis]
        widths = [(0, 0)] * out.ndim
        widths[axis] = (radius, radius)
        padded = np.pad(out, widths, mode="symmetric")
        length = n + 2 * radius
        spectrum = np.fft.rfft(padded, axis=axis) * np.fft.rfft(kernel, length).reshape(
            [-1 if a == axis else 1 for a in range(out.ndim)]
        )
        # The circular convolution is free of wrap-around from index 2 * radius on.
        full = np.fft.irfft(spectrum, length, axis=axis)
        out = np.take(full, np.arange(2 * radius, length), axis=axis)
    return out.astype(np.float32)


def _pad_with_blurred_reflection(pixels: np.ndarray, pad: np.ndarray, qsize: float) -> np.ndarray:
    """FFHQ's padding: reflect, then blur and fade to the median colour away from the photo."""
    left, top, right, bottom = (int(p) for p in pad)
    image = np.pad(
        pixels.astype(np.float32), ((top, bottom), (left, right), (0, 0)), mode="reflect"
    )  # [h, w, 3]
    height, width = image.shape[:2]
    rows = np.arange(height, dtype=np.float32)[:, None, None]
    cols = np.arange(width, dtype=np.float32)[None, :, None]
    # 0 at the photo's edge, rising to 1 at the padded image's edge (negative inside).
    mask = np.maximum(
        1.0 - np.minimum(cols / left, (width - 1 - cols) / right),
        1.0 - np.minimum(rows / top, (height - 1 - rows) / bottom),
    )  # [h, w, 1]
    blurred = gaussian_blur(image, qsize * 0.02)
    image += (blurred - image) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
    image += (np.median(image, axis=(0, 1)) - image) * np.clip(mask, 0.0, 1.0)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def ffhq_align(
    image: np.ndarray,
    landmarks: np.ndarray,
    *,
    output_size: int = 1024,
    transform_size: int | None = None,
) -> np.ndarray:
    """Crops and warps one face exactly as FFHQ's `recreate_aligned_images` does.

    Steps (on uint8 pixels, as FFHQ): the square from `ffhq_quad`; if it is at
    least 4 output sizes wide, the photo is first shrunk by the integer factor
    floor(side / (2 * output_size)) with Lanczos; the crop around the square plus a
    border of a tenth of its side; where the square leaves the photo, padding by
    at least 0.3 of its side with reflected pixels, blurred (sigma 0.02 of the
    side) and faded to the median colour away from the photo; the square warped
    (bilinear) onto `transform_size` pixels, then Lanczos-resized to `output_size`.

    Args:
      image: `[H, W, 3]` RGB photo, float in [0, 1] or uint8.
      landmarks: `[68, 2]` (x, y) dlib landmarks of the face in `image`.
      output_size: the aligned image's side; FFHQ's is 1024.
      transform_size: the side of the intermediate warp; default 4 * output_size
        (FFHQ's 4096 for 1024).

    Returns:
      float32 `[output_size, output_size, 3]` in [0, 1].
    """
    if transform_size is None:
        transform_size = 4 * output_size
    img = Image.fromarray(np.ascontiguousarray(to_uint8(image)), "RGB")
    quad = ffhq_quad(landmarks)
    qsize = float(np.hypot(*(quad[3] - quad[0])))

    shrink = int(np.floor(qsize / output_size * 0.5))
    if shrink > 1:
        size = (int(np.rint(img.size[0] / shrink)), int(np.rint(img.size[1] / shrink)))
        img = img.resize(size, Image.Resampling.LANCZOS)
        quad /= shrink
        qsize /= shrink

    border = max(int(np.rint(qsize * 0.1)), 3)
    low = np.floor(quad.min(axis=0)).astype(int)  # (x, y) of the square's bounding box
    high = np.ceil(quad.max(axis=0)).astype(int)
    crop = (
        max(low[0] - border, 0),
        max(low[1] - border, 0),
        min(high[0] + border, img.size[0]),
        min(high[1] + border, img.size[1]),
    )
    if crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1]:
        img = img.crop(crop)
        quad -= crop[0:2]

    low = np.floor(quad.min(axis=0)).astype(int)
    high = np.ceil(quad.max(axis=0)).astype(int)
    pad = np.array(
        [
            max(border - low[0], 0),
            max(border - low[1], 0),
            max(high[0] - img.size[0] + border, 0),
            max(high[1] - img.size[1] + border, 0),
        ]
    )  # left, top, right, bottom
    if pad.max() > border - 4:
        pad = np.maximum(pad, int(np.rint(qsize * 0.3)))
        padded = _pad_with_blurred_reflection(np.asarray(img), pad, qsize)
        img = Image.fromarray(padded, "RGB")
        quad += pad[:2]

    img = img.transform(
        (transform_size, transform_size),
        Image.Transform.QUAD,
        (quad + 0.5).flatten(),
        Image.Resampling.BILINEAR,
    )
    if output_size < transform_size:
        img = img.resize((output_size, output_size), Image.Resampling.LANCZOS)
    return np.asarray(img, np.float32) / 255.0


class AlignedFaces(list):
    """The low-resolution files `align_to_folder` wrote, in order (a list of Paths).

    `skipped` maps each input file that gave no output to the reason.
    """

    def __init__(self, paths=(), skipped: dict[Path, str] | None = None):
        super().__init__(paths)
        self.skipped: dict[Path, str] = dict(skipped or {})


def align_to_folder(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    output_size: int,
    all_faces: bool = False,
    resolution: int = 1024,
    stream: TextIO | None = None,
) -> AlignedFaces:
    """Aligns the faces of every photo in a folder and writes their LR versions.

    For each photo: the largest face (every face with `all_faces`) is aligned
    with `ffhq_align` at `resolution` and written to
    `output_dir/aligned_<resolution>/<stem>.png`; its bicubic downscale by
    `resolution // output_size` (the degradation PULSE inverts) goes to
    `output_dir/<stem>.png`. With `all_faces` the names are `<stem>_face<k>.png`,
    k = 0 for the largest face. A file that cannot be read or has no face is
    reported on `stream` with the reason and skipped; the others go on.

    Args:
      input_dir: the photos (every non-hidden file; see `images.list_images`).
      output_dir: where the LR inputs go (created, even if no face is found); must
        not be `input_dir`. Only the LR inputs are files of this folder, so it
        can be `run.py`'s input folder as it is.
      output_size: the side of the LR inputs; must divide `resolution`.
      all_faces: align every face found, not only the largest.
      resolution: the side of the aligned faces; FFHQ's is 1024.
      stream: where per-file messages go; default stderr.

    Returns:
      An `AlignedFaces` list of the LR paths written, ready for `run.py`; its
      `skipped` dict maps each photo that gave nothing to the reason.

    Raises:
      AlignmentUnavailable: dlib or the landmark model is not installed (raised
        before any file is read).
      ImageError: `input_dir` is missing, not a folder, or empty.
      ValueError: `output_size` does not divide `resolution`, or the output
        folder is the input folder.
    """
    stream = sys.stderr if stream is None else stream
    if output_size < 1 or resolution % output_size:
        raise ValueError(
            f"output_size {output_size} must be a positive divisor of resolution {resolution}"
        )
    files = list_images(input_dir)
    output_dir = Path(output_dir)
    if output_dir.resolve() == Path(input_dir).resolve():
        raise ValueError(f"{output_dir}: the output folder must differ from the input folder")
    check_available()
    output_dir.mkdir(parents=True, exist_ok=True)
    hr_dir = output_dir / f"aligned_{resolution}"
    factor = resolution // output_size
    written = AlignedFaces()
    for path, stem in output_names(files).items():
        found = _photo_faces(path)
        if isinstance(found, str):
            written.skipped[path] = found
            print(f"{path}: skipped, {found}", file=stream)
            continue
        image, faces = found
        if not all_faces:
            faces = faces[:1]
        for k, landmarks in enumerate(faces):
            name = f"{stem}_face{k}.png" if all_faces else f"{stem}.png"
            hr = ffhq_align(image, landmarks, output_size=resolution)  # [R, R, 3]
            lr = np.clip(np.asarray(bicubic_downscale(hr, factor)), 0.0, 1.0)  # [s, s, 3]
            save_image(hr_dir / name, hr)
            save_image(output_dir / name, lr)
            written.append(output_dir / name)
        found = f"{len(faces)} face{'s' if len(faces) > 1 else ''}"
        print(
            f"{path}: {found} -> {', '.join(p.name for p in written[-len(faces) :])}", file=stream
        )
    return written


def _photo_faces(path: Path) -> tuple[np.ndarray, list] | str:
    """A photo and its faces' landmarks (largest first), or why it gives none."""
    try:
        image = load_image(path)
    except ImageError as e:
        return e.reason
    faces = detect_landmarks(image)
    if not faces:
        return (
            "no face found (dlib's detector finds roughly frontal faces at least about 40 px wide)"
        )
    return image, faces
