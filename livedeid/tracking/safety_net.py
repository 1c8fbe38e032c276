"""The safety net: a second, independent face detector, for failing closed on faces the
face mesh does not hold (too small, too far, not yet tracked)."""
from __future__ import annotations

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


class SafetyNet:
    """A second, independent face detector over every frame, for failing closed on faces
    the face mesh does not hold: MediaPipe's full-range BlazeFace (shipped in the wheel),
    which finds faces several times smaller than the mesh's short-range detector
    (about 25 px wide in a 640 px frame). Each face it finds that no track holds (their
    boxes must agree, :func:`held`) is returned for hiding, and stays hidden for ``hold_frames`` frames after
    it was last seen (detectors flicker on small faces), its box growing meanwhile.

    The detector sees a 192 px image, so on the whole frame it misses faces under ~40 px
    of a 640 px frame. Each frame therefore also looks at one quarter of the frame (2x2
    overlapping tiles in turn, at twice the resolution), finding faces down to ~20 px
    within four frames for the cost of one more detector call per frame.
    """

    def __init__(self, min_confidence: float = 0.4, hold_frames: int = 15, margin: float = 0.35,
                 growth_per_frame: float = 0.05):
        import mediapipe as mp

        self._detector = mp.solutions.face_detection.FaceDetection(
            model_selection=1, min_detection_confidence=min_confidence)
        self.hold_frames, self.margin, self.growth = hold_frames, margin, growth_per_frame
        self._held: list[list] = []  # [x0, y0, x1, y1, frames since last seen]
        self._tile = 0
        self.last_detections: list[tuple[float, float, float, float]] = []  # every face of the last frame

    def close(self) -> None:
        self._detector.close()

    def detect(self, rgb: np.ndarray, frame_hw: tuple[int, int]) -> list[tuple[float, float, float, float]]:
        """Face boxes (x0, y0, x1, y1) in full-frame pixels: the whole frame plus this
        frame's tile (the next of the 2x2 overlapping quarters)."""
        h, w = frame_hw
        rh, rw = rgb.shape[:2]
        col, row = self._tile % 2, self._tile // 2
        self._tile = (self._tile + 1) % 4
        tw, th = int(rw * 0.6), int(rh * 0.6)  # quarters with 20 % overlap
        tx, ty = col * (rw - tw), row * (rh - th)
        boxes = []
        for image, (ox, oy, sw, sh) in ((rgb, (0, 0, rw, rh)), (rgb[ty:ty + th, tx:tx + tw], (tx, ty, tw, th))):
            for det in self._detector.process(np.ascontiguousarray(image)).detections or []:
                b = det.location_data.relative_bounding_box
                x0, y0 = (ox + b.xmin * sw) * w / rw, (oy + b.ymin * sh) * h / rh
                boxes.append((x0, y0, x0 + b.width * sw * w / rw, y0 + b.height * sh * h / rh))
        return boxes

    def update(self, rgb: np.ndarray, frame_hw: tuple[int, int],
               tracked: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
        """Boxes to hide in this frame: the faces found in ``rgb`` (the tracker's detection
        copy of a ``frame_hw`` frame) that none of the ``tracked`` boxes holds (:func:`held`),
        plus those seen within the last ``hold_frames`` frames, with their margins."""

        def held_by_track(box) -> bool:
            return held(box, tracked)

        self.last_detections = self.detect(rgb, frame_hw)
        fresh = [b for b in self.last_detections if not held_by_track(b)]
        for entry in self._held:
            entry[4] += 1
        for b in fresh:
            cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
            same = [e for e in self._held if e[0] <= cx <= e[2] and e[1] <= cy <= e[3]]
            if same:
                same[0][:] = [*b, 0]
            else:
                self._held.append([*b, 0])
        # A face the mesh has taken over is the track's to protect now; so is a face not seen
        # this frame whose region now lies inside a tracked face (a person stepping back
        # towards the camera: the small face of a moment ago is the big protected one now).
        self._held = [e for e in self._held if e[4] <= self.hold_frames and not held_by_track(e)
                      and not (e[4] > 0 and inside_any(e[:4], tracked))]
        h, w = frame_hw
        out = []
        for x0, y0, x1, y1, misses in self._held:
            m = (self.margin + self.growth * misses) * max(x1 - x0, y1 - y0, 8)
            box = (max(0, int(x0 - m)), max(0, int(y0 - m)), min(w, int(np.ceil(x1 + m))), min(h, int(np.ceil(y1 + m))))
            if box[2] > box[0] and box[3] > box[1]:
                out.append(box)
        return out
