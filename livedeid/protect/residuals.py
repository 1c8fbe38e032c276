"""The engine's residual per face track, worn again on the frames between engine runs.

The residual (protected crop minus crop) lives in the face's aligned crop space, so on a
frame where the network does not run, adding the last residual to the current crop and
compositing it through the current alignment moves the protection with the face (a
translation, a turn, a change of size) exactly as a fresh residual would. What it does
not follow is a change inside the face (an expression, motion blur, a hand, a turn that
the 2-D alignment cannot undo): a residual made for one picture of the face does not fit
another (the torture set's ``motion_blur`` leaked on 14 frames of 90 instead of 1 with a
fixed one-in-two). So a residual is worn again only while the face's aligned crop has
changed little since the network last saw it (``change``: mean absolute difference, 0-1
scale); otherwise the network runs, whatever ``every`` says. A face that was hidden or
lost starts afresh, like its window.
"""
from __future__ import annotations

import numpy as np

from livedeid.core.records import FaceTrack


class ResidualCache:
    """Residuals keyed by track id; the network runs for a face on one frame in ``every``
    at most (``every`` = 1: never reused), and on every frame whose aligned crop differs
    from the one the network last saw by more than ``change`` (mean absolute, 0-1)."""

    def __init__(self, every: int = 1, change: float = 1.0):
        if every < 1:
            raise ValueError("every must be >= 1")
        if not 0.0 <= change <= 1.0:
            raise ValueError("change must be within [0, 1]")
        self.every, self.change = every, change
        # track -> (residual, the crop it was made for, frames worn)
        self._residuals: dict[int, tuple[np.ndarray, np.ndarray, int]] = {}
        self.reused = self.fresh = 0  # faces that wore a kept residual / needed the network

    def wear(self, face: FaceTrack) -> bool:
        """Set ``face.protected`` to its current crop plus its last residual, when that
        residual may be worn again; False when the network has to run for this face."""
        entry = self._residuals.get(face.track_id)
        reuse = (entry is not None and entry[2] + 1 < self.every and face.crop is not None
                 and entry[0].shape == face.crop.shape
                 and float(np.abs(face.crop - entry[1]).mean()) <= self.change)
        if not reuse:
            self.fresh += 1
            return False
        residual, made_for, worn = entry
        face.protected = face.crop + residual
        self._residuals[face.track_id] = (residual, made_for, worn + 1)
        self.reused += 1
        return True

    def store(self, face: FaceTrack) -> None:
        """Keep the residual of a face the network has just protected."""
        if self.every > 1 and face.protected is not None and face.crop is not None:
            self._residuals[face.track_id] = (face.protected - face.crop, face.crop.copy(), 0)

    def reset(self, track_id: int) -> None:
        self._residuals.pop(track_id, None)

    def retain(self, track_ids: set[int]) -> None:
        """Forget the residuals of tracks that no longer exist."""
        for tid in list(self._residuals):
            if tid not in track_ids:
                del self._residuals[tid]
