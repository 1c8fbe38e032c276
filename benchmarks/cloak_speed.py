"""The cloak's cost at run time: 720p end-to-end frame rate of the real `process` path with
a profile (the largest face wears the cloak) against the same path without one, measured
in the same run (issue 13, acceptance 5: with >= 0.95x without).

    python benchmarks/cloak_speed.py [--seconds 8] [--rounds 3] [--width 1280 --height 720]

Both read the same single-face H.264 clip (made here from the synthetic pulse source) and
write H.264 with the same settings, on the ONNX Runtime CPU engine. Runs alternate
(without, with, without, with, ...) so that drift in the machine's speed falls on both;
the ratio is of the medians. The profile holds a random pattern at 8/255: its figures do
not matter to the speed, only that the cloak replaces the model on the wearer's face.
Writes ``benchmarks/results/cloak_speed.md`` and ``.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
from bench_process import make_clip, run_livedeid  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)

    from livedeid.io.profile import Profile, save_profile

    rng = np.random.default_rng(0)
    pattern = rng.uniform(-8 / 255, 8 / 255, (3, 128, 128)).astype(np.float32)
    runs: dict[str, list[dict]] = {"without": [], "with": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip = tmp / "clip.mp4"
        make_clip(clip, args.seconds, (args.width, args.height))
        profile = save_profile(Profile(name="bench", pattern=pattern, budget=8 / 255), tmp / "bench.npz")
        for r in range(args.rounds):
            for key, prof in (("without", None), ("with", profile)):
                res = run_livedeid(clip, tmp / f"{key}{r}.mp4", "onnxruntime", prof)
                runs[key].append(res)
                print(f"round {r + 1} {key:>7} cloak: {res['fps']:.1f} fps", flush=True)
    fps = {k: statistics.median(x["fps"] for x in v) for k, v in runs.items()}
    ratio = fps["with"] / fps["without"]
    result = {"command": "python benchmarks/cloak_speed.py " + " ".join(argv or sys.argv[1:]),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "size": [args.width, args.height], "seconds": args.seconds, "rounds": args.rounds,
              "median_fps": fps, "ratio_with_over_without": ratio, "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cloak_speed.json").write_text(json.dumps(result, indent=1))
    lines = ["# The cloak's cost at run time", "", f"`{result['command']}` on {result['machine']}", "",
             f"{args.width}x{args.height}, {args.seconds:.0f} s single-face clip, `process` path, ONNX Runtime CPU, "
             f"{args.rounds} alternating rounds.", "",
             "| | median fps | runs (fps) | engine stage p50 / p95 ms (the face's protection) |", "|---|---|---|---|"]
    for k in ("without", "with"):
        each = ", ".join(f"{x['fps']:.1f}" for x in runs[k])
        eng = ", ".join(f"{x['latency_ms']['engine']['p50']:.2f} / {x['latency_ms']['engine']['p95']:.2f}"
                        for x in runs[k])
        lines.append(f"| {k} cloak | {fps[k]:.1f} | {each} | {eng} |")
    lines += ["", f"**with / without = {ratio:.3f}** (acceptance: >= 0.95)"]
    (args.out / "cloak_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
