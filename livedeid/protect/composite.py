"""Composite: put the model's perturbation back into the frame, under a face-oval mask.

Only the *residual* (protected crop minus clean crop) is warped back to the frame and
added, so the face keeps its full camera resolution instead of being resampled through
the 128 px crop. The mask is the face-mesh oval, feathered inwards: every pixel outside
the oval is bit-identical to the input. (Hiding what cannot be protected is
:mod:`livedeid.protect.fail_closed`.)
"""
from __future__ import annotations

import cv2
import numpy as np

from livedeid.core.face_regions import fill_polygons, oval_points
from livedeid.core.records import FaceTrack


def clip_box(x0: int, y0: int, x1: int, y1: int, w: int, h: int) -> tuple[int, int, int, int]:
    """The box (x0, y0, x1, y1) cut to a ``w`` x ``h`` frame (it may come out empty)."""
    return max(0, x0), max(0, y0), min(w, x1), min(h, y1)


def oval_mask(landmarks: np.ndarray, frame_hw: tuple[int, int], feather_frac: float = 0.08, grow: float = 0.0):
    """Feathered face-oval mask within the oval's bounding box; ``grow`` scales the oval
    about its centre first (:func:`livedeid.core.face_regions.oval_points`).

    Returns ``(box, mask)`` with ``box = (x0, y0, x1, y1)`` and ``mask`` float32 (h, w) in
    [0, 1], exactly 0 outside the oval polygon (the feather lies inside it), or
    ``(None, None)`` when the oval is outside the frame.
    """
    h, w = frame_hw
    poly = oval_points(landmarks, grow)
    x0, y0 = np.floor(poly.min(axis=0)).astype(int) - 1
    x1, y1 = np.ceil(poly.max(axis=0)).astype(int) + 2
    x0, y0, x1, y1 = clip_box(x0, y0, x1, y1, w, h)
    if x1 <= x0 or y1 <= y0:
        return None, None
    hard = fill_polygons(np.zeros((y1 - y0, x1 - x0), np.uint8), [poly], 255, origin=(x0, y0))
    # The feather is smooth, so it is computed on a copy at most 96 px across and scaled
    # back: the erosion and blur then cost the same for a 100 px and a 1000 px face.
    size = max(x1 - x0, y1 - y0)
    k = min(1.0, 96.0 / size)
    small = cv2.resize(hard, (max(1, round((x1 - x0) * k)), max(1, round((y1 - y0) * k))),
                       interpolation=cv2.INTER_AREA) if k < 1.0 else hard
    radius = max(1, int(round(feather_frac * size * k)))
    eroded = cv2.erode(small, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1)))
    soft = cv2.GaussianBlur(eroded.astype(np.float32) * (1.0 / 255.0), (0, 0), radius / 2.0)
    if k < 1.0:
        soft = cv2.resize(soft, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    soft *= hard > 0  # guarantees exact zeros outside the polygon
    return (x0, y0, x1, y1), soft


def apply_protection(out: np.ndarray, face: FaceTrack) -> None:
    """Add ``face.protected - face.crop`` (crop space) to ``out`` (frame space) in place,
    under the face's feathered oval mask (grown by ``face.mask_grow``: the cloak's region)."""
    if face.protected is None or face.crop is None:
        raise ValueError("face has no protected crop")
    box, mask = oval_mask(face.landmarks, out.shape[:2], grow=face.mask_grow)
    if box is None:
        return
    x0, y0, x1, y1 = box
    residual = (face.protected - face.crop).transpose(1, 2, 0)[:, :, ::-1]  # CHW RGB -> HWC BGR
    to_box = face.from_crop.copy()
    to_box[:, 2] -= (x0, y0)
    warped = cv2.warpAffine(
        np.ascontiguousarray(residual), to_box, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT, borderValue=0,
    )
    warped *= mask[:, :, None] * 255.0
    region = out[y0:y1, x0:x1]
    # one pass: the sum rounded and saturated to 0-255 (as np.clip(np.rint(...)) would)
    region[...] = cv2.add(region, warped, dtype=cv2.CV_8U)


def draw_hr_overlay(out: np.ndarray, bpm: float | None, quality: str) -> None:
    """Burn the heart rate into the output (off by default; the clinician sees it)."""
    text = f"HR {bpm:5.1f} bpm ({quality})" if bpm is not None else "HR -- (no reading)"
    scale = max(0.5, out.shape[0] / 720.0)
    org = (int(12 * scale), int(34 * scale))
    cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.9 * scale, (0, 0, 0), int(4 * scale), cv2.LINE_AA)
    cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.9 * scale, (255, 255, 255), int(2 * scale), cv2.LINE_AA)
