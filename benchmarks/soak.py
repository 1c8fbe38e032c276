"""Soak: the live pipeline (`livedeid run` without a camera) on a looping source for N
minutes, sampling resident memory and frame rate every 10 s.

    python benchmarks/soak.py --minutes 30 --out benchmarks/results/soak

Passes when resident memory grows by less than ``--max-growth`` (5 %) between the end of
the warm-up and the end of the run, and the frame rate stays steady (every window after the
warm-up within 20 % of the warm-up's). Prints one row per sample and the verdict; writes
``soak.csv`` and ``soak.json`` into ``--out``. Exit status 1 when it fails.

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
    args = ap.parse_args(argv)
    if args.warmup_minutes >= args.minutes:
        ap.error("--warmup-minutes must be shorter than --minutes")

    from livedeid.capture import LiveSimulation, open_source
    from livedeid.pipeline import Pipeline, PipelineConfig, build_processor
    from livedeid.sinks import NullSink, VirtualCameraSink

    if args.source.startswith("synthetic"):
        # The synthetic clip is long enough that one loop covers the whole soak at the
        # requested rate; a file source below is reopened at every loop.
        hr = float(args.source.split(":", 1)[1]) if ":" in args.source else 72.0
        from livedeid.capture import SyntheticSource

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

    warm = [s for s in samples if s["t_s"] >= args.warmup_minutes * 60]
    verdict: dict = {"minutes": args.minutes, "source": source.description, "engine": processor.engine.describe(),
                     "size": list(source.size), "target_fps": source.fps, "samples": len(samples)}
    if "error" in result_box:
        verdict.update(passed=False, reason=f"pipeline failed: {result_box['error']}")
    elif len(warm) < 2:
        verdict.update(passed=False, reason="too few samples after the warm-up")
    else:
        base_rss, end_rss = warm[0]["rss_mib"], warm[-1]["rss_mib"]
        growth = 100.0 * (end_rss - base_rss) / base_rss
        base_fps = warm[0]["fps"]
        fps_values = [s["fps"] for s in warm]
        worst = max(abs(f - base_fps) / base_fps for f in fps_values) if base_fps > 0 else float("inf")
        verdict.update(rss_after_warmup_mib=base_rss, rss_end_mib=end_rss, rss_peak_mib=max(s["rss_mib"] for s in warm),
                       rss_growth_pct=round(growth, 2), fps_after_warmup=base_fps,
                       fps_end=warm[-1]["fps"], fps_median=statistics.median(fps_values),
                       fps_min=min(fps_values), fps_max=max(fps_values),
                       fps_end_over_warmup=round(warm[-1]["fps"] / base_fps, 3) if base_fps else None,
                       worst_fps_deviation_pct=round(100 * worst, 1))
        steady = worst <= 0.20
        verdict.update(passed=growth < args.max_growth and steady,
                       reason=f"RSS growth {growth:+.2f} % (limit {args.max_growth:g} %), fps "
                              f"{base_fps:.2f} -> {warm[-1]['fps']:.2f} (ratio end/warm-up "
                              f"{verdict['fps_end_over_warmup']}), worst window {100 * worst:.1f} % off")
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
