"""The datasets' ground-truth pulse and the heart rate it gives over a video.

UBFC-rPPG (``ground_truth.txt``): whitespace-separated rows; the first is the PPG waveform,
the second the oximeter's heart rate and the third the sample times in seconds (a file of
one row is taken as sampled once per video frame). PURE (``NN-NN.json``): ``/FullPackage``
holds the oximeter's samples (``Timestamp`` in ns, ``Value.waveform``), ``/Image`` the
frames' capture times; times are counted from the first frame.

The reference heart rate is the spectral peak of the waveform over the video's time span,
found the way the video's own heart rate is (:func:`livedeid.rppg.spectrum.estimate_hr`), so
input, output and truth are compared like for like.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from livedeid.core.errors import UserError
from livedeid.rppg.spectrum import estimate_hr


def read_truth(path: Path, frame_times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sample times in seconds from the first frame, waveform) of a ground-truth file;
    ``frame_times`` are the video's, for a UBFC file without a time row."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read ground truth {path}: {exc}") from None
    if path.suffix.lower() == ".json":
        return _pure(path, text)
    rows = [r.split() for r in text.splitlines() if r.strip()]
    try:
        wave = np.array(rows[0], dtype=np.float64)
        t = np.array(rows[2], dtype=np.float64) if len(rows) >= 3 else None
    except (IndexError, ValueError):
        raise UserError(f"ground truth {path} is not a UBFC-rPPG file (rows of numbers)") from None
    if t is None:
        if len(wave) != len(frame_times):
            raise UserError(f"ground truth {path} has {len(wave)} samples and no time row, "
                            f"the video {len(frame_times)} frames")
        t = np.asarray(frame_times, dtype=np.float64)
    if len(t) != len(wave):
        raise UserError(f"ground truth {path}: {len(wave)} pulse samples but {len(t)} times")
    return t - t[0], wave


def _pure(path: Path, text: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        data = json.loads(text)
        samples = data["/FullPackage"]
        ns = np.array([s["Timestamp"] for s in samples], dtype=np.int64)
        wave = np.array([s["Value"]["waveform"] for s in samples], dtype=np.float64)
        images = data.get("/Image") or []
        zero = int(images[0]["Timestamp"]) if images else int(ns[0])
    except (ValueError, KeyError, TypeError, IndexError):
        raise UserError(f"ground truth {path} is not a PURE file (/FullPackage with Timestamp and "
                        f"Value.waveform)") from None
    return (ns - zero) / 1e9, wave


def truth_bpm(t: np.ndarray, wave: np.ndarray, span_s: float) -> float | None:
    """Heart rate of the waveform between 0 and ``span_s`` (None: too few samples)."""
    keep = (t >= 0) & (t <= span_s + 1e-6) & np.isfinite(wave)
    t, wave = t[keep], wave[keep]
    if len(t) < 8 or np.ptp(t) <= 0:
        return None
    fs = float(1.0 / np.median(np.diff(t)))
    grid = t[0] + np.arange(int(np.floor(np.ptp(t) * fs)) + 1) / fs
    hr = estimate_hr(np.interp(grid, t, wave), fs)
    return float(hr.bpm) if np.isfinite(hr.bpm) else None
