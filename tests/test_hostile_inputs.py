"""Hostile input folders (issue 16, kind 8): output names never collide with each other or
with the run's own files, special files are named instead of skipped in silence, and a
small file claiming a huge image is refused before it is decoded, in bounded memory."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers.hostile import assert_refused, read_isolated
from PIL import Image

from pulse_jax import images
from pulse_jax.runs import engine
from pulse_jax.runs.inputs import load_inputs

COLLIDING = [
    "a.png", "a.bmp", "a_png.bmp", "A.PNG", "a_png_2.gif", "results.jsonl.png",
    "Results.JSONL.jpg", "aligned.png", "b.tar.gz", "b.tar.png", "c",
]  # fmt: skip


def assert_injective(names: dict[Path, str]) -> None:
    folded = [n.casefold() for n in names.values()]
    assert len(set(folded)) == len(folded), names
    assert not {n.casefold() for n in images.RESERVED_NAMES} & set(folded)
    assert all(n and "/" not in n and not n.startswith(".") for n in names.values())


def test_colliding_names_get_distinct_folders():
    paths = [Path(n) for n in sorted(COLLIDING)]
    names = images.output_names(paths)
    assert_injective(names)
    assert names[Path("a_png.bmp")] == "a_png"  # a unique stem keeps its name
    assert names[Path("c")] == "c" and names[Path("a.png")] not in ("a", "a_png")


@pytest.mark.parametrize("seed", range(20))
def test_random_folders_get_distinct_folders(seed):
    rng = np.random.default_rng(seed)
    parts = ["a", "A", "_", ".", "png", "PNG", "results", "jsonl", "aligned", "1", "_2"]
    names = {"".join(rng.choice(parts, rng.integers(1, 6))) for _ in range(60)}
    paths = [Path(n) for n in sorted(names) if not n.startswith(".")]
    assert_injective(images.output_names(paths))


def test_manifest_points_each_input_at_its_own_folder(tmp_path):
    for name in COLLIDING:
        Image.new("RGB", (4, 4), (len(name) * 9 % 255, 0, 0)).save(tmp_path / name, "PNG")
    inputs, errors = load_inputs(tmp_path, 64)
    assert not errors and len(inputs) == len(COLLIDING)
    folders = [item.name.casefold() for item in inputs]
    assert len(set(folders)) == len(folders) and "results.jsonl" not in folders


def test_special_files_are_named_and_never_opened(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "good.png")
    os.mkfifo(tmp_path / "fifo.png")  # opening it would block forever
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "device.png").symlink_to("/dev/zero")  # reading it would never end
    (tmp_path / "broken.png").symlink_to(tmp_path / "missing")
    found = images.special_files(tmp_path)
    assert {p.name: w for p, w in found.items()} == {
        "broken.png": "a broken link",
        "device.png": "a character device",
        "fifo.png": "a FIFO",
        "folder.png": "a folder",
    }
    inputs, errors = load_inputs(tmp_path, 64)
    assert [i.path.name for i in inputs] == ["good.png"] and not errors
    summary = engine.Summary(inputs=1, not_files=found, output_dir="out")
    text = "\n".join(summary.lines())
    for path, what in found.items():
        assert f"{path}: {what}" in text


def png_claiming(path: Path, width: int, height: int, mode=6) -> Path:
    """A valid PNG of `width` x `height` RGBA pixels, all zero, deflated to a few KB per MB."""
    row = b"\x00" + bytes(4 * width)
    body = zlib.compress(row * height, 9)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(
            4, "big")  # fmt: skip

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, mode, 0, 0, 0])
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body)
    path.write_bytes(png + chunk(b"IEND", b""))
    return path


def test_small_files_claiming_huge_images_are_refused_before_decoding(tmp_path):
    cases = {
        "rgba_8192": ("image", png_claiming(tmp_path / "rgba_8192.png", 8192, 8192)),
        "rgba_4096x4097": ("image", png_claiming(tmp_path / "tall.png", 4096, 4097)),
        "good": ("image", png_claiming(tmp_path / "good.png", 16, 16)),
    }
    assert cases["rgba_8192"][1].stat().st_size < 1 << 20
    found = read_isolated(cases, memory=2 << 30)
    for name in ("rgba_8192", "rgba_4096x4097"):
        assert_refused(found[name], cases[name][1], "above the limit")
        assert found[name].max_rss_mb < 1024
    assert found["good"].refused is None
    np.testing.assert_array_equal(images.load_image(cases["good"][1]), np.ones((16, 16, 3)))
