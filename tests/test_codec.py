"""The H.264 round trip a video call puts a photo through (livedeid.evaluation.codec):
real PyAV/libx264, no mocks."""
import cv2
import numpy as np
import pytest

from livedeid.core.errors import UserError
from livedeid.evaluation.codec import h264_roundtrip, h264_roundtrip_many
from livedeid.evaluation.metrics import mse_to_psnr

FACE = (slice(50, 170), slice(185, 285))  # the astronaut's face (skin, eyes, mouth), rows x cols


@pytest.fixture(scope="module")
def astronaut():
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


@pytest.fixture(scope="module")
def at_1500(astronaut):
    return h264_roundtrip(astronaut, 1500)


def face_psnr(a, b) -> float:
    d = a[FACE].astype(np.float64) - b[FACE].astype(np.float64)
    return mse_to_psnr(float(np.mean(d * d)))


def test_round_trip_keeps_the_photos_shape_and_dtype(astronaut, at_1500):
    assert at_1500.shape == astronaut.shape and at_1500.dtype == np.uint8
    odd = astronaut[:301, :457]  # odd sizes, a wide aspect: letterboxed, not cropped
    out = h264_roundtrip(odd, 600, frames=3)
    assert out.shape == odd.shape and out.dtype == np.uint8


def test_output_lines_up_with_the_input(astronaut, at_1500):
    # the last frame's webcam shift is undone: no residual translation
    a = cv2.cvtColor(astronaut, cv2.COLOR_BGR2GRAY).astype(np.float64)
    b = cv2.cvtColor(at_1500, cv2.COLOR_BGR2GRAY).astype(np.float64)
    (dx, dy), _ = cv2.phaseCorrelate(a, b)
    assert abs(dx) < 0.3 and abs(dy) < 0.3


def test_a_call_bitrate_keeps_the_face_and_a_starved_one_does_not(astronaut, at_1500):
    good = face_psnr(astronaut, at_1500)
    assert 28.0 < good < 45.0
    starved = face_psnr(astronaut, h264_roundtrip(astronaut, 150))
    assert starved < good - 4.0


def test_it_is_seeded(astronaut, at_1500):
    assert np.array_equal(h264_roundtrip(astronaut, 1500, seed=0), at_1500)
    assert not np.array_equal(h264_roundtrip(astronaut, 1500, seed=1), at_1500)


def test_many_is_the_same_as_one_at_a_time(astronaut):
    small = cv2.resize(astronaut, (160, 160), interpolation=cv2.INTER_AREA)
    outs = h264_roundtrip_many([small, small[:, :120]], 600, frames=3, seed=2)
    assert len(outs) == 2
    assert np.array_equal(outs[1], h264_roundtrip(small[:, :120], 600, frames=3, seed=2))


@pytest.mark.parametrize("image, kbps, kw", [
    ("ok", 0, {}),
    ("ok", -5, {}),
    ("ok", float("nan"), {}),
    (np.zeros((0, 10, 3), np.uint8), 1500, {}),
    (np.zeros((10, 10), np.uint8), 1500, {}),
    (np.zeros((10, 10, 3), np.float32), 1500, {}),
    ("ok", 1500, {"frames": 0}),
    ("ok", 1500, {"size": (641, 480)}),
    ("ok", 1500, {"fps": 0}),
])
def test_bad_arguments_are_one_line_user_errors(image, kbps, kw):
    img = np.full((32, 32, 3), 100, np.uint8) if isinstance(image, str) else image
    with pytest.raises(UserError) as exc:
        h264_roundtrip(img, kbps, **kw)
    assert "\n" not in str(exc.value)
