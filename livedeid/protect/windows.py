"""Sliding window: per tracked face, a ring buffer of the last T aligned crops.

Causal: the window at frame n holds crops n-T+1 .. n. Until T crops exist the oldest
one is repeated, so the model sees a full window from the first frame on (no raw
frames while warming up). A face that was lost and comes back starts a fresh window,
because its old crops belong to another moment (and maybe another place).
"""
from __future__ import annotations

import cv2
import numpy as np

from livedeid.core.records import FaceTrack


def extract_crop(image_bgr: np.ndarray, to_crop: np.ndarray, crop_size: int) -> np.ndarray:
    """Aligned crop as float32 (3, S, S) RGB in [0, 1] (the model's layout)."""
    crop = cv2.warpAffine(
        image_bgr, to_crop, (crop_size, crop_size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return np.ascontiguousarray(crop[:, :, ::-1].transpose(2, 0, 1), dtype=np.float32) * (1.0 / 255.0)


class FaceWindows:
    """Ring buffers of aligned crops keyed by track id."""

    def __init__(self, window: int, crop_size: int):
        self.window = window
        self.crop_size = crop_size
        self._buffers: dict[int, np.ndarray] = {}
        self._heads: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._buffers)

    def push(self, image_bgr: np.ndarray, face: FaceTrack) -> np.ndarray:
        """Add the face's current crop (also stored on ``face.crop``) and return its window,
        float32 (T, 3, S, S), oldest first."""
        crop = extract_crop(image_bgr, face.to_crop, self.crop_size)
        face.crop = crop
        return self.push_crop(face.track_id, crop)

    def push_crop(self, track_id: int, crop):
        """Add a (3, S, S) crop — a numpy array, or a torch tensor on any device (the GPU
        path keeps its windows there) — and return the window (T, 3, S, S), oldest first."""
        buf = self._buffers.get(track_id)
        if buf is None:
            buf = crop[None][[0] * self.window]  # fancy indexing copies, in numpy and torch
            self._buffers[track_id] = buf
            self._heads[track_id] = 0
        else:
            head = (self._heads[track_id] + 1) % self.window
            buf[head] = crop
            self._heads[track_id] = head
        head = self._heads[track_id]
        return buf[[(head + k) % self.window for k in range(1, self.window + 1)]]

    def reset(self, track_id: int) -> None:
        self._buffers.pop(track_id, None)
        self._heads.pop(track_id, None)

    def retain(self, track_ids: set[int]) -> None:
        """Forget buffers of tracks that no longer exist."""
        for tid in list(self._buffers):
            if tid not in track_ids:
                self.reset(tid)
