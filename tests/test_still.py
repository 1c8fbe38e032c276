"""Still-photo landmarking (livedeid.tracking.still): one rule for every offline user."""
from __future__ import annotations

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
pytest.importorskip("mediapipe")

from livedeid.tracking.still import MAX_SIDE, still_landmarks  # noqa: E402


def _face_width(lm: np.ndarray) -> float:
    return float(np.ptp(lm[:, 0]))


def test_landmarks_do_not_depend_on_the_photo_size(astronaut_bgr):
    lm = still_landmarks(astronaut_bgr)
    assert lm is not None and lm.shape == (478, 2)
    h, w = astronaut_bgr.shape[:2]
    assert (lm >= 0).all() and (lm[:, 0] < w).all() and (lm[:, 1] < h).all()
    # A photo over MAX_SIDE is landmarked shrunk; the answer comes back in its own pixels.
    k = 2 * MAX_SIDE / max(h, w)
    big = cv2.resize(astronaut_bgr, None, fx=k, fy=k, interpolation=cv2.INTER_CUBIC)
    lm_big = still_landmarks(big)
    assert np.abs(lm_big / k - lm).max() < 0.02 * _face_width(lm)
    # Greyscale photos (ORL's .pgm) are read as three equal channels.
    grey = cv2.cvtColor(astronaut_bgr, cv2.COLOR_BGR2GRAY)
    assert np.abs(still_landmarks(grey) - lm).mean() < 0.02 * _face_width(lm)


def test_small_photo_gives_the_same_face(astronaut_bgr):
    lm = still_landmarks(astronaut_bgr)
    k = 96 / max(astronaut_bgr.shape[:2])  # a face of a few dozen pixels
    small = cv2.resize(astronaut_bgr, None, fx=k, fy=k, interpolation=cv2.INTER_AREA)
    lm_small = still_landmarks(small)
    assert lm_small is not None
    assert np.abs(lm_small / k - lm).mean() < 0.05 * _face_width(lm)


def test_no_face_is_none():
    assert still_landmarks(np.full((200, 300, 3), 127, np.uint8)) is None
