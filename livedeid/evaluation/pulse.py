"""Heart rate through the methods: clips with a known pulse, processed frame by frame.

Clips are videos with a ``truth.json`` (:func:`video_clips`) or the synthetic source
(:func:`synthetic_clips`: :class:`livedeid.io.synthetic.SyntheticPulseSource`, on the
astronaut photo or on given face photos). :func:`evaluate_pulse` compares the heart rate
read from each processed clip with the clean clip's and with the truth.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from livedeid.core.errors import UserError
from livedeid.evaluation.baselines import Method, face_region


@dataclass
class PulseClip:
    name: str
    frames: Callable[[], Iterable]   # a fresh iterator of Frames each call
    true_hr: float | None


def synthetic_clips(n: int = 3, seconds: float = 12.0, size: tuple[int, int] = (640, 360),
                    seed: int = 0, faces: list[Path] | None = None) -> list[PulseClip]:
    """``n`` clips of :class:`livedeid.io.synthetic.SyntheticPulseSource` (default motion,
    flicker and sensor noise) with heart rates spread over 55..110 bpm, on the astronaut
    photo or, with ``faces``, on those photos in turn."""
    from livedeid.io.synthetic import SyntheticPulseSource

    out = []
    for k, hr in enumerate(np.linspace(55.0, 110.0, n) if n > 1 else [72.0]):
        face = faces[k % len(faces)] if faces else None
        src = SyntheticPulseSource(face=face, hr_bpm=float(hr), duration_s=seconds, size=size, seed=seed + k)
        who = f"{Path(face).parent.name}-{Path(face).stem}-" if face else ""
        out.append(PulseClip(f"synthetic-{who}{float(hr):.0f}bpm-seed{seed + k}", lambda src=src: iter(src),
                             src.mean_true_hr))
    return out


def video_clips(folder: str | Path) -> list[PulseClip]:
    """Videos in ``folder`` with their true heart rates in ``folder/truth.json``
    (``{"clip.mp4": 72.0, ...}`` or ``{"clip.mp4": {"hr_bpm": 72.0}}``)."""
    from livedeid.io.sources import FileSource

    folder = Path(folder)
    truth_path = folder / "truth.json"
    if not folder.is_dir():
        raise UserError(f"clips folder not found: {folder}")
    if not truth_path.is_file():
        raise UserError(f"clips folder {folder} has no truth.json (file name -> true heart rate in bpm)")
    try:
        truth = json.loads(truth_path.read_text())
    except ValueError as exc:
        raise UserError(f"{truth_path} is not valid JSON: {exc}") from None
    out = []
    for name, v in sorted(truth.items()):
        path = folder / name
        if not path.is_file():
            raise UserError(f"{truth_path} names {name}, which is not in {folder}")
        hr = float(v["hr_bpm"] if isinstance(v, dict) else v)

        def frames(path=path):
            with FileSource(path) as src:
                yield from src

        out.append(PulseClip(name, frames, hr))
    if not out:
        raise UserError(f"{truth_path} lists no clips")
    return out


def _pearson(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
        return float("nan")
    from scipy.stats import pearsonr

    return float(pearsonr(a[ok], b[ok])[0])


def _processed_stream(clip: PulseClip, method: Method, regions: list) -> Iterator[tuple[float, np.ndarray]]:
    """(timestamp, processed image) pairs of a clip, streamed (clips are not held in memory)."""
    ts: list[float] = []

    def frames():
        for fr in clip.frames():
            ts.append(fr.timestamp)
            yield fr

    for k, img in enumerate(method.video(frames(), regions)):
        yield ts[k], img


def evaluate_pulse(clips: list[PulseClip], methods: list[Method], hr_method: str = "pos",
                   quiet: bool = True) -> list[dict]:
    """Heart rate of each processed clip against the clean clip and the truth.

    The clean clip is tracked once (:class:`~livedeid.tracking.mesh.FaceTracker`, video mode) to
    place each baseline's face region per frame; every processed clip is then read like
    the far end would, with a fresh tracker on the *processed* frames
    (:func:`livedeid.rppg.monitor.hr_from_video`). Per method: MAE/RMSE of the clip heart rate vs
    the clean clip's and vs the truth, Pearson r of the processed clip HRs vs the truth
    across clips (3+ clips), and the median Pearson r of the processed pulse waveform
    against the clean one (same time grid). A clip where no heart rate can be read
    counts as missing (``readable`` column)."""
    from tqdm import tqdm

    from livedeid.rppg.monitor import hr_from_video
    from livedeid.tracking.mesh import FaceTracker

    def hr_of(images_ts):
        with FaceTracker(max_faces=1) as tr:
            try:
                return hr_from_video(images_ts, tr, hr_method)
            except ValueError:
                return None, None

    clean = []
    for clip in tqdm(clips, desc="clean clips", disable=quiet, dynamic_ncols=True):
        regions, ts = [], []

        def tracked(clip=clip, regions=regions, ts=ts):
            with FaceTracker(max_faces=1) as tr:
                for fr in clip.frames():
                    faces = [f for f in tr.update(fr.image, fr.timestamp) if not f.is_lost]
                    regions.append(face_region(faces[0].landmarks, fr.image.shape[:2]) if faces else None)
                    ts.append(fr.timestamp)
                    yield fr.timestamp, fr.image

        hr, trace = hr_of(tracked())
        clean.append((regions, hr, trace))

    rows = []
    bar = tqdm(total=len(methods) * len(clips), desc="pulse", disable=quiet, dynamic_ncols=True)
    for m in methods:
        est, ref, truth, wave_r = [], [], [], []
        for clip, (regions, chr_, ctrace) in zip(clips, clean):
            hr, trace = hr_of(_processed_stream(clip, m, regions))
            est.append(hr.bpm if hr is not None else float("nan"))
            ref.append(chr_.bpm if chr_ is not None else float("nan"))
            truth.append(clip.true_hr if clip.true_hr is not None else float("nan"))
            if trace is not None and ctrace is not None:
                p = np.interp(ctrace.t_uniform, trace.t_uniform, trace.pulse)
                wave_r.append(_pearson(p, ctrace.pulse))
            bar.update(1)
        est, ref, truth = map(np.asarray, (est, ref, truth))
        dt, dc = est - truth, est - ref
        rows.append({
            "method": m.name, "clips": len(clips), "readable": int(np.isfinite(est).sum()),
            "mae_vs_truth": float(np.nanmean(np.abs(dt))) if np.isfinite(dt).any() else float("nan"),
            "rmse_vs_truth": float(np.sqrt(np.nanmean(dt ** 2))) if np.isfinite(dt).any() else float("nan"),
            "mae_vs_clean": float(np.nanmean(np.abs(dc))) if np.isfinite(dc).any() else float("nan"),
            "rmse_vs_clean": float(np.sqrt(np.nanmean(dc ** 2))) if np.isfinite(dc).any() else float("nan"),
            "pearson_vs_truth": _pearson(est, truth),
            "waveform_r_vs_clean": float(np.nanmedian(wave_r)) if np.isfinite(wave_r).any() else float("nan"),
            "hr_bpm": [round(float(x), 2) for x in est],
            "clean_bpm": [round(float(x), 2) for x in ref],
        })
    bar.close()
    return rows
