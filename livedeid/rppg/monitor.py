"""Heart rate of a whole recording: per-frame skin colours -> one clip heart rate.

The heart-rate-only loop (no protection) lives here, shared by the command line and
the panel.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from livedeid.rppg.methods import extract_pulse
from livedeid.rppg.regions import mean_skin_rgb
from livedeid.rppg.spectrum import HRResult, estimate_hr
from livedeid.rppg.streaming import HRReading, StreamingHR

if TYPE_CHECKING:  # pragma: no cover - typing only
    from livedeid.core.records import Frame


@dataclass
class Trace:
    t: np.ndarray          # (n,) frame timestamps, s
    rgb: np.ndarray        # (n, 3) mean skin RGB per frame, NaN where no face was tracked
    fs: float              # uniform rate the pulse was computed at
    pulse: np.ndarray      # (m,) pulse on the uniform grid ``t_uniform``
    t_uniform: np.ndarray  # (m,)

    @property
    def face_fraction(self) -> float:
        return float(np.isfinite(self.rgb[:, 0]).mean()) if len(self.rgb) else 0.0


def trace_to_hr(t: np.ndarray, rgb: np.ndarray, method: str = "pos",
                fs: float | None = None) -> tuple[HRResult, Trace]:
    """Heart rate from a per-frame RGB trace with timestamps (NaN rows = no face).

    The trace is resampled onto a uniform grid at ``fs`` (default: the median frame
    rate) over the frames that have a face; gaps are bridged linearly.
    """
    t = np.asarray(t, dtype=np.float64)
    rgb = np.asarray(rgb, dtype=np.float64)
    ok = np.all(np.isfinite(rgb), axis=1)
    if ok.sum() < 8:
        raise ValueError("too few frames with a face to estimate a heart rate")
    if fs is None:
        fs = float(1.0 / np.median(np.diff(t))) if len(t) > 1 else 30.0
    tv, cv = t[ok], rgb[ok]
    n = int(math.floor((tv[-1] - tv[0]) * fs)) + 1
    grid = tv[0] + np.arange(n) / fs
    uni = np.stack([np.interp(grid, tv, cv[:, c]) for c in range(3)], axis=1)
    pulse = extract_pulse(uni, fs, method)
    return estimate_hr(pulse, fs), Trace(t, rgb, fs, pulse, grid)


@dataclass
class MonitorStep:
    """One frame through the heart-rate-only loop."""

    timestamp: float
    image: np.ndarray      # the frame as read (BGR)
    index: int             # the frame's index in its source (its position for plain pairs)
    faces: list            # faces seen in this frame (lost ones left out)
    rgb: np.ndarray        # mean skin RGB of the largest of them; NaN when there is none
    reading: HRReading | None = None  # the live reading after this frame (None without a StreamingHR)
    new_reading: bool = False         # ``reading`` was first made on this frame


def monitor_frames(frames: Iterable, tracker, hr: StreamingHR | None = None) -> Iterator[MonitorStep]:
    """The heart-rate-only loop: tracking -> skin colour -> (live) heart rate, one step
    per frame; nothing is de-identified. ``livedeid monitor``, the panel's monitor and
    :func:`hr_from_video` all run it.

    ``frames`` yields :class:`~livedeid.core.records.Frame` objects or ``(timestamp,
    image_bgr)`` pairs; ``tracker`` is a :class:`livedeid.tracking.mesh.FaceTracker` or
    anything with ``update(image_bgr, timestamp) -> list`` of objects with ``landmarks``
    (and optionally ``lost_frames``). The caller owns (and closes) frames and tracker.
    """
    last_t = None
    for position, item in enumerate(frames):
        if isinstance(item, tuple):
            timestamp, image, index = item[0], item[1], position
        else:
            timestamp, image, index = item.timestamp, item.image, item.index
        faces = [f for f in tracker.update(image, timestamp) if getattr(f, "lost_frames", 0) == 0]
        if faces:
            main = max(faces, key=lambda f: np.ptp(f.landmarks[:, 0]) * np.ptp(f.landmarks[:, 1]))
            rgb = mean_skin_rgb(image, main.landmarks)
        else:
            rgb = np.full(3, np.nan)
        step = MonitorStep(float(timestamp), image, index, faces, rgb)
        if hr is not None:
            step.reading = hr.push(step.timestamp, rgb)  # NaN = no face, as StreamingHR expects
            step.new_reading = step.reading is not None and step.reading.timestamp != last_t
            if step.new_reading:
                last_t = step.reading.timestamp
        yield step


def clip_hr(steps: Iterable[MonitorStep], method: str = "pos",
            fs: float | None = None) -> tuple[HRResult, Trace]:
    """Heart rate of the whole run of ``steps`` (kept: only timestamps and colours).
    ValueError when there are no steps or too few with a face."""
    ts, cols = [], []
    for step in steps:
        ts.append(step.timestamp)
        cols.append(step.rgb)
    if not ts:
        raise ValueError("the video has no frames")
    return trace_to_hr(np.array(ts), np.array(cols), method, fs)


def hr_from_video(frames_iter: Iterable["Frame"], tracker, method: str = "pos",
                  fs: float | None = None) -> tuple[HRResult, Trace]:
    """Heart rate of the main (largest) face of a video; arguments as :func:`monitor_frames`."""
    return clip_hr(monitor_frames(frames_iter, tracker), method, fs)
