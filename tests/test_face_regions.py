"""Face-mesh regions and the one polygon rasteriser every face mask goes through."""
import cv2
import numpy as np
import pytest

from livedeid.core.face_regions import (
    FACE_OVAL,
    LEFT_BROW,
    LEFT_EYE,
    LIPS,
    RIGHT_BROW,
    RIGHT_EYE,
    SUBPIXEL_BITS,
    fill_polygons,
    polygon_points,
)


def _loop_edges(loop: tuple) -> set[frozenset]:
    return {frozenset((loop[i], loop[(i + 1) % len(loop)])) for i in range(len(loop))}


def test_regions_are_the_closed_loops_of_mediapipe_edge_sets():
    fm = pytest.importorskip("mediapipe").solutions.face_mesh

    def mp_edges(edges) -> set[frozenset]:
        return {frozenset(e) for e in edges}

    assert len(set(FACE_OVAL)) == len(FACE_OVAL) == 36
    assert _loop_edges(FACE_OVAL) == mp_edges(fm.FACEMESH_FACE_OVAL)
    assert _loop_edges(RIGHT_EYE) == mp_edges(fm.FACEMESH_RIGHT_EYE)
    assert _loop_edges(LEFT_EYE) == mp_edges(fm.FACEMESH_LEFT_EYE)
    assert _loop_edges(LIPS) <= mp_edges(fm.FACEMESH_LIPS)  # the outer lip line
    # MediaPipe draws a brow as its upper and lower lines; the region closes them at both ends.
    for brow, edges in ((RIGHT_BROW, fm.FACEMESH_RIGHT_EYEBROW), (LEFT_BROW, fm.FACEMESH_LEFT_EYEBROW)):
        assert len(_loop_edges(brow) - mp_edges(edges)) == 2 and mp_edges(edges) <= _loop_edges(brow)


def _random_oval(rng: np.random.Generator) -> np.ndarray:
    """36 sub-pixel points of a face-oval-like loop in a 200 x 240 image."""
    a = np.linspace(0, 2 * np.pi, 36, endpoint=False) + rng.uniform(-0.05, 0.05, 36)
    r = rng.uniform(60, 90) * (1 + rng.uniform(-0.05, 0.05, 36))
    return np.stack([100 + r * np.cos(a), 120 + 1.2 * r * np.sin(a)], axis=1)


def test_fill_matches_fillpoly_at_subpixel_precision_from_any_start_and_origin():
    rng = np.random.default_rng(0)
    for _ in range(20):
        poly = _random_oval(rng)
        ref = np.zeros((240, 200), np.uint8)
        cv2.fillPoly(ref, [np.round(poly * (1 << SUBPIXEL_BITS)).astype(np.int32)], 255, cv2.LINE_8,
                     shift=SUBPIXEL_BITS)
        # The same loop started elsewhere (MediaPipe's edge walk starts at the chin).
        rolled = np.roll(poly, int(rng.integers(1, 36)), axis=0)
        assert np.array_equal(fill_polygons(np.zeros_like(ref), [rolled]), ref)
        # A box-sized mask with its origin is the same pixels as the full-frame mask.
        x0, y0 = int(np.floor(poly[:, 0].min())), int(np.floor(poly[:, 1].min()))
        box = fill_polygons(np.zeros((240 - y0, 200 - x0), np.uint8), [poly], 255, origin=(x0, y0))
        assert np.array_equal(box, ref[y0:, x0:])


def test_overlapping_polygons_are_all_filled():
    a = np.array([[2.0, 2.0], [12.0, 2.0], [12.0, 12.0], [2.0, 12.0]])
    mask = fill_polygons(np.zeros((20, 20), np.uint8), [a, a + 4.0], 1)
    assert mask[8, 8] == 1  # cv2.fillPoly given both at once would leave the overlap empty
    fill_polygons(mask, [a + 4.0], 0)
    assert mask[8, 8] == 0 and mask[3, 3] == 1


def test_polygon_points_blends_between_landmarks():
    lm = np.array([[0.0, 0.0], [10.0, 20.0], [4.0, 4.0]], np.float32)
    pts = polygon_points(lm, (2, (0, 1, 0.25)))
    assert pts.dtype == np.float64
    assert np.allclose(pts, [[4.0, 4.0], [2.5, 5.0]])
