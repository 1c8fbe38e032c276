"""One video of a batch job, as a Ray task runs it: the ``process`` path
(:func:`livedeid.pipeline.file_job.process_file`), the ground truth copied beside the
output, and the video's report.

A video that fails (corrupt, no frames, a decoder error, anything raised) gives a report
with ``status: failed`` and its one-line ``error``; nothing of its output is left (the
writers are atomic). Only a worker that dies is retried (by Ray); the task itself returns.
"""
from __future__ import annotations

import shutil
import time
import traceback
from pathlib import Path

import numpy as np

from livedeid.batch.inputs import VideoItem
from livedeid.batch.resume import content_sha256, stat_fingerprint
from livedeid.batch.truth import read_truth, truth_bpm
from livedeid.core.errors import UserError
from livedeid.core.settings import PipelineConfig

# Face PSNR/SSIM are measured on every n-th frame: SSIM costs about a millisecond per
# thousand face pixels, and a few hundred frames already pin the mean down.
QUALITY_EVERY = 5


class FaceQuality:
    """Pipeline listener: face-oval PSNR and SSIM of output against input, on the largest
    tracked face of every :data:`QUALITY_EVERY`-th frame."""

    def __init__(self, every: int = QUALITY_EVERY):
        self.every, self.mse, self.ssim = every, [], []

    def __call__(self, frame, processor) -> None:
        from livedeid.evaluation.baselines import face_region
        from livedeid.evaluation.metrics import region_psnr_mse, region_ssim
        from livedeid.tracking.mesh import largest_face

        seen = [f for f in frame.faces if not f.is_lost]
        if frame.index % self.every or not seen or frame.output is None:
            return
        region = face_region(largest_face(seen).landmarks, frame.image.shape[:2])
        if region is None:
            return
        x0, y0, x1, y1 = region.box
        a, b = frame.image[y0:y1, x0:x1], frame.output[y0:y1, x0:x1]
        mse = region_psnr_mse(a, b, region.mask)
        self.mse.append(mse)
        self.ssim.append(region_ssim(a, b, region.mask) if mse > 0 else 1.0)

    def summary(self) -> dict:
        from livedeid.evaluation.metrics import mse_to_psnr

        if not self.mse:
            return {"frames": 0, "psnr_db": None, "ssim": None}
        return {"frames": len(self.mse), "psnr_db": round(mse_to_psnr(float(np.mean(self.mse))), 2),
                "ssim": round(float(np.nanmean(self.ssim)), 4)}


def process_item(item: VideoItem, settings: dict, digest: str, previous: dict | None = None) -> dict:
    """The task: ``item`` de-identified with ``settings`` (:func:`~livedeid.batch.resume.settings_record`)
    and its report. ``previous``: the report of an earlier run, reused when the input's
    content and the settings are unchanged."""
    start, cpu_start = time.monotonic(), _cpu_seconds()
    report = {"key": item.key, "input": str(item.input), "output": str(item.output), "layout": item.layout,
              "subject": item.subject, "settings_hash": digest, "status": "failed", "error": None}
    try:
        report["input_stat"] = stat_fingerprint(item)
        report["input_sha256"] = content_sha256(item)
        if (previous and previous.get("status") == "done" and previous.get("settings_hash") == digest
                and previous.get("input_sha256") == report["input_sha256"] and item.output.exists()):
            return {**previous, "input_stat": report["input_stat"], "reused": True}
        _remove_stale_partials(item)
        report.update(_run(item, settings))
        report["status"] = "done"
    except UserError as exc:
        report["error"] = str(exc)
    except Exception as exc:  # a bug or a library error: still one video, one line
        where = traceback.extract_tb(exc.__traceback__)[-1]
        report["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} " \
                          f"({Path(where.filename).name}:{where.lineno})"
    if report["status"] == "failed":
        _remove_empty_folders(item)
    report["wall_s"] = round(time.monotonic() - start, 2)
    report["cpu_s"] = round(_cpu_seconds() - cpu_start, 2)  # all threads: what sizing a cluster needs
    return report


def _cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _run(item: VideoItem, settings: dict) -> dict:
    from livedeid.pipeline.file_job import FileJob, process_file

    item.output.parent.mkdir(parents=True, exist_ok=True)
    config = _config(settings["config"])
    cloaks = _two_pass(item, settings) if settings["two_pass"] else None
    quality = FaceQuality()
    job = FileJob(item.input, item.output, codec=settings["codec"], audio=settings["audio"])
    run = process_file(config, job, cloaks=cloaks, listeners=[quality], record_hr=True)
    t = np.asarray(run.recorder.t)
    fps = float(1.0 / np.median(np.diff(t))) if len(t) > 1 else None
    hr = _heart_rates(item, run.recorder.clip_results(config.hr_method), t)
    if item.truth is not None:
        _copy_atomic(item.truth, item.truth_output)
    return {"method": "two-pass per-track cloak" if cloaks is not None else "generic model",
            "frames": run.frames, "fps": round(fps, 3) if fps else None, "engine": run.result.engine,
            "face_frames_hidden": run.result.stats["hidden_face_frames"],
            "tracks": run.report["tracks"], "face_quality": quality.summary(), "hr": hr,
            "stats": {k: run.result.stats[k] for k in ("fps", "dropped", "latency_ms")}}


def _config(raw: dict) -> PipelineConfig:
    values = dict(raw)
    for key in ("manifest", "profile"):
        if values.get(key) is not None:
            values[key] = Path(values[key])
    return PipelineConfig(**values)


def _two_pass(item: VideoItem, settings: dict):
    from livedeid.cloak.build import build_profile
    from livedeid.cloak.tracks import check_two_pass, cloak_tracks
    from livedeid.io.profile import DEFAULT_BUDGET

    check_two_pass(settings["cloak_steps"])
    return cloak_tracks(item.input, lambda name, enrolment: build_profile(
        name, enrolment, ("dlib", "sface"), budget=DEFAULT_BUDGET, steps=settings["cloak_steps"]))


def _heart_rates(item: VideoItem, results: dict, t: np.ndarray) -> dict:
    """Input and output heart rate (the spectral peak with its SNR and grade: a batch report
    keeps the number even where the live display would show none) and, with ground truth,
    each one's absolute error against it."""
    hr = {}
    for name, r in results.items():
        hr[name] = None if r is None else {"bpm": round(r.bpm, 2) if np.isfinite(r.bpm) else None,
                                           "snr_db": round(r.snr_db, 2), "quality": r.quality}
    hr["truth_bpm"] = None
    if item.truth is not None and len(t):
        ts, wave = read_truth(item.truth, t - t[0])
        truth = truth_bpm(ts, wave, float(t[-1] - t[0]))
        hr["truth_bpm"] = None if truth is None else round(truth, 2)
    for name in ("input", "output"):
        bpm = (hr.get(name) or {}).get("bpm")
        hr[f"abs_error_{name}"] = None if bpm is None or hr["truth_bpm"] is None else \
            round(abs(bpm - hr["truth_bpm"]), 2)
    return hr


def _copy_atomic(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.partial")
    shutil.copyfile(src, tmp)
    tmp.replace(dst)


def _remove_stale_partials(item: VideoItem) -> None:
    """What a worker killed while writing the item's output left beside it (the hidden
    temporary names of FileSink and FrameFolderSink); the driver never runs two tasks on
    one video."""
    out = item.output
    pattern = f".{out.name}.*.partial" if item.kind == "frames" else f".{out.stem}.*.partial{out.suffix}*"
    for stale in out.parent.glob(pattern) if out.parent.is_dir() else []:
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


def _remove_empty_folders(item: VideoItem) -> None:
    """The mirror folders made for a video that failed, if nothing else is in them: an empty
    ``subjectN/`` would look like a subject without a video to a dataset loader. Only in the
    dataset layouts, where a folder holds one video (elsewhere another task may be about to
    write into the same folder)."""
    if item.layout not in ("ubfc", "pure"):
        return
    folder = item.output.parent
    for _ in Path(item.key).parts[:-1]:
        try:
            folder.rmdir()  # only when empty
        except OSError:
            return
        folder = folder.parent
