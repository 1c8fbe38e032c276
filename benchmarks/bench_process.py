"""CPU benchmark of `livedeid process` against a naive baseline, measured in the same run.

    python benchmarks/bench_process.py [--seconds 10] [--width 1280 --height 720] [--out benchmarks/results]

Both pipelines read the same 1280x720 single-face H.264 clip (made here from the
synthetic pulse source) and write H.264 with the same settings:

* livedeid: PyAV decode thread -> MediaPipe face-mesh tracking (640 px copy) -> window ->
  ONNX Runtime engine -> residual composite -> encode thread (the real `process` path);
* naive: the obvious script: decode, run a face *detector* on every frame (MediaPipe face
  detection, full frame), Gaussian-blur each detected box, encode, all in one thread.

Prints end-to-end fps, per-stage p50/p95 and the ratio livedeid / naive, and writes the
table as markdown and JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402


def make_clip(path: Path, seconds: float, size: tuple[int, int]) -> None:
    from livedeid.io.sinks import FileSink
    from livedeid.io.sources import SyntheticSource

    src = SyntheticSource(hr_bpm=75, duration_s=seconds, size=size, seed=3)
    sink = FileSink(path, *size, rate=src.rate)
    for frame in src:
        sink.send(frame.image)
    sink.close()


def run_livedeid(clip: Path, out: Path, engine: str, profile: Path | None = None) -> dict:
    """One run of the real `process` path (with ``profile``: the face wears its cloak)."""
    from livedeid.core.settings import PipelineConfig
    from livedeid.io.sinks import FileSink
    from livedeid.io.sources import FileSource
    from livedeid.pipeline.factory import build_processor
    from livedeid.pipeline.runner import Pipeline

    src = FileSource(clip)
    proc = build_processor(PipelineConfig(engine=engine, profile=profile), path="host")
    sink = FileSink(out, *src.size, rate=src.rate)
    t0 = time.perf_counter()
    result = Pipeline(src, proc, [sink]).run()
    wall = time.perf_counter() - t0
    return {"frames": result.frames_out, "wall_s": wall, "fps": result.frames_out / wall,
            "engine": result.engine, "latency_ms": result.stats["latency_ms"]}


def run_naive(clip: Path, out: Path) -> dict:
    import mediapipe as mp

    from livedeid.io.sinks import FileSink
    from livedeid.io.sources import FileSource

    src = FileSource(clip)
    sink = FileSink(out, *src.size, rate=src.rate)
    det = mp.solutions.face_detection.FaceDetection(model_selection=0, min_detection_confidence=0.5)
    times = {"detect": [], "blur": []}
    n = 0
    t0 = time.perf_counter()
    for frame in src:
        img = frame.image
        h, w = img.shape[:2]
        t = time.perf_counter()
        res = det.process(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
        t1 = time.perf_counter()
        for d in res.detections or []:
            b = d.location_data.relative_bounding_box
            x0, y0 = max(0, int(b.xmin * w)), max(0, int(b.ymin * h))
            x1, y1 = min(w, int((b.xmin + b.width) * w)), min(h, int((b.ymin + b.height) * h))
            if x1 > x0 and y1 > y0:
                img[y0:y1, x0:x1] = cv2.GaussianBlur(img[y0:y1, x0:x1], (0, 0), max(3.0, (x1 - x0) / 10))
        t2 = time.perf_counter()
        sink.send(img)
        times["detect"].append((t1 - t) * 1000)
        times["blur"].append((t2 - t1) * 1000)
        n += 1
    sink.close()
    src.close()
    det.close()
    wall = time.perf_counter() - t0
    return {"frames": n, "wall_s": wall, "fps": n / wall,
            "latency_ms": {k: {"p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95))}
                           for k, v in times.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--engine", default="onnxruntime")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip = tmp / "clip.mp4"
        make_clip(clip, args.seconds, (args.width, args.height))
        naive = run_naive(clip, tmp / "naive.mp4")
        ours = run_livedeid(clip, tmp / "ours.mp4", args.engine)
    ratio = ours["fps"] / naive["fps"]
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"
    lines = [
        f"# `process` CPU benchmark, {args.width}x{args.height}, {ours['frames']} frames, 1 face",
        "",
        f"machine: {machine}; engine: {ours['engine']}",
        "",
        "| pipeline | end-to-end fps | ratio vs naive |",
        "|---|---:|---:|",
        f"| naive (detect every frame + Gaussian blur) | {naive['fps']:.1f} | 1.00 |",
        f"| livedeid process | {ours['fps']:.1f} | {ratio:.2f} |",
        "",
        "| livedeid stage | p50 ms | p95 ms |",
        "|---|---:|---:|",
        *[f"| {k} | {v['p50']:.2f} | {v['p95']:.2f} |" for k, v in ours["latency_ms"].items()],
        "",
        "| naive stage | p50 ms | p95 ms |",
        "|---|---:|---:|",
        *[f"| {k} | {v['p50']:.2f} | {v['p95']:.2f} |" for k, v in naive["latency_ms"].items()],
    ]
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"cpu_process_{args.width}x{args.height}"
    (args.out / f"{stem}.md").write_text(table + "\n")
    (args.out / f"{stem}.json").write_text(json.dumps({"machine": machine, "naive": naive, "livedeid": ours,
                                                       "ratio": ratio}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
