"""Background work for the panel: the protection pipeline and the clinician's monitor.
Plain threads, no Qt: the window polls what they publish, and all of it runs (and is
tested) without a display.

* :class:`PipelineWorker` builds the same pipeline as ``livedeid run`` - source,
  :func:`~livedeid.pipeline.factory.build_processor` on the settings' one
  :class:`~livedeid.core.settings.PipelineConfig`, one :class:`SinkHub` - and runs it on
  its own thread. Its listener only copies references into a
  :class:`~livedeid.panel.common.LatestValue`; it never touches a widget.
* :class:`MonitorWorker` is ``livedeid monitor`` as a thread: the heart-rate-only loop
  (:func:`~livedeid.rppg.monitor.monitor_frames`) on a file, camera or screen region;
  nothing is de-identified.
* :class:`EnrolWorker` is ``livedeid enrol`` as a thread: gather one person's faces
  (:func:`~livedeid.cloak.enrolment.gather`), then optimise and verify their cloak
  (:func:`~livedeid.cloak.build.build_profile`); torch is imported only when it runs.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from livedeid.cloak.refine import refiner_for
from livedeid.core.errors import UserError
from livedeid.core.records import Frame
from livedeid.core.settings import PipelineConfig
from livedeid.io.profile import DEFAULT_BUDGET, DEFAULT_RMS
from livedeid.io.sources import Source, open_source
from livedeid.panel.common import LatestValue, Snapshot, UnprotectedImage, face_views
from livedeid.panel.sink_hub import SinkHub
from livedeid.pipeline.factory import build_processor
from livedeid.pipeline.runner import Pipeline

log = logging.getLogger(__name__)


@dataclass
class PanelSettings:
    """What the panel runs: the pipeline's :class:`PipelineConfig` (the same record, from
    the same ``--config`` file, as ``livedeid run``; ``protect`` and ``hr_overlay`` are
    switched live) and the camera and outputs around it. ``source`` None = the first
    camera found."""

    config: PipelineConfig = field(default_factory=PipelineConfig)
    source: str | None = "synthetic"
    width: int = 1280
    height: int = 720
    fps: float = 30.0
    send_unprotected: bool = False
    virtual_camera: bool = True
    vcam_backend: str | None = None
    vcam_device: str | None = None

    def copy(self) -> PanelSettings:
        """A copy sharing nothing mutable (the config included)."""
        return replace(self, config=replace(self.config))


def close_quietly(*things) -> None:
    """Close what was opened on the way to a failure; the failure is what gets reported."""
    for thing in things:
        if thing is not None:
            try:
                thing.close()
            except Exception as exc:
                log.debug("closing %r: %s", thing, exc)


class ThreadWorker:
    """A job on its own daemon thread, polled by the window.

    ``state``: starting -> running -> ended (its source finished) | stopped | failed
    (``error`` says why, in one line); ``latest`` holds the newest :class:`Snapshot`.
    """

    def __init__(self, name: str):
        self.latest = LatestValue()
        self.state = "starting"
        self.error: str | None = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop and wait; True when the thread is gone (and what it opened released)."""
        self._stop.set()
        self._interrupt()
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join(timeout)
        return not self.thread.is_alive()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def _interrupt(self) -> None:
        """Wake the job where it may be waiting, after ``stop()`` was asked (a hook)."""

    def _work(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        try:
            self._work()
        except UserError as exc:
            self.error, self.state = str(exc), "failed"
        except Exception as exc:
            log.exception("%s failed", self.thread.name)
            self.error, self.state = f"{type(exc).__name__}: {exc}", "failed"
        finally:
            if self.state in ("starting", "running"):
                self.state = "stopped"


# --------------------------------------------------------------------------------------
# Processor with live switches
# --------------------------------------------------------------------------------------
class SwitchableProcessor:
    """The processor :func:`build_processor` made (CPU or device) with the switches the
    patient flips while it runs: protection and the heart-rate overlay.

    The processor reads ``config.protect`` several times per frame (on the device path in
    two calls per frame, launch and finish); flipping it from the GUI thread mid-frame
    could skip the engine yet still mark the frame protected. Requests are therefore
    queued and applied on the processing thread between frames, after the frame in flight
    (if any) is finished. Outputs made with protection off are tagged
    :class:`UnprotectedImage` for :class:`SinkHub`. Everything else (``config``,
    ``engine``, ``hr``, ``warning``, ``events``...) is the wrapped processor's.
    """

    LIVE_SETTINGS = ("protect", "hr_overlay")

    def __init__(self, processor):
        self.processor = processor
        self._requests: dict = {}
        self._requests_lock = threading.Lock()

    def __getattr__(self, name: str):
        # Reached only for names this class does not define: the wrapped processor's.
        return getattr(self.processor, name)

    def request(self, **changes) -> None:
        unknown = set(changes) - set(self.LIVE_SETTINGS)
        if unknown:
            raise ValueError(f"not switchable while running: {sorted(unknown)}")
        with self._requests_lock:
            self._requests.update(changes)

    def submit(self, frame: Frame) -> Frame | None:
        """The pipeline's entry (as :meth:`FrameProcessor.submit`)."""
        with self._requests_lock:
            changes, self._requests = self._requests, {}
        # The frame in flight (device path) was launched under the old settings: finish it
        # under them; the processor then has nothing in flight and returns this one later.
        done = self.processor.flush() if changes else None
        for key, value in changes.items():
            setattr(self.processor.config, key, value)
        later = self.processor.submit(frame)
        return self._tag(done if done is not None else later)

    def flush(self) -> Frame | None:
        return self._tag(self.processor.flush())

    def close(self) -> None:
        self.processor.close()

    @staticmethod
    def _tag(frame: Frame | None) -> Frame | None:
        if frame is not None and not frame.protected and frame.output is not None:
            frame.output = frame.output.view(UnprotectedImage)
        return frame


# --------------------------------------------------------------------------------------
# Protection pipeline
# --------------------------------------------------------------------------------------
SourceOpener = Callable[..., Source]


class PipelineWorker(ThreadWorker):
    """One run of the protection pipeline on a thread. Restarting = a new worker."""

    def __init__(self, settings: PanelSettings, meter=None, opener: SourceOpener = open_source):
        super().__init__("livedeid-panel-pipeline")
        self.settings = settings.copy()
        self.meter = meter
        self.refiner = None  # background refinement of the profile's cloak, while a profile is worn
        self.source: Source | None = None
        self.processor: SwitchableProcessor | None = None
        self.hub: SinkHub | None = None
        self.pipeline: Pipeline | None = None
        self._opener = opener
        self._lock = threading.Lock()
        self._vcam_lock = threading.Lock()

    def _interrupt(self) -> None:
        with self._lock:  # _build checks the stop request under this lock too
            pipeline = self.pipeline
        if pipeline is not None:
            pipeline.stop()

    # -- live switches --------------------------------------------------------------------
    def set_protection(self, protect: bool, send_unprotected: bool = False) -> None:
        self.settings.config.protect, self.settings.send_unprotected = protect, send_unprotected
        with self._lock:
            hub, processor = self.hub, self.processor
        if hub is not None:
            hub.allow_unprotected = send_unprotected
        if processor is not None:
            processor.request(protect=protect)

    def set_hr_overlay(self, on: bool) -> None:
        self.settings.config.hr_overlay = on
        with self._lock:
            processor = self.processor
        if processor is not None:
            processor.request(hr_overlay=on)

    def set_virtual_camera(self, on: bool) -> None:
        """Start or stop sending to the virtual camera without restarting; the outcome is
        in ``hub.camera`` / ``hub.camera_error``."""
        self.settings.virtual_camera = on
        self._sync_virtual_camera()

    def _sync_virtual_camera(self) -> None:
        with self._vcam_lock:  # GUI and worker thread may both get here; open one camera only
            hub = self.hub
            if hub is None or self._stop.is_set():
                return
            if self.settings.virtual_camera and hub.camera is None:
                try:
                    hub.open_virtual_camera(self.settings.vcam_backend, self.settings.vcam_device)
                except UserError:
                    pass  # hub.camera_error says why; the preview and heart rate still run
            elif not self.settings.virtual_camera:
                hub.camera_error = None
                hub.close_virtual_camera()

    def start_recording(self, path: str | Path) -> None:
        hub = self.hub
        if hub is None:
            raise UserError("the camera is not running yet")
        hub.start_recording(path)

    def stop_recording(self) -> Path | None:
        hub = self.hub
        return hub.stop_recording() if hub is not None else None

    # -- thread ---------------------------------------------------------------------------
    def _listener(self, frame: Frame, processor) -> None:
        # Processing thread: references only (frames are never reused), no widgets.
        self.latest.put(Snapshot(image=frame.image, output=frame.output, protected=frame.protected,
                                 faces=face_views(frame.faces), reading=processor.hr.reading,
                                 timestamp=frame.timestamp, index=frame.index,
                                 fail_closed_regions=frame.fail_closed_regions, no_face_yet=frame.no_face_yet))
        if self.meter is not None:
            self.meter.submit(frame.image, frame.output, frame.protected)

    def _build(self) -> Pipeline | None:
        """Source, processor and outputs of this run (None when stopped meanwhile);
        whatever was opened is closed again on a failure."""
        s = self.settings
        source = processor = hub = None
        try:
            source = self.source = self._opener(s.source, width=s.width, height=s.height, fps=s.fps, live=True)
            if self._stop.is_set():
                close_quietly(source)
                return None
            processor = SwitchableProcessor(build_processor(replace(s.config)))
            hub = SinkHub(source.size, source.fps, allow_unprotected=s.send_unprotected)
            pipeline = Pipeline(source, processor, [hub], listeners=[self._listener])
            self.refiner = refiner_for(processor)
            if self.refiner is not None:
                pipeline.listeners.append(self.refiner)
        except BaseException:
            close_quietly(source, processor, hub)
            raise
        with self._lock:
            self.processor, self.hub, self.pipeline = processor, hub, pipeline
            # Switches flipped while we were starting up win over the settings copy.
            processor.request(protect=s.config.protect, hr_overlay=s.config.hr_overlay)
            hub.allow_unprotected = s.send_unprotected
            if self._stop.is_set():
                pipeline.stop()
        return pipeline

    def _work(self) -> None:
        pipeline = self._build()
        if pipeline is None:
            return
        try:
            self._sync_virtual_camera()
        except BaseException:
            close_quietly(pipeline.source, pipeline.processor, *pipeline.sinks)
            raise
        self.state = "running"
        try:
            pipeline.run()  # closes source, processor and hub on the way out, whatever happens
        finally:
            if self.refiner is not None:
                self.refiner.close()
        self.state = "stopped" if self._stop.is_set() else "ended"


# --------------------------------------------------------------------------------------
# Clinician's monitor
# --------------------------------------------------------------------------------------
class MonitorWorker(ThreadWorker):
    """Heart rate of the face in a file, camera or screen region (no de-identification).

    ``open_fn`` makes the source on the worker thread (cameras and screen grabbers are
    then created, read and released by one thread). Files are paced to their own
    timestamps when ``realtime`` (a clinician watches them as recorded), else read as fast
    as they decode.
    """

    def __init__(self, open_fn: Callable[[], Source], realtime: bool = True, hr_method: str = "pos",
                 window_s: float = 10.0):
        super().__init__("livedeid-panel-monitor")
        self._open = open_fn
        self.realtime = realtime
        self.hr_method, self.window_s = hr_method, window_s
        self.readings: list = []
        self.reading_times: list[float] = []  # wall clock (time.time()) of each reading, for the saved file
        self.frames = 0
        self.fps = 0.0
        self.description = ""

    def _frames(self, source: Source) -> Iterator[Frame]:
        """The source's frames until it ends (state 'ended') or stop() is called; a file
        in real time is paced to its timestamps."""
        t0_stream = t0_wall = None
        while not self._stop.is_set():
            frame = source.read()
            if frame is None:
                self.state = "ended"
                return
            if self.realtime and not source.is_live:
                if t0_stream is None:
                    t0_stream, t0_wall = frame.timestamp, time.monotonic()
                delay = t0_wall + (frame.timestamp - t0_stream) - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
            yield frame

    def _work(self) -> None:
        from livedeid.rppg.monitor import monitor_frames
        from livedeid.rppg.streaming import StreamingHR
        from livedeid.tracking.mesh import FaceTracker

        source = tracker = None
        try:
            source = self._open()
            self.description = source.description
            tracker = FaceTracker(max_faces=1)
            hr = StreamingHR(method=self.hr_method, window_s=self.window_s)
            fps_t0, fps_n = time.monotonic(), 0
            self.state = "running"
            for step in monitor_frames(self._frames(source), tracker, hr):
                if step.new_reading:
                    self.reading_times.append(time.time())
                    self.readings.append(step.reading)
                self.frames += 1
                fps_n += 1
                now = time.monotonic()
                if now - fps_t0 >= 1.0:
                    self.fps, fps_t0, fps_n = fps_n / (now - fps_t0), now, 0
                self.latest.put(Snapshot(image=step.image, output=None, protected=False,
                                         faces=face_views(step.faces), reading=step.reading,
                                         timestamp=step.timestamp, index=step.index))
        finally:
            close_quietly(tracker, source)


# --------------------------------------------------------------------------------------
# Enrolment (the personal cloak)
# --------------------------------------------------------------------------------------
class _Cancelled(Exception):
    """Raised from the enrolment's progress callbacks once stop() was asked: gather() and
    build_profile() have no stop flag of their own, and an exception unwinds them through
    their ``with``/``finally`` blocks (camera, face tracker, torch threads released)."""


@dataclass
class EnrolRequest:
    """What to enrol: as ``livedeid enrol NAME --from SOURCE``."""

    name: str
    source: str                      # camera index, video file, photo folder or synthetic[:HR]
    seconds: float | None = None     # of a camera or video; None: gather's default (25 s camera, 60 s file)
    steps: int | None = None         # None: the optimiser's default
    live: bool = False               # play a file / the clip at camera pace, guided (a rehearsal)
    recognizers: tuple[str, ...] = ("dlib", "sface")
    budget: float = DEFAULT_BUDGET
    rms: float = DEFAULT_RMS         # the cloak's energy (`enrol --strength`)


class EnrolWorker(ThreadWorker):
    """One enrolment on a thread; nothing is saved here (the tab saves the profile).

    ``phase``: starting -> recording -> optimising -> verifying -> done. ``recording``
    holds the newest :class:`~livedeid.cloak.enrolment.Progress`, ``checks`` the newest
    optimisation check (``build_profile``'s progress dict), ``profile`` the result once
    ``state`` is 'ended'. ``stop()`` takes effect at the next frame while recording and at
    the next optimisation check (every ``check_every`` steps) while optimising."""

    def __init__(self, request: EnrolRequest):
        super().__init__("livedeid-panel-enrol")
        self.request = request
        self.phase = "starting"
        self.recording = LatestValue()
        self.checks = LatestValue()
        self.total_steps = 0
        self.coverage = ""
        self.profile = None

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise _Cancelled

    def _on_frame(self, progress) -> None:
        self._check_stop()
        self.recording.put(progress)

    def _on_check(self, entry: dict) -> None:
        self._check_stop()
        if entry.get("last") or int(entry.get("step", 0)) >= self.total_steps:
            self.phase = "verifying"  # build_profile verifies right after the last check
        self.checks.put(entry)

    def _gather(self):
        from livedeid.cloak.enrolment import CAMERA_SECONDS, from_stream, gather

        r = self.request
        if not r.live or r.source.isdigit() or Path(r.source).is_dir():
            return gather(r.source, max_seconds=r.seconds, progress=self._on_frame)
        # A file or the built-in clip played as a camera: the guided recording, rehearsed.
        with open_source(r.source, live=True) as src:
            enrolment = from_stream(src, seconds=r.seconds or CAMERA_SECONDS, progress=self._on_frame)
        if not enrolment.optimise or not enrolment.held_out:
            raise UserError(f"enrolment needs at least 2 usable faces in {r.source}; found "
                            f"{len(enrolment.optimise) + len(enrolment.held_out)}")
        return enrolment

    def _work(self) -> None:
        from livedeid.cloak.build import build_profile, default_settings
        from livedeid.recognizers.base import get_recognizer

        r = self.request
        try:
            for name in r.recognizers:
                get_recognizer(name)  # a missing recogniser fails now, before any recording
            self.total_steps = default_settings(r.recognizers, budget=r.budget, steps=r.steps).steps
            self._check_stop()
            self.state, self.phase = "running", "recording"
            enrolment = self._gather()
            self._check_stop()
            self.coverage, self.phase = enrolment.coverage(), "optimising"
            profile = build_profile(r.name, enrolment, r.recognizers, budget=r.budget, steps=r.steps, rms=r.rms,
                                    progress=self._on_check)
            self._check_stop()  # cancelled while verifying: the user no longer wants it
        except _Cancelled:
            self.state = "stopped"
            return
        self.profile, self.phase, self.state = profile, "done", "ended"
