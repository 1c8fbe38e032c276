"""The videos of a batch job and where each one's output goes.

INPUT is one of:

* a folder, walked recursively: every video file (``VIDEO_SUFFIXES``) is a video; a video
  beside a ``ground_truth.txt`` is a UBFC-rPPG subject (``subjectN/vid.avi``) and that file
  its ground-truth pulse; a folder ``S`` of PNG frames beside ``S.json`` is a PURE session
  (``01-01/01-01/Image<ns>.png`` + ``01-01/01-01.json``), the JSON its ground truth;
* a CSV manifest with a header: ``path`` (required; relative to the manifest's folder),
  ``subject`` and ``ground_truth`` (optional: a UBFC ``.txt`` or PURE ``.json`` pulse file).

OUTPUT mirrors INPUT: each video's output has the input's path relative to INPUT (or, for a
manifest, to the folder the listed files share), and ground-truth files are copied to the
same place beside it, so a dataset loader reads the result as it read the original. Hidden
files and folders (names starting with ``.``) are not walked: partial outputs live there.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from livedeid.core.errors import UserError
from livedeid.io.frames import is_frame_folder

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v")
UBFC_TRUTH = "ground_truth.txt"
# The job's own files in OUTPUT: reports, summary, plots. No '-' in the name, so that
# loaders globbing session folders (PURE's "*-*") do not take it for one.
JOB_FOLDER = "livedeid_batch"


@dataclass(frozen=True)
class VideoItem:
    key: str                      # the input's path relative to the root, '/'-separated: the video's name
    input: Path
    output: Path
    kind: str                     # "video" (a file) or "frames" (a folder of PNG frames)
    layout: str                   # "ubfc", "pure", "folder" or "manifest"
    subject: str | None = None
    truth: Path | None = None     # ground-truth pulse file (UBFC .txt, PURE .json)
    truth_output: Path | None = None  # its copy in the mirror


def discover(input: Path, output: Path) -> list[VideoItem]:
    """The videos of ``input`` (module docstring) with their outputs under ``output``;
    UserError for an input that holds none, a bad manifest, or an output inside the input."""
    input, output = Path(input), Path(output)
    if not input.exists():
        raise UserError(f"input not found: {input}")
    in_abs, out_abs = input.resolve(), output.resolve()
    if input.is_file():
        if input.suffix.lower() != ".csv":
            raise UserError(f"{input}: INPUT must be a folder of videos, a dataset root or a CSV manifest")
        items = _manifest(input, output)
    else:
        if out_abs == in_abs or in_abs in out_abs.parents or out_abs in in_abs.parents:
            raise UserError("OUTPUT must lie outside INPUT (and INPUT outside OUTPUT): "
                            "a rerun would take the outputs for inputs")
        items = _walk(input, output)
        if not items:
            raise UserError(f"no videos in {input} (looked for {', '.join(VIDEO_SUFFIXES)} files, "
                            f"UBFC-rPPG subject folders and PURE sessions)")
    return items


def _walk(root: Path, out: Path) -> list[VideoItem]:
    items = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        here = Path(folder)
        rel = here.relative_to(root)
        for d in list(dirs):
            truth = here / f"{d}.json"
            if truth.is_file() and is_frame_folder(here / d):  # a PURE session's frames
                dirs.remove(d)
                items.append(VideoItem((rel / d).as_posix(), here / d, out / rel / d, "frames", "pure",
                                       subject=here.name if rel.parts else d, truth=truth,
                                       truth_output=out / rel / truth.name))
        videos = sorted(f for f in files if not f.startswith(".") and Path(f).suffix.lower() in VIDEO_SUFFIXES)
        ubfc = UBFC_TRUTH in files and len(videos) == 1
        for f in videos:
            items.append(VideoItem((rel / f).as_posix(), here / f, out / rel / f, "video", "ubfc" if ubfc else "folder",
                                   subject=here.name if ubfc else None, truth=here / UBFC_TRUTH if ubfc else None,
                                   truth_output=out / rel / UBFC_TRUTH if ubfc else None))
    return sorted(items, key=lambda i: i.key)


def _manifest(path: Path, out: Path) -> list[VideoItem]:
    base = path.parent
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            header = [h.strip() for h in reader.fieldnames or []]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"cannot read manifest {path}: {exc}") from None
    if "path" not in header:
        raise UserError(f"manifest {path} needs a header with a 'path' column (optional: subject, ground_truth)")
    entries = []
    for n, row in enumerate(rows, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        if not row.get("path"):
            continue
        video = (base / row["path"]).absolute()
        truth = (base / row["ground_truth"]).absolute() if row.get("ground_truth") else None
        for what, p in (("video", video), ("ground truth", truth)):
            if p is not None and not p.exists():
                raise UserError(f"manifest {path} line {n}: {what} not found: {p}")
        entries.append((video, row.get("subject") or None, truth))
    if not entries:
        raise UserError(f"manifest {path} lists no videos")
    root = Path(os.path.commonpath([base.absolute(), *(v.parent for v, _, _ in entries)]))
    items, keys = [], set()
    for video, subject, truth in entries:
        rel = video.relative_to(root)
        if rel.as_posix() in keys:
            raise UserError(f"manifest {path} lists {video} twice")
        keys.add(rel.as_posix())
        items.append(VideoItem(rel.as_posix(), video, out / rel, "frames" if video.is_dir() else "video", "manifest",
                               subject=subject, truth=truth,
                               truth_output=out / rel.parent / truth.name if truth is not None else None))
    out_abs = out.resolve()
    if any(out_abs == i.input.resolve() or out_abs in i.input.resolve().parents for i in items):
        raise UserError("OUTPUT must not hold the manifest's videos: a rerun would overwrite them")
    return items
