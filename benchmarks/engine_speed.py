"""Model cost in ONNX Runtime on this CPU: the shipped model against a baseline, same run.

    python benchmarks/engine_speed.py [--baseline OTHER.onnx] [--candidate engines/deid.onnx]
        [--faces 1] [--threads 2] [--runs 40]

Default baseline: the pixel-only network (``livedeid export`` of the seeded untrained
model into a temporary folder, needs torch), i.e. what the model cost before the identity
branch; ``--baseline`` takes any other ONNX (an earlier export, say). Both run with the
frame path's ONNX Runtime settings, timed in alternating blocks. Prints median and p95
milliseconds per call and the candidate/baseline ratio.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def session(path: Path, faces: int, threads: int):
    """An ONNX Runtime session with the frame path's settings, warmed up, and its input."""
    import onnxruntime as ort

    from livedeid.inference.engines import session_options

    sess = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((faces, 8, 3, 128, 128), dtype=np.float32)
    for _ in range(5):
        sess.run(None, {"window": x})
    return sess, x


def time_onnx(paths: list[Path], faces: int, threads: int, runs: int) -> list[tuple[float, float]]:
    """(median, p95) ms per call of each model, timed in alternating blocks of 8 calls so
    that a busy moment of the shared machine falls on all of them alike."""
    sessions = [session(p, faces, threads) for p in paths]
    times: list[list[float]] = [[] for _ in paths]
    for _ in range(max(1, runs // 8)):
        for (sess, x), t in zip(sessions, times):
            for _ in range(8):
                t0 = time.perf_counter()
                sess.run(None, {"window": x})
                t.append((time.perf_counter() - t0) * 1000.0)
    return [(float(np.median(t)), float(np.percentile(t, 95))) for t in times]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", type=Path, help="baseline ONNX (default: the pixel-only network)")
    ap.add_argument("--candidate", type=Path, default=ROOT / "engines" / "deid.onnx")
    ap.add_argument("--faces", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=40)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        baseline = args.baseline
        if baseline is None:
            from livedeid.training.export import export_model

            for _ in export_model(out_dir=Path(tmp), name="pixel_only"):
                pass
            baseline = Path(tmp) / "pixel_only.onnx"
        base, cand = time_onnx([baseline, args.candidate], args.faces, args.threads, args.runs)
    print(f"ONNX Runtime CPU, {args.threads} threads, {args.faces} face(s) per call, {args.runs} runs")
    print(f"baseline  {baseline.name}: median {base[0]:.1f} ms, p95 {base[1]:.1f} ms")
    print(f"candidate {args.candidate}: median {cand[0]:.1f} ms, p95 {cand[1]:.1f} ms")
    print(f"ratio candidate/baseline (median): {cand[0] / base[0]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
