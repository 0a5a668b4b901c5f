"""Reading, validating and writing images.

In memory an image is a float32 numpy array `[H, W, 3]` with values in [0, 1]
(NHWC without the batch axis). Every launcher goes through this module:
`list_images` names the files of an input folder, `load_image` decodes any
format Pillow reads into that array (or raises an `ImageError` that names the
file and why it was refused), `prepare_for_generator` checks or resizes it to
a size the generator's downscaling operator accepts, and `save_image` /
`comparison_sheet` write results.

Pillow's `ImageFile.LOAD_TRUNCATED_IMAGES` must stay False (its default): with
it, a truncated file decodes silently into an image padded with grey.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from pulse_jax.checkpoints import CheckpointError, file_kind, read_regular, shown
from pulse_jax.degrade.downscale import bicubic_downscale
from pulse_jax.files import atomic_write

# 4096 x 4096 (16.8 megapixels, above a 12 MP phone photo): far above any face PULSE
# upsamples. Decoding and converting costs about 50 bytes a pixel at worst (RGBA composited
# in float32), so the default bounds an input's memory below 1 GB whatever the file's size.
DEFAULT_MAX_PIXELS = 1 << 24
# Output folder names an input can never take: the run's own files and folders.
RESERVED_NAMES = ("results.jsonl", "aligned")
# A crop smaller than this holds no face worth resizing (the smallest LR input in
# the paper is 16 x 16); an already valid smaller square is still accepted as is.
MIN_RESIZE_SIDE = 4
WHITE = (1.0, 1.0, 1.0)


class ImageError(ValueError):
    """A file or folder that cannot be used as input; str is "<path>: <reason>"."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = shown(reason)  # control characters escaped: one line, no forged ones
        super().__init__(f"{shown(self.path)}: {self.reason}")


def output_names(
    paths: Sequence[Path], reserved: Sequence[str] = RESERVED_NAMES
) -> dict[Path, str]:
    """The name each input's outputs get, distinct for distinct inputs by construction.

    An input whose stem no other input shares (ignoring case, as some file systems do)
    and that is not a reserved name (`results.jsonl`, ...) gets its stem. Every other
    input gets its stem and extension (a.jpg, a.png -> a_jpg, a_png), with `_2`, `_3`...
    appended while that name is taken (a_png.bmp already holds a_png) or reserved. Stems
    are handed out first, so adding a file never renames an input that had its stem.
    Linear in the number of inputs: the numbers tried for one base (ignoring case) go on
    from the last one it took, so 40,000 case variants of one stem cost 40,000 probes,
    not 40,000^2 / 2.

    Args:
      paths: the inputs, in their (sorted) order.
      reserved: names no input may take (compared ignoring case).

    Returns:
      path -> folder name, for every path.
    """
    taken = {name.casefold() for name in reserved}
    counts: dict[str, int] = {}
    for path in paths:
        counts[path.stem.casefold()] = counts.get(path.stem.casefold(), 0) + 1
    names: dict[Path, str] = {}
    for path in paths:
        key = path.stem.casefold()
        if counts[key] == 1 and key not in taken:
            names[path] = path.stem
            taken.add(key)
    following: dict[str, int] = {}  # a base (casefolded) -> the last number it tried
    for path in paths:
        if path in names:
            continue
        base = f"{path.stem}_{path.suffix.lstrip('.')}"
        key = base.casefold()
        n = following.get(key, 0)  # the last number tried for this base (1: the base)
        while True:
            n += 1
            name = base if n == 1 else f"{base}_{n}"
            if name.casefold() not in taken:
                break
        following[key] = n
        names[path] = name
        taken.add(name.casefold())
    return {path: names[path] for path in paths}


def special_files(folder: str | os.PathLike) -> dict[Path, str]:
    """The visible entries of a folder that are not regular files, and what each is.

    `list_images` leaves them out (a FIFO or a device would block or never end when
    read); launchers name them in their summaries instead of skipping them in silence.

    Returns:
      path -> "a folder", "a FIFO", "a socket", "a character device", "a block device"
      or "a broken link", sorted by name.
    """
    found = {}
    for path in sorted(Path(folder).iterdir()):
        if path.name.startswith(".") or path.is_file():
            continue
        try:
            mode = path.stat().st_mode
        except OSError:
            found[path] = "a broken link"
            continue
        found[path] = file_kind(mode)
    return found


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Lists the candidate image files of an input folder.

    Every regular, non-hidden file counts whatever its extension: `load_image`
    decides what is an image, so a bad file is reported with a reason rather
    than skipped in silence. Not recursive.

    Args:
      folder: the input folder.

    Returns:
      The files, sorted by name.

    Raises:
      ImageError: the folder is missing, is not a folder, or holds no file.
    """
    folder = Path(folder)
    if not folder.exists():
        raise ImageError(folder, "no such folder")
    if not folder.is_dir():
        raise ImageError(folder, "not a folder")
    files = sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file())
    if not files:
        raise ImageError(folder, "the folder holds no files (hidden files are skipped)")
    return files


# The largest input file read (bytes): a 4096 x 4096 image even uncompressed (16-bit RGBA
# TIFF: 128 MiB) fits; a bigger file is refused before it is read.
MAX_FILE_BYTES = 256 << 20


def read_image_file(path: str | os.PathLike) -> bytes:
    """An input file's bytes, read once (the caller hashes these and decodes these): a
    regular file after following links (checked before and after opening, so a FIFO or a
    device is never read) of at most `MAX_FILE_BYTES`.

    Raises:
      ImageError: missing, not a regular file, too large, unreadable, or changing.
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(path, "no such file")
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ImageError(path, f"file is larger than {MAX_FILE_BYTES >> 20} MiB")
        return read_regular(path, "file").data
    except CheckpointError as e:
        raise ImageError(path, e.reason) from None


@contextlib.contextmanager
def _pillow_limits(max_pixels: int):
    """While Pillow opens and decodes one file: every image it opens, an icon's or a
    container's inner image included (ICO, ICNS and CUR decode theirs while opening), is
    refused above `max_pixels` (Pillow's own check turned into an error at that size), and
    Pillow's warnings (malformed EXIF, palette transparency, ...) are silenced: an input is
    read or refused in one line, never with extra lines on stderr."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def load_image(
    path: str | os.PathLike,
    *,
    background: tuple[float, float, float] = WHITE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    data: bytes | None = None,
) -> np.ndarray:
    """Reads an image file into a float32 `[H, W, 3]` array in [0, 1].

    Any format and mode Pillow decodes is accepted (PNG, JPEG, WebP, BMP, TIFF,
    the first frame of a GIF...). Transparency (RGBA, LA, PA, a palette or
    colour key with transparency) is composited onto `background`; 16-bit grey
    (`I;16`) and 32-bit integer (`I`) pixels are scaled by 1/65535 and float
    (`F`) pixels are taken as already in [0, 1], both clipped; every other mode
    goes through Pillow's conversion to RGB. The EXIF orientation is applied.

    The pixel count is checked against `max_pixels` from the header, before any
    pixel is decoded, so a small file that claims a huge image costs nothing; an image
    inside a container (an ICO's or ICNS's icon, which Pillow decodes while opening) is
    held to the same limit when Pillow opens it. Pillow's warnings never reach stderr.

    Args:
      path: the file.
      background: RGB in [0, 1] under transparent pixels; white by default.
      max_pixels: the largest width x height accepted; 16.8 megapixels
        (4096 x 4096) by default.
      data: the file's bytes when the caller read them already (`read_image_file`).

    Returns:
      The image, float32 `[H, W, 3]` in [0, 1].

    Raises:
      ImageError: the file is missing, empty, not an image, too large,
        truncated or corrupt; the reason says which.
    """
    path = Path(path)
    data = read_image_file(path) if data is None else data
    if not data:
        raise ImageError(path, "empty file")
    with _pillow_limits(max_pixels):
        return _decode(path, data, background, max_pixels)


def _decode(path: Path, data: bytes, background, max_pixels: int) -> np.ndarray:
    try:
        img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _too_large(path, e, max_pixels) from None
    except Image.UnidentifiedImageError as e:
        raise ImageError(path, "not an image Pillow can read") from e
    except PermissionError as e:
        raise ImageError(path, f"cannot read the file: {e.strerror}") from e
    except Exception as e:  # corrupt headers raise many exception types
        raise ImageError(path, f"truncated or corrupt: {e}") from e
    with img:
        width, height = img.size
        if width * height > max_pixels:
            raise ImageError(
                path,
                f"image is {width}x{height} = {width * height} pixels, above the limit of "
                f"{max_pixels} pixels (max_pixels)",
            )
        try:
            img.load()
            ImageOps.exif_transpose(img, in_place=True)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise _too_large(path, e, max_pixels) from None
        except Exception as e:  # Pillow's decoders raise many exception types
            raise ImageError(path, f"truncated or corrupt: {e}") from e
        try:
            image = _to_rgb_array(img, background)
        except ValueError as e:
            raise ImageError(path, f"cannot convert mode {img.mode}: {e}") from e
    if not np.all(np.isfinite(image)):
        raise ImageError(path, "pixels include NaN or infinite values")
    return image


def _too_large(path: Path, error: Exception, max_pixels: int) -> ImageError:
    """The refusal of an image (or an image inside a container) that Pillow found above
    `max_pixels` when opening it."""
    found = re.search(r"\((\d+) pixels\)", str(error))
    size = f"{found.group(1)} pixels" if found else "more pixels than that"
    return ImageError(path, f"holds an image of {size}, above the limit of {max_pixels} pixels")


def _to_rgb_array(img: Image.Image, background: tuple[float, float, float]) -> np.ndarray:
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        # Wide grey: convert("RGB") would clip to 8 bits before scaling.
        grey = np.asarray(img).astype(np.float32)  # [H, W]
        if img.mode != "F":
            grey /= 65535.0
        grey = np.clip(grey, 0.0, 1.0)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if img.has_transparency_data:
        # In place where the result is the same, to keep the peak memory per pixel low.
        rgba = np.asarray(img.convert("RGBA"), np.float32)  # [H, W, 4]
        rgba /= 255.0
        alpha = rgba[:, :, 3:]
        bg = np.asarray(background, np.float32).reshape(1, 1, 3)
        rgb = rgba[:, :, :3] * alpha
        rgb += bg * (1.0 - alpha)
        return rgb
    rgb = np.asarray(img.convert("RGB"), np.float32)
    rgb /= 255.0
    return rgb


def working_sizes(resolution: int) -> list[int]:
    """The square input sides a generator of `resolution` px accepts, largest first.

    A side works when it divides the resolution, so the HR image downscales to
    it by an integer factor (PULSE's bicubic operator, docs/method.md section 5).
    """
    if resolution < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    # Divisors come in pairs (d, resolution // d): sqrt(resolution) trials, not resolution.
    small = [d for d in range(1, math.isqrt(resolution) + 1) if resolution % d == 0]
    return sorted({resolution // d for d in small} | set(small), reverse=True)


def check_size(image: np.ndarray, path: str | os.PathLike, resolution: int) -> int:
    """Checks an input's size against a generator and returns the downscale factor.

    Args:
      image: `[H, W, 3]`.
      path: the file it came from, named in errors.
      resolution: the generator's output side.

    Returns:
      `resolution // side`.

    Raises:
      ImageError: the image is not square or its side does not divide
        `resolution`; the message lists the sides that work.
    """
    height, width = image.shape[:2]
    sizes = ", ".join(str(s) for s in working_sizes(resolution))
    if height != width:
        raise ImageError(
            path,
            f"image is {width}x{height}, not square; a {resolution} px generator takes a "
            f"square of side {sizes} (or ask for resizing to centre-crop and downscale it)",
        )
    if resolution % height:
        raise ImageError(
            path,
            f"image is {width}x{height}; a {resolution} px generator takes a square of "
            f"side {sizes} (or ask for resizing)",
        )
    return resolution // height


def prepare_for_generator(
    image: np.ndarray, path: str | os.PathLike, resolution: int, *, resize: bool = False
) -> tuple[np.ndarray, int]:
    """Returns the LR input for a generator and its downscale factor.

    Without `resize` this is `check_size`. With it, the image is centre-cropped
    to a square of side s = min(H, W), kept if s already works, else resized
    to the target t, the largest working size <= s (never an upscale: making up
    pixels is PULSE's job, not the loader's). Most of the reduction goes
    through the project's bicubic operator, the degradation PULSE's loss
    inverts: with k = round(s / t) (at least 1), Pillow's BICUBIC (no
    reducing_gap) first takes the crop from s to k * t when s is not already a
    multiple of t, then `bicubic_downscale` divides by k. Crops under
    `MIN_RESIZE_SIDE` px are refused.

    Args:
      image: `[H, W, 3]` in [0, 1].
      path: the file it came from, named in errors.
      resolution: the generator's output side.
      resize: crop and resize instead of refusing a size that does not work.

    Returns:
      `(lr, factor)`: the square `[t, t, 3]` float32 input and `resolution // t`.

    Raises:
      ImageError: the size does not work and `resize` is off, or the image is
        too small to resize.
    """
    if not resize:
        return image, check_size(image, path, resolution)
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    crop = image[top : top + side, left : left + side]  # [s, s, 3]
    if resolution % side == 0:
        return crop, resolution // side
    if side < MIN_RESIZE_SIDE:
        raise ImageError(
            path,
            f"image is {width}x{height}, too small to resize (at least "
            f"{MIN_RESIZE_SIDE}x{MIN_RESIZE_SIDE} px)",
        )
    target = next(s for s in working_sizes(resolution) if s <= side)
    k = max(1, int(side / target + 0.5))
    lr = crop
    if side != k * target:
        lr = _resize(crop, (k * target, k * target), Image.Resampling.BICUBIC)
    if k > 1:
        lr = np.clip(np.asarray(bicubic_downscale(lr, k), np.float32), 0.0, 1.0)
    return np.ascontiguousarray(lr), resolution // target


def _resize(image: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    """Resizes `[H, W, 3]` to `size` = (height, width) in float, one channel at a time."""
    height, width = size
    channels = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(image[:, :, c], np.float32)).resize(
                (width, height), resample, reducing_gap=None
            )
        )
        for c in range(image.shape[2])
    ]
    return np.clip(np.stack(channels, axis=2), 0.0, 1.0).astype(np.float32)


def _as_size(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def upscale_nearest(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Enlarges `[H, W, 3]` to `size` (a side or (height, width)) with visible pixels.

    Returns:
      float32 `[height, width, 3]`.
    """
    return _resize(image, _as_size(size), Image.Resampling.NEAREST)


def upscale_bicubic(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resizes `[H, W, 3]` to `size` with Pillow's bicubic (for display, not for the loss).

    Returns:
      float32 `[height, width, 3]`, clipped to [0, 1].
    """
    return _resize(image, _as_size(size), Image.Resampling.BICUBIC)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Quantises a [0, 1] image to uint8, rounding to nearest; uint8 input is returned as is.

    Raises:
      ValueError: the image holds NaN or infinite values.
    """
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    if not np.all(np.isfinite(image)):
        raise ValueError("image holds NaN or infinite values")
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Writes `[H, W, 3]` (or `[H, W]`) in [0, 1] as an 8-bit PNG, atomically.

    The PNG is written to a hidden temporary file in the same folder and
    renamed over `path`, so the file appears whole or not at all. Parent
    folders are created.

    Args:
      path: the output, ending in `.png`.
      image: float in [0, 1] (clipped) or uint8.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: save_image writes PNG files; name it *.png")
    pil = Image.fromarray(to_uint8(image))
    atomic_write(path, lambda f: pil.save(f, format="PNG"))


@functools.lru_cache(maxsize=8)
def _label_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # DejaVu Sans (on most Linux systems) draws symbols such as the check mark;
    # Pillow's built-in font covers Latin text only.
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


def comparison_sheet(
    lr: np.ndarray,
    upscaled: np.ndarray,
    samples: Sequence[np.ndarray] | np.ndarray,
    *,
    labels: Sequence[str] | None = None,
    cell: int | None = None,
) -> np.ndarray:
    """Lays out LR input, bicubic upscale and HR samples in one labelled row.

    Each panel is a `cell` x `cell` square under a text strip: the LR input
    enlarged with nearest-neighbour so its pixels show, then the bicubic
    upscale and the samples (resized with bicubic only if not already `cell`).
    Labels that do not fit the cell are shortened with an ellipsis.

    Args:
      lr: `[h, w, 3]` LR input.
      upscaled: `[H, W, 3]` bicubic upscale of `lr`.
      samples: `[N, H, W, 3]` or a sequence of `[H, W, 3]` HR samples.
      labels: one per panel (2 + N); default "input hxw", "bicubic", "sample i".
      cell: panel side in pixels; default the HR side, at least 128.

    Returns:
      float32 `[H', W', 3]` in [0, 1], ready for `save_image`.
    """
    samples = list(samples)
    if labels is None:
        labels = [f"input {lr.shape[1]}x{lr.shape[0]}", "bicubic"]
        labels += [f"sample {i}" for i in range(len(samples))]
    labels = list(labels)
    if len(labels) != 2 + len(samples):
        raise ValueError(f"{len(labels)} labels for {2 + len(samples)} panels")
    if cell is None:
        cell = max(upscaled.shape[0], upscaled.shape[1], 128)
    panels = [upscale_nearest(lr, cell)]
    for hr in [upscaled, *samples]:
        panels.append(hr if hr.shape[:2] == (cell, cell) else upscale_bicubic(hr, cell))

    font = _label_font(max(10, cell // 24))
    ascent, descent = font.getmetrics()
    pad, gap = 3, 4
    strip = ascent + descent + 2 * pad
    width = len(panels) * cell + (len(panels) - 1) * gap
    sheet = Image.new("RGB", (width, strip + cell), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (panel, label) in enumerate(zip(panels, labels, strict=True)):
        x = i * (cell + gap)
        sheet.paste(Image.fromarray(to_uint8(panel)), (x, strip))
        text = label
        while len(text) > 1 and draw.textlength(text, font=font) > cell - 2 * pad:
            text = text[:-2] + "…"
        draw.text((x + pad, pad), text, fill=(0, 0, 0), font=font)
    return np.asarray(sheet, np.float32) / 255.0
