"""Two-pass cloaking of a recorded video (``livedeid process --two-pass``): every person
in the file gets a cloak optimised on their own frames.

Pass 1 (:func:`gather_tracks`) tracks the whole file once, as the pipeline does, and keeps
for each face track its frames per pose/expression bin (the enrolment's reservoirs, so a
long video costs bounded memory) and the track's box in every frame. Each track with at
least two usable frames becomes an :class:`~livedeid.cloak.enrolment.Enrolment` (the same
selection and held-out split as a camera enrolment) and then a profile
(:func:`livedeid.cloak.build.build_profile`, verified on the track's held-out frames
against its other clean frames).

Pass 2 is the ordinary frame-exact ``process`` run, with the processor told which face
wears which cloak (:class:`TrackCloaks`): a face is matched to the pass-1 track whose box
in the same frame overlaps it most (intersection over union at least
:data:`MIN_IOU`). Matching by boxes rather than by track ids keeps pass 2 right even if the
tracker numbered its tracks differently the second time. A face no pass-1 track matches
gets the model, like any face without a cloak.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from livedeid.cloak.enrolment import (
    CROP_SIZE,
    MAX_VIDEO_ITEMS,
    MIN_CONFIDENCE,
    Enrolment,
    offer,
    select,
)
from livedeid.core.errors import UserError

MIN_IOU = 0.5


@dataclass
class Tracks:
    """What pass 1 found: per track its enrolment (tracks with fewer than two usable frames
    are left out) and, per frame index, the boxes of every trusted track."""

    enrolments: dict[int, Enrolment]
    boxes: dict[int, list[tuple[int, tuple[int, int, int, int]]]] = field(default_factory=dict)
    frames: int = 0


def gather_tracks(path: str | Path, *, max_items: int = MAX_VIDEO_ITEMS, progress=None) -> Tracks:
    """Pass 1 over the video ``path`` (a file or a folder of frames; module docstring).
    ``progress`` gets the frame index."""
    from livedeid.io.frames import open_video
    from livedeid.tracking.mesh import FaceTracker

    bins: dict[int, dict] = defaultdict(dict)
    seen: dict[int, int] = defaultdict(int)
    boxes: dict[int, list] = defaultdict(list)
    frames = 0
    with open_video(path) as src, FaceTracker(max_faces=4, crop_size=CROP_SIZE) as tracker:
        for frame in src:
            frames += 1
            for face in tracker.update(frame.image, frame.timestamp):
                if face.is_lost or face.confidence < MIN_CONFIDENCE:
                    continue
                boxes[frame.index].append((face.track_id, face.bbox()))
                seen[face.track_id] += 1
                offer(bins[face.track_id], frame.index, frame.image, face.landmarks.copy(), max_items)
            if progress is not None:
                progress(frame.index)
    enrolments = {}
    for track, track_bins in sorted(bins.items()):
        e = select(track_bins, max_items, kind=f"frames of track {track}", examined=seen[track], without_face=0)
        if e.optimise and e.held_out:
            enrolments[track] = e
    return Tracks(enrolments=enrolments, boxes=dict(boxes), frames=frames)


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class TrackCloaks:
    """Pass 2's rule for who wears which cloak (``FrameProcessor.assign_cloaks``):
    ``profiles`` per pass-1 track, matched to this frame's faces by box overlap."""

    def __init__(self, tracks: Tracks, profiles: dict[int, object]):
        self.boxes, self.profiles = tracks.boxes, profiles
        self.summary: list[dict] = []  # per track, for the run's report (track_summary)

    def __call__(self, frame, face):
        """The profile ``face`` wears in ``frame`` (None: no cloak, the model)."""
        best, track = MIN_IOU, None
        box = face.bbox()
        for candidate, cand_box in self.boxes.get(frame.index, ()):
            overlap = iou(box, cand_box)
            if overlap >= best and candidate in self.profiles:
                best, track = overlap, candidate
        return None if track is None else self.profiles[track]


def track_summary(track: int, profile) -> dict:
    """One track's verification for the run's report (figures as the profile has them)."""
    v = profile.verification
    return {"track": track, "protects": profile.protects, "held_out_frames": v.get("held_out_images"),
            "gallery_frames": v.get("gallery_images"), "psnr_db": v.get("psnr_db"), "ssim": v.get("ssim"),
            "recognizers": {n: {k: r.get(k) for k in ("detection", "clean_gallery_match", "gallery_match",
                                                      "same_photo_match")}
                            for n, r in v.get("recognizers", {}).items()},
            "pattern_max": float(np.abs(profile.pattern).max())}


def check_two_pass(steps: int | None) -> None:
    """UserError now, before pass 1, for a two-pass run that cannot finish."""
    import importlib.util

    if steps is not None and not 1 <= steps <= 100_000:
        raise UserError("--cloak-steps must be 1..100000")
    if importlib.util.find_spec("torch") is None:
        raise UserError("--two-pass optimises cloaks and needs torch: pip install 'livedeid[enrol]'")


def cloak_tracks(path: str | Path, build, *, progress=None, say=lambda line: None) -> TrackCloaks:
    """Both halves of pass 1: :func:`gather_tracks` over ``path``, then a verified profile
    per track from ``build(name, enrolment)`` (the command line's prints what it does).
    The rule carries a per-track :func:`track_summary` for the run's report."""
    tracks = gather_tracks(path, progress=progress)
    say(f"pass 1: {len(tracks.enrolments)} face track(s) with enough frames for a cloak")
    profiles, summary = {}, []
    for track, enrolment in tracks.enrolments.items():
        profiles[track] = build(f"track-{track}", enrolment)
        summary.append(track_summary(track, profiles[track]))
    cloaks = TrackCloaks(tracks, profiles)
    cloaks.summary = summary
    return cloaks
