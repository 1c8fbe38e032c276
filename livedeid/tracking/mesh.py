"""Face tracking: MediaPipe face mesh -> smoothed landmarks -> aligned-crop transforms.

The tracker owns identity over time (which face is which), temporal smoothing
(One-Euro filter, so slow motion is steady and fast motion is not lagged), and the
similarity transform from the frame to the model's aligned crop plus its exact inverse.
Faces that stop being detected are kept as *lost* tracks (``lost_frames > 0``) so the
composite stage can keep their last region hidden: privacy fails closed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from livedeid.core.geometry import crop_template, five_points, similarity_fit
from livedeid.core.records import FaceTrack

N_LANDMARKS = 478


class OneEuroFilter:
    """Casiez et al.'s One-Euro filter on an array signal (speed-adaptive low-pass).

    ``min_cutoff`` (Hz) sets the jitter removal at rest, ``beta`` how fast the cutoff
    rises with speed. Speeds are measured in units of ``scale`` per second so that one
    setting works for faces of any size.
    """

    def __init__(self, min_cutoff: float = 1.5, beta: float = 3.0, d_cutoff: float = 1.0):
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t: float | None = None

    @staticmethod
    def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
        tau = 1.0 / (2.0 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def __call__(self, x: np.ndarray, t: float, scale: float = 1.0) -> np.ndarray:
        if self._x is None or self._t is None or t <= self._t:
            self._x, self._dx, self._t = x.copy(), np.zeros_like(x), t
            return x
        dt = t - self._t
        dx = (x - self._x) / dt / max(scale, 1e-6)
        a_d = self._alpha(self.d_cutoff, dt)
        self._dx = a_d * dx + (1 - a_d) * self._dx
        speed = np.linalg.norm(self._dx, axis=-1, keepdims=True)
        a = self._alpha(self.min_cutoff + self.beta * speed, dt)
        self._x = a * x + (1 - a) * self._x
        self._t = t
        return self._x


def alignment(landmarks: np.ndarray, crop_size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(to_crop, from_crop, fit_error) for one face.

    ``fit_error`` is the RMS distance between the face's five points mapped into the crop
    and the template, relative to the template's inter-ocular distance: small for a
    frontal face, large for profiles or implausible landmarks.
    """
    template = crop_template(crop_size)
    pts = five_points(landmarks)
    try:
        to_crop = similarity_fit(pts, template)
    except ValueError:  # degenerate points (all equal): identity keeps things defined
        to_crop = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    from_crop = cv2.invertAffineTransform(to_crop)
    mapped = pts @ to_crop[:, :2].T + to_crop[:, 2]
    iod = float(np.linalg.norm(template[1] - template[0]))
    fit_error = float(np.sqrt(((mapped - template) ** 2).sum(axis=1).mean()) / iod)
    return to_crop, from_crop, fit_error


@dataclass
class _Track:
    track_id: int
    smoother: OneEuroFilter
    landmarks: np.ndarray
    confidence: float
    lost_frames: int = 0


class FaceTracker:
    """MediaPipe face mesh (refined, 478 landmarks) over a video, with stable track ids.

    ``update(image_bgr, timestamp)`` returns one :class:`FaceTrack` per tracked face,
    including lost ones (``lost_frames > 0``, landmarks frozen at the last sighting).
    A lost track is only dropped when a new detection takes it over or after
    ``forget_after_s`` seconds (default: never) — until then its region stays hidden.
    """

    def __init__(
        self,
        max_faces: int = 4,
        crop_size: int = 128,
        detect_long_side: int = 640,
        min_detection_confidence: float = 0.5,
        min_tracking_confidence: float = 0.5,
        smoothing: bool = True,
        forget_after_s: float = math.inf,
        static_images: bool = False,
        safety_net: bool = True,
    ):
        import mediapipe as mp  # heavy import, only when a tracker is built

        self.crop_size = crop_size
        self.detect_long_side = detect_long_side
        self.smoothing = smoothing
        self.forget_after_s = forget_after_s
        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=static_images,
            max_num_faces=max_faces,
            refine_landmarks=True,
            min_detection_confidence=min_detection_confidence,
            min_tracking_confidence=min_tracking_confidence,
        )
        self.safety_net = SafetyNet() if safety_net else None
        self.unheld_boxes: list[tuple[int, int, int, int]] = []
        self.face_seen = False
        self._tracks: list[_Track] = []
        self._lost_since: dict[int, float] = {}
        self._next_id = 0
        self._last_t: float | None = None

    def close(self) -> None:
        self._mesh.close()
        if self.safety_net is not None:
            self.safety_net.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _detection_rgb(self, image_bgr: np.ndarray) -> np.ndarray:
        """The read-only RGB copy, at most ``detect_long_side`` px, that detectors see."""
        h, w = image_bgr.shape[:2]
        scale = min(1.0, self.detect_long_side / max(h, w))
        small = image_bgr if scale == 1.0 else cv2.resize(
            image_bgr, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA
        )
        rgb = cv2.cvtColor(small, cv2.COLOR_BGR2RGB)
        rgb.flags.writeable = False
        return rgb

    def detect(self, image_bgr: np.ndarray, rgb: np.ndarray | None = None) -> list[np.ndarray]:
        """Raw MediaPipe landmarks (478, 2) in full-frame pixels for each detected face."""
        h, w = image_bgr.shape[:2]
        result = self._mesh.process(self._detection_rgb(image_bgr) if rgb is None else rgb)
        faces = []
        for face in result.multi_face_landmarks or []:
            pts = np.array([(p.x, p.y) for p in face.landmark], dtype=np.float32)
            faces.append(pts * np.array([w, h], dtype=np.float32))
        return faces

    def update(self, image_bgr: np.ndarray, timestamp: float) -> list[FaceTrack]:
        """Track faces in one frame. Afterwards ``unheld_boxes`` lists the faces the safety
        net sees that no track holds, and ``face_seen`` says whether any face has been
        found since the tracker started."""
        if self._last_t is not None and timestamp <= self._last_t:
            timestamp = self._last_t + 1e-3  # keep time strictly increasing for the filter
        self._last_t = timestamp
        rgb = self._detection_rgb(image_bgr)
        detections = self.detect(image_bgr, rgb)
        self._associate(detections, timestamp)
        faces = [self._to_face_track(t) for t in self._tracks]
        if self.safety_net is not None:
            self.unheld_boxes = self.safety_net.update(rgb, image_bgr.shape[:2], [f.bbox() for f in faces])
        self.face_seen = self.face_seen or bool(faces) or bool(self.unheld_boxes)
        return faces

    # -- internals -------------------------------------------------------------------
    @staticmethod
    def _size(lm: np.ndarray) -> float:
        return float(np.linalg.norm(lm.max(axis=0) - lm.min(axis=0))) + 1e-6

    def _associate(self, detections: list[np.ndarray], t: float) -> None:
        tracks = self._tracks
        matched_tracks: set[int] = set()
        matched_dets: set[int] = set()
        if tracks and detections:
            cost = np.zeros((len(tracks), len(detections)))
            for i, tr in enumerate(tracks):
                c_t = tr.landmarks.mean(axis=0)
                for j, det in enumerate(detections):
                    cost[i, j] = np.linalg.norm(det.mean(axis=0) - c_t) / self._size(tr.landmarks)
            rows, cols = linear_sum_assignment(cost)
            for i, j in zip(rows, cols):
                # Active tracks only take a detection that is nearby; a lost track takes
                # any leftover detection, so a returning face recovers its id instead of
                # leaving a stale hidden region behind.
                if tracks[i].lost_frames == 0 and cost[i, j] > 1.0:
                    continue
                self._refresh(tracks[i], detections[j], t)
                matched_tracks.add(i)
                matched_dets.add(j)
        for i, tr in enumerate(tracks):
            if i not in matched_tracks:
                if tr.lost_frames == 0:
                    self._lost_since[tr.track_id] = t
                tr.lost_frames += 1
        for j, det in enumerate(detections):
            if j not in matched_dets:
                tr = _Track(self._next_id, OneEuroFilter(), det, 0.0)
                self._next_id += 1
                self._refresh(tr, det, t)
                tracks.append(tr)
        self._tracks = [
            tr for tr in tracks
            if tr.lost_frames == 0 or t - self._lost_since.get(tr.track_id, t) <= self.forget_after_s
        ]

    def _refresh(self, tr: _Track, det: np.ndarray, t: float) -> None:
        if tr.lost_frames > 0:
            tr.smoother = OneEuroFilter()  # a recovered face may be anywhere: no lag
            self._lost_since.pop(tr.track_id, None)
        tr.landmarks = tr.smoother(det, t, self._size(det)) if self.smoothing else det
        tr.lost_frames = 0

    def _to_face_track(self, tr: _Track) -> FaceTrack:
        to_crop, from_crop, fit_error = alignment(tr.landmarks, self.crop_size)
        # Confidence from geometric plausibility: frontal faces fit the template with an
        # error of ~0.05-0.15 inter-ocular distances; profiles and broken meshes go far
        # beyond. Lost tracks have no fresh evidence at all.
        confidence = 0.0 if tr.lost_frames else float(np.clip(1.0 - (fit_error - 0.15) / 0.35, 0.0, 1.0))
        tr.confidence = confidence
        return FaceTrack(
            track_id=tr.track_id,
            landmarks=tr.landmarks.astype(np.float32),
            to_crop=to_crop,
            from_crop=from_crop,
            confidence=confidence,
            lost_frames=tr.lost_frames,
        )


class SafetyNet:
    """A second, independent face detector over every frame, for failing closed on faces
    the face mesh does not hold: MediaPipe's full-range BlazeFace (shipped in the wheel),
    which finds faces several times smaller than the mesh's short-range detector
    (about 25 px wide in a 640 px frame). Each face it finds whose centre lies in no
    track's box is returned for hiding, and stays hidden for ``hold_frames`` frames after
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
        def held_by_track(box) -> bool:
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            return any(t[0] <= cx <= t[2] and t[1] <= cy <= t[3] for t in tracked)

        fresh = [b for b in self.detect(rgb, frame_hw) if not held_by_track(b)]
        for entry in self._held:
            entry[4] += 1
        for b in fresh:
            cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
            same = [e for e in self._held if e[0] <= cx <= e[2] and e[1] <= cy <= e[3]]
            if same:
                same[0][:] = [*b, 0]
            else:
                self._held.append([*b, 0])
        # A face the mesh has taken over is the track's to protect now.
        self._held = [e for e in self._held if e[4] <= self.hold_frames and not held_by_track(e)]
        h, w = frame_hw
        out = []
        for x0, y0, x1, y1, misses in self._held:
            m = (self.margin + self.growth * misses) * max(x1 - x0, y1 - y0, 8)
            box = (max(0, int(x0 - m)), max(0, int(y0 - m)), min(w, int(np.ceil(x1 + m))), min(h, int(np.ceil(y1 + m))))
            if box[2] > box[0] and box[3] > box[1]:
                out.append(box)
        return out
