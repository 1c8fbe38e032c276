"""A personal cloak on a tracked face: a fixed perturbation in face-aligned crop
coordinates, added to the face's aligned crop so that the ordinary composite warps it
onto the face (it moves with the face because the crop does).

The pattern is what enrolment optimised for one person (``livedeid.cloak``); here it is
only data: float32 ``(3, S, S)`` RGB in crop space, bounded by the profile's budget.
"""
from __future__ import annotations

import numpy as np

from livedeid.core.records import FaceTrack


def cloak_face(face: FaceTrack, pattern: np.ndarray, grow: float = 0.0) -> None:
    """Set ``face.protected`` to its crop plus the cloak, clipped to the valid range; the
    composite then adds ``protected - crop`` under the face oval grown by ``grow`` (the
    profile's ``region_grow``: the cloak reaches over the hairline, ears and jaw line)."""
    if face.crop is None:
        raise ValueError("face has no aligned crop")
    face.mask_grow = float(grow)
    face.protected = np.clip(face.crop + pattern, 0.0, 1.0).astype(np.float32, copy=False)
