"""Live heart rate: the offline steps run causally on a sliding window."""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from livedeid.rppg.methods import METHODS, extract_pulse
from livedeid.rppg.spectrum import estimate_hr


@dataclass
class HRReading:
    bpm: float | None        # None unless quality is 'good' or 'fair': never a guess shown as a number
    snr_db: float
    quality: str             # 'good' | 'fair' | 'poor'
    waveform: np.ndarray = field(repr=False)    # band-passed pulse over the analysed window
    waveform_t: np.ndarray = field(repr=False)  # timestamps (s, the caller's clock) of ``waveform``
    freqs: np.ndarray = field(repr=False)       # Hz
    power: np.ndarray = field(repr=False)       # normalised to peak 1
    timestamp: float         # time of the newest sample used
    signal_s: float = 0.0    # seconds of usable signal behind this reading
    peak_bpm: float | None = None  # raw spectral peak even when poor: diagnostics only, not for display

    def report(self) -> dict:
        """The reading as the JSON reports give it (strict JSON writers turn -inf into null)."""
        return {"t": round(self.timestamp, 3), "bpm": None if self.bpm is None else round(self.bpm, 2),
                "snr_db": round(self.snr_db, 2), "quality": self.quality}


class StreamingHR:
    """Causal heart rate from per-frame skin colours, for live use on output frames.

    ``push(timestamp, rgb)`` takes one frame's mean skin RGB (None or NaN when no face).
    Timestamps may be irregular or jittered: the newest ``window_s`` seconds are linearly
    resampled onto a uniform ``resample_hz`` grid before the pulse is extracted. Gaps
    without a face longer than ``max_gap_s`` restart the window (interpolating across
    them would invent a signal); shorter gaps are bridged. A new :attr:`reading` is made
    at most every ``1 / update_hz`` seconds of stream time once ``min_s`` seconds of
    signal exist. No threads: call it from whichever thread owns the frames.
    """

    def __init__(self, method: str = "pos", window_s: float = 10.0, update_hz: float = 1.0,
                 min_s: float = 5.0, resample_hz: float = 30.0, max_gap_s: float = 0.5):
        if method.lower() not in METHODS:
            raise ValueError(f"unknown rPPG method {method!r}; choose from {sorted(METHODS)}")
        if not (0 < min_s <= window_s):
            raise ValueError("need 0 < min_s <= window_s")
        self.method = method.lower()
        self.window_s, self.update_hz, self.min_s = float(window_s), float(update_hz), float(min_s)
        self.resample_hz, self.max_gap_s = float(resample_hz), float(max_gap_s)
        self._t: deque[float] = deque()
        self._rgb: deque[np.ndarray] = deque()
        self._last_face_t: float | None = None
        self._last_t: float | None = None
        self._last_update: float | None = None
        self._reading: HRReading | None = None

    @property
    def reading(self) -> HRReading | None:
        """Latest reading; None until the first frame has been pushed."""
        return self._reading

    def reset(self) -> None:
        self._t.clear()
        self._rgb.clear()
        self._last_face_t = self._last_t = self._last_update = None
        self._reading = None

    def push(self, timestamp: float, rgb: np.ndarray | None) -> HRReading | None:
        """Add one frame; returns the (possibly unchanged) latest reading."""
        t = float(timestamp)
        if self._last_t is not None and t <= self._last_t:
            if t < self._last_t - 1.0:  # the clock jumped back (new source): start over
                self.reset()
            else:
                return self._reading     # duplicate or reordered frame: ignore it
        self._last_t = t
        face = rgb is not None and np.all(np.isfinite(rgb))
        if face:
            if self._last_face_t is not None and t - self._last_face_t > self.max_gap_s:
                self._t.clear()
                self._rgb.clear()
            self._t.append(t)
            self._rgb.append(np.asarray(rgb, dtype=np.float64).reshape(3))
            self._last_face_t = t
        while self._t and self._t[0] < t - self.window_s:
            self._t.popleft()
            self._rgb.popleft()
        if self._last_update is None or t - self._last_update >= 1.0 / self.update_hz - 1e-9:
            self._last_update = t
            self._reading = self._compute(t)
        return self._reading

    def _compute(self, now: float) -> HRReading:
        empty = np.zeros(0)
        fresh = self._last_face_t is not None and now - self._last_face_t <= self.max_gap_s
        span = (self._t[-1] - self._t[0]) if len(self._t) > 1 else 0.0
        if not fresh or span < self.min_s:
            return HRReading(None, float("-inf"), "poor", empty, empty, empty, empty, now,
                             signal_s=span if fresh else 0.0)
        ts = np.fromiter(self._t, dtype=np.float64, count=len(self._t))
        rgb = np.stack(self._rgb)
        n = int(math.floor(span * self.resample_hz)) + 1
        grid = ts[-1] - (n - 1 - np.arange(n)) / self.resample_hz  # ends on the newest sample
        uni = np.stack([np.interp(grid, ts, rgb[:, c]) for c in range(3)], axis=1)
        wave = extract_pulse(uni, self.resample_hz, self.method)
        res = estimate_hr(wave, self.resample_hz)
        shown = res.shown_bpm
        return HRReading(shown, res.snr_db, res.quality, wave, grid, res.freqs, res.power,
                         float(ts[-1]), signal_s=span,
                         peak_bpm=res.bpm if np.isfinite(res.bpm) else None)
