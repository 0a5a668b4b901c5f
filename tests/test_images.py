"""Tests for pulse_jax.images: every kind of good and bad input file, sizes, writing."""

import os

import numpy as np
import pytest
from helpers.hostile import png_with_size
from PIL import Image, ImageFile

from pulse_jax import images
from pulse_jax.degrade.downscale import bicubic_downscale
from pulse_jax.images import ImageError


def rgb(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_loading_truncated_images_is_off():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_list_images_every_visible_file_sorted(tmp_path):
    for name in ["b.png", "a.jpg", "notes.txt", ".hidden.png"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    assert [p.name for p in images.list_images(tmp_path)] == ["a.jpg", "b.png", "notes.txt"]


def test_list_images_bad_folders(tmp_path):
    with pytest.raises(ImageError, match="no such folder") as e:
        images.list_images(tmp_path / "missing")
    assert e.value.path == str(tmp_path / "missing")
    (tmp_path / "f.png").write_bytes(b"x")
    with pytest.raises(ImageError, match="not a folder"):
        images.list_images(tmp_path / "f.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".DS_Store").write_bytes(b"x")
    with pytest.raises(ImageError, match="holds no files"):
        images.list_images(empty)


def test_good_png_exact(tmp_path):
    pixels = rgb(6, 5)
    Image.fromarray(pixels).save(tmp_path / "good.png")
    image = images.load_image(tmp_path / "good.png")
    assert image.dtype == np.float32 and image.shape == (6, 5, 3)
    np.testing.assert_array_equal(image, pixels.astype(np.float32) / 255)


@pytest.mark.parametrize(
    "name, kwargs",
    [("a.bmp", {}), ("a.tiff", {}), ("a.webp", {"lossless": True}), ("a.gif", {})],
)
def test_lossless_formats(tmp_path, name, kwargs):
    # Few colours so that GIF's palette is exact too.
    pixels = np.zeros((8, 8, 3), np.uint8)
    pixels[:4] = (200, 10, 30)
    pixels[4:, :3] = (0, 255, 128)
    Image.fromarray(pixels).save(tmp_path / name, **kwargs)
    np.testing.assert_array_equal(
        images.load_image(tmp_path / name), pixels.astype(np.float32) / 255
    )


def test_text_file_is_not_an_image(tmp_path):
    (tmp_path / "readme.png").write_text("not pixels\n")
    with pytest.raises(ImageError, match="not an image Pillow can read") as e:
        images.load_image(tmp_path / "readme.png")
    assert str(e.value) == f"{tmp_path / 'readme.png'}: not an image Pillow can read"


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match="empty file"):
        images.load_image(tmp_path / "empty.png")


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        images.load_image(tmp_path / "nope.png")


def test_truncated_png(tmp_path):
    Image.fromarray(rgb(64, 64)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated or corrupt") as e:
        images.load_image(tmp_path / "cut.png")
    assert e.value.path == str(tmp_path / "cut.png")


def test_rgba_composited_on_background(tmp_path):
    pixels = np.zeros((2, 2, 4), np.uint8)
    pixels[0, 0] = (255, 0, 0, 51)  # red at alpha 0.2
    pixels[0, 1] = (0, 0, 255, 255)  # opaque blue
    Image.fromarray(pixels, "RGBA").save(tmp_path / "a.png")
    white = images.load_image(tmp_path / "a.png")
    np.testing.assert_allclose(white[0, 0], [1.0, 0.8, 0.8], atol=1e-6)
    np.testing.assert_allclose(white[0, 1], [0.0, 0.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(white[1, 1], [1.0, 1.0, 1.0], atol=1e-6)  # fully transparent
    black = images.load_image(tmp_path / "a.png", background=(0.0, 0.0, 0.0))
    np.testing.assert_allclose(black[0, 0], [0.2, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(black[1, 1], [0.0, 0.0, 0.0], atol=1e-6)


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (3, 2), 0)
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    img.putpixel((1, 0), 1)
    img.save(tmp_path / "p.png", transparency=0)
    assert Image.open(tmp_path / "p.png").mode == "P"
    image = images.load_image(tmp_path / "p.png", background=(0.25, 0.5, 0.75))
    np.testing.assert_allclose(image[0, 1], [0.0, 1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(image[0, 0], [0.25, 0.5, 0.75], atol=1e-6)
    np.testing.assert_allclose(image[1, 2], [0.25, 0.5, 0.75], atol=1e-6)


def test_16_bit_grey_scaled(tmp_path):
    grey = np.array([[0, 65535], [32768, 1000]], np.uint16)
    Image.fromarray(grey).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    image = images.load_image(tmp_path / "g16.png")
    expected = grey.astype(np.float32) / 65535
    np.testing.assert_allclose(image, np.repeat(expected[:, :, None], 3, axis=2), atol=1e-7)


def test_float_and_int32_tiff(tmp_path):
    Image.fromarray(np.array([[0.25, 1.5], [-1.0, 0.5]], np.float32)).save(tmp_path / "f.tiff")
    np.testing.assert_allclose(
        images.load_image(tmp_path / "f.tiff")[:, :, 1], [[0.25, 1], [0, 0.5]]
    )
    Image.fromarray(np.array([[0, 65535, 70000]], np.int32)).save(tmp_path / "i.tiff")
    assert Image.open(tmp_path / "i.tiff").mode == "I"
    np.testing.assert_allclose(images.load_image(tmp_path / "i.tiff")[0, :, 0], [0, 1, 1])


def test_grey_and_bilevel(tmp_path):
    Image.fromarray(np.array([[0, 51, 255]], np.uint8)).save(tmp_path / "l.png")
    np.testing.assert_allclose(images.load_image(tmp_path / "l.png")[0, :, 2], [0, 0.2, 1])
    Image.fromarray(np.array([[False, True]])).save(tmp_path / "1.png")
    assert Image.open(tmp_path / "1.png").mode == "1"
    np.testing.assert_array_equal(images.load_image(tmp_path / "1.png")[0], [[0] * 3, [1] * 3])


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (16, 16), (0, 255, 0, 0)).save(tmp_path / "c.jpg", quality=100)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    image = images.load_image(tmp_path / "c.jpg")
    np.testing.assert_allclose(image, np.broadcast_to([1.0, 0.0, 1.0], image.shape), atol=3 / 255)


def test_exif_orientation_6_rotates(tmp_path):
    pixels = np.zeros((16, 32, 3), np.uint8)
    pixels[:, :16] = (255, 0, 0)  # left half red
    pixels[:, 16:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display by rotating 90 degrees clockwise
    Image.fromarray(pixels).save(tmp_path / "o.jpg", exif=exif, quality=100)
    image = images.load_image(tmp_path / "o.jpg")
    assert image.shape == (32, 16, 3)
    np.testing.assert_allclose(image[4, 8], [1, 0, 0], atol=4 / 255)  # left went to the top
    np.testing.assert_allclose(image[28, 8], [0, 0, 1], atol=4 / 255)


def test_gif_first_frame(tmp_path):
    first, second = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
    first.save(tmp_path / "anim.gif", save_all=True, append_images=[second])
    assert Image.open(tmp_path / "anim.gif").n_frames == 2
    image = images.load_image(tmp_path / "anim.gif")
    np.testing.assert_array_equal(image, np.broadcast_to([1.0, 0.0, 0.0], (8, 8, 3)))


def test_huge_header_refused_by_our_limit_without_decoding(tmp_path, monkeypatch):
    png_with_size(tmp_path / "bomb.png", 10000, 10000)  # 1e8 px: between our and Pillow's limits

    def no_decoding(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageError) as e:
        images.load_image(tmp_path / "bomb.png")
    assert "100000000 pixels" in e.value.reason and str(images.DEFAULT_MAX_PIXELS) in e.value.reason
    assert e.value.path == str(tmp_path / "bomb.png")


def test_huge_header_refused_by_pillow(tmp_path):
    png_with_size(tmp_path / "bomb.png", 100000, 100000)
    with pytest.raises(ImageError, match="above the limit") as e:
        images.load_image(tmp_path / "bomb.png")
    assert "10000000000 pixels" in e.value.reason


def test_max_pixels_argument(tmp_path):
    Image.fromarray(rgb(16, 16)).save(tmp_path / "a.png")
    with pytest.raises(ImageError, match="256 pixels, above the limit of 255"):
        images.load_image(tmp_path / "a.png", max_pixels=255)
    assert images.load_image(tmp_path / "a.png", max_pixels=256).shape == (16, 16, 3)


def test_working_sizes():
    assert images.working_sizes(1024) == [1024, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1]
    assert images.working_sizes(64) == [64, 32, 16, 8, 4, 2, 1]


def test_check_size():
    assert images.check_size(np.zeros((16, 16, 3)), "a.png", 1024) == 64
    assert images.check_size(np.zeros((64, 64, 3)), "a.png", 64) == 1
    with pytest.raises(ImageError, match="40x32, not square") as e:
        images.check_size(np.zeros((32, 40, 3)), "a.png", 64)
    assert "64, 32, 16, 8, 4, 2, 1" in e.value.reason and e.value.path == "a.png"
    with pytest.raises(ImageError, match="24x24; a 64 px generator .* 64, 32, 16, 8, 4, 2, 1"):
        images.check_size(np.zeros((24, 24, 3)), "a.png", 64)
    with pytest.raises(ImageError, match="128x128"):
        images.check_size(np.zeros((128, 128, 3)), "a.png", 64)


def test_prepare_without_resize_is_check_size():
    image = np.full((16, 16, 3), 0.5, np.float32)
    lr, factor = images.prepare_for_generator(image, "a.png", 64)
    assert lr is image and factor == 4
    with pytest.raises(ImageError, match="not square"):
        images.prepare_for_generator(np.zeros((16, 20, 3)), "a.png", 64)


def test_resize_centre_crop_of_a_working_size():
    image = np.random.default_rng(0).random((32, 40, 3), dtype=np.float32)
    lr, factor = images.prepare_for_generator(image, "a.png", 64, resize=True)
    assert factor == 2
    np.testing.assert_array_equal(lr, image[:, 4:36])


def test_resize_integer_multiple_uses_project_bicubic():
    image = np.random.default_rng(1).random((128, 130, 3), dtype=np.float32)
    lr, factor = images.prepare_for_generator(image, "a.png", 64, resize=True)
    assert lr.shape == (64, 64, 3) and lr.dtype == np.float32 and factor == 1
    expected = np.clip(np.asarray(bicubic_downscale(image[:, 1:129], 2)), 0, 1)
    np.testing.assert_allclose(lr, expected, atol=1e-6)


@pytest.mark.parametrize("side, target", [(24, 16), (20, 16), (47, 32), (100, 64), (1500, 64)])
def test_resize_other_sizes(side, target):
    image = np.full((side, side + 3, 3), 0.3, np.float32)
    image[..., 1] = 0.7
    lr, factor = images.prepare_for_generator(image, "a.png", 64, resize=True)
    assert lr.shape == (target, target, 3) and factor == 64 // target
    np.testing.assert_allclose(lr[..., 0], 0.3, atol=1e-5)  # flat stays flat
    np.testing.assert_allclose(lr[..., 1], 0.7, atol=1e-5)


def test_resize_refuses_tiny_images():
    with pytest.raises(ImageError, match="3x5, too small to resize"):
        images.prepare_for_generator(np.zeros((5, 3, 3)), "a.png", 64, resize=True)


def test_to_uint8_rounding():
    x = np.array([[[-0.2, 0.0, 0.498], [0.5, 1.0, 1.3]]], np.float32)
    np.testing.assert_array_equal(images.to_uint8(x), [[[0, 0, 127], [128, 255, 255]]])
    with pytest.raises(ValueError, match="NaN"):
        images.to_uint8(np.full((1, 1, 3), np.nan))


def test_save_image_round_trip_and_replace(tmp_path):
    path = tmp_path / "out" / "deep" / "result.png"
    first = rgb(8, 8, seed=1).astype(np.float32) / 255
    images.save_image(path, first)
    np.testing.assert_array_equal(images.load_image(path), first)
    second = rgb(16, 12, seed=2).astype(np.float32) / 255
    images.save_image(path, second)
    np.testing.assert_array_equal(images.load_image(path), second)
    assert os.listdir(path.parent) == ["result.png"]
    assert path.stat().st_mode & 0o777 == 0o644


def test_save_image_failure_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "result.png"
    old = rgb(8, 8, seed=3).astype(np.float32) / 255
    images.save_image(path, old)

    def half_write(self, fp, format=None, **kwargs):
        fp.write(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", half_write)
    with pytest.raises(OSError, match="disk full"):
        images.save_image(path, np.zeros((8, 8, 3), np.float32))
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["result.png"]
    np.testing.assert_array_equal(images.load_image(path), old)


def test_save_image_wants_png(tmp_path):
    with pytest.raises(ValueError, match=r"\.png"):
        images.save_image(tmp_path / "a.jpg", np.zeros((2, 2, 3)))


def test_upscale_nearest_and_bicubic():
    lr = np.random.default_rng(4).random((4, 4, 3), dtype=np.float32)
    big = images.upscale_nearest(lr, 16)
    np.testing.assert_array_equal(big, np.repeat(np.repeat(lr, 4, axis=0), 4, axis=1))
    flat = images.upscale_bicubic(np.full((4, 4, 3), 0.6, np.float32), (8, 12))
    assert flat.shape == (8, 12, 3)
    np.testing.assert_allclose(flat, 0.6, atol=1e-6)


def test_comparison_sheet():
    rng = np.random.default_rng(5)
    lr = rng.random((8, 8, 3), dtype=np.float32)
    samples = rng.random((2, 128, 128, 3), dtype=np.float32)
    upscaled = images.upscale_bicubic(lr, 128)
    labels = ["input 8x8", "bicubic", "sample 0 (L2 1.2e-3 ✓)", "sample 1 (L2 4.0e-2 ✗)"]
    sheet = images.comparison_sheet(lr, upscaled, samples, labels=labels)
    strip = sheet.shape[0] - 128
    assert sheet.dtype == np.float32 and strip > 0
    assert sheet.shape == (strip + 128, 4 * 128 + 3 * 4, 3)
    quantised = images.to_uint8(samples[1]).astype(np.float32) / 255
    np.testing.assert_array_equal(sheet[strip:, 3 * 132 :], quantised)
    lr_panel = sheet[strip:, :128]
    np.testing.assert_allclose(
        lr_panel[:16, :16], np.broadcast_to(lr[0, 0], (16, 16, 3)), atol=1 / 255
    )
    assert sheet[:strip, 264:392].min() < 0.5  # a label was drawn
    np.testing.assert_array_equal(sheet[:, 128:132], 1.0)  # the gap is white
    with pytest.raises(ValueError, match="3 labels for 4 panels"):
        images.comparison_sheet(lr, upscaled, samples, labels=labels[:3])


def test_comparison_sheet_default_labels_and_cell():
    lr = np.zeros((4, 4, 3), np.float32)
    sheet = images.comparison_sheet(lr, np.zeros((16, 16, 3), np.float32), [], cell=32)
    assert sheet.shape[1] == 2 * 32 + 4
    big = images.comparison_sheet(lr, np.zeros((256, 256, 3), np.float32), [lr])
    assert big.shape[1] == 3 * 256 + 2 * 4
