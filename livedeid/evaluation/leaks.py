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
* **raw frames**, independent of the model: a visible face whose core (the central half
  of its face-oval box: eyes, nose, mouth) has no pixel changed by more than one level
  from the input got no protection at all - neither the model's residual nor the
  fail-closed blur/mask/hold. The core rather than the whole box, so that a stale hidden
  region clipping the edge of a face that moved away does not count as protecting it.
* **cost**: frames in which the fail-closed policy hid a face, and PSNR of output against
  input over whole frames and over the visible faces' boxes, each from one MSE pooled
  over all pixels of the clip (identical frames then do not make it infinite).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from livedeid.core.errors import UserError
from livedeid.evaluation.torture import FaceTruth, FrameTruth

UNCHANGED_LEVELS = 1  # a pixel within one 8-bit level of the input counts as untouched


@dataclass(eq=False)
class OutputFrame:
    index: int            # frame number in the clip (its ground-truth row)
    image: np.ndarray     # uint8 BGR: what the pipeline was given
    output: np.ndarray    # uint8 BGR: what it sent on
    tracked: int = 0      # faces the tracker held (lost ones included)
    hidden: int = 0       # faces the fail-closed policy hid


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


def raw_faces(frame: OutputFrame, truth: FrameTruth) -> list[FaceTruth]:
    """The visible faces of ``frame`` whose core reached the output untouched."""
    size = (frame.image.shape[1], frame.image.shape[0])
    raw = []
    for face in truth.visible_faces():
        box = core_box(face, size)
        if box is None:
            continue
        x0, y0, x1, y1 = box
        diff = cv2.absdiff(frame.image[y0:y1, x0:x1], frame.output[y0:y1, x0:x1])
        if int(diff.max()) <= UNCHANGED_LEVELS:
            raw.append(face)
    return raw


def _psnr(sq_error: float, count: int) -> float:
    return math.inf if count == 0 or sq_error == 0 else 10.0 * math.log10(255.0 ** 2 * count / sq_error)


def protection_summary(frames: list[OutputFrame], truth: list[FrameTruth]) -> dict:
    """Model-independent counts for one run: frames, raw frames (with which face, how big,
    how hidden and how many faces the tracker held), hidden frames, PSNR."""
    raw_frames = []
    frame_err = face_err = 0.0
    frame_px = face_px = 0
    for frame in frames:
        row = truth[frame.index]
        for face in raw_faces(frame, row):
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
