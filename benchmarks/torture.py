"""Torture set: does any face leak under the conditions that break face tracking? (issue #7)

    python benchmarks/torture.py [--faces ../shared/data/faces] [--out benchmarks/results/torture]
        [--recognizers dlib,sface] [--modes process,live] [--scenarios tiny,dark,...]
        [--clips DIR] [--seed 0] [--seconds S]

Renders the torture clips (:mod:`livedeid.evaluation.torture`: real face photos, one clip per failure
mode, lossless video files with per-frame ground truth) and runs the real pipeline on each:

* ``process``: :class:`~livedeid.io.sources.FileSource` -> ``build_processor(PipelineConfig())``
  -> :class:`~livedeid.pipeline.runner.Pipeline`, every frame in order (``livedeid process``);
* ``live``: the same file played in real time by :class:`~livedeid.io.sources.LiveSimulation`,
  frames skipped when processing is late (``livedeid run --camera clip.mp4``).

The clean clip itself is scored too (mode ``input``, no protection) as the control: what
each recogniser can find and match when nothing protects the faces. Scores are those of
:mod:`livedeid.evaluation.leaks`: leaked frames per recogniser (dlib, SFace on the output, matched to
the clean photo at the standard threshold), raw frames (a visible face's core untouched),
hidden frames, hidden face-frames, the re-acquisition delay and PSNR. Prints one table and writes ``torture.json`` and ``torture.md``
into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from livedeid.evaluation.clip_run import MODES, run_clip  # noqa: E402
from livedeid.evaluation.leaks import protection_summary, recognizer_leaks, reference_embeddings  # noqa: E402
from livedeid.evaluation.report import shown_path
from livedeid.evaluation.torture import SCENARIOS_BY_NAME, Clip, make_torture_set  # noqa: E402
from livedeid.recognizers.base import get_recognizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

def _ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0-2, 5, 7-8"."""
    parts: list[list[int]] = []
    for i in sorted(set(indices)):
        if parts and i == parts[-1][1] + 1:
            parts[-1][1] = i
        else:
            parts.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in parts)


def _db(x: float | None) -> str:
    return "inf" if x is None or math.isinf(x) else f"{x:.1f}"


def _json_db(x: float) -> float | None:
    return None if math.isinf(x) else round(x, 2)  # JSON has no infinity: null = identical


def score_clip(clip: Clip, modes: list[str], recognizers: list, refs: dict) -> tuple[list[dict], dict]:
    rows, runs = [], {}
    for mode in ["input", *modes]:
        t0 = time.perf_counter()
        frames, info = run_clip(clip.path, mode)
        summary = protection_summary(frames, clip.frames)
        run = {**info, **summary, "clip_frames": len(clip.frames),
               "psnr_frame_db": _json_db(summary["psnr_frame_db"]),
               "psnr_face_db": _json_db(summary["psnr_face_db"]), "recognizers": {}}
        for rec in recognizers:
            leaks = recognizer_leaks(rec, frames, refs[rec.name])
            run["recognizers"][rec.name] = leaks
            rows.append({"scenario": clip.scenario.name, "mode": mode, "recognizer": rec.name,
                         "frames": summary["frames"], "clip_frames": len(clip.frames),
                         "detected": leaks["detected"], "leaked": leaks["leaked"], "raw": summary["raw"],
                         "hidden": summary["hidden"], "hidden_face_frames": summary["hidden_face_frames"],
                         "reacq_max": summary["reacquisition"]["max"],
                         "reacq_never": summary["reacquisition"]["never"],
                         "psnr_frame_db": run["psnr_frame_db"],
                         "psnr_face_db": run["psnr_face_db"], "best_score": leaks["best_score"],
                         "threshold": leaks["threshold"]})
        runs[mode] = run
        print(f"  {clip.scenario.name:22s} {mode:8s} {summary['frames']:4d} frames, raw {summary['raw']}, "
              f"hidden {summary['hidden']}, re-acquired within {summary['reacquisition']['max']} "
              f"(never {summary['reacquisition']['never']}), "
              + ", ".join(f"{k} leaked {v['leaked']}/{v['detected']}" for k, v in run["recognizers"].items())
              + f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
        del frames
    return rows, runs


def totals(rows: list[dict]) -> list[dict]:
    """One row per mode x recogniser summed over the scenarios."""
    out = []
    for mode in dict.fromkeys(r["mode"] for r in rows):
        for rec in dict.fromkeys(r["recognizer"] for r in rows):
            sel = [r for r in rows if r["mode"] == mode and r["recognizer"] == rec]
            out.append({"scenario": "ALL", "mode": mode, "recognizer": rec,
                        **{k: sum(r[k] for r in sel) for k in ("frames", "clip_frames", "detected", "leaked",
                                                                 "raw", "hidden", "hidden_face_frames",
                                                                 "reacq_never")},
                        "reacq_max": max((r["reacq_max"] for r in sel if r["reacq_max"] is not None), default=None),
                        "psnr_frame_db": None, "psnr_face_db": None, "best_score": None, "threshold": None})
    return out


def table(rows: list[dict]) -> str:
    head = ("scenario", "mode", "recogniser", "frames", "detected", "leaked", "raw", "hidden",
            "hidden face-frames", "re-acquired within (never)", "PSNR frame dB", "PSNR face dB")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        frames = f"{r['frames']}/{r['clip_frames']}" if r["frames"] != r["clip_frames"] else str(r["frames"])
        lines.append("| " + " | ".join([
            r["scenario"], r["mode"], r["recognizer"], frames, str(r["detected"]), str(r["leaked"]), str(r["raw"]),
            str(r["hidden"]), str(r["hidden_face_frames"]),
            f"{'-' if r['reacq_max'] is None else r['reacq_max']} ({r['reacq_never']})",
            "" if r["scenario"] == "ALL" else _db(r["psnr_frame_db"]),
            "" if r["scenario"] == "ALL" else _db(r["psnr_face_db"])]) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--faces", type=Path, default=ROOT.parent / "shared" / "data" / "faces",
                    help="face photos root (celebrities/idNN/*.jpg)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "torture")
    ap.add_argument("--recognizers", default="dlib,sface")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--scenarios", default="", help="comma-separated (default: all): " + ", ".join(SCENARIOS_BY_NAME))
    ap.add_argument("--clips", type=Path, help="keep the clips and their ground truth here (default: a temp folder)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seconds", type=float, help="override every clip's length")
    ap.add_argument("--people", default="", help="comma-separated identities to draw faces from, e.g. the "
                    "people a model never saw: celebrities/id03,celebrities/id08,celebrities/id11 (default: all)")
    args = ap.parse_args(argv)

    modes = [m for m in args.modes.split(",") if m]
    if set(modes) - set(MODES):
        ap.error(f"--modes: choose from {', '.join(MODES)}")
    names = [s for s in args.scenarios.split(",") if s] or None
    recognizers = [get_recognizer(n) for n in args.recognizers.split(",") if n]
    args.out.mkdir(parents=True, exist_ok=True)

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="livedeid-torture-") as tmp:
        clip_dir = args.clips or Path(tmp)
        print(f"rendering clips into {clip_dir} ...", flush=True)
        clips = make_torture_set(args.faces, clip_dir, names, seed=args.seed, seconds=args.seconds,
                                 people=[p for p in args.people.split(",") if p] or None)
        refs = {rec.name: {} for rec in recognizers}
        rows, runs = [], {}
        for clip in clips:
            for rec in recognizers:
                missing = {k: v for k, v in clip.photos.items() if k not in refs[rec.name]}
                refs[rec.name].update(reference_embeddings(rec, missing))
            clip_rows, runs[clip.scenario.name] = score_clip(clip, modes, recognizers, refs)
            rows += clip_rows
    wall = time.perf_counter() - t_start
    rows += totals(rows)

    text = table(rows)
    print()
    print(text)
    print(f"\n{wall:.0f} s in all")
    warning = next((r.get("model_warning") for s in runs.values() for r in s.values() if r.get("model_warning")), None)
    engine = next((r["engine"] for s in runs.values() for m, r in s.items() if m != "input"), "none")
    settings = {"faces": shown_path(args.faces), "recognizers": [r.name for r in recognizers], "modes": modes,
                "scenarios": [c.scenario.name for c in clips], "seed": args.seed, "seconds": args.seconds,
                "engine": engine, "model_warning": warning, "platform": platform.platform(),
                "python": platform.python_version(), "cpus": os.cpu_count(), "wall_s": round(wall, 1)}
    (args.out / "torture.json").write_text(json.dumps({"settings": settings, "rows": rows, "runs": runs}, indent=1))
    raw_notes = [f"- {name} / {mode}: frames {_ranges([f['index'] for f in run['raw_faces']])} "
                 f"(faces {sorted({f['width'] for f in run['raw_faces']})} px wide; tracker held "
                 f"{sorted({f['tracked'] for f in run['raw_faces']})} face(s))"
                 for name, scen in runs.items() for mode, run in scen.items() if mode != "input" and run["raw_faces"]]
    md = [f"# Torture set ({time.strftime('%Y-%m-%d')})", "",
          "`" + " ".join(["python benchmarks/torture.py", *(argv if argv is not None else sys.argv[1:])]) + "`",
          "", f"Engine: {engine}. Model: {warning or 'trained'}.",
          f"Machine: {platform.platform()}, {os.cpu_count()} CPUs; {wall:.0f} s in all.", "",
          "frames: frames the pipeline finished (live: of the clip's frames); detected: frames in which the "
          "recogniser finds a face in the output; leaked: frames in which one matches a clean identity at the "
          "recogniser's threshold; raw: frames with a visible face unprotected (a quarter of its core within 40 "
          "dB PSNR of the input, codec noise: livedeid.evaluation.leaks); hidden: frames in which the "
          "fail-closed policy hid a region; hidden face-frames: visible faces under a hidden region; re-acquired "
          "within: the most frames from a face's appearance (start, entering, a cut, a jump) to its first "
          "protected, not hidden, output frame, and in brackets the appearances never protected. "
          "Mode `input` is the clean clip (no protection).", "",
          text, "", "Scenarios:", "", *[f"- {c.scenario.name}: {c.scenario.what}" for c in clips], ""]
    if raw_notes:
        md += ["Raw (unprotected) faces outside `input`:", "", *raw_notes, ""]
    (args.out / "torture.md").write_text("\n".join(md))
    print(f"wrote {args.out / 'torture.json'} and {args.out / 'torture.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
