"""Camera rate at 1280x720 on this CPU (issue 16): where the time goes, and end to end.

    python benchmarks/speed_720p.py [--seconds 6] [--every 1,3] [--cloak] [--baseline REV]
                                    [--models-of REV]
                                    [--deface auto|none|PATH] [--out benchmarks/results/speed_720p]

All on one clip made here (the built-in synthetic pulse face at 1280x720, one face,
H.264), in one run, so the ratios compare like with like:

Variants: ``engine_every`` N for each N of ``--every`` (the network on one frame in N at
most, and on every frame whose face changed: ``engine_reuse_change``), and with ``--cloak``
the enrolled user's configuration: a profile whose cloak the face wears instead of the
network (a random pattern at 8/255, re-posed onto the face's mesh every frame as an
enrolled cloak is: its figures do not matter to the speed).

* **profile** (per variant): decode, the track stage's two parts (face mesh on the 640 px
  detection copy; what the safety net adds after it: its detector runs beside the mesh),
  window, engine, composite, rppg and encode, each on its own, in ms per frame (p50/p95),
  the share of face-frames that wore a kept residual instead of running the network, and
  how often the tracker changed between the lone face's mesh graph and the full one;
* **process**: the real `process` path (decode thread -> processor -> encode thread),
  end-to-end fps;
* **live**: the clip played as a 30 fps camera in real time (frames due while the filter
  is busy are skipped, as a camera's are) through the same processor to a sink that
  discards frames: delivered fps and capture-to-output latency p50/p95;
* **refining** (with ``--cloak``): live again with the profile's background refinement
  working flat out beside it (issue 16: at least 0.9x the live rate without);
* **deface** (CenterFace + blur, the peer a user would pick instead): its CLI on the same
  clip, from a separate virtual environment (it pulls its own OpenCV wheel, which must
  not meet MediaPipe's); ``auto`` looks for ``build/deface-venv/bin/deface``;
* **models of** (``--models-of REV``): the ``engine_every`` variants again, this code with
  the model files (``engines/``) of an earlier revision, profile, process and live: what a
  change of the model alone is worth, at the same settings in the same run;
* **baseline**: `process` of an earlier revision (``--baseline REV``: a git worktree,
  imported through PYTHONPATH, same virtual environment) on the same clip, with that
  revision's default settings.

Safety net on throughout; ONNX Runtime on the CPU. Writes speed_720p.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

STAGES = ("decode", "track.mesh", "track.safety_net", "window", "engine", "composite", "rppg", "encode")


def clip_layout(clip: Path) -> np.ndarray:
    """A face layout (478, 2) for the bench profile: the clip's first face in crop pixels, so
    the cloak is re-posed every frame as an enrolled profile's is."""
    import cv2

    from livedeid.tracking.mesh import aligned_landmarks
    from livedeid.tracking.still import still_landmarks

    cap = cv2.VideoCapture(str(clip))
    ok, first = cap.read()
    cap.release()
    lm = still_landmarks(first) if ok else None
    if lm is None:
        raise SystemExit(f"no face in the first frame of {clip}")
    return aligned_landmarks(lm, 128)


def config(variant: str | None, profile: Path | None = None, manifests: dict | None = None):
    """The pipeline's settings for a variant, ``"every N"``, ``"every N, model of REV"``
    (the manifest in ``manifests[REV]``) or ``"cloak"`` (``None``: the revision's defaults,
    for --baseline, whose revision may have no ``engine_every``)."""
    from livedeid.core.settings import PipelineConfig

    if variant is None:
        return PipelineConfig(engine="onnxruntime")
    if variant == "cloak":
        return PipelineConfig(engine="onnxruntime", profile=profile)
    every, _, rev = variant.partition(", model of ")
    manifest = manifests[rev] if rev else None
    return PipelineConfig(engine="onnxruntime", engine_every=int(every.split()[-1]), manifest=manifest)


def models_of(rev: str, into: Path) -> Path:
    """The manifest of revision ``rev``'s model files, extracted into ``into``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "engines"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "engines" / "deid.json"


def reuse_share(proc) -> float | None:
    """The share of face-frames that wore a kept residual (None: no face needed the network)."""
    r = getattr(proc, "residuals", None)
    total = (r.reused + r.fresh) if r is not None and hasattr(r, "reused") else 0
    return round(r.reused / total, 3) if total else None


def pct(values, q) -> float:
    return round(float(np.percentile(values, q)), 2) if values else 0.0


def profile(clip: Path, cfg, frames: int) -> dict:
    """Each stage on its own, one frame after another (no threads), ms per frame."""
    from livedeid.io.sinks import FileSink
    from livedeid.io.sources import FileSource
    from livedeid.pipeline.factory import build_processor

    times: dict[str, list[float]] = {s: [] for s in STAGES}
    src = FileSource(clip)
    decoded = []
    t = time.perf_counter()
    for frame in src:
        now = time.perf_counter()
        times["decode"].append((now - t) * 1000)
        decoded.append(frame)
        if len(decoded) >= frames:
            break
        t = time.perf_counter()
    src.close()
    proc = build_processor(cfg, path="host")
    outputs = None
    for i, frame in enumerate(decoded):
        done = proc.process(frame)
        for s in STAGES[1:-1]:
            times[s].append(done.stage_ms.get(s, 0.0))
        if outputs is None:
            # Kept for the encode measurement in memory written once here: a list of the
            # frames' own outputs would make every frame's output copy fresh memory, and its
            # page faults (about 4 ms a 720p frame) would be timed as the composite stage,
            # which the real pipeline, whose encoder frees each frame, never pays.
            outputs = np.ones((len(decoded), *done.output.shape), np.uint8)
        outputs[i] = done.output
    proc.close()
    with tempfile.TemporaryDirectory() as tmp:
        sink = FileSink(Path(tmp) / "enc.mp4", *src.size, rate=src.rate)
        t0 = time.perf_counter()
        for image in outputs:
            sink.send(image)
        sink.close()  # the encoder thread drains here: per frame = the whole / frames
        per = (time.perf_counter() - t0) * 1000 / max(1, len(outputs))
        times["encode"] = [per] * len(outputs)
    warm = 5  # model and tracker warm-up
    out = {s: {"p50": pct(v[warm:], 50), "p95": pct(v[warm:], 95)} for s, v in times.items()}
    return {**out, "reused": reuse_share(proc), "graph_switches": proc.tracker.graph_switches}


def run_process(clip: Path, cfg) -> dict:
    from livedeid.io.sinks import FileSink
    from livedeid.io.sources import FileSource
    from livedeid.pipeline.factory import build_processor
    from livedeid.pipeline.runner import Pipeline

    with tempfile.TemporaryDirectory() as tmp:
        src = FileSource(clip)
        proc = build_processor(cfg, path="host")
        sink = FileSink(Path(tmp) / "out.mp4", *src.size, rate=src.rate)
        t0 = time.perf_counter()
        result = Pipeline(src, proc, [sink]).run()
        wall = time.perf_counter() - t0
    return {"frames": result.frames_out, "fps": round(result.frames_out / wall, 2),
            "hidden_face_frames": result.stats["hidden_face_frames"], "reused": reuse_share(proc)}


def run_live(clip: Path, cfg, seconds: float, refine: bool = False) -> dict:
    """The clip as a 30 fps camera through the processor for ``seconds``; with ``refine``,
    background refinement of the profile's cloak works flat out meanwhile (its worst case:
    :func:`refine_latency.refiner_at_work`)."""
    from livedeid.io.sinks import NullSink
    from livedeid.io.sources import FileSource, LiveSimulation
    from livedeid.pipeline.factory import build_processor
    from livedeid.pipeline.runner import Pipeline

    latencies: list[float] = []

    def latency(frame, _proc):
        latencies.append((time.monotonic() - frame.timestamp) * 1000)

    src = LiveSimulation(lambda: FileSource(clip), loop=True)
    proc = build_processor(cfg, path="host")
    refiner = None
    if refine:
        from refine_latency import refiner_at_work

        refiner = refiner_at_work(proc, (1280, 720), 30.0)
    pipeline = Pipeline(src, proc, [NullSink()], [latency] + ([refiner] if refiner else []))
    timer = threading.Timer(seconds, pipeline.stop)
    timer.start()
    t0 = time.perf_counter()
    try:
        result = pipeline.run()
        wall = time.perf_counter() - t0  # before the refiner's worker is shut down (about a second)
    finally:
        timer.cancel()
        if refiner is not None:
            refiner.close()
    lat = latencies[15:]  # after the warm-up
    return {"frames": result.frames_out, "fps": round(result.frames_out / wall, 2),
            "latency_p50_ms": pct(lat, 50), "latency_p95_ms": pct(lat, 95)}


def run_deface(clip: Path, deface: Path, frames: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "deface.mp4"
        t0 = time.perf_counter()
        proc = subprocess.run([str(deface), str(clip), "-o", str(out), "--backend", "onnxrt"],
                              capture_output=True, text=True)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    version = subprocess.run([str(deface), "--version"], capture_output=True, text=True).stdout.strip()
    return {"version": version, "fps": round(frames / wall, 2), "wall_s": round(wall, 1),
            "note": "wall time of the CLI, start-up included"}


def run_baseline(rev: str, clip: Path) -> dict:
    """`process` of ``rev`` on the clip: this script's process runner, importing livedeid
    from a worktree of ``rev``."""
    wt = Path(tempfile.mkdtemp(prefix="speed-baseline-"))
    try:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(wt), rev],
                       check=True, capture_output=True)
        env = dict(os.environ, PYTHONPATH=str(wt))
        out = subprocess.run([sys.executable, __file__, "--process-only", str(clip)], env=env, cwd=wt,
                             capture_output=True, text=True)
        if out.returncode != 0:
            return {"rev": rev, "error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
        short = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev], capture_output=True,
                               text=True).stdout.strip()
        return {"rev": short, **json.loads(out.stdout.strip().splitlines()[-1])}
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(wt)], capture_output=True)
        shutil.rmtree(wt, ignore_errors=True)


def find_deface(choice: str) -> Path | None:
    if choice == "none":
        return None
    path = ROOT / "build" / "deface-venv" / "bin" / "deface" if choice == "auto" else Path(choice)
    return path if path.is_file() else None


NAMES = {"every 1": "network every frame", "cloak": "cloak profile (enrolled user)",
         **{f"every {n}": f"network 1 in {n} at most" for n in (2, 3, 4)}}


def name(variant: str) -> str:
    base, _, rev = variant.partition(", model of ")
    return NAMES.get(base, base) + (f", model of {rev}" if rev else "")


def markdown(res: dict, command: str) -> str:
    lines = [f"# 1280x720, one face, safety net on ({res['date']})", "", f"`{command}`", "",
             f"Machine: {res['machine']}; clip: {res['seconds']} s synthetic face at 30 fps; "
             f"engine: ONNX Runtime (CPU).", "", "## Where the time goes (ms per frame, p50 / p95)", "",
             "| stage | " + " | ".join(name(v) for v in res["profile"]) + " |",
             "|---|" + "---:|" * len(res["profile"])]
    for s in STAGES:
        lines.append(f"| {s} | " + " | ".join(f"{p[s]['p50']:.1f} / {p[s]['p95']:.1f}"
                                            for p in res["profile"].values()) + " |")
    lines.append("| face-frames wearing a kept residual | " + " | ".join(
        "-" if p.get("reused") is None else f"{100 * p['reused']:.0f} %" for p in res["profile"].values()) + " |")
    lines.append("| face-mesh graph switches (lone face / full; tracking.mesh) | " + " | ".join(
        str(p.get("graph_switches", "-")) for p in res["profile"].values()) + " |")
    lines += ["", "Stages run on three threads in `process` (decode, processor, encode) and two in `live`, "
              "plus the safety net's detector beside the face mesh, so end-to-end time per frame is about "
              "the slowest of them plus contention on 2 cores, not the sum.", "", "## End to end", "",
              "| variant | process fps | live fps | live latency p50 / p95 ms | hidden face-frames (process) |",
              "|---|---:|---:|---:|---:|"]
    for v, r in res["end_to_end"].items():
        p, lv = r["process"], r["live"]
        lines.append(f"| livedeid, {name(v)} | {p['fps']} | {lv['fps']} | "
                     f"{lv['latency_p50_ms']} / {lv['latency_p95_ms']} | {p['hidden_face_frames']} |")
    rf = res.get("refining")
    if rf:
        ratio = rf["fps"] / res["end_to_end"]["cloak"]["live"]["fps"]
        lines.append(f"| livedeid, cloak profile with background refinement at work | | {rf['fps']} "
                     f"({ratio:.2f}x without) | {rf['latency_p50_ms']} / {rf['latency_p95_ms']} | |")
    b = res.get("baseline")
    if b:
        lines.append(f"| livedeid {b['rev']} (baseline) | {b.get('fps', b.get('error'))} | | | "
                     f"{b.get('hidden_face_frames', '')} |")
    d = res.get("deface")
    if d:
        lines.append(f"| {d.get('version', 'deface')} | {d.get('fps', d.get('error'))} | | | |")
    else:
        lines.append("| deface | not run (build/deface-venv missing: python -m venv build/deface-venv && "
                     "build/deface-venv/bin/pip install deface==1.5.0) | | | |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--every", default="1,3", help="engine_every values to measure")
    ap.add_argument("--cloak", action="store_true", help="also the enrolled user's configuration (a cloak profile)")
    ap.add_argument("--live-seconds", type=float, default=10.0)
    ap.add_argument("--baseline", default=None, metavar="REV")
    ap.add_argument("--models-of", default=None, metavar="REV",
                    help="also the engine_every variants with the model files of REV (same code)")
    ap.add_argument("--deface", default="auto")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "speed_720p")
    ap.add_argument("--process-only", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.process_only is not None:  # the baseline's child: one JSON line
        print(json.dumps(run_process(args.process_only, config(None))))
        return 0
    from bench_process import make_clip

    every = [f"every {int(e)}" for e in args.every.split(",") if e]
    variants = every + [f"{v}, model of {args.models_of}" for v in every if args.models_of] + (["cloak"] if args.cloak else [])
    res = {"date": time.strftime("%Y-%m-%d"), "seconds": args.seconds,
           "machine": f"{platform.platform()}, {os.cpu_count()} CPUs", "profile": {}, "end_to_end": {}}
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip720.mp4"
        make_clip(clip, args.seconds, (1280, 720))
        frames = round(args.seconds * 30)
        cloak, manifests = None, {}
        if args.models_of:
            manifests[args.models_of] = models_of(args.models_of, Path(tmp))
        if args.cloak:
            from livedeid.io.profile import Profile, save_profile

            pattern = np.random.default_rng(0).uniform(-8 / 255, 8 / 255, (3, 128, 128)).astype(np.float32)
            cloak = save_profile(Profile(name="bench", pattern=pattern, budget=8 / 255, layout=clip_layout(clip),
                                         recognizers={"dlib": {}, "sface": {}}), Path(tmp) / "bench.npz")
        for v in variants:
            print(f"{v}: profile, process, live ...", flush=True)
            res["profile"][v] = profile(clip, config(v, cloak, manifests), frames)
            res["end_to_end"][v] = {"process": run_process(clip, config(v, cloak, manifests)),
                                    "live": run_live(clip, config(v, cloak, manifests), args.live_seconds)}
        if cloak is not None:  # refinement is a live run's: no profile or process row of its own
            print("cloak, refining: live ...", flush=True)
            res["refining"] = run_live(clip, config("cloak", cloak), args.live_seconds, refine=True)
        if args.baseline:
            print(f"baseline {args.baseline} ...", flush=True)
            res["baseline"] = run_baseline(args.baseline, clip)
        deface = find_deface(args.deface)
        if deface is not None:
            print("deface ...", flush=True)
            res["deface"] = run_deface(clip, deface, frames)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/speed_720p.py " + " ".join(
        a if not a.startswith("/") else os.path.relpath(a, ROOT) for a in sys.argv[1:])
    (args.out / "speed_720p.json").write_text(json.dumps(res, indent=1))
    md = markdown(res, command.strip())
    (args.out / "speed_720p.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
