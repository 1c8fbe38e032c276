"""Named regions of the MediaPipe face mesh and the one polygon rasteriser.

Indices refer to the 478-point refined face mesh. Every polygon is listed in boundary
order, so it can be filled as is; an entry ``(a, b, t)`` is the point a fraction ``t``
of the way from landmark ``a`` to ``b``. "Right"/"left" are the subject's: the right
eye is on the image's left.

Everything that rasterises a face region (the composite's oval, the evaluation's face
region, the rPPG skin, the synthetic pulse) goes through :func:`fill_polygons`, so the
masks agree to the pixel.
"""
from __future__ import annotations

from typing import Iterable

import cv2
import numpy as np

# The face outline, hairline to chin: MediaPipe's FACEMESH_FACE_OVAL edge set walked as
# one closed loop (tests check it against the edge set), starting at the top (10).
FACE_OVAL = (
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
    152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
)
RIGHT_EYE = (33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7)
LEFT_EYE = (263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373, 390, 249)
RIGHT_BROW = (70, 63, 105, 66, 107, 55, 65, 52, 53, 46)
LEFT_BROW = (300, 293, 334, 296, 336, 285, 295, 282, 283, 276)
LIPS = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146)
NOSE_BASE = (48, 115, 220, 45, 4, 275, 440, 344, 278, 294, 327, 326, 2, 97, 98, 64)

# Pulse-bearing skin. The forehead's upper edge lies halfway between the
# 69-108-151-337-299 row and the hairline row 67-109-10-338-297, high enough for a useful
# area yet below where fringes usually fall; the cheeks lie between the lower-eyelid
# crease, the side of the nose and mouth-corner height, the most perfused and least
# articulated skin of the face.
FOREHEAD = (9, 107, 66, 105, (104, 103, 0.5), (69, 67, 0.5), (108, 109, 0.5), (151, 10, 0.5),
            (337, 338, 0.5), (299, 297, 0.5), (333, 332, 0.5), 334, 296, 336)
RIGHT_CHEEK = (116, 117, 118, 119, 100, 142, 203, 206, 207, 187, 147, 123)  # image left
LEFT_CHEEK = (345, 346, 347, 348, 329, 371, 423, 426, 427, 411, 376, 352)   # image right

# Parts that move on their own (blinks, speech) and carry no pulse, each with the factor
# it is grown by about its centroid: with head turns or landmark jitter the skin would
# otherwise touch them, and their motion swamps the pulse.
EXCLUSIONS = ((RIGHT_EYE, 1.6), (LEFT_EYE, 1.6), (RIGHT_BROW, 1.3), (LEFT_BROW, 1.3),
              (LIPS, 1.25), (NOSE_BASE, 1.15))

SUBPIXEL_BITS = 4  # fillPoly fractional bits: landmarks are sub-pixel, masks should be too


def oval_points(landmarks: np.ndarray, grow: float = 0.0) -> np.ndarray:
    """The face oval's points (:data:`FACE_OVAL`), scaled by ``1 + grow`` about their mean:
    ``grow > 0`` reaches past the oval over the hairline, the ears and the jaw line (the
    personal cloak's region, ``Profile.region_grow``)."""
    pts = polygon_points(landmarks, FACE_OVAL)
    if grow:
        centre = pts.mean(axis=0)
        pts = centre + (pts - centre) * (1.0 + float(grow))
    return pts


def polygon_points(landmarks: np.ndarray, poly: tuple) -> np.ndarray:
    """``(k, 2)`` float64 points of a polygon spec (landmark indices or ``(a, b, t)`` blends)."""
    lm = np.asarray(landmarks, dtype=np.float64)[:, :2]
    out = np.empty((len(poly), 2))
    for j, p in enumerate(poly):
        if isinstance(p, tuple):
            a, b, t = p
            out[j] = lm[a] + (lm[b] - lm[a]) * t
        else:
            out[j] = lm[p]
    return out


def exclusion_polygons(landmarks: np.ndarray) -> list[np.ndarray]:
    """The :data:`EXCLUSIONS` of one face, each grown about its centroid."""
    out = []
    for poly, factor in EXCLUSIONS:
        pts = polygon_points(landmarks, poly)
        c = pts.mean(axis=0)
        out.append(c + (pts - c) * factor)
    return out


def fill_polygons(mask: np.ndarray, polygons: Iterable[np.ndarray], value: int = 255,
                  origin: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Fill ``polygons`` (``(k, 2)`` image pixel coordinates each) into ``mask`` in place,
    at 1/16 px precision; ``origin`` is the image position of ``mask[0, 0]``. Returns ``mask``.

    Each polygon is filled on its own: given several at once, ``cv2.fillPoly`` applies the
    even-odd rule and would leave where two overlap unfilled.
    """
    off = np.asarray(origin, dtype=np.float64)
    scale = float(1 << SUBPIXEL_BITS)
    for poly in polygons:
        pts = np.round((np.asarray(poly, dtype=np.float64)[:, :2] - off) * scale).astype(np.int32)
        cv2.fillPoly(mask, [pts], value, cv2.LINE_8, shift=SUBPIXEL_BITS)
    return mask
