"""Per-stage latency, frame rate and drop counts of a running pipeline."""
from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

from livedeid.core.records import Frame

STAGES = ("track", "window", "engine", "composite", "rppg")
# the device frame path adds its two copies between host and device
DEVICE_STAGES = ("track", "upload", "window", "engine", "composite", "download", "rppg")


class StageStats:
    """Per-stage latency samples (ms), frame rate and drop counts; cheap enough for every frame."""

    def __init__(self, keep: int = 2000):
        self.samples: dict[str, deque] = {s: deque(maxlen=keep) for s in (*STAGES, "total")}
        self.frames = 0
        self.dropped = 0
        self.hidden_faces = 0
        self._t0: float | None = None
        self._t_last: float | None = None
        self._lock = threading.Lock()

    def record(self, frame: Frame) -> None:
        now = time.perf_counter()
        with self._lock:
            if self._t0 is None:
                self._t0 = now
            self._t_last = now
            self.frames += 1
            self.hidden_faces += frame.fail_closed_regions
            for stage, ms in frame.stage_ms.items():
                self.samples.setdefault(stage, deque(maxlen=2000)).append(ms)

    @property
    def fps(self) -> float:
        with self._lock:
            if self._t0 is None or self._t_last is None or self.frames < 2 or self._t_last <= self._t0:
                return 0.0
            return (self.frames - 1) / (self._t_last - self._t0)

    def percentiles(self) -> dict[str, tuple[float, float]]:
        with self._lock:
            return {s: (float(np.percentile(v, 50)), float(np.percentile(v, 95)))
                    for s, v in self.samples.items() if v}

    def summary(self) -> dict:
        return {
            "frames": self.frames, "dropped": self.dropped, "fps": round(self.fps, 2),
            "hidden_face_frames": self.hidden_faces,
            "latency_ms": {s: {"p50": round(a, 2), "p95": round(b, 2)} for s, (a, b) in self.percentiles().items()},
        }
