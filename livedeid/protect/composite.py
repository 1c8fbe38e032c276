"""Composite: put the model's perturbation back into the frame, under a face-oval mask.

Only the *residual* (protected crop minus clean crop) is warped back to the frame and
added, so the face keeps its full camera resolution instead of being resampled through
the 128 px crop. The mask is the face-mesh oval, feathered inwards: every pixel outside
the oval is bit-identical to the input.

Fail-closed: a lost or low-confidence face has its last region hidden (blur or mask),
with a margin that grows while it stays lost, because the face may be moving.
"""
from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from livedeid.core.records import FaceTrack


@lru_cache(maxsize=1)
def face_oval_indices() -> np.ndarray:
    """MediaPipe FACEMESH_FACE_OVAL as one ordered closed loop of landmark indices."""
    import mediapipe as mp

    edges = list(mp.solutions.face_mesh.FACEMESH_FACE_OVAL)
    nxt: dict[int, list[int]] = {}
    for a, b in edges:
        nxt.setdefault(a, []).append(b)
        nxt.setdefault(b, []).append(a)
    start = edges[0][0]
    loop, prev, cur = [start], None, start
    while True:
        cand = [n for n in nxt[cur] if n != prev]
        prev, cur = cur, cand[0]
        if cur == start:
            break
        loop.append(cur)
    return np.array(loop, dtype=np.int64)


def _clip_box(x0: int, y0: int, x1: int, y1: int, w: int, h: int) -> tuple[int, int, int, int]:
    return max(0, x0), max(0, y0), min(w, x1), min(h, y1)


def oval_mask(landmarks: np.ndarray, frame_hw: tuple[int, int], feather_frac: float = 0.08):
    """Feathered face-oval mask within the oval's bounding box.

    Returns ``(box, mask)`` with ``box = (x0, y0, x1, y1)`` and ``mask`` float32 (h, w) in
    [0, 1], exactly 0 outside the oval polygon (the feather lies inside it), or
    ``(None, None)`` when the oval is outside the frame.
    """
    h, w = frame_hw
    poly = landmarks[face_oval_indices()]
    x0, y0 = np.floor(poly.min(axis=0)).astype(int) - 1
    x1, y1 = np.ceil(poly.max(axis=0)).astype(int) + 2
    x0, y0, x1, y1 = _clip_box(x0, y0, x1, y1, w, h)
    if x1 <= x0 or y1 <= y0:
        return None, None
    hard = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(hard, [np.round((poly - (x0, y0)) * 16).astype(np.int32)], 255, cv2.LINE_8, shift=4)
    # The feather is smooth, so it is computed on a copy at most 96 px across and scaled
    # back: the erosion and blur then cost the same for a 100 px and a 1000 px face.
    size = max(x1 - x0, y1 - y0)
    k = min(1.0, 96.0 / size)
    small = cv2.resize(hard, (max(1, round((x1 - x0) * k)), max(1, round((y1 - y0) * k))),
                       interpolation=cv2.INTER_AREA) if k < 1.0 else hard
    radius = max(1, int(round(feather_frac * size * k)))
    eroded = cv2.erode(small, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1)))
    soft = cv2.GaussianBlur(eroded.astype(np.float32) * (1.0 / 255.0), (0, 0), radius / 2.0)
    if k < 1.0:
        soft = cv2.resize(soft, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    soft *= hard > 0  # guarantees exact zeros outside the polygon
    return (x0, y0, x1, y1), soft


def apply_protection(out: np.ndarray, face: FaceTrack) -> None:
    """Add ``face.protected - face.crop`` (crop space) to ``out`` (frame space) in place,
    under the face's feathered oval mask."""
    if face.protected is None or face.crop is None:
        raise ValueError("face has no protected crop")
    box, mask = oval_mask(face.landmarks, out.shape[:2])
    if box is None:
        return
    x0, y0, x1, y1 = box
    residual = (face.protected - face.crop).transpose(1, 2, 0)[:, :, ::-1]  # CHW RGB -> HWC BGR
    to_box = face.from_crop.copy()
    to_box[:, 2] -= (x0, y0)
    warped = cv2.warpAffine(
        np.ascontiguousarray(residual), to_box, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT, borderValue=0,
    )
    region = out[y0:y1, x0:x1]
    blended = region.astype(np.float32) + warped * (mask[:, :, None] * 255.0)
    np.clip(np.rint(blended), 0, 255, out=blended)
    region[...] = blended.astype(np.uint8)


def hidden_box(face: FaceTrack, frame_hw: tuple[int, int], base_margin: float = 0.25,
               growth_per_frame: float = 0.02, max_margin: float = 1.0) -> tuple[int, int, int, int] | None:
    """The region hidden for a lost/uncertain face: its landmark box, grown by a margin
    that widens while the face stays lost (it may be moving where we cannot see)."""
    h, w = frame_hw
    x0, y0, x1, y1 = face.bbox()
    size = max(x1 - x0, y1 - y0, 8)
    margin = min(max_margin, base_margin + growth_per_frame * face.lost_frames) * size
    box = _clip_box(int(x0 - margin), int(y0 - margin), int(x1 + margin), int(y1 + margin), w, h)
    return box if box[2] > box[0] and box[3] > box[1] else None


def hide_region(out: np.ndarray, box: tuple[int, int, int, int], policy: str) -> None:
    """Make the region unrecognisable in place. ``blur``: down to ~6 px across and back
    (no identity survives that), softened; ``mask``: flat grey. (``hold`` is a frame-level
    policy handled by the pipeline; here it masks.)"""
    x0, y0, x1, y1 = box
    region = out[y0:y1, x0:x1]
    if policy == "blur":
        # Down to ~6 px across (no identity survives that), then back up through a small
        # blurred intermediate so the cost does not grow with the region's size.
        rh, rw = region.shape[:2]
        k = max(rw, rh)
        tiny = cv2.resize(region, (max(1, rw * 6 // k), max(1, rh * 6 // k)), interpolation=cv2.INTER_AREA)
        mid = cv2.resize(tiny, (max(1, rw * 48 // k), max(1, rh * 48 // k)), interpolation=cv2.INTER_LINEAR)
        mid = cv2.GaussianBlur(mid, (0, 0), 3.0)
        region[...] = cv2.resize(mid, (rw, rh), interpolation=cv2.INTER_LINEAR)
    else:
        region[...] = 128


def draw_hr_overlay(out: np.ndarray, bpm: float | None, quality: str) -> None:
    """Burn the heart rate into the output (off by default; the clinician sees it)."""
    text = f"HR {bpm:5.1f} bpm ({quality})" if bpm is not None else "HR -- (no reading)"
    scale = max(0.5, out.shape[0] / 720.0)
    org = (int(12 * scale), int(34 * scale))
    cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.9 * scale, (0, 0, 0), int(4 * scale), cv2.LINE_AA)
    cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.9 * scale, (255, 255, 255), int(2 * scale), cv2.LINE_AA)


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
