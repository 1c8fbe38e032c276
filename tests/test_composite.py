"""Composite: perturbation only under the feathered oval; fail-closed hiding."""
import cv2
import numpy as np
import pytest

from livedeid.core.face_regions import FACE_OVAL, polygon_points
from livedeid.core.records import FaceTrack
from livedeid.protect.composite import apply_protection, oval_mask
from livedeid.protect.fail_closed import hidden_box, hide_region
from livedeid.protect.windows import extract_crop
from livedeid.tracking.mesh import FaceTracker, alignment


@pytest.fixture(scope="module")
def astronaut_face(astronaut_bgr):
    with FaceTracker(static_images=True) as tracker:
        lm = tracker.detect(astronaut_bgr)[0]
    to_crop, from_crop, _ = alignment(lm, 128)
    return FaceTrack(0, lm, to_crop, from_crop, 1.0)


def test_mask_is_zero_outside_polygon_and_one_inside(astronaut_face, astronaut_bgr):
    box, mask = oval_mask(astronaut_face.landmarks, astronaut_bgr.shape[:2])
    x0, y0, x1, y1 = box
    hard = np.zeros(astronaut_bgr.shape[:2], np.uint8)
    cv2.fillPoly(hard, [np.round(polygon_points(astronaut_face.landmarks, FACE_OVAL)).astype(np.int32)], 1)
    full = np.zeros(astronaut_bgr.shape[:2], np.float32)
    full[y0:y1, x0:x1] = mask
    # outside a 1-px band around the polygon the mask is exactly 0
    outside = cv2.dilate(hard, np.ones((3, 3), np.uint8)) == 0
    assert np.all(full[outside] == 0)
    # the feather lies inside: the oval's centre is fully protected
    cy, cx = np.round(astronaut_face.landmarks[1]).astype(int)[::-1]
    assert full[cy, cx] == pytest.approx(1.0, abs=1e-3)
    assert 0 < full[hard > 0].mean() < 1


def test_only_pixels_under_the_mask_change(astronaut_face, astronaut_bgr):
    rng = np.random.default_rng(0)
    face = astronaut_face
    face.crop = extract_crop(astronaut_bgr, face.to_crop, 128)
    face.protected = np.clip(face.crop + rng.uniform(-8 / 255, 8 / 255, face.crop.shape).astype(np.float32), 0, 1)
    out = astronaut_bgr.copy()
    apply_protection(out, face)
    box, mask = oval_mask(face.landmarks, out.shape[:2])
    full = np.zeros(out.shape[:2], np.float32)
    full[box[1]:box[3], box[0]:box[2]] = mask
    changed = np.any(out != astronaut_bgr, axis=2)
    assert changed.sum() > 1000                      # the perturbation is there
    assert not np.any(changed & (full == 0))         # and nowhere outside the mask
    diff = np.abs(out.astype(int) - astronaut_bgr.astype(int))
    assert diff.max() <= 9                           # bounded by 8/255 (+1 for rounding)


def test_zero_residual_leaves_frame_bit_identical(astronaut_face, astronaut_bgr):
    face = astronaut_face
    face.crop = extract_crop(astronaut_bgr, face.to_crop, 128)
    face.protected = face.crop.copy()
    out = astronaut_bgr.copy()
    apply_protection(out, face)
    assert np.array_equal(out, astronaut_bgr)


@pytest.mark.parametrize("policy", ["blur", "mask"])
def test_hide_region_destroys_detail(astronaut_face, astronaut_bgr, policy):
    out = astronaut_bgr.copy()
    box = hidden_box(astronaut_face, out.shape[:2])
    hide_region(out, box, policy)
    x0, y0, x1, y1 = box
    region = out[y0:y1, x0:x1].astype(np.float32)
    lap = cv2.Laplacian(cv2.cvtColor(out[y0:y1, x0:x1], cv2.COLOR_BGR2GRAY), cv2.CV_32F)
    orig_lap = cv2.Laplacian(cv2.cvtColor(astronaut_bgr[y0:y1, x0:x1], cv2.COLOR_BGR2GRAY), cv2.CV_32F)
    assert lap.var() < 0.01 * orig_lap.var()          # no edges left to recognise
    assert np.array_equal(out[:y0], astronaut_bgr[:y0])  # outside the box untouched
    with FaceTracker(static_images=True) as tracker:
        assert tracker.detect(out) == []              # not even a face detector finds it
    if policy == "mask":
        assert np.all(region == 128)


def test_hidden_box_grows_while_lost(astronaut_face, astronaut_bgr):
    lost = FaceTrack(0, astronaut_face.landmarks, astronaut_face.to_crop, astronaut_face.from_crop, 0.0,
                     lost_frames=1)
    b1 = hidden_box(lost, astronaut_bgr.shape[:2])
    lost.lost_frames = 20
    b2 = hidden_box(lost, astronaut_bgr.shape[:2])
    assert (b2[2] - b2[0]) > (b1[2] - b1[0])
    x0, y0, x1, y1 = lost.bbox()
    assert b1[0] <= x0 and b1[1] <= y0 and b1[2] >= min(x1, 512) and b1[3] >= min(y1, 512)
