"""A personal cloak on a tracked face: a fixed perturbation in face-aligned crop
coordinates, added to the face's aligned crop so that the ordinary composite warps it
onto the face (it moves with the face because the crop does).

The pattern is what enrolment optimised for one person (``livedeid.cloak``); here it is
only data: float32 ``(3, S, S)`` RGB in crop space, bounded by the profile's budget.
"""
from __future__ import annotations

import numpy as np

from livedeid.core.records import FaceTrack


def check_pattern(pattern: np.ndarray, crop_size: int, budget: float) -> np.ndarray:
    """``pattern`` as float32 ``(3, crop_size, crop_size)``; ValueError when its shape is
    wrong, it is not finite or it exceeds ``budget`` (a tampered or foreign cloak)."""
    p = np.asarray(pattern, dtype=np.float32)
    if p.shape != (3, crop_size, crop_size):
        raise ValueError(f"cloak pattern has shape {p.shape}, expected (3, {crop_size}, {crop_size})")
    if not np.isfinite(p).all():
        raise ValueError("cloak pattern has non-finite values")
    if float(np.abs(p).max(initial=0.0)) > budget + 1e-6:
        raise ValueError(f"cloak pattern exceeds its budget {budget * 255:.1f}/255")
    return p


def cloak_face(face: FaceTrack, pattern: np.ndarray) -> None:
    """Set ``face.protected`` to its crop plus the cloak, clipped to the valid range; the
    composite then adds ``protected - crop`` under the face oval."""
    if face.crop is None:
        raise ValueError("face has no aligned crop")
    face.protected = np.clip(face.crop + pattern, 0.0, 1.0).astype(np.float32, copy=False)
