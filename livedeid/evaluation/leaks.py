"""Leak metric: does a person's identity survive in the video the pipeline sends on?

Measured per clip over the frames the pipeline produced (:class:`OutputFrame`: the frame
it was given, the frame it sent on, what it tracked and hid), against the clip's ground
truth (:class:`livedeid.evaluation.torture.FrameTruth`):

* **leaked frames**, per real recogniser: run on the OUTPUT frame as it is meant to be run
  (its own detector and alignment, :meth:`~livedeid.recognizers.base.Recognizer.embed_faces`),
  it finds a face that matches the clean identity of someone in the clip - the embedding
  of the photo that person's face was made from - at its standard threshold (dlib:
  distance <= 0.6, SFace: cosine >= 0.363). Frames in which it finds any face are counted
  too: a recogniser that finds nothing cannot leak, so 0 leaks means little there.
* **raw frames**, independent of the model: a visible face is *unprotected* when any
  quarter of its core (the central half of its face-oval box - eyes, nose, mouth - cut
  2x2) reached the output changed by no more than the noise of a good video codec: PSNR
  of output against input of :data:`UNPROTECTED_PSNR_DB` (40 dB, an RMS change of 2.5
  levels) or more. What protects changes far more: the model's residual leaves the core
  at 31-33 dB, the cloak at about 32, blur and mask at under 20. Quarters, so that a
  stale hidden region over one edge of a face that moved, or a protection that slid off
  half of it, does not count as protecting the whole face; a threshold, not "any pixel
  changed", so that a placeholder's faint residual does not either. (A JPEG round trip as
  the yardstick was tried first: on blown-out, high-contrast faces JPEG's error exceeds
  the protection's, so protected faces counted as raw.) Whether a real change also stops
  recognition is what the leaked frames measure.
* **re-acquisition delay**: each time a face appears - the clip starts with it, it comes
  into view, a cut shows it, or it jumps by more than half its width between two frames -
  the frames until the output first shows it *protected*: neither unprotected (above) nor
  under a hidden region (a fail-closed box over a quarter or more of its core). A face
  that is never protected before it disappears or appears anew counts as ``never``.
* **cost**: frames in which the fail-closed policy hid a face, and PSNR of output against
  input over whole frames and over the visible faces' boxes, each from one MSE pooled
  over all pixels of the clip (identical frames then do not make it infinite).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from livedeid.core.errors import UserError
from livedeid.core.geometry import box_centre, overlap_area
from livedeid.evaluation.torture import FaceTruth, FrameTruth

# A face part changed by no more than this (PSNR, output against input) got codec noise, not protection.
UNPROTECTED_PSNR_DB = 40.0


@dataclass(eq=False)
class OutputFrame:
    index: int            # frame number in the clip (its ground-truth row)
    image: np.ndarray     # uint8 BGR: what the pipeline was given
    output: np.ndarray    # uint8 BGR: what it sent on
    tracked: int = 0      # faces the tracker held (lost ones included)
    hidden: int = 0       # faces the fail-closed policy hid
    hidden_boxes: list = field(default_factory=list)  # the regions it hid (x0, y0, x1, y1)


def reference_embeddings(recognizer, photos: dict[str, Path]) -> dict[str, np.ndarray]:
    """Each person's clean identity for ``recognizer``: the embedding of the largest face
    it finds in the photo their face was made from."""
    refs = {}
    for identity, photo in photos.items():
        image = cv2.imread(str(photo), cv2.IMREAD_COLOR)
        if image is None:
            raise UserError(f"cannot read face photo {photo}")
        refs[identity] = recognizer.embed_largest(image)
        if refs[identity] is None:
            raise UserError(f"{recognizer.name} finds no face in {photo}: no clean identity to compare with")
    return refs


def core_box(face: FaceTruth, size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """The central half (in width and height) of the face's box, clipped to a
    (width, height) frame; None when that is outside the frame."""
    x0, y0, x1, y1 = face.box
    qx, qy = (x1 - x0) / 4.0, (y1 - y0) / 4.0
    box = (max(int(math.floor(x0 + qx)), 0), max(int(math.floor(y0 + qy)), 0),
           min(int(math.ceil(x1 - qx)), size[0]), min(int(math.ceil(y1 - qy)), size[1]))
    return box if box[2] > box[0] and box[3] > box[1] else None


def _sq_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.square(a.astype(np.float64) - b).sum())


def unprotected(image: np.ndarray, output: np.ndarray, box: tuple[int, int, int, int]) -> bool:
    """Whether some quarter of ``box`` (2x2) is, in ``output``, within
    :data:`UNPROTECTED_PSNR_DB` of ``image`` (the rule of the module docstring)."""
    x0, y0, x1, y1 = box
    region, out = image[y0:y1, x0:x1], output[y0:y1, x0:x1]
    h, w = region.shape[:2]
    limit = 255.0 ** 2 / 10 ** (UNPROTECTED_PSNR_DB / 10)  # the largest mean squared error still "unchanged"
    for ys in (slice(0, h // 2), slice(h // 2, h)):
        for xs in (slice(0, w // 2), slice(w // 2, w)):
            part = region[ys, xs]
            if part.size and _sq_error(out[ys, xs], part) / part.size <= limit:
                return True
    return False


def face_state(frame: OutputFrame, face: FaceTruth) -> str:
    """``raw`` (unprotected), ``hidden`` (a fail-closed region over a quarter or more of its
    core) or ``protected``, for one visible face of ``frame``."""
    size = (frame.image.shape[1], frame.image.shape[0])
    box = core_box(face, size)
    if box is None:
        return "protected"  # nothing of the core in the picture
    if unprotected(frame.image, frame.output, box):
        return "raw"
    area = (box[2] - box[0]) * (box[3] - box[1])
    if any(overlap_area(box, h) * 4 >= area for h in frame.hidden_boxes):
        return "hidden"
    return "protected"


def appearances(truth: list[FrameTruth]) -> list[tuple[int, str, int]]:
    """(first frame, identity, end frame exclusive) of every appearance of a face (module
    docstring): it becomes visible, or jumps by more than half its box width."""
    out, open_at, last = [], {}, {}
    for row in truth:
        seen = {}
        for face in row.visible_faces():
            seen[face.identity] = face
            prev = last.get(face.identity)
            jumped = prev is not None and math.dist(box_centre(prev.box), box_centre(face.box)) > 0.5 * (
                face.box[2] - face.box[0])
            if face.identity not in open_at or jumped:
                if face.identity in open_at:
                    out.append((open_at[face.identity], face.identity, row.index))
                open_at[face.identity] = row.index
        for identity in [k for k in open_at if k not in seen]:
            out.append((open_at.pop(identity), identity, row.index))
        last = seen
    end = truth[-1].index + 1 if truth else 0
    out += [(start, identity, end) for identity, start in open_at.items()]
    return sorted(out)


def face_states(frames: list[OutputFrame], truth: list[FrameTruth]) -> dict[tuple[int, str], str]:
    """:func:`face_state` of every visible face of every output frame, by (frame, identity)."""
    return {(f.index, face.identity): face_state(f, face) for f in frames for face in truth[f.index].visible_faces()}


def reacquisition(states: dict[tuple[int, str], str], truth: list[FrameTruth]) -> dict:
    """Per appearance, the frames (of the clip) from it to the first output frame that
    shows the face protected (``states``: :func:`face_states`); ``max``/``mean`` over those
    protected, ``never`` the rest."""
    events = []
    for start, identity, end in appearances(truth):
        delay = next((k - start for k in range(start, end) if states.get((k, identity)) == "protected"), None)
        events.append({"index": start, "identity": identity, "frames": end - start, "delay": delay})
    delays = [e["delay"] for e in events if e["delay"] is not None]
    return {"events": events, "max": max(delays) if delays else None,
            "mean": round(sum(delays) / len(delays), 2) if delays else None,
            "never": sum(1 for e in events if e["delay"] is None)}


def _psnr(sq_error: float, count: int) -> float:
    return math.inf if count == 0 or sq_error == 0 else 10.0 * math.log10(255.0 ** 2 * count / sq_error)


def protection_summary(frames: list[OutputFrame], truth: list[FrameTruth]) -> dict:
    """Model-independent counts for one run: frames, raw frames (with which face, how big,
    how hidden and how many faces the tracker held), hidden frames and face-frames, the
    re-acquisition delays, PSNR."""
    states = face_states(frames, truth)
    raw_frames = []
    frame_err = face_err = 0.0
    frame_px = face_px = 0
    for frame in frames:
        row = truth[frame.index]
        for face in (f for f in row.visible_faces() if states[frame.index, f.identity] == "raw"):
            raw_frames.append({"index": frame.index, "identity": face.identity,
                               "width": face.box[2] - face.box[0], "visible": face.visible,
                               "occluded": face.occluded, "tracked": frame.tracked})
        d = frame.output.astype(np.float64) - frame.image
        frame_err += float(np.square(d).sum())
        frame_px += d.size
        size = (frame.image.shape[1], frame.image.shape[0])
        for face in row.visible_faces():
            x0, y0, x1, y1 = face.in_frame(size)
            face_err += float(np.square(d[y0:y1, x0:x1]).sum())
            face_px += d[y0:y1, x0:x1].size
    return {
        "frames": len(frames),
        "raw": len({r["index"] for r in raw_frames}),
        "raw_faces": raw_frames,
        "hidden": sum(1 for f in frames if f.hidden > 0),
        "hidden_face_frames": sum(1 for state in states.values() if state == "hidden"),
        "reacquisition": reacquisition(states, truth),
        "psnr_frame_db": _psnr(frame_err, frame_px),
        "psnr_face_db": _psnr(face_err, face_px),
    }


def recognizer_leaks(recognizer, frames: list[OutputFrame], references: dict[str, np.ndarray]) -> dict:
    """Frames in which ``recognizer`` finds a face in the output (``detected``) and in which
    one of them matches anyone's clean identity (``leaked``, with the frame numbers), and
    the highest match score seen (``best_score``, on the ``score`` scale, against
    ``threshold``): how close the clip came to leaking, or how far past it went."""
    detected, leaked = 0, []
    best = -math.inf
    for frame in frames:
        faces = recognizer.embed_faces(frame.output)
        detected += bool(faces)
        scores = [recognizer.score(face.embedding, ref) for face in faces for ref in references.values()]
        if scores:
            best = max(best, max(scores))
            if max(scores) >= recognizer.score_threshold:
                leaked.append(frame.index)
    return {"detected": detected, "leaked": len(leaked), "leaked_frames": leaked,
            "best_score": None if best == -math.inf else round(best, 4),
            "threshold": recognizer.score_threshold}
