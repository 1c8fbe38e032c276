"""Fail closed: what is hidden when a face cannot be protected, and how.

A face is *trusted* when it is tracked now with plausible landmarks; every other face is
hidden. So are the faces the safety-net detector sees that no track holds, and, until the
first face has been found, the whole picture (the startup guard: a profile or a face in
the dark may be there that no detector sees yet). ``blur`` and ``mask`` hide regions;
``hold`` repeats the last frame in which nothing had to be hidden. Raw face pixels never
reach a sink while protection is on.
"""
from __future__ import annotations

import cv2
import numpy as np

from livedeid.core.geometry import inside_any
from livedeid.core.records import FaceTrack, Frame
from livedeid.core.settings import PipelineConfig
from livedeid.protect.composite import clip_box


def split_faces(faces: list[FaceTrack], min_confidence: float) -> tuple[list[FaceTrack], list[FaceTrack]]:
    """(trusted, hidden): trusted faces are seen in this frame with at least
    ``min_confidence``; the rest (lost or implausible) are hidden."""
    trusted = [f for f in faces if not f.is_lost and f.confidence >= min_confidence]
    hidden = [f for f in faces if f not in trusted]
    return trusted, hidden


def hidden_box(face: FaceTrack, frame_hw: tuple[int, int], base_margin: float = 0.25,
               growth_per_frame: float = 0.02, max_margin: float = 1.0,
               max_travel: float = 1.5) -> tuple[int, int, int, int] | None:
    """The region hidden for a lost/uncertain face: its landmark box, stretched along the
    way it was moving for as long as it has been lost (at most ``max_travel`` face sizes:
    a face walking out of the picture is lost before it is gone, and a half face at the
    edge is what no detector finds), grown by a margin that widens while it stays lost
    (it may be moving where we cannot see)."""
    h, w = frame_hw
    x0, y0, x1, y1 = face.bbox()
    size = max(x1 - x0, y1 - y0, 8)
    dx, dy = (float(np.clip(v * face.lost_s, -max_travel * size, max_travel * size)) for v in face.velocity)
    x0, x1 = min(x0, x0 + dx), max(x1, x1 + dx)
    y0, y1 = min(y0, y0 + dy), max(y1, y1 + dy)
    margin = min(max_margin, base_margin + growth_per_frame * face.lost_frames) * size
    box = clip_box(int(x0 - margin), int(y0 - margin), int(x1 + margin), int(y1 + margin), w, h)
    return box if box[2] > box[0] and box[3] > box[1] else None


def hide_region(out: np.ndarray, box: tuple[int, int, int, int], policy: str) -> None:
    """Make the region unrecognisable in place. ``blur``: down to ~6 px across and back
    (no identity survives that), softened; ``mask``: flat grey. (``hold`` is a frame-level
    policy handled by :class:`FailClosed`; here it masks.)"""
    x0, y0, x1, y1 = box
    region = out[y0:y1, x0:x1]
    if policy == "blur":
        # back up through a small blurred intermediate: the cost does not grow with the region
        rh, rw = region.shape[:2]
        k = max(rw, rh)
        tiny = cv2.resize(region, (max(1, rw * 6 // k), max(1, rh * 6 // k)), interpolation=cv2.INTER_AREA)
        mid = cv2.resize(tiny, (max(1, rw * 48 // k), max(1, rh * 48 // k)), interpolation=cv2.INTER_LINEAR)
        mid = cv2.GaussianBlur(mid, (0, 0), 3.0)
        region[...] = cv2.resize(mid, (rw, rh), interpolation=cv2.INTER_LINEAR)
    else:
        region[...] = 128


def privacy_placeholder(size: tuple[int, int], message: str) -> np.ndarray:
    """A frame with no camera content at all (dark, one line of text), sent while the
    camera is unavailable so video-call apps keep the device instead of dropping it."""
    w, h = size
    out = np.full((h, w, 3), 32, np.uint8)
    scale = max(0.4, h / 720.0)
    (tw, th), _ = cv2.getTextSize(message, cv2.FONT_HERSHEY_SIMPLEX, 0.9 * scale, max(1, int(2 * scale)))
    org = (max(4, (w - tw) // 2), (h + th) // 2)
    cv2.putText(out, message, org, cv2.FONT_HERSHEY_SIMPLEX, 0.9 * scale, (200, 200, 200),
                max(1, int(2 * scale)), cv2.LINE_AA)
    return out


class FailClosed:
    """The fail-closed policy of one processor. It reads ``config`` on every frame (the
    panel switches protection live) and keeps the last frame that needed no hiding, for
    ``hold``."""

    def __init__(self, config: PipelineConfig):
        self.config = config
        self._last_good: np.ndarray | None = None

    def apply(self, frame: Frame, out: np.ndarray, hidden: list[FaceTrack]) -> np.ndarray:
        """Hide the ``hidden`` faces, the safety net's unheld faces and (startup guard) the
        whole picture in the composited ``out``; returns the image to send (the held frame
        under ``hold``). Sets ``frame.protected``, ``fail_closed_regions`` and ``hidden_boxes``."""
        cfg = self.config
        frame.protected = cfg.protect
        if not cfg.protect:
            return out
        whole = cfg.startup_guard and frame.no_face_yet
        h, w = out.shape[:2]
        lost_boxes = [b for b in (hidden_box(f, (h, w)) for f in hidden) if b is not None]
        # a face the safety net sees inside a lost face's hidden region is that face (it
        # shrank or turned past the mesh): one face, one hidden region, counted once
        frame.unheld_boxes = [u for u in frame.unheld_boxes if not inside_any(u, lost_boxes)]
        frame.fail_closed_regions = len(hidden) + len(frame.unheld_boxes) + int(whole)
        if not frame.fail_closed_regions:
            self._last_good = out
            return out
        if cfg.fail_closed == "hold" and self._last_good is not None and self._last_good.shape == out.shape:
            return self._last_good.copy()
        boxes = [(0, 0, w, h)] if whole else lost_boxes + frame.unheld_boxes
        for box in boxes:
            frame.hidden_boxes.append(box)
            hide_region(out, box, "mask" if cfg.fail_closed == "hold" else cfg.fail_closed)
        return out
