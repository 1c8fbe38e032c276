"""The pipeline: capture -> track -> window -> engine -> composite -> sinks, rPPG on the output.

:class:`FrameProcessor` is the single-threaded heart (one frame in, one composited frame
out) and is what tests drive directly. :class:`Pipeline` wires it into threads: a capture
thread, the processing thread (the caller's or its own) and a sink thread, joined by
bounded queues. Live sources drop the oldest frame when processing lags; files never drop
and keep their order.

Fail-closed policy: a face that is lost or whose landmarks are implausible is hidden
(``blur``/``mask``) or the last fully protected frame is repeated (``hold``); if the
engine fails it falls back to ONNX Runtime on the CPU, and if that fails too every face
is hidden. Raw face pixels never reach a sink while protection is on.
"""
from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from livedeid.core.errors import UserError
from livedeid.core.records import FaceTrack, Frame
from livedeid.core.settings import PipelineConfig
from livedeid.inference.engines import Engine, create_engine, fallback_engine
from livedeid.inference.manifest import ModelSpec, load_spec, model_warning
from livedeid.io.sinks import Sink
from livedeid.io.sources import CaptureThread, Source
from livedeid.protect.composite import apply_protection, draw_hr_overlay, hidden_box, hide_region, privacy_placeholder
from livedeid.protect.windows import FaceWindows
from livedeid.rppg.hr import StreamingHR, mean_skin_rgb
from livedeid.tracking.mesh import FaceTracker

log = logging.getLogger(__name__)

STAGES = ("track", "window", "engine", "composite", "rppg")


class StageStats:
    """Per-stage latency samples (ms), frame rate and drop counts; cheap enough for every frame."""

    def __init__(self, keep: int = 2000):
        self.samples: dict[str, deque] = {s: deque(maxlen=keep) for s in (*STAGES, "total")}
        self.frames = 0
        self.dropped = 0
        self.hidden_faces = 0
        self._t0: float | None = None
        self._t_last: float | None = None
        self._lock = threading.Lock()

    def record(self, frame: Frame) -> None:
        now = time.perf_counter()
        with self._lock:
            if self._t0 is None:
                self._t0 = now
            self._t_last = now
            self.frames += 1
            self.hidden_faces += frame.fail_closed_regions
            for stage, ms in frame.stage_ms.items():
                self.samples.setdefault(stage, deque(maxlen=2000)).append(ms)

    @property
    def fps(self) -> float:
        with self._lock:
            if self._t0 is None or self._t_last is None or self.frames < 2 or self._t_last <= self._t0:
                return 0.0
            return (self.frames - 1) / (self._t_last - self._t0)

    def percentiles(self) -> dict[str, tuple[float, float]]:
        with self._lock:
            return {s: (float(np.percentile(v, 50)), float(np.percentile(v, 95)))
                    for s, v in self.samples.items() if v}

    def summary(self) -> dict:
        return {
            "frames": self.frames, "dropped": self.dropped, "fps": round(self.fps, 2),
            "hidden_face_frames": self.hidden_faces,
            "latency_ms": {s: {"p50": round(a, 2), "p95": round(b, 2)} for s, (a, b) in self.percentiles().items()},
        }


class FrameProcessor:
    """One frame in, one composited frame out. Owns the tracker, windows, engine and HR."""

    def __init__(self, config: PipelineConfig | None = None, spec: ModelSpec | None = None,
                 engine: Engine | None = None):
        self.config = config or PipelineConfig()
        self.config.validate()
        self.spec = spec or load_spec(self.config.manifest)
        if engine is None:
            choice = create_engine(self.config.engine, self.spec)
            engine, self.engine_reason, self.engine_skipped = choice.engine, choice.reason, choice.fallbacks
        else:
            self.engine_reason, self.engine_skipped = "given", []
        self.engine = engine
        self.warning = model_warning(self.spec)
        self.tracker = FaceTracker(max_faces=self.config.max_faces, crop_size=self.spec.crop_size,
                                   detect_long_side=self.config.detect_long_side,
                                   safety_net=self.config.safety_net)
        self.windows = FaceWindows(self.spec.window, self.spec.crop_size)
        self.hr = StreamingHR(method=self.config.hr_method, window_s=self.config.hr_window_s)
        self.events: deque[str] = deque(maxlen=100)
        self._hr_track: int | None = None
        self._last_good: np.ndarray | None = None

    def close(self) -> None:
        self.tracker.close()

    # -- stages ------------------------------------------------------------------------
    def track(self, frame: Frame) -> None:
        """The track stage: faces, plus what the fail-closed policy needs beyond them."""
        frame.faces = self.tracker.update(frame.image, frame.timestamp)
        frame.unheld_boxes = list(self.tracker.unheld_boxes)
        frame.no_face_yet = not self.tracker.face_seen

    def process(self, frame: Frame) -> Frame:
        cfg = self.config
        t = time.perf_counter()
        self.track(frame)
        t = self._lap(frame, "track", t)

        trusted = [f for f in frame.faces if not f.is_lost and f.confidence >= cfg.min_confidence]
        hidden = [f for f in frame.faces if f not in trusted]
        windows = [self.windows.push(frame.image, f) for f in trusted]
        for f in hidden:
            self.windows.reset(f.track_id)  # a face coming back starts a fresh window
        self.windows.retain({f.track_id for f in frame.faces})
        t = self._lap(frame, "window", t)

        if cfg.protect and trusted:
            protected = self._run_engine(np.stack(windows))
            if protected is None:  # every engine failed: fail closed on all faces
                hidden, trusted = frame.faces, []
            else:
                for f, p in zip(trusted, protected):
                    f.protected = p
        t = self._lap(frame, "engine", t)

        out = frame.image.copy()
        if cfg.protect:
            for f in trusted:
                apply_protection(out, f)
        out = self.fail_closed(frame, out, hidden)
        t = self._lap(frame, "composite", t)

        self.finish_output(frame, out, trusted)
        self._lap(frame, "rppg", t)
        frame.stage_ms["total"] = sum(frame.stage_ms[s] for s in STAGES)
        return frame

    def fail_closed(self, frame: Frame, out: np.ndarray, hidden: list[FaceTrack]) -> np.ndarray:
        """Apply the fail-closed policy to the composited ``out`` for the ``hidden`` faces;
        returns the image to send (the held frame under ``hold``)."""
        cfg = self.config
        frame.protected = cfg.protect
        if not cfg.protect:
            return out
        # Until a face has been found there may be one no detector can see yet (a profile,
        # a face in the dark): the startup guard hides the whole picture meanwhile.
        whole = cfg.startup_guard and frame.no_face_yet
        frame.fail_closed_regions = len(hidden) + len(frame.unheld_boxes) + int(whole)
        if not frame.fail_closed_regions:
            self._last_good = out
            return out
        if cfg.fail_closed == "hold" and self._last_good is not None and self._last_good.shape == out.shape:
            return self._last_good.copy()
        h, w = out.shape[:2]
        boxes = [(0, 0, w, h)] if whole else [b for b in (hidden_box(f, (h, w)) for f in hidden) if b is not None]
        if not whole:
            boxes += frame.unheld_boxes
        for box in boxes:
            frame.hidden_boxes.append(box)
            hide_region(out, box, "mask" if cfg.fail_closed == "hold" else cfg.fail_closed)
        return out

    def finish_output(self, frame: Frame, out: np.ndarray, trusted: list[FaceTrack]) -> None:
        """Set the frame's output, update the heart rate on it, burn the overlay if asked."""
        frame.output = out
        self._update_hr(frame, trusted)
        if self.config.hr_overlay:
            reading = self.hr.reading
            draw_hr_overlay(out, reading.bpm if reading else None, reading.quality if reading else "poor")

    def _run_engine(self, windows: np.ndarray) -> np.ndarray | None:
        try:
            return self.engine(windows)
        except UserError:
            raise
        except Exception as exc:  # CUDA errors, TensorRT failures, ORT runtime errors
            msg = f"engine {self.engine.describe()} failed ({type(exc).__name__}: {exc}); falling back"
            log.warning(msg)
            self.events.append(msg)
        try:
            choice = fallback_engine(self.engine, self.spec)
            self.engine, self.engine_reason = choice.engine, choice.reason
            return self.engine(windows)
        except Exception as exc:
            msg = f"fallback engine failed too ({exc}); hiding all faces"
            log.error(msg)
            self.events.append(msg)
            return None

    def _update_hr(self, frame: Frame, trusted: list[FaceTrack]) -> None:
        """Heart rate from the OUTPUT frame (what the far end receives), on one face: the
        one already followed, else the largest."""
        face = next((f for f in trusted if f.track_id == self._hr_track), None)
        if face is None and trusted:
            face = max(trusted, key=lambda f: np.ptp(f.landmarks[:, 0]) * np.ptp(f.landmarks[:, 1]))
            if self._hr_track is not None:
                self.hr.reset()  # a different person: their pulse is a new signal
            self._hr_track = face.track_id
        rgb = mean_skin_rgb(frame.output, face.landmarks) if face is not None else None
        self.hr.push(frame.timestamp, rgb)

    @staticmethod
    def _lap(frame: Frame, stage: str, t0: float) -> float:
        t1 = time.perf_counter()
        frame.stage_ms[stage] = (t1 - t0) * 1000.0
        return t1


def build_processor(config: PipelineConfig) -> FrameProcessor:
    """The GPU-resident processor when the engine may run on CUDA and a CUDA device
    exists, else the CPU processor (ONNX Runtime by default)."""
    if config.engine != "onnxruntime":
        import importlib.util

        if importlib.util.find_spec("torch") is not None:
            import torch

            if torch.cuda.is_available():
                from livedeid.pipeline.device import TorchFrameProcessor

                return TorchFrameProcessor(config, device="cuda")
    return FrameProcessor(config)


FrameListener = Callable[[Frame, FrameProcessor], None]


@dataclass
class RunResult:
    frames_in: int
    frames_out: int
    stats: dict
    hr_readings: list = field(default_factory=list)
    engine: str = ""
    events: list[str] = field(default_factory=list)


class Pipeline:
    """Threads around a :class:`FrameProcessor`: capture -> process -> sinks.

    ``run()`` blocks until the source ends or ``stop()`` is called (from any thread).
    Listeners are called on the processing thread with each finished frame; the UI must
    hand them over to its own thread and drop what it cannot draw.
    """

    def __init__(self, source: Source, processor: FrameProcessor, sinks: list[Sink],
                 listeners: list[FrameListener] | None = None, queue_size: int = 4):
        self.source = source
        self.processor = processor
        self.sinks = sinks
        self.listeners = list(listeners or [])
        self.stats = StageStats()
        self.hr_readings: list = []
        self._capture = CaptureThread(source, maxsize=queue_size)
        self._out: queue.Queue = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._sink_error: BaseException | None = None
        self._sink_thread = threading.Thread(target=self._sink_loop, name="livedeid-sinks", daemon=True)
        self._frames_in = 0
        self._frames_out = 0
        self.keepalive_s = 0.5
        self._sink_dropped = 0
        self.placeholders_sent = 0

    def stop(self) -> None:
        self._stop.set()
        self._capture.stop()

    @property
    def capture_status(self) -> str:
        """"ok", or why the camera is unavailable and when it is retried."""
        return self._capture.status

    @property
    def running(self) -> bool:
        return self._capture.is_alive() and not self._stop.is_set()

    def run(self) -> RunResult:
        self._capture.start()
        self._sink_thread.start()
        last_hr_t = -math.inf
        ok = False
        submit = getattr(self.processor, "submit", None)
        try:
            while not self._stop.is_set():
                try:
                    frame = self._capture.frames.get(timeout=0.2)
                except queue.Empty:
                    continue
                if frame is None:
                    if self._capture.error is not None:
                        raise self._capture.error
                    break
                self._frames_in += 1
                # A processor with an asynchronous device stage (gpu.TorchFrameProcessor)
                # returns the *previous* frame from submit(), overlapping CPU tracking of
                # this frame with the GPU work of the last one.
                done = submit(frame) if submit else self.processor.process(frame)
                if done is not None:
                    last_hr_t = self._deliver(done, last_hr_t)
            if submit:
                done = self.processor.flush()
                if done is not None:
                    self._deliver(done, last_hr_t)
            ok = True
        finally:
            self._capture.stop()
            self._out.put(None)
            self._sink_thread.join()
            self._capture.join(timeout=2.0)
            self.source.close()
            self.processor.close()
            self._close_sinks(ok and self._sink_error is None)
        if self._sink_error is not None:
            raise self._sink_error
        events = list(self.processor.events)
        if self._capture.reconnects or self.placeholders_sent:
            events.append(f"camera reconnected {self._capture.reconnects} time(s); "
                          f"{self.placeholders_sent} placeholder frame(s) sent meanwhile")
        return RunResult(self._frames_in, self._frames_out, self.stats.summary(), self.hr_readings,
                         self.processor.engine.describe(), events)

    def _deliver(self, frame: Frame, last_hr_t: float) -> float:
        """Stats, HR history, sinks and listeners for one finished frame."""
        self.stats.dropped = self._capture.dropped + self._sink_dropped  # both queues drop oldest
        self.stats.record(frame)
        reading = self.processor.hr.reading
        if reading is not None and reading.timestamp != last_hr_t:
            last_hr_t = reading.timestamp
            self.hr_readings.append(reading)
        self._put_output(frame)
        for listener in self.listeners:
            listener(frame, self.processor)
        if self._sink_error is not None:
            raise self._sink_error
        return last_hr_t

    def _put_output(self, frame: Frame) -> None:
        if self.source.is_live:
            while True:
                try:
                    self._out.put_nowait(frame)
                    return
                except queue.Full:
                    try:
                        self._out.get_nowait()
                        self._sink_dropped += 1
                    except queue.Empty:
                        pass
        while self._sink_error is None:
            try:
                self._out.put(frame, timeout=0.2)
                return
            except queue.Full:
                continue

    def _sink_loop(self) -> None:
        # Live: if no frame comes for ``keepalive_s`` (camera lost and reconnecting, or a
        # stall), send a placeholder with no camera content at the camera rate, so the
        # call app keeps the virtual camera instead of dropping it. Never raw pixels.
        live = self.source.is_live
        period = 1.0 / max(1.0, self.source.fps)
        placeholder = None
        last_frame = time.monotonic()
        while True:
            try:
                frame = self._out.get(timeout=period if live else None)
            except queue.Empty:
                if time.monotonic() - last_frame < self.keepalive_s or self._sink_error is not None:
                    continue
                if placeholder is None:
                    placeholder = privacy_placeholder(self.source.size, "livedeid: camera unavailable, reconnecting")
                if self._send(placeholder):  # the get() timeout paces these at the camera rate
                    self.placeholders_sent += 1
                continue
            if frame is None:
                return
            if self._sink_error is not None:
                continue  # drain so the producer never blocks
            if self._send(frame.output):
                self._frames_out += 1
            last_frame = time.monotonic()

    def _send(self, image: np.ndarray) -> bool:
        try:
            for sink in self.sinks:
                sink.send(image)
            return True
        except BaseException as exc:
            self._sink_error = exc
            return False

    def _close_sinks(self, success: bool) -> None:
        errors = []
        for sink in self.sinks:
            try:
                sink.close() if success else sink.abort()
            except BaseException as exc:
                errors.append(exc)
        if errors and success:
            raise errors[0]


class TraceRecorder:
    """Listener that keeps the per-frame skin colour of the primary face in the input and
    in the output, for whole-clip heart-rate reports (input HR vs output HR)."""

    def __init__(self):
        self.t: list[float] = []
        self.rgb_in: list[np.ndarray] = []
        self.rgb_out: list[np.ndarray] = []

    def __call__(self, frame: Frame, processor: FrameProcessor) -> None:
        seen = [f for f in frame.faces if not f.is_lost]
        self.t.append(frame.timestamp)
        if seen and frame.output is not None:
            lm = max(seen, key=lambda f: np.ptp(f.landmarks[:, 0]) * np.ptp(f.landmarks[:, 1])).landmarks
            self.rgb_in.append(mean_skin_rgb(frame.image, lm))
            self.rgb_out.append(mean_skin_rgb(frame.output, lm))
        else:
            self.rgb_in.append(np.full(3, np.nan))
            self.rgb_out.append(np.full(3, np.nan))

    def heart_rates(self, method: str = "pos") -> dict:
        """Whole-clip HR of input and output (None where too few frames had a face)."""
        from livedeid.rppg.hr import trace_to_hr

        result = {}
        for name, rgb in (("input", self.rgb_in), ("output", self.rgb_out)):
            try:
                hr, _ = trace_to_hr(np.array(self.t), np.array(rgb), method)
                result[name] = {"bpm": round(hr.bpm, 2), "snr_db": round(hr.snr_db, 2), "quality": hr.quality}
            except ValueError:
                result[name] = None
        return result
