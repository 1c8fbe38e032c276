"""Face tracking: MediaPipe face mesh -> smoothed landmarks -> aligned-crop transforms.

The tracker owns identity over time (which face is which), temporal smoothing
(One-Euro filter, so slow motion is steady and fast motion is not lagged), and the
similarity transform from the frame to the model's aligned crop plus its exact inverse.
Faces that stop being detected are kept as *lost* tracks (``lost_frames > 0``) so the
composite stage can keep their last region hidden: privacy fails closed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from livedeid.core.geometry import apply_affine, crop_template, five_points, similarity_fit
from livedeid.core.records import FaceTrack

N_LANDMARKS = 478
# The most the smoothed landmarks may trail the detected ones (mean distance over the
# landmarks, as a fraction of the face's box diagonal). Steady faces trail by under 1 %;
# fast head motion by a few; a cut to another face by 15 % or more.
MAX_SMOOTHING_LAG = 0.06
# While MediaPipe's face-mesh graph follows fewer faces than it may, it runs its face
# detector on every frame to look for more: 5 of its 12 ms a 720p frame here, for one
# face at a webcam. So a second graph that may follow only one face follows the lone
# face, and the full graph takes over whenever there may be another one: when the caller
# says so (the safety net's detector saw a face no track holds), when no face or several
# are followed, and when the mesh's own detector, asked on one frame in SPOT_EVERY, finds
# a face away from the followed one. Once looking, the full graph keeps looking for
# SEARCH_HOLD frames, so a second face that flickers does not switch graphs back and
# forth (each switch starts a graph afresh: about 5 ms and one detection).
SPOT_EVERY = 10
SEARCH_HOLD = 30


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


def aligned_landmarks(landmarks: np.ndarray, crop_size: int) -> np.ndarray:
    """float32: the face's landmarks in the pixels of its own aligned crop (a cloak's face
    layout is the mean of these)."""
    return apply_affine(alignment(landmarks, crop_size)[0], landmarks).astype(np.float32)


def largest_face(faces: list[FaceTrack]) -> FaceTrack:
    """The face whose landmarks span the largest box (the primary person)."""
    return max(faces, key=lambda f: np.ptp(f.landmarks[:, 0]) * np.ptp(f.landmarks[:, 1]))


@dataclass
class _Track:
    track_id: int
    smoother: OneEuroFilter
    landmarks: np.ndarray
    confidence: float
    lost_frames: int = 0
    seen_at: float | None = None  # timestamp of the last detection
    centre: np.ndarray | None = None  # the last detection's landmark centre (px)
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2, np.float32))  # px/s, smoothed


class FaceTracker:
    """MediaPipe face mesh (refined, 478 landmarks) over a video, with stable track ids.

    ``update(image_bgr, timestamp)`` returns one :class:`FaceTrack` per tracked face,
    including lost ones (``lost_frames > 0``, landmarks frozen at the last sighting).
    A lost track is only dropped when a new detection takes it over, when the caller
    releases it (:meth:`release`, by the rule of :mod:`livedeid.tracking.release`) or after
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
    ):
        import mediapipe as mp  # heavy import, only when a tracker is built

        self.crop_size = crop_size
        self.detect_long_side = detect_long_side
        self.smoothing = smoothing
        self.forget_after_s = forget_after_s

        def graph(faces: int):
            return mp.solutions.face_mesh.FaceMesh(
                static_image_mode=static_images,
                max_num_faces=faces,
                refine_landmarks=True,
                min_detection_confidence=min_detection_confidence,
                min_tracking_confidence=min_tracking_confidence,
            )

        self._graph_of = graph
        self._mesh = graph(max_faces)
        # the lone face's graph and the detector that asks now and then whether it is alone
        # (SPOT_EVERY), made when a caller first says nobody else is in view; still images
        # have no frame before them to follow a face from
        self._may_follow_one = max_faces > 1 and not static_images
        self._spot_confidence = min_detection_confidence
        self._one = self._spotter = None
        self._following_one = False
        self._frame = 0
        self._search_until = 0
        self.graph_switches = 0  # for profiles: how often the lone face's graph was left or taken
        self._tracks: list[_Track] = []
        self._lost_since: dict[int, float] = {}
        self._next_id = 0
        self._last_t: float | None = None

    def close(self) -> None:
        self._mesh.close()
        if self._one is not None:
            self._one.close()
            self._spotter.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def detection_rgb(self, image_bgr: np.ndarray) -> np.ndarray:
        """The read-only RGB copy, at most ``detect_long_side`` px, that detectors see
        (pass it on to ``update`` and to other detectors so it is made once per frame)."""
        h, w = image_bgr.shape[:2]
        scale = min(1.0, self.detect_long_side / max(h, w))
        small = image_bgr if scale == 1.0 else cv2.resize(
            image_bgr, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA
        )
        rgb = cv2.cvtColor(small, cv2.COLOR_BGR2RGB)
        rgb.flags.writeable = False
        return rgb

    def detect(self, image_bgr: np.ndarray, rgb: np.ndarray | None = None, search: bool = True) -> list[np.ndarray]:
        """Raw MediaPipe landmarks (478, 2) in full-frame pixels for each detected face
        (``search``: see :meth:`update`)."""
        h, w = image_bgr.shape[:2]
        rgb = self.detection_rgb(image_bgr) if rgb is None else rgb
        graph = self._graph(rgb, (h, w), search)
        result = graph.process(rgb)
        if graph is self._one and not result.multi_face_landmarks:
            # the lone face left its graph's tracking (a jump, a cut, a fast turn), and that
            # graph detects only on the next frame: the full one looks on this frame
            result = self._take_full_graph().process(rgb)
        faces = []
        for face in result.multi_face_landmarks or []:
            pts = np.array([(p.x, p.y) for p in face.landmark], dtype=np.float32)
            faces.append(pts * np.array([w, h], dtype=np.float32))
        return faces

    def update(self, image_bgr: np.ndarray, timestamp: float, rgb: np.ndarray | None = None,
               search: bool = True) -> list[FaceTrack]:
        """Track faces in one frame (``rgb``: its :meth:`detection_rgb`, when already made).

        ``search=False`` is the caller's word that its own detector found no face the
        tracks do not hold (on the frame before): a lone face is then followed without
        running the mesh's face detector on every frame (:data:`SPOT_EVERY`)."""
        if self._last_t is not None and timestamp <= self._last_t:
            timestamp = self._last_t + 1e-3  # keep time strictly increasing for the filter
        self._last_t = timestamp
        self._associate(self.detect(image_bgr, rgb, search), timestamp)
        return [self._to_face_track(t) for t in self._tracks]

    def _graph(self, rgb: np.ndarray, frame_hw: tuple[int, int], search: bool):
        """The graph for this frame: the lone face's while exactly one face is tracked (and
        not lost) and nobody has seen another for :data:`SEARCH_HOLD` frames, else the full
        one."""
        if not self._may_follow_one:
            return self._mesh
        self._frame += 1
        # one track in all: a lost one is a face that may come back anywhere, which only the
        # full graph would find (the safety net sees it held by its track's box)
        alone = len(self._tracks) == 1 and self._tracks[0].lost_frames == 0
        # the full graph's own detector looks on every frame; the lone face's is asked here
        if not search and alone and self._following_one and self._frame % SPOT_EVERY == 0:
            search = self._spots_another(rgb, frame_hw, self._tracks[0].landmarks)
        if search:
            self._search_until = self._frame + SEARCH_HOLD
        one = alone and self._frame > self._search_until
        if one and self._one is None:
            import mediapipe as mp

            self._one = self._graph_of(1)
            self._spotter = mp.solutions.face_detection.FaceDetection(
                model_selection=0, min_detection_confidence=self._spot_confidence)
        if one and not self._following_one:
            self._one.reset()  # it last ran frames ago: afresh, so it detects
            self._following_one = True
            self.graph_switches += 1
        return self._one if one else self._take_full_graph()

    def _take_full_graph(self):
        """The full graph, started afresh when the lone face's graph had the frames before
        (its own last frames are stale), looking for everyone for :data:`SEARCH_HOLD` frames."""
        if self._following_one:
            self._mesh.reset()
            self._following_one = False
            self._search_until = self._frame + SEARCH_HOLD
            self.graph_switches += 1
        return self._mesh

    def _spots_another(self, rgb: np.ndarray, frame_hw: tuple[int, int], followed: np.ndarray) -> bool:
        """Whether the mesh's own detector finds a face in ``rgb`` (the detection copy of a
        ``frame_hw`` frame) whose centre lies outside the box of the ``followed`` face's
        landmarks (frame pixels): the same face's box holds its centre however the two
        boxes' edges differ."""
        h, w = frame_hw
        (x0, y0), (x1, y1) = followed.min(axis=0), followed.max(axis=0)
        for det in self._spotter.process(rgb).detections or []:
            b = det.location_data.relative_bounding_box
            cx, cy = (b.xmin + b.width / 2) * w, (b.ymin + b.height / 2) * h
            if not (x0 <= cx <= x1 and y0 <= cy <= y1):
                return True
        return False

    def clear(self) -> None:
        """Forget every track, lost ones included (nobody is held hidden any more)."""
        self._tracks.clear()
        self._lost_since.clear()

    def release(self, track_ids: list[int]) -> None:
        """Forget these lost tracks (see :mod:`livedeid.tracking.release`); live ones stay."""
        drop = set(track_ids)
        self._tracks = [tr for tr in self._tracks if tr.lost_frames == 0 or tr.track_id not in drop]
        for k in drop:
            self._lost_since.pop(k, None)

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
        centre = det.mean(axis=0)
        if tr.lost_frames > 0 or tr.centre is None or t <= tr.seen_at:
            tr.velocity = np.zeros(2, np.float32)  # a recovered face: no motion known yet
        else:
            # smoothed over about two frames: a walk, not the mesh's jitter
            tr.velocity = 0.5 * tr.velocity + 0.5 * (centre - tr.centre) / (t - tr.seen_at)
        tr.centre, tr.seen_at = centre, t
        if tr.lost_frames > 0:
            tr.smoother = OneEuroFilter()  # a recovered face may be anywhere: no lag
            self._lost_since.pop(tr.track_id, None)
        if self.smoothing:
            smoothed = tr.smoother(det, t, self._size(det))
            lag = float(np.linalg.norm(smoothed - det, axis=1).mean()) / self._size(det)
            if lag > MAX_SMOOTHING_LAG:
                # A jump (a cut, a camera switch, another person taking the seat): the
                # filter would drag the protection behind the face for frames. Start over.
                tr.smoother = OneEuroFilter()
                smoothed = tr.smoother(det, t, self._size(det))
            tr.landmarks = smoothed
        else:
            tr.landmarks = det
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
            velocity=(float(tr.velocity[0]), float(tr.velocity[1])),
            lost_s=max(0.0, self._last_t - tr.seen_at) if tr.lost_frames and tr.seen_at is not None else 0.0,
        )
