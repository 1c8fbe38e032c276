"""Where the pulse is read: forehead and cheek skin of one face, and its mean colour.

The regions are MediaPipe face-mesh polygons (:mod:`livedeid.core.face_regions`) with
eyes, brows, nostrils and mouth cut out: they move on their own and carry no pulse.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from livedeid.core.face_regions import (
    FOREHEAD,
    LEFT_CHEEK,
    RIGHT_CHEEK,
    exclusion_polygons,
    fill_polygons,
    polygon_points,
)

SKIN_POLYGONS = (FOREHEAD, RIGHT_CHEEK, LEFT_CHEEK)


def _skin_in_box(landmarks: np.ndarray, shape_hw: tuple[int, int]) -> tuple[int, int, np.ndarray] | None:
    """Skin mask rasterised only inside the skin polygons' bounding box (clipped to the
    image): ``(x0, y0, mask uint8)`` or None when the box is empty."""
    h, w = int(shape_hw[0]), int(shape_hw[1])
    polys = [polygon_points(landmarks, p) for p in SKIN_POLYGONS]
    roi = np.concatenate(polys)
    if not np.all(np.isfinite(roi)):
        return None
    x0 = max(int(math.floor(roi[:, 0].min())), 0)
    y0 = max(int(math.floor(roi[:, 1].min())), 0)
    x1 = min(int(math.ceil(roi[:, 0].max())) + 1, w)
    y1 = min(int(math.ceil(roi[:, 1].max())) + 1, h)
    if x1 <= x0 or y1 <= y0:
        return None
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    fill_polygons(mask, polys, 255, origin=(x0, y0))
    fill_polygons(mask, exclusion_polygons(landmarks), 0, origin=(x0, y0))
    return x0, y0, mask


def skin_mask(landmarks: np.ndarray, shape_hw: tuple[int, int]) -> np.ndarray:
    """Boolean ``(H, W)`` mask of forehead and cheek skin for one face's landmarks."""
    out = np.zeros((int(shape_hw[0]), int(shape_hw[1])), dtype=bool)
    box = _skin_in_box(landmarks, shape_hw)
    if box is not None:
        x0, y0, m = box
        out[y0:y0 + m.shape[0], x0:x0 + m.shape[1]] = m > 0
    return out


def mean_skin_rgb(image_bgr: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Mean skin colour ``(3,)`` as **RGB** float in the image's units (0-255 for uint8).

    All NaN when the skin region is empty (face off-frame); callers treat that as
    "no face this frame".
    """
    box = _skin_in_box(landmarks, image_bgr.shape[:2])
    if box is None:
        return np.full(3, np.nan)
    x0, y0, m = box
    if not m.any():
        return np.full(3, np.nan)
    crop = image_bgr[y0:y0 + m.shape[0], x0:x0 + m.shape[1]]
    b, g, r, _ = cv2.mean(crop, mask=m)
    return np.array([r, g, b], dtype=np.float64)
