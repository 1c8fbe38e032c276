"""A personal cloak on a tracked face: a fixed perturbation added to the face's aligned
crop, so that the ordinary composite warps it onto the face (it moves with the face
because the crop does).

The pattern is what enrolment optimised for one person (``livedeid.cloak``); here it is
only data: float32 ``(3, S, S)`` RGB, bounded by the profile's budget. Either it lies in
the aligned crop's own coordinates, or it is drawn in a face layout (the enrolment's mean
face-mesh shape) and re-posed onto this frame's mesh first (:mod:`livedeid.core.reposing`),
so that a turned head wears it on the same points of the face.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from livedeid.core.geometry import apply_affine
from livedeid.core.records import FaceTrack
from livedeid.core.reposing import Reposer, anchor_points


@lru_cache(maxsize=8)
def _reposer(layout_bytes: bytes, size: int) -> Reposer:
    layout = np.frombuffer(layout_bytes, np.float32).reshape(-1, 2)
    return Reposer(anchor_points(layout), size)


def reposer_for(layout: np.ndarray, size: int) -> Reposer:
    """The :class:`Reposer` of a (478, 2) layout, made once per layout (its spline's
    system is inverted at construction)."""
    return _reposer(np.ascontiguousarray(layout, np.float32).tobytes(), int(size))


def worn_pattern(face: FaceTrack, pattern: np.ndarray, layout: np.ndarray | None = None) -> np.ndarray:
    """The pattern as this face wears it in its aligned crop: itself, or re-posed from
    ``layout`` onto the face's mesh."""
    if layout is None:
        return pattern
    size = pattern.shape[-1]
    anchors = apply_affine(face.to_crop, anchor_points(face.landmarks))
    return reposer_for(layout, size)(pattern, anchors)


def cloak_face(face: FaceTrack, pattern: np.ndarray, grow: float = 0.0, layout: np.ndarray | None = None) -> None:
    """Set ``face.protected`` to its crop plus the cloak (re-posed from ``layout`` when
    given), clipped to the valid range; the composite then adds ``protected - crop`` under
    the face oval grown by ``grow`` (the profile's ``region_grow``: the cloak reaches over
    the hairline, ears and jaw line)."""
    if face.crop is None:
        raise ValueError("face has no aligned crop")
    face.mask_grow = float(grow)
    face.protected = np.clip(face.crop + worn_pattern(face, pattern, layout), 0.0, 1.0).astype(np.float32, copy=False)
