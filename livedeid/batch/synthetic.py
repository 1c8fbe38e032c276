"""Small rPPG datasets in the UBFC-rPPG and PURE layouts, made from a face photo with a known
synthetic pulse (:class:`livedeid.io.synthetic.SyntheticPulseSource`), for the batch tests
and the throughput benchmark. No dataset is shipped: real ones are licensed per user.

UBFC-rPPG: ``subjectN/vid.avi`` (FFV1: lossless, so the sub-level pulse survives) and
``subjectN/ground_truth.txt`` (rows: waveform, heart rate, time in s). PURE:
``NN-NN/NN-NN/Image<ns>.png`` and ``NN-NN/NN-NN.json`` (``/FullPackage`` oximeter samples
with ``waveform`` and ``pulseRate``, ``/Image`` frame times).
"""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from livedeid.io.synthetic import SyntheticPulseSource

START_NS = 1_392_643_993_642_815_000  # a PURE-like capture clock (ns)


def pulse_clip(face: Path | str, hr_bpm: float, *, seconds: float = 3.0, fps: float = 20.0,
               size: tuple[int, int] = (320, 240), seed: int = 0) -> SyntheticPulseSource:
    """A still-ish head with a clear pulse: short clips need a strong, clean signal."""
    return SyntheticPulseSource(face=face, hr_bpm=hr_bpm, duration_s=seconds, fps=fps, size=size, motion=0.2,
                                flicker=0.0, noise_std=1.0, pulse_amplitude=0.02, face_fraction=0.6, seed=seed)


def write_avi(path: Path, clip: SyntheticPulseSource) -> None:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="avi") as out:
        stream = out.add_stream("ffv1", rate=Fraction(clip.fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = clip.size[0], clip.size[1], "bgr0"
        for frame in clip:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame.image, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def write_ubfc_subject(folder: Path, clip: SyntheticPulseSource) -> Path:
    """``folder/vid.avi`` + ``folder/ground_truth.txt``; returns the video's path."""
    write_avi(folder / "vid.avi", clip)
    t = np.arange(clip.frame_count) / clip.fps
    rows = [clip.true_pulse, np.full(clip.frame_count, clip.mean_true_hr), t]
    (folder / "ground_truth.txt").write_text("\n".join(" ".join(f"{v:.6e}" for v in r) for r in rows) + "\n")
    return folder / "vid.avi"


def write_pure_session(root: Path, name: str, clip: SyntheticPulseSource) -> Path:
    """``root/name/name/Image<ns>.png`` + ``root/name/name.json``; returns the frames' folder."""
    frames = root / name / name
    frames.mkdir(parents=True, exist_ok=True)
    stamps = [START_NS + round(i * 1e9 / clip.fps) for i in range(clip.frame_count)]
    for frame, ns in zip(clip, stamps):
        cv2.imwrite(str(frames / f"Image{ns}.png"), frame.image)
    package = [{"Timestamp": ns, "Value": {"waveform": int(round(200 * p)), "signalStrength": 4,
                                           "pulseRate": int(round(clip.mean_true_hr)), "o2saturation": 98}}
               for ns, p in zip(stamps, clip.true_pulse)]
    (root / name / f"{name}.json").write_text(json.dumps({"/FullPackage": package,
                                                          "/Image": [{"Timestamp": ns} for ns in stamps]}))
    return frames
