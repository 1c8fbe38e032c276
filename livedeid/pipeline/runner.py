"""The threaded runner: capture -> process -> sinks, joined by bounded queues.

:class:`Pipeline` runs a frame processor (:mod:`livedeid.pipeline.processor` or
:mod:`livedeid.pipeline.device`, built by :func:`livedeid.pipeline.factory.build_processor`)
between a capture thread and a sink thread. Live sources drop the oldest frame when
processing lags; files never drop and keep their order.
"""
from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from livedeid.core.records import Frame
from livedeid.io.sinks import Sink
from livedeid.io.sources import CaptureThread, Source
from livedeid.pipeline.processor import FrameProcessor
from livedeid.pipeline.stats import StageStats
from livedeid.protect.fail_closed import privacy_placeholder
from livedeid.rppg.regions import mean_skin_rgb
from livedeid.tracking.mesh import largest_face

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
                 listeners: list[FrameListener] | None = None, queue_size: int | None = None,
                 reconnect_backoff_s: tuple[float, float] = (0.5, 5.0)):
        self.source = source
        self.processor = processor
        self.sinks = sinks
        self.listeners = list(listeners or [])
        self.stats = StageStats()
        self.hr_readings: list = []
        # A camera's frames wait for the processor in a queue of one (the newest): with a
        # longer one, a processor a little slower than the camera keeps it full and every
        # frame waits that many frame times (live p50 180 ms at 1280x720 with 4, issue 16).
        # A file's reader waits instead, so a few frames of read-ahead cost no latency.
        size = queue_size if queue_size is not None else (1 if source.is_live else 4)
        self._capture = CaptureThread(source, maxsize=size, backoff_s=reconnect_backoff_s)
        self._out: queue.Queue = queue.Queue(maxsize=queue_size or 4)
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

    @property
    def threads_alive(self) -> bool:
        """Whether the capture or the sink thread still runs (both end with ``run()``)."""
        return self._capture.is_alive() or self._sink_thread.is_alive()

    def run(self) -> RunResult:
        self._capture.start()
        self._sink_thread.start()
        last_hr_t = -math.inf
        ok = False
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
                # The device processor returns the *previous* frame from submit(),
                # overlapping CPU tracking of this frame with the GPU work of the last one.
                done = self.processor.submit(frame)
                if done is not None:
                    last_hr_t = self._deliver(done, last_hr_t)
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
            lm = largest_face(seen).landmarks
            self.rgb_in.append(mean_skin_rgb(frame.image, lm))
            self.rgb_out.append(mean_skin_rgb(frame.output, lm))
        else:
            self.rgb_in.append(np.full(3, np.nan))
            self.rgb_out.append(np.full(3, np.nan))

    def clip_results(self, method: str = "pos") -> dict:
        """Whole-clip :class:`~livedeid.rppg.spectrum.HRResult` of ``input`` and ``output``
        (None where too few frames had a face)."""
        from livedeid.rppg.monitor import trace_to_hr

        result = {}
        for name, rgb in (("input", self.rgb_in), ("output", self.rgb_out)):
            try:
                result[name], _ = trace_to_hr(np.array(self.t), np.array(rgb), method)
            except ValueError:
                result[name] = None
        return result

    def heart_rates(self, method: str = "pos") -> dict:
        """Whole-clip HR of input and output as the reports give it (None where too few
        frames had a face; the reading's ``bpm`` None where its quality is poor)."""
        return {name: None if hr is None else hr.report() for name, hr in self.clip_results(method).items()}
