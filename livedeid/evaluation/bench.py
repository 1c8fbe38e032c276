"""``livedeid bench``: per-stage latency, end-to-end frame rate and engine-only latency for
every engine available here, against torch eager FP32 measured in the same run.

Engines (each only where it can run; the others are listed with the reason):

* ``onnxruntime-cpu``, ``torch-cpu-fp32`` -- the CPU pipeline (:class:`FrameProcessor`);
* ``torch-cpu-fp32-device`` -- the GPU frame path (:class:`TorchFrameProcessor`) run on the
  CPU, to show what the torch composite costs there;
* ``torch-cuda-fp32``, ``torch-cuda-fp16``, ``torch-cuda-fp16-graphs``, ``tensorrt-fp16``
  -- the GPU frame path; ``onnxruntime-cuda`` -- the CPU pipeline with ORT's CUDA EP.

The baseline is torch eager FP32 on the best device present (``torch-cuda-fp32`` with a
GPU, else ``torch-cpu-fp32``); ``vs base`` is fps / baseline fps for the same resolution
and face count (engine-only: baseline ms / ms).

Frames are real faces: scikit-image's astronaut photo, the head tiled 1x1, 2x2 (4:3) or 4x1 (16:9)
over a plain background, moving a few pixels per frame so the tracker tracks. Warm-up frames run
until every face is tracked (MediaPipe finds them over a few frames), so the timed frames
really protect 1 or 4 faces; the ``faces`` column reports how many were protected.

Per-stage times on CUDA come from CUDA events (GPU timeline); ``fps`` is the synchronous
``process()`` loop, ``fps overlap`` the ``submit()`` loop in which tracking of frame n+1
overlaps the GPU work of frame n. The offline figure runs the real ``process`` pipeline
(PyAV decode -> processor -> H.264 encode) on a 720p clip, in x real time.
"""
from __future__ import annotations

import importlib.util
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from livedeid.core import strict_json
from livedeid.core.errors import UserError
from livedeid.core.records import Frame
from livedeid.inference.engines import Engine, EngineUnavailable, OnnxRuntimeEngine, TensorRTEngine, TorchEngine
from livedeid.inference.manifest import ModelSpec, load_spec
from livedeid.inference.registry import cuda_available

RESOLUTIONS = ((640, 480), (1280, 720), (1920, 1080))
FACE_COUNTS = (1, 4)
STAGE_ORDER = ("track", "upload", "window", "engine", "composite", "download", "rppg", "total")


@dataclass
class Case:
    key: str
    label: str
    path: str          # "host": FrameProcessor + engine(numpy); "device": TorchFrameProcessor
    device: str
    make: Callable[[ModelSpec], Engine]


def candidate_cases() -> list[Case]:
    cases = [
        Case("onnxruntime-cpu", "ONNX Runtime CPU", "host", "cpu", lambda s: OnnxRuntimeEngine(s, use_cuda=False)),
        Case("torch-cpu-fp32", "torch CPU FP32 eager", "host", "cpu", lambda s: TorchEngine(s, "cpu")),
        Case("torch-cpu-fp32-device", "torch CPU FP32, device frame path", "device", "cpu",
             lambda s: TorchEngine(s, "cpu")),
        Case("torch-cuda-fp32", "torch CUDA FP32 eager", "device", "cuda", lambda s: TorchEngine(s, "cuda", half=False)),
        Case("torch-cuda-fp16", "torch CUDA FP16 channels-last", "device", "cuda",
             lambda s: TorchEngine(s, "cuda", half=True)),
        Case("torch-cuda-fp16-graphs", "torch CUDA FP16 + CUDA graphs", "device", "cuda",
             lambda s: TorchEngine(s, "cuda", half=True, cuda_graphs=True)),
        Case("tensorrt-fp16", "TensorRT FP16", "device", "cuda", lambda s: TensorRTEngine(s)),
        Case("onnxruntime-cuda", "ONNX Runtime CUDA EP", "host", "cuda", lambda s: OnnxRuntimeEngine(s, use_cuda=True)),
    ]
    return cases


def baseline_key() -> str:
    return "torch-cuda-fp32" if cuda_available() else "torch-cpu-fp32"


def load_engines(spec: ModelSpec, only: list[str] | None = None) -> tuple[list[tuple[Case, Engine]], dict[str, str]]:
    """Every candidate that runs here (plus the baseline), and why the others do not."""
    ready, skipped = [], {}
    base = baseline_key()
    for case in candidate_cases():
        if case.device == "cuda" and not cuda_available():
            skipped[case.key] = "no CUDA device (torch.cuda.is_available() is False)"
            continue
        if only and case.key not in only and case.key != base:
            continue
        try:
            ready.append((case, case.make(spec)))
        except (EngineUnavailable, ImportError) as exc:
            skipped[case.key] = str(exc)
    return ready, skipped


# -- frames ---------------------------------------------------------------------------------
def _head() -> np.ndarray:
    from skimage import data

    face = np.ascontiguousarray(data.astronaut()[:, :, ::-1])
    return np.ascontiguousarray(face[10:250, 120:310])  # hair to chin, the face fills it


def make_scene(width: int, height: int, faces: int, i: int, head: np.ndarray | None = None) -> np.ndarray:
    """A BGR frame with ``faces`` (1..4) real faces, shifted by frame ``i``."""
    head = _head() if head is None else head
    img = np.empty((height, width, 3), np.uint8)
    img[:] = (40, 60, 50)
    # 2x2 on 4:3, side by side on wide frames: MediaPipe's short-range detector then finds
    # all four within a few frames (it misses some in a 16:9 2x2 grid)
    cols = 1 if faces == 1 else (faces if width > 1.5 * height else 2)
    rows = (faces + cols - 1) // cols
    tw, th = width // cols, height // rows
    k = min(tw / head.shape[1], th / head.shape[0]) * 0.95
    dx = 2.0 * ((i % 10) - 5)  # a little motion, like a person sitting still
    for j in range(faces):
        r, c = divmod(j, cols)
        m = np.float32([[k, 0, c * tw + (tw - k * head.shape[1]) / 2 + dx],
                        [0, k, r * th + (th - k * head.shape[0]) / 2]])
        cv2.warpAffine(head, m, (width, height), dst=img, flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_TRANSPARENT)
    return img


# -- measurements ---------------------------------------------------------------------------
def _pct(values) -> dict[str, float]:
    v = np.asarray(values, np.float64)
    return {"p50": round(float(np.percentile(v, 50)), 3), "p95": round(float(np.percentile(v, 95)), 3)}


def _processor(case: Case, engine: Engine, spec: ModelSpec):
    from livedeid.core.settings import PipelineConfig
    from livedeid.pipeline.factory import build_processor

    return build_processor(PipelineConfig(), spec, engine, path=case.path, device=case.device)


def _protected(frame: Frame) -> int:
    """Faces that went through the engine in this frame (the others were hidden)."""
    if frame.no_face_yet or frame.fail_closed_regions > len(frame.unheld_boxes) + len(frame.faces):
        return 0
    return len(frame.faces) - (frame.fail_closed_regions - len(frame.unheld_boxes))


def bench_pipeline(case: Case, engine: Engine, spec: ModelSpec, size: tuple[int, int], faces: int,
                   frames: int, max_warmup: int = 30) -> dict:
    w, h = size
    head = _head()
    images = [make_scene(w, h, faces, i, head) for i in range(10)]  # the motion repeats every 10
    proc = _processor(case, engine, spec)
    k = 0

    def next_frame():
        nonlocal k
        f = Frame(images[k % len(images)].copy(), k, k / 30.0)
        k += 1
        return f

    try:
        for _ in range(max_warmup):  # until every face is tracked, at least 3 frames
            done = proc.process(next_frame())
            if k >= 3 and _protected(done) >= faces:
                break
        stages: dict[str, list[float]] = {}
        protected = []
        t0 = time.perf_counter()
        for _ in range(frames):
            done = proc.process(next_frame())
            protected.append(_protected(done))
            for s, ms in done.stage_ms.items():
                stages.setdefault(s, []).append(ms)
        wall = time.perf_counter() - t0
        fps_overlap = None
        if case.path == "device":
            t0 = time.perf_counter()
            for _ in range(frames):
                proc.submit(next_frame())
            proc.flush()
            fps_overlap = round(frames / (time.perf_counter() - t0), 2)
    finally:
        proc.close()
    return {
        "engine": case.key, "label": case.label, "describe": engine.describe(), "path": case.path,
        "resolution": f"{w}x{h}", "faces": faces, "faces_protected": round(float(np.mean(protected)), 2),
        "frames": frames, "fps": round(frames / wall, 2), "fps_overlap": fps_overlap,
        "stages_ms": {s: _pct(v) for s, v in sorted(stages.items(), key=lambda kv: _stage_rank(kv[0]))},
    }


def _stage_rank(stage: str) -> int:
    return STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER)


def bench_engine_only(case: Case, engine: Engine, spec: ModelSpec, faces: int, reps: int, warmup: int = 3) -> dict:
    """Latency of the engine alone on ``faces`` windows (host path: numpy in and out;
    device path: device tensors in and out, synchronised)."""
    rng = np.random.default_rng(0)
    windows = rng.uniform(0, 1, (faces, spec.window, 3, spec.crop_size, spec.crop_size)).astype(np.float32)
    times = []
    if case.path == "device":
        import torch

        x = torch.from_numpy(windows).to(case.device)
        sync = torch.cuda.synchronize if case.device.startswith("cuda") else (lambda: None)
        for i in range(warmup + reps):
            sync()
            t = time.perf_counter()
            engine.run_tensor(x)
            sync()
            if i >= warmup:
                times.append((time.perf_counter() - t) * 1000.0)
    else:
        for i in range(warmup + reps):
            t = time.perf_counter()
            engine(windows)
            if i >= warmup:
                times.append((time.perf_counter() - t) * 1000.0)
    p = _pct(times)
    return {"engine": case.key, "faces": faces, "p50_ms": p["p50"], "p95_ms": p["p95"],
            "per_face_p50_ms": round(p["p50"] / faces, 3), "reps": reps}


def make_clip(path: Path, seconds: float, size: tuple[int, int] = (1280, 720), faces: int = 1) -> None:
    """An H.264 clip of :func:`make_scene` frames at 30 fps (the offline measurement's input)."""
    from fractions import Fraction

    from livedeid.io.sinks import FileSink

    head = _head()
    sink = FileSink(path, *size, rate=Fraction(30))
    try:
        for i in range(max(1, round(seconds * 30))):
            sink.send(make_scene(size[0], size[1], faces, i, head))
    except BaseException:
        sink.abort()
        raise
    sink.close()


def bench_offline(case: Case, engine: Engine, spec: ModelSpec, clip: Path, workdir: Path) -> dict:
    """`livedeid process`-style: decode -> processor -> H.264 encode, threads as in the CLI."""
    from livedeid.io.sinks import FileSink
    from livedeid.io.sources import FileSource
    from livedeid.pipeline.runner import Pipeline

    src = FileSource(clip)
    proc = _processor(case, engine, spec)
    sink = FileSink(workdir / f"out-{case.key}.mp4", *src.size, rate=src.rate)
    protected: list[int] = []
    t0 = time.perf_counter()
    result = Pipeline(src, proc, [sink], [lambda frame, _: protected.append(_protected(frame))]).run()
    wall = time.perf_counter() - t0
    fps = result.frames_out / wall
    return {"engine": case.key, "resolution": f"{src.size[0]}x{src.size[1]}", "frames": result.frames_out,
            "faces_protected": round(float(np.mean(protected)), 2) if protected else 0.0,
            "wall_s": round(wall, 2), "fps": round(fps, 2), "x_realtime": round(fps / float(src.rate), 2)}


# -- the whole run --------------------------------------------------------------------------
def environment() -> dict:
    env = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
           "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
    try:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    if importlib.util.find_spec("torch") is not None:
        import torch

        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name()
            env["cuda"] = torch.version.cuda
    if importlib.util.find_spec("tensorrt") is not None:
        import tensorrt

        env["tensorrt"] = tensorrt.__version__
    return env


def run_bench(out_dir: Path | None = None, quick: bool = False, engines: list[str] | None = None,
              resolutions=None, face_counts=None, frames: int | None = None, offline: bool = True,
              offline_seconds: float | None = None, log=print) -> dict:
    spec = load_spec()
    resolutions = resolutions or (((640, 480),) if quick else RESOLUTIONS)
    face_counts = face_counts or ((1,) if quick else FACE_COUNTS)
    frames = frames or (6 if quick else 60)
    reps = 3 if quick else 30
    offline_seconds = offline_seconds or (0.5 if quick else 4.0)
    known = {c.key for c in candidate_cases()}
    unknown = sorted(set(engines or ()) - known)
    if unknown:
        raise UserError(f"unknown bench engine(s) {', '.join(unknown)}; choose from {', '.join(sorted(known))}")
    ready, skipped = load_engines(spec, engines)
    base = baseline_key()
    for key, why in skipped.items():
        log(f"skip {key}: {why}")
    if not ready:
        raise UserError("no engine can run here: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    result = {"environment": environment(), "quick": quick, "baseline": base, "skipped": skipped,
              "engines": {c.key: e.describe() for c, e in ready}, "pipeline": [], "engine_only": [], "offline": []}

    def save():  # after every measurement, so a run cut short still leaves its tables
        _add_ratios(result)
        if out_dir is not None:
            write_reports(result, Path(out_dir))

    for size in resolutions:
        for faces in face_counts:
            for case, engine in ready:
                row = bench_pipeline(case, engine, spec, size, faces, frames)
                result["pipeline"].append(row)
                save()
                log(f"{case.key:24s} {row['resolution']:>9s} {faces} face(s): {row['fps']:7.1f} fps"
                    + (f", overlapped {row['fps_overlap']:.1f}" if row["fps_overlap"] else "")
                    + f" ({row['faces_protected']:.1f} faces protected)")
    for faces in face_counts:
        for case, engine in ready:
            result["engine_only"].append(bench_engine_only(case, engine, spec, faces, reps, warmup=1 if quick else 3))
    save()
    if offline:
        with tempfile.TemporaryDirectory(prefix="livedeid-bench-") as tmp:
            clip = Path(tmp) / "clip720.mp4"
            make_clip(clip, offline_seconds)
            for case, engine in ready:
                row = bench_offline(case, engine, spec, clip, Path(tmp))
                result["offline"].append(row)
                save()
                log(f"{case.key:24s} offline 720p: {row['x_realtime']:.2f}x real time")
    save()
    return result


def _add_ratios(result: dict) -> None:
    base = result["baseline"]
    ref = {(r["resolution"], r["faces"]): r["fps"] for r in result["pipeline"] if r["engine"] == base}
    for r in result["pipeline"]:
        b = ref.get((r["resolution"], r["faces"]))
        r["vs_baseline"] = round(r["fps"] / b, 2) if b else None
        r["overlap_vs_baseline"] = round(r["fps_overlap"] / b, 2) if b and r["fps_overlap"] else None
    ref = {r["faces"]: r["p50_ms"] for r in result["engine_only"] if r["engine"] == base}
    for r in result["engine_only"]:
        b = ref.get(r["faces"])
        r["vs_baseline"] = round(b / r["p50_ms"], 2) if b and r["p50_ms"] > 0 else None
    ref = {r["resolution"]: r["fps"] for r in result["offline"] if r["engine"] == base}
    for r in result["offline"]:
        b = ref.get(r["resolution"])
        r["vs_baseline"] = round(r["fps"] / b, 2) if b else None


def _fmt(v, nd=1) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def to_markdown(result: dict) -> str:
    env = result["environment"]
    base = result["baseline"]
    lines = ["# livedeid bench", "",
             ", ".join(f"{k} {v}" for k, v in env.items()) + ("  (quick run)" if result["quick"] else ""), "",
             f"Baseline (`vs base` = 1.00): **{base}** = {result['engines'].get(base, 'n/a')}, "
             "measured in this run.", ""]
    lines += ["## End to end (per frame)", "",
              "`fps`: synchronous `process()` loop; `fps overlap`: `submit()` loop, tracking of frame n+1 "
              "overlapping the device work of frame n (a gain only on CUDA, where the device runs "
              "asynchronously). Device-path stage times on CUDA are GPU-timeline times (CUDA events).", "",
              "| engine | resolution | faces | protected | fps | vs base | fps overlap | overlap vs base | "
              + " | ".join(f"{s} p50/p95 ms" for s in STAGE_ORDER) + " |",
              "|---" * (8 + len(STAGE_ORDER)) + "|"]
    for r in result["pipeline"]:
        st = r["stages_ms"]
        cells = [f"{st[s]['p50']:.2f}/{st[s]['p95']:.2f}" if s in st else "-" for s in STAGE_ORDER]
        lines.append(f"| {r['engine']} | {r['resolution']} | {r['faces']} | {r['faces_protected']:.1f} | "
                     f"{r['fps']:.1f} | {_fmt(r['vs_baseline'], 2)} | {_fmt(r['fps_overlap'])} | "
                     f"{_fmt(r['overlap_vs_baseline'], 2)} | " + " | ".join(cells) + " |")
    lines += ["", "## Engine only (windows of 8 crops, 128x128)", "",
              "| engine | faces | p50 ms | p95 ms | p50 ms per face | vs base |", "|---|---|---|---|---|---|"]
    for r in result["engine_only"]:
        lines.append(f"| {r['engine']} | {r['faces']} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | "
                     f"{r['per_face_p50_ms']:.2f} | {_fmt(r['vs_baseline'], 2)} |")
    if result["offline"]:
        lines += ["", "## Offline `process` (decode -> protect -> H.264 encode), 720p clip of one real face", "",
                  "| engine | resolution | frames | protected | fps | x real time | vs base |",
                  "|---|---|---|---|---|---|---|"]
        for r in result["offline"]:
            lines.append(f"| {r['engine']} | {r['resolution']} | {r['frames']} | {r['faces_protected']:.1f} | {r['fps']:.1f} | "
                         f"{r['x_realtime']:.2f} | {_fmt(r['vs_baseline'], 2)} |")
    if result["skipped"]:
        lines += ["", "## Not available here", ""]
        lines += [f"- `{k}`: {v}" for k, v in result["skipped"].items()]
    return "\n".join(lines) + "\n"


def write_reports(result: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / "bench.md", out_dir / "bench.json"
    md.write_text(to_markdown(result))
    js.write_text(strict_json.dumps(result, indent=2) + "\n")
    return md, js


def parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
    """``"640x480,1280x720"`` -> ((640, 480), (1280, 720))."""
    sizes = []
    for part in text.split(","):
        try:
            w, h = (int(v) for v in part.lower().split("x"))
        except ValueError:
            raise UserError(f"resolutions must look like 640x480,1280x720 (got {part!r})") from None
        if not (64 <= w <= 7680 and 64 <= h <= 4320):
            raise UserError(f"resolution {part} is out of range")
        sizes.append((w, h))
    return tuple(sizes)


if __name__ == "__main__":  # pragma: no cover - the CLI is the entry point
    sys.exit("use `livedeid bench`")
