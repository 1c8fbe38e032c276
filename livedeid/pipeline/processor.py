"""The frame processor: one frame in, one composited frame out.

Stages: track (face mesh plus the safety-net detector) -> window (aligned crops into each
face's ring buffer) -> engine -> composite (residual under the face oval, then the
fail-closed hiding) -> rppg (heart rate on the output). :class:`FrameProcessor` runs
them on the CPU and is what tests drive directly; :mod:`livedeid.pipeline.device` runs the
middle stages on a torch device and reuses everything else from here.

Personal cloak: with a profile (``PipelineConfig.profile``, see :mod:`livedeid.io.profile`)
the enrolled person's face gets their cloak (:func:`livedeid.protect.cloak.cloak_face`)
instead of the engine; other trusted faces still get the engine. The enrolled person is
taken to be the largest face in the picture (the webcam user sits nearest the camera);
when that face is hidden or lost, nobody wears the cloak in that frame, so a smaller
face behind the user never inherits it.

Fail-closed policy (:mod:`livedeid.protect.fail_closed`): a face that is lost or whose
landmarks are implausible is hidden (``blur``/``mask``) or the last fully protected frame
is repeated (``hold``); if the engine fails it falls back to ONNX Runtime on the CPU, and
if that fails too every face is hidden. Raw face pixels never reach a sink while
protection is on.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from livedeid.core.errors import UserError
from livedeid.core.records import FaceTrack, Frame
from livedeid.core.settings import PipelineConfig
from livedeid.inference.engines import Engine
from livedeid.inference.manifest import ModelSpec, load_spec, model_warning
from livedeid.inference.registry import create_engine, fallback_engine
from livedeid.io.profile import Profile, check_pattern, resolve_profile
from livedeid.pipeline.stats import STAGES
from livedeid.protect.cloak import cloak_face
from livedeid.protect.composite import apply_protection, draw_hr_overlay
from livedeid.protect.fail_closed import FailClosed, hidden_box, split_faces
from livedeid.protect.residuals import ResidualCache
from livedeid.protect.windows import FaceWindows
from livedeid.rppg.regions import mean_skin_rgb
from livedeid.rppg.streaming import StreamingHR
from livedeid.tracking.mesh import FaceTracker, largest_face
from livedeid.tracking.release import CLEAR_FRAMES_MESH_ONLY, CLEAR_FRAMES_WITH_SAFETY_NET, LostFaceRelease
from livedeid.tracking.safety_net import SafetyNet

log = logging.getLogger(__name__)


def _at_edge(box, w: int, h: int, margin: int = 4) -> bool:
    """Whether a face box touches (or crosses) the picture's border."""
    return box[0] <= margin or box[1] <= margin or box[2] >= w - margin or box[3] >= h - margin


def _lap(frame: Frame, stage: str, t0: float) -> float:
    """Record ``stage`` as the time since ``t0``; returns now, the next stage's start."""
    t1 = time.perf_counter()
    frame.stage_ms[stage] = (t1 - t0) * 1000.0
    return t1


class FrameProcessor:
    """One frame in, one composited frame out. Owns the tracker, windows, engine and HR.

    ``process(frame)`` returns the frame finished. The pipeline calls ``submit(frame)``
    and, at the end, ``flush()``: here ``submit`` is ``process`` and ``flush`` has nothing
    left; the device processor keeps one frame in flight between them.
    """

    STAGES = STAGES

    def __init__(self, config: PipelineConfig | None = None, spec: ModelSpec | None = None,
                 engine: Engine | None = None):
        self.config = config or PipelineConfig()
        self.config.validate()
        self.spec = spec or load_spec(self.config.manifest)
        if engine is None:
            choice = create_engine(self.config.engine, self.spec, threads=self.config.engine_threads)
            engine, self.engine_reason, self.engine_skipped = choice.engine, choice.reason, choice.fallbacks
        else:
            self.engine_reason, self.engine_skipped = "given", []
        self.engine = engine
        self.profile: Profile | None = None
        # Who wears which cloak when it is not the one profile's largest face: a callable
        # (frame, face) -> Profile | None (`process --two-pass`: one cloak per person).
        self.assign_cloaks = None
        if self.config.profile is not None:
            self.profile = resolve_profile(self.config.profile)
            if self.profile.crop_size != self.spec.crop_size:
                raise UserError(f"profile '{self.profile.name}' was made for {self.profile.crop_size} px crops, "
                                f"the model uses {self.spec.crop_size} px; enrol again")
        self.cloak_warning = self.profile.warning() if self.profile is not None else None
        self.model_warning = model_warning(self.spec)
        self.warning = " | ".join(w for w in (self.cloak_warning, self.model_warning) if w) or None
        self.tracker = FaceTracker(max_faces=self.config.max_faces, crop_size=self.spec.crop_size,
                                   detect_long_side=self.config.detect_long_side)
        self.safety_net = SafetyNet() if self.config.safety_net else None
        self._beside_mesh = ThreadPoolExecutor(max_workers=1, thread_name_prefix="safety-net")
        self.release = LostFaceRelease(CLEAR_FRAMES_WITH_SAFETY_NET if self.safety_net is not None
                                       else CLEAR_FRAMES_MESH_ONLY)
        self.windows = FaceWindows(self.spec.window, self.spec.crop_size)
        self.residuals = ResidualCache(self.config.engine_every, self.config.engine_reuse_change)
        self.hr = StreamingHR(method=self.config.hr_method, window_s=self.config.hr_window_s)
        self.hiding = FailClosed(self.config)
        self.events: deque[str] = deque(maxlen=100)
        self._hr_track: int | None = None
        self._face_seen = False
        self._search = True  # whether the mesh must look for more faces (track stage)

    def close(self) -> None:
        self._beside_mesh.shutdown(wait=True)
        self.tracker.close()
        if self.safety_net is not None:
            self.safety_net.close()

    def process(self, frame: Frame) -> Frame:
        self.track(frame)
        trusted, hidden = self.sort_faces(frame)
        out, trusted, hidden = self.protect_on_host(frame, trusted, hidden)
        return self.finish(frame, out, trusted, hidden)

    def submit(self, frame: Frame) -> Frame | None:
        """The pipeline's entry: a finished frame, or None while it is still in flight."""
        return self.process(frame)

    def flush(self) -> Frame | None:
        """The frame still in flight after the last ``submit``, finished (None: none)."""
        return None

    # -- stages, shared with the device processor ---------------------------------------
    def track(self, frame: Frame) -> None:
        """The track stage: faces, plus what the fail-closed policy needs beyond them (the
        safety net's unheld faces; whether any face has been found yet)."""
        t = time.perf_counter()
        rgb = self.tracker.detection_rgb(frame.image)
        hw = frame.image.shape[:2]
        # The safety net's detector needs nothing from the mesh: it runs beside it (both
        # are MediaPipe graphs, which release the GIL), its verdict after it.
        detecting = self._beside_mesh.submit(self.safety_net.detect_scored, rgb, hw) if self.safety_net is not None else None
        # The mesh looks for faces beyond a lone one only when the safety net saw one no
        # track held on the frame before (its detector finds what the mesh's does, and
        # smaller ones), or with no safety net at all (tracking.mesh, SPOT_EVERY).
        frame.faces = self.tracker.update(frame.image, frame.timestamp, rgb, search=self._search)
        # parts of the track stage, for profiles (not in STAGES: the total counts them once);
        # track.safety_net is what the net adds after the mesh (its wait, then its verdict)
        t_mesh = time.perf_counter()
        frame.stage_ms["track.mesh"] = (t_mesh - t) * 1000.0
        if detecting is not None:
            frame.unheld_boxes = self.safety_net.update(rgb, hw, [f.bbox() for f in frame.faces],
                                                        found=detecting.result())
        self._search = self.safety_net is None or bool(frame.unheld_boxes)
        frame.stage_ms["track.safety_net"] = (time.perf_counter() - t_mesh) * 1000.0
        self._release_lost(frame)
        self._face_seen = self._face_seen or bool(frame.faces) or bool(frame.unheld_boxes)
        frame.no_face_yet = not self._face_seen
        _lap(frame, "track", t)

    def _release_lost(self, frame: Frame) -> None:
        """Drop the lost faces whose hidden region the detectors have found clear for long
        enough (:mod:`livedeid.tracking.release`); they leave ``frame.faces`` too."""
        hw = frame.image.shape[:2]
        # A lost face wholly outside the picture hides nothing: an empty region, soon released.
        lost = {f.track_id: hidden_box(f, hw) or (0, 0, 0, 0) for f in frame.faces if f.is_lost}
        live = [f.bbox() for f in frame.faces if not f.is_lost]
        # The mesh's detections are its live tracks; the safety net adds its own.
        seen = live + (self.safety_net.last_detections if self.safety_net is not None else [])
        h, w = hw
        left = {f.track_id for f in frame.faces if f.is_lost and _at_edge(f.bbox(), w, h)}
        gone = self.release.update(lost, seen, live, left)
        if gone:
            self.tracker.release(gone)
            frame.faces = [f for f in frame.faces if f.track_id not in gone]

    def sort_faces(self, frame: Frame) -> tuple[list[FaceTrack], list[FaceTrack]]:
        """(trusted, hidden) faces of this frame. A hidden face's window restarts (when it
        comes back its old crops belong to another moment); windows of faces gone are freed."""
        trusted, hidden = split_faces(frame.faces, self.config.min_confidence)
        if self.config.hide_unverified:
            shown = self.verified_faces(frame, trusted)
            hidden += [f for f in trusted if not any(f is g for g in shown)]
            trusted = shown
        alive = {f.track_id for f in frame.faces}
        for per_track in (*self._window_sets(), self.residuals):
            for f in hidden:
                per_track.reset(f.track_id)
            per_track.retain(alive)
        return trusted, hidden

    def verified_faces(self, frame: Frame, trusted: list[FaceTrack]) -> list[FaceTrack]:
        """The trusted faces whose protection is verified (``hide_unverified``): a cloak's
        wearer when its profile's held-out check met its target, and every other face only
        when the model's own held-out measurement says it protects."""
        worn = {id(f): p for f, p in self.cloaks(frame, trusted)}
        model_ok = self.model_warning is None
        return [f for f in trusted if (worn[id(f)].protects if id(f) in worn else model_ok)]

    def _window_sets(self) -> list[FaceWindows]:
        return [self.windows]

    def protect_on_host(self, frame: Frame, trusted: list[FaceTrack], hidden: list[FaceTrack]
                        ) -> tuple[np.ndarray, list[FaceTrack], list[FaceTrack]]:
        """The window, engine and composite stages on the CPU. Returns the composited image
        and the faces (trusted, hidden) afterwards: if every engine failed, all are hidden."""
        t = time.perf_counter()
        windows = [self.windows.push(frame.image, f) for f in trusted]
        t = _lap(frame, "window", t)
        if self.config.protect and trusted:
            wearers = self.cloaks(frame, trusted)
            for face, profile in wearers:
                cloak_face(face, profile.pattern, profile.region_grow, profile.layout)
            if wearers:
                frame.cloak_track = wearers[0][0].track_id
            # faces without a cloak: the network, or its last residual between runs
            rest = [(f, w) for f, w in zip(trusted, windows)
                    if not any(f is g for g, _ in wearers) and not self.residuals.wear(f)]
            protected = self.run_engine(np.stack([w for _, w in rest])) if rest else []
            if protected is None:  # every engine failed: fail closed on all faces
                trusted, hidden = [], list(frame.faces)
            else:
                for (f, _), p in zip(rest, protected):
                    f.protected = p
                    self.residuals.store(f)
        t = _lap(frame, "engine", t)
        out = frame.image.copy()
        if self.config.protect:
            for f in trusted:
                apply_protection(out, f)
        _lap(frame, "composite", t)
        return out, trusted, hidden

    def swap_cloak(self, pattern: np.ndarray) -> None:
        """Wear ``pattern`` from the next frame on (background refinement): checked against
        the profile's crop size and budget, then swapped in whole (one reference assignment,
        so a frame sees the old cloak or the new one, never a mix)."""
        if self.profile is None:
            raise ValueError("no profile to refine")
        checked = check_pattern(np.asarray(pattern, np.float32), self.profile.crop_size, self.profile.budget)
        self.profile = dataclasses.replace(self.profile, pattern=checked)
        self._event(logging.INFO, "cloak refined on recent frames and swapped in")

    def cloaks(self, frame: Frame, trusted: list[FaceTrack]) -> list[tuple[FaceTrack, Profile]]:
        """(face, profile) for every trusted face that wears a cloak in this frame: the
        largest face with the one profile, or whatever ``assign_cloaks`` says."""
        if self.assign_cloaks is not None:
            return [(f, p) for f in trusted if (p := self.assign_cloaks(frame, f)) is not None]
        wearer = self.cloak_wearer(frame, trusted)
        return [] if wearer is None else [(wearer, self.profile)]

    def cloak_wearer(self, frame: Frame, trusted: list[FaceTrack]) -> FaceTrack | None:
        """The face that wears the profile's cloak: the largest face of the frame (lost and
        hidden ones included) when it is trusted; None without a profile or when that face
        is hidden, so the cloak never moves to a smaller face behind the user."""
        if self.profile is None or not frame.faces:
            return None
        largest = largest_face(frame.faces)
        return largest if any(f is largest for f in trusted) else None

    def run_engine(self, windows: np.ndarray) -> np.ndarray | None:
        """The engine on ``windows``; after a failure ONNX Runtime on the CPU takes over for
        good. None when that fails too (the caller hides every face)."""
        try:
            return self.engine(windows)
        except UserError:
            raise
        except Exception as exc:  # CUDA errors, TensorRT failures, ORT runtime errors
            self._event(logging.WARNING, f"engine {self.engine.describe()} failed ({type(exc).__name__}: {exc}); "
                                         "falling back")
        try:
            choice = fallback_engine(self.engine, self.spec, threads=self.config.engine_threads)
            self.engine, self.engine_reason = choice.engine, choice.reason
            return self.engine(windows)
        except Exception as exc:
            self._event(logging.ERROR, f"fallback engine failed too ({exc}); hiding all faces")
            return None

    def _event(self, level: int, msg: str) -> None:
        """Log ``msg`` and keep it for the run's report and the panel."""
        log.log(level, msg)
        self.events.append(msg)

    def finish(self, frame: Frame, out: np.ndarray, trusted: list[FaceTrack], hidden: list[FaceTrack]) -> Frame:
        """Fail-closed hiding on the composited ``out`` (timed with the composite stage),
        then the output, the heart rate on it and the overlay if asked (rppg stage)."""
        t = time.perf_counter()
        out = self.hiding.apply(frame, out, hidden)
        t1 = time.perf_counter()
        frame.stage_ms["composite"] = frame.stage_ms.get("composite", 0.0) + (t1 - t) * 1000.0
        frame.output = out
        self._update_hr(frame, trusted)
        if self.config.hr_overlay:
            reading = self.hr.reading
            draw_hr_overlay(out, reading.bpm if reading else None, reading.quality if reading else "poor")
        _lap(frame, "rppg", t1)
        for stage in self.STAGES:
            frame.stage_ms.setdefault(stage, 0.0)
        frame.stage_ms["total"] = sum(frame.stage_ms[s] for s in self.STAGES)
        return frame

    def _update_hr(self, frame: Frame, trusted: list[FaceTrack]) -> None:
        """Heart rate from the OUTPUT frame (what the far end receives), on one face: the
        one already followed, else the largest."""
        face = next((f for f in trusted if f.track_id == self._hr_track), None)
        if face is None and trusted:
            face = largest_face(trusted)
            if self._hr_track is not None:
                self.hr.reset()  # a different person: their pulse is a new signal
            self._hr_track = face.track_id
        rgb = mean_skin_rgb(frame.output, face.landmarks) if face is not None else None
        self.hr.push(frame.timestamp, rgb)
