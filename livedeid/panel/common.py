"""Thread hand-over between the pipeline and the window (no Qt here).

The pipeline calls its listeners on the processing thread at camera rate; the window
redraws at most ~30 times a second on the GUI thread. :class:`LatestValue` is the
one-slot mailbox between them: the producer overwrites, the consumer takes the newest,
and whatever the consumer never saw is simply dropped (and counted), so a slow window can
never back-pressure the camera or the virtual camera.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np


class LatestValue:
    """A one-slot, overwrite-on-put mailbox. Any number of producers, one consumer."""

    def __init__(self):
        self._cond = threading.Condition()
        self._value = None
        self._seq = 0        # bumps on every put
        self._taken = 0      # seq of the last value handed out by take()/wait()
        self.overwritten = 0  # values replaced before anyone took them

    def put(self, value) -> None:
        with self._cond:
            if self._seq != self._taken:
                self.overwritten += 1
            self._value = value
            self._seq += 1
            self._cond.notify_all()

    def take(self):
        """The newest value if it is new since the last take, else None (never blocks)."""
        with self._cond:
            if self._seq == self._taken:
                return None
            self._taken = self._seq
            return self._value

    def wait(self, timeout: float):
        """Like :meth:`take` but waits up to ``timeout`` seconds for a new value."""
        with self._cond:
            if self._seq == self._taken:
                self._cond.wait(timeout)
            if self._seq == self._taken:
                return None
            self._taken = self._seq
            return self._value

    def peek(self):
        """The newest value, new or not (None before the first put)."""
        with self._cond:
            return self._value

    def clear(self) -> None:
        with self._cond:
            self._value = None
            self._taken = self._seq


class UnprotectedImage(np.ndarray):
    """Marks an output frame made while protection was switched off.

    The marker travels *with the pixels* (a zero-copy ndarray view), so the sink can hold
    such a frame back without racing the switch: a frame processed a moment before the
    user turned protection back on is still recognised as unprotected when it reaches
    the virtual camera."""


@dataclass
class FaceView:
    """What the overlay needs of one tracked face (copied off the processing thread)."""

    box: tuple[int, int, int, int]
    landmarks: np.ndarray          # (478, 2) float32, frame pixels
    lost: bool
    confidence: float


@dataclass
class Snapshot:
    """The newest frame and numbers, as handed from a worker to the window."""

    image: np.ndarray                   # camera image (BGR uint8), as captured
    output: np.ndarray | None           # protected output (BGR uint8); None in monitor mode
    protected: bool
    faces: list[FaceView] = field(default_factory=list)
    reading: object | None = None       # livedeid.rppg.streaming.HRReading or None
    timestamp: float = 0.0
    index: int = 0
    fail_closed_regions: int = 0
    no_face_yet: bool = False           # the start-up guard hides the whole picture


def face_views(faces) -> list[FaceView]:
    return [FaceView(f.bbox(), np.array(f.landmarks, dtype=np.float32, copy=True), f.is_lost,
                     float(f.confidence)) for f in faces]
