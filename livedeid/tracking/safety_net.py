"""The safety net: a second, independent face detector, for failing closed on faces the
face mesh does not hold (too small, too far, not yet tracked)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from livedeid.core.geometry import inside_any, overlap_area

# A detected face is *held* by a track only when their boxes agree (intersection over
# union at least this). Its centre inside the track's box is not enough: in a fast sweep
# the mesh can trail the face by half a face width, its box still reaching over the
# detection's centre while the face itself is mostly outside the protection. Aligned
# boxes of the same face score 0.7-0.95 (the detector's box is a little tighter).
HELD_IOU = 0.5


def iou(a, b) -> float:
    inter = overlap_area(a, b)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def held(box, tracked) -> bool:
    """Whether a detected face ``box`` is held by one of the ``tracked`` boxes (:data:`HELD_IOU`)."""
    return any(iou(box, t) >= HELD_IOU for t in tracked)


# A detection confirms itself as a face (and is then held, growing, for ``hold_frames``
# after it was last seen) at this score or when the face mesh finds a face in its crop.
# On the speech clip every false detection (hands, a microphone, dark curtain, two of
# them seen four frames running) scored 0.60-0.76 and none passed the mesh, against
# 65 % of the real faces; held for 15 frames with growing margins, a one-frame false
# detection became a blurred box for half a second (issue 17).
CONFIRM_SCORE = 0.8
# A detection not (yet) confirmed is hidden while it is seen and this many frames after:
# a quarter tile comes round every four frames, so a small face only a tile sees stays
# covered between its sightings.
PENDING_FRAMES = 4
# A tile's detection cut by the tile's edge and lying this much inside a tracked face's
# box is part of that face (on the speech clip: the mouth and the microphone, eyes
# outside the box): the track protects it already.
PART_OF_TRACKED = 0.6
# A face walking into the picture through its left or right side is half out of it for a
# frame or two, and neither the face mesh nor the full-range detector finds half a face
# (torture set, `leave_reenter`: 55 % of a 133 px face in view, shown raw for a frame).
# Mirrored about the picture's edge, the half face is whole again: a strip of each side
# (this share of the frame's height wide, enough for half a face at webcam distance) is
# reflected outward and the two mirrored strips go to the short-range detector in one call.
# Only a detection the edge cuts through its middle (:data:`EDGE_STRADDLE`) is a half face;
# one wholly in view is the whole-frame call's, one wholly in the mirror a reflection of one.
EDGE_STRIP = 0.3
EDGE_STRADDLE = 0.15  # the edge lies this share of the box's width or more inside it, on both sides
# Mirrored backgrounds are symmetric by construction and look face-like to a detector:
# the speech clip's dark curtain and audience scored 0.50-0.61 at the edge, the half faces
# of the torture set 0.74-0.90, and on the speech clip no edge detection reached 0.7.
EDGE_SCORE = 0.7
# The sides are looked at on every other frame: a third detector call on every frame cost
# the 720p `process` 11 % against the revision before, in one run on 2 cores. A face walking
# in is found mirrored from about a fifth in view (`leave_reenter`: 20 %, 37 %, 55 % on
# three frames running) and an unconfirmed detection stays hidden PENDING_FRAMES frames
# after it was seen, so the frame between two looks is covered, and the whole-frame call
# finds the face itself from about three quarters in view.
EDGE_EVERY = 2


class SafetyNet:
    """A second, independent face detector over every frame, for failing closed on faces
    the face mesh does not hold: MediaPipe's full-range BlazeFace (shipped in the wheel),
    which finds faces several times smaller than the mesh's short-range detector
    (about 25 px wide in a 640 px frame). Each face it finds that no track holds (their
    boxes must agree, :func:`held`) is returned for hiding.

    A detection is *confirmed* when its score reaches :data:`CONFIRM_SCORE` or the face
    mesh finds a face in its crop; a confirmed face stays hidden for ``hold_frames``
    frames after it was last seen (detectors flicker on small faces), its box growing
    meanwhile. An unconfirmed one is hidden while seen and :data:`PENDING_FRAMES` after,
    at its own size: a hand or a microphone the detector mistakes for a face for a frame
    costs the picture a few frames, not half a second of a growing blur. A tile's cut
    detection that is mostly part of a tracked face (:data:`PART_OF_TRACKED`) is that
    face's track's to protect; any other detection over a tracked face that the track
    does not hold is hidden together with the tracked face's box in that frame (the
    whole head rather than a part of a face).

    The detector sees a 192 px image, so on the whole frame it misses faces under ~40 px
    of a 640 px frame. Each frame therefore also looks at one quarter of the frame (2x2
    overlapping tiles in turn, at twice the resolution), finding faces down to ~20 px
    within four frames for the cost of one more detector call per frame. A face a tile's
    inner edge cuts is never confirmed by its score alone (its box is a part of a face).
    And every other frame its left and right sides are looked at mirrored (:data:`EDGE_STRIP`),
    for a face half in the picture; such a face is reported as cut too (never confirmed by
    its score alone, left to a track that mostly covers it).
    """

    def __init__(self, min_confidence: float = 0.4, hold_frames: int = 15, margin: float = 0.35,
                 growth_per_frame: float = 0.05):
        import mediapipe as mp

        # Two instances: the whole frame and this frame's tile are looked at side by side
        # (a MediaPipe graph releases the GIL but takes one image at a time). The
        # full-range model costs 6-13 ms a call on this project's 2-core machines, as much
        # as the face mesh beside it, so one after the other they were the track stage's
        # slowest path.
        self._detector, self._tile_detector = (
            mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=min_confidence)
            for _ in range(2))
        # the short-range model: a mirrored half face at the edge is large in its strip
        self._edge_detector = mp.solutions.face_detection.FaceDetection(
            model_selection=0, min_detection_confidence=min_confidence)
        self._beside = ThreadPoolExecutor(max_workers=2, thread_name_prefix="safety-net-beside")
        # Verification of unconfirmed detections: the mesh's own (short-range) detector
        # and landmarks on the detection's crop, where even a small face is large.
        self._verifier = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=1, min_detection_confidence=0.5)
        self.hold_frames, self.margin, self.growth = hold_frames, margin, growth_per_frame
        # [x0, y0, x1, y1, frames since last seen, confirmed]
        self._held: list[list] = []
        self._looks = 0  # frames looked at: picks the tile; the sides on every EDGE_EVERY-th, from the first
        self.last_detections: list[tuple[float, float, float, float]] = []  # every face of the last frame

    def close(self) -> None:
        self._beside.shutdown(wait=True)
        self._detector.close()
        self._tile_detector.close()
        self._edge_detector.close()
        self._verifier.close()

    def detect_scored(self, rgb: np.ndarray, frame_hw: tuple[int, int]) -> list[tuple[tuple, float, bool]]:
        """``(box, score, cut)`` of every face found: box (x0, y0, x1, y1) in full-frame
        pixels, the detector's score, and whether it is a cut face (its box touches an
        inner edge of this frame's tile, or the picture's side cuts it). The whole frame,
        this frame's tile (the next of the 2x2 overlapping quarters) and the picture's two
        sides mirrored (:meth:`_half_faces_at_edges`)."""
        h, w = frame_hw
        rh, rw = rgb.shape[:2]
        look, self._looks = self._looks, self._looks + 1
        col, row = look % 2, look % 4 // 2
        tw, th = int(rw * 0.6), int(rh * 0.6)  # quarters with 20 % overlap
        tx, ty = col * (rw - tw), row * (rh - th)
        tile = self._beside.submit(self._tile_detector.process, np.ascontiguousarray(rgb[ty:ty + th, tx:tx + tw]))
        edges = (self._beside.submit(self._half_faces_at_edges, rgb, frame_hw)
                 if look % EDGE_EVERY == 0 else None)
        whole = self._detector.process(rgb)
        found = []
        for result, (ox, oy, sw, sh) in ((whole, (0, 0, rw, rh)), (tile.result(), (tx, ty, tw, th))):
            for det in result.detections or []:
                b = det.location_data.relative_bounding_box
                # inner edges only: a tile's side on the frame's border cuts nothing
                cut = ((ox > 0 and b.xmin <= 0.01) or (ox + sw < rw and b.xmin + b.width >= 0.99)
                       or (oy > 0 and b.ymin <= 0.01) or (oy + sh < rh and b.ymin + b.height >= 0.99))
                x0, y0 = (ox + b.xmin * sw) * w / rw, (oy + b.ymin * sh) * h / rh
                box = (x0, y0, x0 + b.width * sw * w / rw, y0 + b.height * sh * h / rh)
                found.append((box, float(det.score[0]), cut))
        return found + (edges.result() if edges is not None else [])

    def _half_faces_at_edges(self, rgb: np.ndarray, frame_hw: tuple[int, int]) -> list[tuple[tuple, float, bool]]:
        """``(box, score, True)`` of each face the picture's left or right edge cuts through
        its middle, found on the two sides mirrored outward (:data:`EDGE_STRIP`); boxes in
        full-frame pixels, clipped to the frame."""
        h, w = frame_hw
        rh, rw = rgb.shape[:2]
        s = max(8, min(round(EDGE_STRIP * rh), rw // 2))
        mirrored = np.concatenate([cv2.copyMakeBorder(rgb[:, :s], 0, 0, s, 0, cv2.BORDER_REFLECT),
                                   cv2.copyMakeBorder(rgb[:, rw - s:], 0, 0, 0, s, cv2.BORDER_REFLECT)], axis=1)
        out = []
        for det in self._edge_detector.process(mirrored).detections or []:
            score = float(det.score[0])
            b = det.location_data.relative_bounding_box
            x0, x1 = b.xmin * 4 * s, (b.xmin + b.width) * 4 * s
            left = (x0 + x1) / 2 < 2 * s
            seam = s if left else 3 * s  # where the picture's edge lies in the mirrored pair
            if score < EDGE_SCORE or not (x0 + EDGE_STRADDLE * (x1 - x0) <= seam <= x1 - EDGE_STRADDLE * (x1 - x0)):
                continue
            shift = -s if left else rw - 3 * s  # mirrored-pair x to detection-copy x
            fx0, fx1 = max(0.0, x0 + shift), min(float(rw), x1 + shift)
            fy0, fy1 = max(0.0, b.ymin * rh), min(float(rh), (b.ymin + b.height) * rh)
            out.append(((fx0 * w / rw, fy0 * h / rh, fx1 * w / rw, fy1 * h / rh), score, True))
        return out

    def _mesh_sees_face(self, rgb: np.ndarray, box, frame_hw) -> bool:
        """Whether the face mesh finds a face in ``box`` (frame pixels) with a margin,
        enlarged to 256 px wide."""
        h, w = frame_hw
        sy, sx = rgb.shape[0] / h, rgb.shape[1] / w
        m = 0.5 * max(box[2] - box[0], box[3] - box[1])
        x0, y0 = int(max(0, (box[0] - m) * sx)), int(max(0, (box[1] - m) * sy))
        x1, y1 = int(min(rgb.shape[1], (box[2] + m) * sx)), int(min(rgb.shape[0], (box[3] + m) * sy))
        if x1 - x0 < 4 or y1 - y0 < 4:
            return False
        crop = rgb[y0:y1, x0:x1]
        scale = 256 / crop.shape[1]
        crop = cv2.resize(crop, (256, max(4, round(crop.shape[0] * scale))), interpolation=cv2.INTER_LINEAR)
        return bool(self._verifier.process(np.ascontiguousarray(crop)).multi_face_landmarks)

    def update(self, rgb: np.ndarray, frame_hw: tuple[int, int],
               tracked: list[tuple[int, int, int, int]],
               found: list[tuple[tuple, float, bool]] | None = None) -> list[tuple[int, int, int, int]]:
        """Boxes to hide in this frame: the faces found in ``rgb`` (the tracker's detection
        copy of a ``frame_hw`` frame) that none of the ``tracked`` boxes holds (:func:`held`),
        plus those seen recently (confirmed: within ``hold_frames``; unconfirmed: within
        :data:`PENDING_FRAMES`), with their margins. ``found``: this frame's
        :meth:`detect_scored`, when it already ran (beside the face mesh, on another thread)."""

        def held_by_track(box) -> bool:
            return held(box, tracked)

        if found is None:
            found = self.detect_scored(rgb, frame_hw)
        self.last_detections = [box for box, _, _ in found]
        for entry in self._held:
            entry[4] += 1
        heads = []
        for b, score, cut in found:
            if held_by_track(b):
                continue
            area = max(1e-6, (b[2] - b[0]) * (b[3] - b[1]))
            share, face = max(((overlap_area(b, t) / area, t) for t in tracked), default=(0.0, None),
                              key=lambda st: st[0])
            if share >= PART_OF_TRACKED and cut:
                continue
            if share > 0:
                # over a tracked face that does not hold it (the mesh trailing a fast turn,
                # a face beside or behind the tracked one): hide the whole
                # head, never a part of a face, for this frame; the next frame looks again
                heads.append((min(b[0], face[0]), min(b[1], face[1]), max(b[2], face[2]), max(b[3], face[3])))
                continue
            cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
            same = [e for e in self._held if e[0] <= cx <= e[2] and e[1] <= cy <= e[3]]
            confirmed = (bool(same) and same[0][5]) or (score >= CONFIRM_SCORE and not cut)
            if not confirmed:
                confirmed = self._mesh_sees_face(rgb, b, frame_hw)
            if same:
                same[0][:] = [*b, 0, confirmed]
            else:
                self._held.append([*b, 0, confirmed])
        # A face the mesh has taken over is the track's to protect now; so is a face not seen
        # this frame whose region now lies inside a tracked face (a person stepping back
        # towards the camera: the small face of a moment ago is the big protected one now).
        self._held = [e for e in self._held
                      if e[4] <= (self.hold_frames if e[5] else PENDING_FRAMES) and not held_by_track(e)
                      and not (e[4] > 0 and inside_any(e[:4], tracked))]
        h, w = frame_hw
        out = []
        # a whole head (detection and tracked box together) needs no margin of its own
        for x0, y0, x1, y1, misses, confirmed in self._held:
            grow = self.growth * misses if confirmed else 0.0
            m = (self.margin + grow) * max(x1 - x0, y1 - y0, 8)
            out.append((max(0, int(x0 - m)), max(0, int(y0 - m)), min(w, int(np.ceil(x1 + m))), min(h, int(np.ceil(y1 + m)))))
        out += [(max(0, int(x0)), max(0, int(y0)), min(w, int(np.ceil(x1))), min(h, int(np.ceil(y1))))
                for x0, y0, x1, y1 in heads]
        return [b for b in out if b[2] > b[0] and b[3] > b[1]]
