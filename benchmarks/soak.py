"""Soak: the live pipeline (`livedeid run` without a camera) on a looping source for N
minutes, sampling resident memory and frame rate every 10 s.

    python benchmarks/soak.py --minutes 30 --out benchmarks/results/soak

Passes when resident memory grows by less than ``--max-growth`` (5 %) after the warm-up
and the frame rate stays steady. Memory is compared as the median of the first and of the
last quarter of the samples after the warm-up: the allocator's resident size swings by
several % from one 10 s sample to the next, so two single samples would measure that swing
rather than a trend (the single-sample figures are reported too). Steady: every 10 s window
after the warm-up within 20 % of the median rate. Prints one row per sample and the verdict;
writes ``soak.csv`` and ``soak.json`` into ``--out``; ``--analyse soak.csv`` recomputes the
verdict of an earlier run. Exit status 1 when it fails.

The source is played in real time (frames due while the filter is busy are skipped, as a
camera's would be): the built-in synthetic clip by default, or any video file, looped, so
file reopening is exercised too. The sink discards frames by default; ``--virtual-camera``
sends them to the OS's virtual camera instead.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_mib() -> float:
    """Current resident set size in MiB (Linux: /proc; elsewhere the peak, the best the OS
    offers without extra packages)."""
    statm = Path("/proc/self/statm")
    if statm.exists():
        return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def judge(samples: list[dict], warmup_s: float, max_growth_pct: float) -> dict:
    """Memory growth and fps steadiness of the samples taken after ``warmup_s``."""
    warm = [s for s in samples if s["t_s"] >= warmup_s]
    if len(warm) < 8:
        return {"passed": False, "reason": "too few samples after the warm-up", "samples": len(samples)}
    quarter = max(2, len(warm) // 4)
    rss = [s["rss_mib"] for s in warm]
    first, last = statistics.median(rss[:quarter]), statistics.median(rss[-quarter:])
    growth = 100.0 * (last - first) / first
    fps = [s["fps"] for s in warm]
    fps_median = statistics.median(fps)
    worst = max(abs(f - fps_median) / fps_median for f in fps) if fps_median > 0 else float("inf")
    fps_first, fps_last = statistics.median(fps[:quarter]), statistics.median(fps[-quarter:])
    steady = worst <= 0.20
    return {
        "samples": len(samples), "samples_after_warmup": len(warm),
        "rss_first_quarter_median_mib": first, "rss_last_quarter_median_mib": last,
        "rss_growth_pct": round(growth, 2), "rss_min_mib": min(rss), "rss_max_mib": max(rss),
        "rss_first_sample_mib": rss[0], "rss_last_sample_mib": rss[-1],
        "rss_growth_single_samples_pct": round(100.0 * (rss[-1] - rss[0]) / rss[0], 2),
        "fps_median": fps_median, "fps_min": min(fps), "fps_max": max(fps),
        "fps_first_quarter_median": fps_first, "fps_last_quarter_median": fps_last,
        "fps_last_over_first": round(fps_last / fps_first, 3) if fps_first else None,
        "worst_fps_deviation_pct": round(100 * worst, 1),
        "passed": growth < max_growth_pct and steady,
        "reason": (f"RSS {first:.0f} -> {last:.0f} MiB ({growth:+.2f} %, limit {max_growth_pct:g} %; medians of the "
                   f"first and last quarter after warm-up), fps {fps_first:.2f} -> {fps_last:.2f} (ratio "
                   f"{fps_last / fps_first if fps_first else float('nan'):.3f}), worst 10 s window "
                   f"{100 * worst:.1f} % off the median"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--warmup-minutes", type=float, default=2.0,
                    help="memory and fps baseline taken at this point (default 2)")
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between samples (default 10)")
    ap.add_argument("--source", default="synthetic",
                    help="synthetic[:HR] (default) or a video file, looped in real time")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--engine", default="auto")
    ap.add_argument("--virtual-camera", action="store_true", help="send to the OS's virtual camera")
    ap.add_argument("--max-growth", type=float, default=5.0, help="allowed RSS growth after warm-up, %% (default 5)")
    ap.add_argument("--out", type=Path, default=None, help="folder for soak.csv and soak.json")
    ap.add_argument("--analyse", type=Path, default=None, metavar="CSV",
                    help="only recompute the verdict from an earlier run's soak.csv")
    args = ap.parse_args(argv)
    if args.analyse:
        with open(args.analyse, newline="") as f:
            samples = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
        verdict = judge(samples, args.warmup_minutes * 60, args.max_growth)
        print(json.dumps({k: v for k, v in verdict.items()}, indent=2))
        print(("PASS: " if verdict["passed"] else "FAIL: ") + verdict["reason"])
        return 0 if verdict["passed"] else 1
    if args.warmup_minutes >= args.minutes:
        ap.error("--warmup-minutes must be shorter than --minutes")

    from livedeid.core.settings import PipelineConfig
    from livedeid.io.sinks import NullSink, VirtualCameraSink
    from livedeid.io.sources import LiveSimulation, open_source
    from livedeid.pipeline.factory import build_processor
    from livedeid.pipeline.runner import Pipeline

    if args.source.startswith("synthetic"):
        # The synthetic clip is long enough that one loop covers the whole soak at the
        # requested rate; a file source below is reopened at every loop.
        hr = float(args.source.split(":", 1)[1]) if ":" in args.source else 72.0
        from livedeid.io.sources import SyntheticSource

        source = LiveSimulation(lambda: SyntheticSource(hr_bpm=hr, duration_s=120.0, fps=args.fps,
                                                        size=(args.width, args.height)), loop=True)
    else:
        source = open_source(args.source, width=args.width, height=args.height, fps=args.fps, live=True)
    processor = build_processor(PipelineConfig(engine=args.engine))
    sink = VirtualCameraSink(*source.size, fps=source.fps) if args.virtual_camera else NullSink()
    pipeline = Pipeline(source, processor, [sink])
    result_box: dict = {}

    def run() -> None:
        try:
            result_box["result"] = pipeline.run()
        except BaseException as exc:  # reported below; the soak fails
            result_box["error"] = exc

    print(f"soak: {source.description}, engine {processor.engine.describe()}, {args.minutes:g} min, "
          f"sample every {args.interval:g} s", flush=True)
    worker = threading.Thread(target=run, name="soak-pipeline", daemon=True)
    t0 = time.monotonic()
    worker.start()
    samples = []
    frames_before, t_before = 0, t0
    print(f"{'t_s':>7} {'rss_mib':>8} {'fps':>6} {'frames':>8} {'dropped':>8} {'hidden':>7}", flush=True)
    while time.monotonic() - t0 < args.minutes * 60 and worker.is_alive():
        time.sleep(max(0.0, args.interval - (time.monotonic() - t0) % args.interval))
        now = time.monotonic()
        summary = pipeline.stats.summary()
        frames = summary["frames"]
        row = {"t_s": round(now - t0, 1), "rss_mib": round(rss_mib(), 1),
               "fps": round((frames - frames_before) / (now - t_before), 2), "frames": frames,
               "dropped": summary["dropped"], "hidden_face_frames": summary["hidden_face_frames"]}
        frames_before, t_before = frames, now
        samples.append(row)
        print(f"{row['t_s']:7.1f} {row['rss_mib']:8.1f} {row['fps']:6.2f} {row['frames']:8d} "
              f"{row['dropped']:8d} {row['hidden_face_frames']:7d}", flush=True)
    pipeline.stop()
    worker.join(timeout=30)

    verdict = {"minutes": args.minutes, "source": source.description, "engine": processor.engine.describe(),
               "size": list(source.size), "target_fps": source.fps}
    if "error" in result_box:
        verdict.update(passed=False, reason=f"pipeline failed: {result_box['error']}", samples=len(samples))
    else:
        verdict.update(judge(samples, args.warmup_minutes * 60, args.max_growth))
    print(("PASS: " if verdict["passed"] else "FAIL: ") + verdict["reason"])
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        with open(args.out / "soak.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(samples[0]) if samples else ["t_s"])
            writer.writeheader()
            writer.writerows(samples)
        (args.out / "soak.json").write_text(json.dumps({**verdict, "samples": samples}, indent=2) + "\n")
        print(f"wrote {args.out / 'soak.csv'} and {args.out / 'soak.json'}")
    return 0 if verdict["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
