"""The archive summary in ``OUTPUT/livedeid_batch/``: ``summary.csv`` (one row per video),
``summary.md`` (counts, heart-rate error against ground truth before and after, the table,
the failures with their errors) and two plots (``hr_error.png``: each video's heart-rate
error against ground truth, input beside output; ``self_match.png``: each two-pass video's
worst per-track gallery match, clean and cloaked). Rewritten as videos finish, so a long
job can be read while it runs; every file is replaced whole (temporary name, rename).
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

COLUMNS = ("video", "subject", "layout", "status", "method", "frames", "fps", "face_frames_hidden",
           "face_psnr_db", "face_ssim", "hr_input_bpm", "hr_output_bpm", "hr_truth_bpm", "abs_error_input",
           "abs_error_output", "self_match_dlib", "self_match_sface", "wall_s", "error")


def _worst_match(report: dict, recognizer: str, key: str = "gallery_match") -> float | None:
    """The highest per-track match of ``recognizer`` (the least protected person)."""
    values = [((t.get("recognizers") or {}).get(recognizer) or {}).get(key) for t in report.get("tracks") or []]
    values = [v for v in values if v is not None]
    return max(values) if values else None


def row(report: dict) -> dict:
    hr = report.get("hr") or {}
    quality = report.get("face_quality") or {}
    return {"video": report["key"], "subject": report.get("subject"), "layout": report.get("layout"),
            "status": report.get("status"), "method": report.get("method"), "frames": report.get("frames"),
            "fps": report.get("fps"), "face_frames_hidden": report.get("face_frames_hidden"),
            "face_psnr_db": quality.get("psnr_db"), "face_ssim": quality.get("ssim"),
            "hr_input_bpm": (hr.get("input") or {}).get("bpm"), "hr_output_bpm": (hr.get("output") or {}).get("bpm"),
            "hr_truth_bpm": hr.get("truth_bpm"), "abs_error_input": hr.get("abs_error_input"),
            "abs_error_output": hr.get("abs_error_output"), "self_match_dlib": _worst_match(report, "dlib"),
            "self_match_sface": _worst_match(report, "sface"), "wall_s": report.get("wall_s"),
            "error": report.get("error")}


def hr_mae(rows: list[dict]) -> dict:
    """Mean absolute heart-rate error against ground truth of input and of output, over the
    finished videos where both have a number."""
    both = [r for r in rows if r["abs_error_input"] is not None and r["abs_error_output"] is not None]
    if not both:
        return {"videos": 0, "input": None, "output": None}
    return {"videos": len(both), "input": round(float(np.mean([r["abs_error_input"] for r in both])), 2),
            "output": round(float(np.mean([r["abs_error_output"] for r in both])), 2)}


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_bytes(data)
    tmp.replace(path)


def write_summary(folder: Path, reports: list[dict], total: int, plots: bool = True) -> dict:
    """Write the summary of ``reports`` (of ``total`` videos in the job) into ``folder``;
    returns the counts and the heart-rate MAE."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [row(r) for r in sorted(reports, key=lambda r: r["key"])]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    _replace(folder / "summary.csv", buf.getvalue().encode())
    done = sum(r["status"] == "done" for r in rows)
    failed = [r for r in rows if r["status"] != "done"]
    counts = {"total": total, "done": done, "failed": len(failed), "pending": total - len(rows),
              "hr_mae": hr_mae([r for r in rows if r["status"] == "done"])}
    drawn = _plots(folder, rows) if plots else []
    _replace(folder / "summary.md", _markdown(rows, counts, failed, drawn).encode())
    return counts


def _markdown(rows: list[dict], counts: dict, failed: list[dict], drawn: list[str]) -> str:
    mae = counts["hr_mae"]
    lines = ["# livedeid batch summary", "",
             f"{counts['total']} videos: {counts['done']} done, {counts['failed']} failed, "
             f"{counts['pending']} not finished yet.", ""]
    if mae["videos"]:
        lines += [f"Heart rate against ground truth (POS on the tracked skin, {mae['videos']} videos): "
                  f"MAE input {mae['input']:.2f} bpm, output {mae['output']:.2f} bpm "
                  f"(difference {abs(mae['output'] - mae['input']):.2f} bpm).", ""]
    else:
        lines += ["No finished video has a ground-truth pulse with a heart rate in input and output.", ""]
    shown = ("video", "status", "method", "frames", "face_frames_hidden", "face_psnr_db", "hr_input_bpm",
             "hr_output_bpm", "hr_truth_bpm", "self_match_dlib", "self_match_sface", "wall_s")
    lines += ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in shown) + " |" for r in rows]
    if failed:
        lines += ["", "## Failed", ""] + [f"- `{r['video']}`: {r['error']}" for r in failed]
    if drawn:
        lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in drawn]
    return "\n".join(lines) + "\n"


def _plots(folder: Path, rows: list[dict]) -> list[str]:
    """The PNG plots there is data for (their file names); none without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # mediapipe brings matplotlib; without it the tables still say everything
        return []
    drawn = []
    with_truth = [r for r in rows if r["abs_error_input"] is not None and r["abs_error_output"] is not None]
    if with_truth:
        drawn.append(_bars(plt, folder / "hr_error.png", [r["video"] for r in with_truth],
                           {"input": [r["abs_error_input"] for r in with_truth],
                            "output (de-identified)": [r["abs_error_output"] for r in with_truth]},
                           "|HR - ground truth| (bpm)", "Heart-rate error against ground truth"))
    two_pass = [r for r in rows if r["self_match_dlib"] is not None or r["self_match_sface"] is not None]
    if two_pass:
        drawn.append(_bars(plt, folder / "self_match.png", [r["video"] for r in two_pass],
                           {"dlib": [r["self_match_dlib"] or 0.0 for r in two_pass],
                            "SFace": [r["self_match_sface"] or 0.0 for r in two_pass]},
                           "held-out gallery match, worst track", "Verified self-match per video (two-pass)"))
    return drawn


def _bars(plt, path: Path, labels: list[str], series: dict, ylabel: str, title: str) -> str:
    fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * len(labels) + 2), 3.5), dpi=100)
    x = np.arange(len(labels))
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name)
    ax.set_xticks(x, labels, rotation=60 if len(labels) > 6 else 0, ha="right" if len(labels) > 6 else "center",
                  fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    _replace(path, buf.getvalue())
    return path.name
