"""Throughput of `livedeid batch` with 1 and 2 workers against serial `livedeid process`
calls, measured in one run on the same synthetic UBFC-rPPG archive.

    python benchmarks/batch_throughput.py [--videos 6] [--seconds 4] [--size 320x240] [--rounds 2] [--out benchmarks/results]

The archive (``subjectN/vid.avi`` + ``ground_truth.txt``, faces from ../shared/data's
celebrity photos, the astronaut where that is missing) is made here. Each configuration
runs the real command line in a fresh process, as a user would, with the same settings
(H.264 output), into its own output folder:

* serial: one `livedeid process` per video, one after another (the baseline a user
  without `batch` has);
* batch 1 worker, batch 2 workers: `livedeid batch --workers N` (Ray start-up included).

Prints and writes (JSON + markdown) videos per hour for each, the ratios, and the
per-video costs from the batch reports (wall and CPU seconds per video-second; the track
and engine stages' p50 per frame), which docs/decisions.md turns into an archive estimate.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")

ROOT = Path(__file__).resolve().parents[1]
FACES = ROOT.parent / "shared" / "data" / "faces" / "celebrities"


def make_archive(root: Path, videos: int, seconds: float, size: tuple[int, int]) -> None:
    from livedeid.batch.synthetic import pulse_clip, write_ubfc_subject

    people = sorted(p for p in FACES.iterdir() if p.is_dir()) if FACES.is_dir() else []
    for i in range(videos):
        face = sorted(people[i % len(people)].glob("*.jpg"))[0] if people else None
        clip = pulse_clip(face, 60.0 + 7.0 * i, seconds=seconds, fps=30.0, size=size, seed=i)
        write_ubfc_subject(root / f"subject{i + 1}", clip)


def timed(cmd: list[str]) -> float:
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return time.monotonic() - start


def per_video_costs(out: Path, seconds: float) -> dict:
    reports = [json.loads(p.read_text()) for p in sorted((out / "livedeid_batch" / "reports").rglob("*.json"))]
    lat = [r["stats"]["latency_ms"] for r in reports]
    return {"wall_s_per_video": round(sum(r["wall_s"] for r in reports) / len(reports), 2),
            "wall_s_per_video_second": round(sum(r["wall_s"] for r in reports) / len(reports) / seconds, 2),
            # CPU-seconds (all threads of the worker) per video-second: what sizes a cluster,
            # and unlike wall time not stretched by other work on the machine.
            "cpu_s_per_video_second": round(sum(r["cpu_s"] for r in reports) / len(reports) / seconds, 2),
            "track_p50_ms": round(sum(x["track"]["p50"] for x in lat) / len(lat), 1),
            "engine_p50_ms": round(sum(x["engine"]["p50"] for x in lat) / len(lat), 1),
            "total_p50_ms": round(sum(x["total"]["p50"] for x in lat) / len(lat), 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--size", default="320x240")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of the three runs, medians reported (default 2)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    cli = [sys.executable, "-m", "livedeid"]
    load_before = os.getloadavg()  # other work on the machine skews every row alike: say how much there was
    with tempfile.TemporaryDirectory(prefix="batch-bench-") as tmp:
        archive = Path(tmp) / "archive"
        make_archive(archive, args.videos, args.seconds, size)
        videos = sorted(archive.glob("subject*/vid.avi"))
        runs: dict[str, list[float]] = {"serial process": [], "batch, 1 worker": [], "batch, 2 workers": []}
        costs: dict[str, list[dict]] = {"1 worker": [], "2 workers": []}
        for r in range(args.rounds):
            # Rotated order per round: load from elsewhere on the machine, or a warm file
            # cache, then does not favour one configuration.
            for name in list(runs)[r % 3:] + list(runs)[:r % 3]:
                out = Path(tmp) / f"round{r}-{name.replace(' ', '').replace(',', '')}"
                if name == "serial process":
                    out.mkdir()
                    runs[name].append(sum(timed([*cli, "process", str(v), str(out / f"{v.parent.name}.avi"), "-q"])
                                          for v in videos))
                    continue
                workers = name.split(", ")[1].split()[0]
                runs[name].append(timed([*cli, "batch", str(archive), str(out), "--workers", workers, "-q"]))
                costs[name.split(", ")[1]].append(per_video_costs(out, args.seconds))
    rows = {name: {"wall_s": round(statistics.median(s), 1), "runs_s": [round(v, 1) for v in s],
                   "videos_per_hour": round(args.videos / statistics.median(s) * 3600, 1)}
            for name, s in runs.items()}
    costs = {name: {k: round(statistics.median(c[k] for c in runs_c), 2) for k in runs_c[0]}
             for name, runs_c in costs.items()}
    one, two, serial = (rows[k]["videos_per_hour"] for k in ("batch, 1 worker", "batch, 2 workers", "serial process"))
    load = {"before": [round(v, 2) for v in load_before], "after": [round(v, 2) for v in os.getloadavg()]}
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                          "load_average_1_5_15_min": load},
              "archive": {"videos": args.videos, "seconds_each": args.seconds, "size": list(size), "fps": 30,
                          "codec": "h264", "layout": "ubfc"},
              "runs": rows, "scaling_2_vs_1_worker": round(two / one, 2), "batch_1_worker_vs_serial": round(one / serial, 2),
              "batch_2_workers_vs_serial": round(two / serial, 2),
              "per_video_costs": costs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "batch_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [f"# batch throughput ({args.videos} videos of {args.seconds:g} s, {size[0]}x{size[1]} at 30 fps, "
          f"{os.cpu_count()} CPUs, median of {args.rounds} rounds)", "", f"Load average (1/5/15 min) before {load['before']}, after {load['after']}.",
          "", "| run | wall s (median) | runs (s) | videos / hour |", "|---|---|---|---|"]
    md += [f"| {name} | {r['wall_s']} | {', '.join(map(str, r['runs_s']))} | {r['videos_per_hour']} |"
           for name, r in rows.items()]
    md += ["", f"2 workers / 1 worker: {result['scaling_2_vs_1_worker']}x; batch (1 worker) / serial: "
               f"{result['batch_1_worker_vs_serial']}x; batch (2 workers) / serial: {result['batch_2_workers_vs_serial']}x",
           "", "Per video (batch reports): " + "; ".join(
               f"{w}: {c['wall_s_per_video']} s a video, {c['wall_s_per_video_second']} s per video-second "
               f"(CPU {c['cpu_s_per_video_second']} s), "
               f"track p50 {c['track_p50_ms']} ms, engine p50 {c['engine_p50_ms']} ms"
               for w, c in result["per_video_costs"].items())]
    (args.out / "batch_throughput.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
