"""The engine's residual per face track, worn again on the frames between engine runs.

The residual (protected crop minus crop) lives in the face's aligned crop space, so on a
frame where the network does not run, adding the last residual to the current crop and
compositing it through the current alignment moves the protection with the face (a
translation, a turn, a change of size) exactly as a fresh residual would. What it does
not follow is a change inside the face (an expression) over the one or two frames it
is reused: at 30 fps, 33-67 ms. A face that was hidden or lost starts afresh, like its
window.
"""
from __future__ import annotations

import numpy as np

from livedeid.core.records import FaceTrack


class ResidualCache:
    """Residuals keyed by track id; the network runs for a face on one frame in ``every``
    and the frames between wear its last residual (``every`` = 1: never reused)."""

    def __init__(self, every: int = 1):
        if every < 1:
            raise ValueError("every must be >= 1")
        self.every = every
        self._residuals: dict[int, tuple[np.ndarray, int]] = {}  # track -> (residual, frames worn)

    def wear(self, face: FaceTrack) -> bool:
        """Set ``face.protected`` to its current crop plus its last residual, when that
        residual is due for reuse; False when the network has to run for this face."""
        entry = self._residuals.get(face.track_id)
        if entry is None or entry[1] + 1 >= self.every or face.crop is None or entry[0].shape != face.crop.shape:
            return False
        residual, worn = entry
        face.protected = face.crop + residual
        self._residuals[face.track_id] = (residual, worn + 1)
        return True

    def store(self, face: FaceTrack) -> None:
        """Keep the residual of a face the network has just protected."""
        if self.every > 1 and face.protected is not None and face.crop is not None:
            self._residuals[face.track_id] = (face.protected - face.crop, 0)

    def reset(self, track_id: int) -> None:
        self._residuals.pop(track_id, None)

    def retain(self, track_ids: set[int]) -> None:
        """Forget the residuals of tracks that no longer exist."""
        for tid in list(self._residuals):
            if tid not in track_ids:
                del self._residuals[tid]
