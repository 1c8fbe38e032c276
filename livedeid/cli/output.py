"""What commands print and write: progress, the speed table, JSON reports, output checks."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from livedeid.core import strict_json
from livedeid.core.errors import UserError


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` to ``path`` as strict JSON (no NaN/Infinity: ``null``), whole or not
    at all (a hidden partial file, renamed)."""
    tmp = path.with_name(f".{path.name}.partial")
    try:
        tmp.write_text(strict_json.dumps(data, indent=2) + "\n")
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None


def check_output_path(path: Path) -> None:
    """UserError now, before any work, when ``path`` cannot be written later."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"output folder does not exist: {parent}")
    if not os.access(parent, os.W_OK):
        raise UserError(f"output folder is not writable: {parent}")
    if path.is_dir():
        raise UserError(f"output path is a folder: {path}")


def run_with_progress(pipeline, total: int | None, quiet: bool):
    from tqdm import tqdm

    bar = tqdm(total=total, unit="frame", disable=quiet, file=sys.stderr, dynamic_ncols=True)
    pipeline.listeners.append(lambda frame, proc: bar.update(1))
    try:
        return pipeline.run()
    finally:
        bar.close()


def print_stats(result) -> None:
    s = result.stats
    print(f"engine: {result.engine}")
    print(f"frames: {result.frames_out} out of {result.frames_in} in, dropped {s['dropped']}, "
          f"{s['fps']:.1f} fps end to end, {s['hidden_face_frames']} face-frames hidden (fail-closed)")
    print(f"{'stage':<10} {'p50 ms':>8} {'p95 ms':>8} {'fps@p50':>8}")
    for stage, v in s["latency_ms"].items():
        fps = 1000.0 / v["p50"] if v["p50"] > 0 else float("inf")
        print(f"{stage:<10} {v['p50']:8.2f} {v['p95']:8.2f} {fps:8.0f}")
    for e in result.events:
        print(f"event: {e}")
