"""Background work for the panel: the protection pipeline, the clinician's monitor and
the screen source. Plain threads, no Qt: the window polls what they publish, and all of
it runs (and is tested) without a display.

* :class:`PipelineWorker` builds the same :class:`~livedeid.pipeline.processor.Pipeline` that
  ``livedeid run`` uses - source, :class:`PanelProcessor`, one :class:`SinkHub` - and
  runs it on its own thread. Its listener only copies references into a
  :class:`~livedeid.panel.common.LatestValue`; it never touches a widget.
* :class:`MonitorWorker` is ``livedeid monitor`` as a thread: tracking, skin colour and
  :class:`~livedeid.rppg.hr.StreamingHR` on a file, camera or screen region; nothing is
  de-identified.
"""
from __future__ import annotations

import glob
import logging
import math
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from livedeid.core.errors import UserError
from livedeid.core.records import Frame
from livedeid.core.settings import PipelineConfig
from livedeid.io.sinks import FileSink, Sink, VirtualCameraSink, virtual_camera_hint
from livedeid.io.sources import Source, open_source
from livedeid.panel.common import LatestValue, Snapshot, UnprotectedImage, face_views
from livedeid.pipeline.processor import FrameProcessor, Pipeline

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# Processor and sinks
# --------------------------------------------------------------------------------------
class PanelProcessor(FrameProcessor):
    """:class:`FrameProcessor` whose live switches (protection, HR overlay) are applied
    between frames on the processing thread.

    ``FrameProcessor.process`` reads ``config.protect`` several times per frame; flipping
    it from the GUI thread mid-frame could skip the engine yet still composite. Requests
    are therefore queued and applied atomically before the next frame. Outputs made with
    protection off are tagged :class:`UnprotectedImage` for :class:`SinkHub`.
    """

    LIVE_SETTINGS = ("protect", "hr_overlay")

    def __init__(self, config: PipelineConfig | None = None, **kwargs):
        super().__init__(config, **kwargs)
        self._requests: dict = {}
        self._requests_lock = threading.Lock()

    def request(self, **changes) -> None:
        unknown = set(changes) - set(self.LIVE_SETTINGS)
        if unknown:
            raise ValueError(f"not switchable while running: {sorted(unknown)}")
        with self._requests_lock:
            self._requests.update(changes)

    def process(self, frame: Frame) -> Frame:
        with self._requests_lock:
            changes, self._requests = self._requests, {}
        for key, value in changes.items():
            setattr(self.config, key, value)
        frame = super().process(frame)
        if not frame.protected and frame.output is not None:
            frame.output = frame.output.view(UnprotectedImage)
        return frame


class SinkHub(Sink):
    """The pipeline's single sink: fans frames out to the virtual camera and an optional
    recording, both attachable and detachable while running.

    Unprotected frames (see :class:`UnprotectedImage`) are held back unless the user
    confirmed sending them (``allow_unprotected``). A failing virtual camera or recording
    is detached and reported instead of stopping the pipeline: the patient keeps the
    preview and the heart rate while fixing it.
    """

    description = "panel outputs"

    def __init__(self, size: tuple[int, int], fps: float, allow_unprotected: bool = False):
        self.size = (int(size[0]), int(size[1]))
        self.fps = float(fps) if fps and math.isfinite(fps) and fps > 0 else 30.0
        self.allow_unprotected = allow_unprotected
        self._lock = threading.Lock()
        self.camera: VirtualCameraSink | None = None
        self.camera_error: str | None = None
        self.recorder: FileSink | None = None
        self.record_error: str | None = None
        self.sent = 0        # frames passed on to the outputs
        self.held_back = 0   # unprotected frames not sent
        self.closed = False

    # -- virtual camera -------------------------------------------------------------------
    def open_virtual_camera(self, backend: str | None = None, device: str | None = None) -> str:
        """Open the virtual camera; UserError (with the setup hint) when there is none."""
        with self._lock:
            if self.closed:
                raise UserError("the pipeline has stopped")
            if self.camera is not None:
                return self.camera.description
        from pyvirtualcam.camera import BACKENDS

        if backend and backend not in BACKENDS:
            # pyvirtualcam fails on unknown names with a KeyError (and a noisy __del__).
            self.camera_error = (f"no virtual camera (unknown backend '{backend}', known: "
                                 f"{', '.join(BACKENDS) or 'none'}); fix: {virtual_camera_hint()}")
            raise UserError(self.camera_error)
        try:
            camera = VirtualCameraSink(*self.size, fps=self.fps, backend=backend, device=device)
        except UserError as exc:
            self.camera_error = str(exc)
            raise
        except Exception as exc:  # a backend that fails in its own way (KeyError for an unknown name)
            self.camera_error = f"no virtual camera ({type(exc).__name__}: {exc}); fix: {virtual_camera_hint()}"
            raise UserError(self.camera_error) from None
        with self._lock:
            if not self.closed:
                self.camera, self.camera_error = camera, None
                return camera.description
        camera.close()  # the pipeline ended while the device was opening
        raise UserError("the pipeline has stopped")

    def close_virtual_camera(self) -> None:
        with self._lock:
            camera, self.camera = self.camera, None
        if camera is not None:
            camera.close()

    # -- recording ------------------------------------------------------------------------
    def start_recording(self, path: str | Path) -> None:
        recorder = FileSink(path, *self.size, rate=self.fps)
        with self._lock:
            if self.closed:
                recorder.abort()
                raise UserError("the pipeline has stopped")
            previous, self.recorder, self.record_error = self.recorder, recorder, None
        if previous is not None:
            previous.close()

    def stop_recording(self) -> Path | None:
        with self._lock:
            recorder, self.recorder = self.recorder, None
        if recorder is None:
            return None
        recorder.close()
        return recorder.path

    @property
    def recording(self) -> Path | None:
        recorder = self.recorder
        return recorder.path if recorder is not None else None

    # -- Sink -----------------------------------------------------------------------------
    def send(self, image: np.ndarray) -> None:
        unprotected = isinstance(image, UnprotectedImage)
        plain = np.asarray(image)  # drop the tag: backends and encoders want a plain array
        broken = []
        with self._lock:
            if unprotected and not self.allow_unprotected:
                self.held_back += 1
                return
            if self.camera is not None:
                try:
                    self.camera.send(plain)
                except Exception as exc:  # device removed, driver error
                    self.camera_error = f"virtual camera stopped: {type(exc).__name__}: {exc}"
                    broken.append(self.camera)
                    self.camera = None
            if self.recorder is not None:
                try:
                    self.recorder.send(plain)
                except Exception as exc:  # disk full: FileSink already discarded its temp file
                    self.record_error = f"recording stopped: {exc}"
                    self.recorder = None
            self.sent += 1
        for sink in broken:
            try:
                sink.close()
            except Exception:
                pass

    def close(self) -> None:
        with self._lock:
            self.closed = True
        errors = []
        for action in (self.close_virtual_camera, self.stop_recording):
            try:
                action()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def abort(self) -> None:
        # The pipeline failed (camera unplugged...): what was recorded so far is still a
        # valid recording, so it is finalised rather than discarded.
        try:
            self.close()
        except Exception as exc:
            log.warning("closing outputs after a failure: %s", exc)


# --------------------------------------------------------------------------------------
# Protection pipeline
# --------------------------------------------------------------------------------------
@dataclass
class PatientSettings:
    source: str = "synthetic"
    width: int = 1280
    height: int = 720
    fps: float = 30.0
    engine: str = "auto"
    fail_closed: str = "blur"
    manifest: Path | None = None
    max_faces: int = 4
    hr_method: str = "pos"
    protect: bool = True
    send_unprotected: bool = False
    hr_overlay: bool = False
    min_confidence: float = 0.5
    hr_window_s: float = 10.0
    detect_long_side: int = 640
    virtual_camera: bool = True
    vcam_backend: str | None = None
    vcam_device: str | None = None


SourceOpener = Callable[..., Source]


class PipelineWorker:
    """One run of the protection pipeline on a thread. Restarting = a new worker.

    ``state``: starting -> running -> ended (source finished) | stopped | failed
    (``error`` says why).
    """

    def __init__(self, settings: PatientSettings, meter=None, opener: SourceOpener = open_source):
        self.settings = replace(settings)
        self.meter = meter
        self.latest = LatestValue()
        self.state = "starting"
        self.error: str | None = None
        self.source: Source | None = None
        self.processor: PanelProcessor | None = None
        self.hub: SinkHub | None = None
        self.pipeline: Pipeline | None = None
        self._opener = opener
        self._lock = threading.Lock()
        self._vcam_lock = threading.Lock()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="livedeid-panel-pipeline", daemon=True)

    def start(self) -> "PipelineWorker":
        self.thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop and wait; True when the thread is gone (source, camera and sinks released)."""
        with self._lock:
            self._stop.set()
            pipeline = self.pipeline
        if pipeline is not None:
            pipeline.stop()
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join(timeout)
        return not self.thread.is_alive()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    # -- live switches --------------------------------------------------------------------
    def set_protection(self, protect: bool, send_unprotected: bool = False) -> None:
        self.settings.protect, self.settings.send_unprotected = protect, send_unprotected
        with self._lock:
            hub, processor = self.hub, self.processor
        if hub is not None:
            hub.allow_unprotected = send_unprotected
        if processor is not None:
            processor.request(protect=protect)

    def set_hr_overlay(self, on: bool) -> None:
        self.settings.hr_overlay = on
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
    def _listener(self, frame: Frame, processor: FrameProcessor) -> None:
        # Processing thread: references only (frames are never reused), no widgets.
        self.latest.put(Snapshot(image=frame.image, output=frame.output, protected=frame.protected,
                                 faces=face_views(frame.faces), reading=processor.hr.reading,
                                 timestamp=frame.timestamp, index=frame.index,
                                 fail_closed_regions=frame.fail_closed_regions))
        if self.meter is not None:
            self.meter.submit(frame.image, frame.output, frame.protected)

    def _run(self) -> None:
        s = self.settings
        source = processor = hub = None
        ran = False
        try:
            source = self._opener(s.source, width=s.width, height=s.height, fps=s.fps, live=True)
            self.source = source
            if self._stop.is_set():
                return
            processor = PanelProcessor(PipelineConfig(
                engine=s.engine, manifest=s.manifest, max_faces=s.max_faces, fail_closed=s.fail_closed,
                protect=s.protect, hr_method=s.hr_method, hr_overlay=s.hr_overlay,
                min_confidence=s.min_confidence, hr_window_s=s.hr_window_s, detect_long_side=s.detect_long_side))
            hub = SinkHub(source.size, source.fps, allow_unprotected=s.send_unprotected)
            pipeline = Pipeline(source, processor, [hub], listeners=[self._listener])
            with self._lock:
                self.processor, self.hub, self.pipeline = processor, hub, pipeline
                # Switches flipped while we were starting up win over the settings copy.
                processor.request(protect=self.settings.protect, hr_overlay=self.settings.hr_overlay)
                hub.allow_unprotected = self.settings.send_unprotected
                if self._stop.is_set():
                    pipeline.stop()
            self._sync_virtual_camera()
            self.state = "running"
            ran = True
            pipeline.run()  # closes source, processor and hub on the way out, whatever happens
            self.state = "stopped" if self._stop.is_set() else "ended"
        except UserError as exc:
            self.error, self.state = str(exc), "failed"
        except Exception as exc:
            log.exception("pipeline failed")
            self.error, self.state = f"{type(exc).__name__}: {exc}", "failed"
        finally:
            if not ran:
                for thing in (source, processor, hub):
                    if thing is not None:
                        try:
                            thing.close()
                        except Exception:
                            pass
                if self.state == "starting":
                    self.state = "stopped"


# --------------------------------------------------------------------------------------
# Clinician's monitor
# --------------------------------------------------------------------------------------
class MonitorWorker:
    """Heart rate of the face in a file, camera or screen region (no de-identification).

    ``open_fn`` makes the source on the worker thread (cameras and screen grabbers are
    then created, read and released by one thread). Files are paced to their own
    timestamps when ``realtime`` (a clinician watches them as recorded), else read as fast
    as they decode.
    """

    def __init__(self, open_fn: Callable[[], Source], realtime: bool = True, hr_method: str = "pos",
                 window_s: float = 10.0):
        self._open = open_fn
        self.realtime = realtime
        self.hr_method, self.window_s = hr_method, window_s
        self.latest = LatestValue()
        self.readings: list = []
        self.frames = 0
        self.fps = 0.0
        self.state = "starting"
        self.error: str | None = None
        self.description = ""
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="livedeid-panel-monitor", daemon=True)

    def start(self) -> "MonitorWorker":
        self.thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> bool:
        self._stop.set()
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join(timeout)
        return not self.thread.is_alive()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def _run(self) -> None:
        from livedeid.rppg.hr import StreamingHR, mean_skin_rgb
        from livedeid.tracking.mesh import FaceTracker

        source = tracker = None
        try:
            source = self._open()
            self.description = source.description
            tracker = FaceTracker(max_faces=1)
            hr = StreamingHR(method=self.hr_method, window_s=self.window_s)
            t0_stream = t0_wall = None
            fps_t0, fps_n = time.monotonic(), 0
            last_t = None
            self.state = "running"
            while not self._stop.is_set():
                frame = source.read()
                if frame is None:
                    self.state = "ended"
                    break
                if self.realtime and not source.is_live:
                    if t0_stream is None:
                        t0_stream, t0_wall = frame.timestamp, time.monotonic()
                    delay = t0_wall + (frame.timestamp - t0_stream) - time.monotonic()
                    if delay > 0 and self._stop.wait(delay):
                        break
                faces = [f for f in tracker.update(frame.image, frame.timestamp) if not f.is_lost]
                rgb = mean_skin_rgb(frame.image, faces[0].landmarks) if faces else None
                reading = hr.push(frame.timestamp, rgb)
                if reading is not None and reading.timestamp != last_t:
                    last_t = reading.timestamp
                    self.readings.append(reading)
                self.frames += 1
                fps_n += 1
                now = time.monotonic()
                if now - fps_t0 >= 1.0:
                    self.fps, fps_t0, fps_n = fps_n / (now - fps_t0), now, 0
                self.latest.put(Snapshot(image=frame.image, output=None, protected=False,
                                         faces=face_views(faces), reading=reading,
                                         timestamp=frame.timestamp, index=frame.index))
        except UserError as exc:
            self.error, self.state = str(exc), "failed"
        except Exception as exc:
            log.exception("monitor failed")
            self.error, self.state = f"{type(exc).__name__}: {exc}", "failed"
        finally:
            for thing in (tracker, source):
                if thing is not None:
                    try:
                        thing.close()
                    except Exception:
                        pass
            if self.state in ("starting", "running"):
                self.state = "stopped"


# --------------------------------------------------------------------------------------
# Screen region source (mss)
# --------------------------------------------------------------------------------------
def screen_monitors() -> list[dict]:
    """mss monitors: [0] = all screens together, [1..] = each screen. UserError when
    screen capture is unavailable (no display, Wayland without XWayland...)."""
    try:
        import mss
    except ImportError:
        raise UserError("screen capture needs mss: pip install 'livedeid[gui]'") from None
    try:
        with mss.mss() as sct:
            return [dict(m) for m in sct.monitors]
    except Exception as exc:
        raise UserError(f"screen capture is not available here ({type(exc).__name__}: {exc})") from None


class ScreenSource(Source):
    """A rectangle of the screen, grabbed with mss at ``fps`` (e.g. the patient's tile in
    a video call). ``region`` is (left, top, width, height) in screen pixels; None = the
    primary screen. The grabber is created on the reading thread (mss handles are not
    shared across threads)."""

    is_live = True

    def __init__(self, region: tuple[int, int, int, int] | None = None, fps: float = 15.0):
        monitors = screen_monitors()
        if region is None:
            m = monitors[1] if len(monitors) > 1 else monitors[0]
            region = (m["left"], m["top"], m["width"], m["height"])
        left, top, width, height = (int(v) for v in region)
        if width < 64 or height < 64:
            raise UserError(f"screen region {width}x{height} is too small (at least 64x64)")
        everything = monitors[0]
        if (left < everything["left"] or top < everything["top"]
                or left + width > everything["left"] + everything["width"]
                or top + height > everything["top"] + everything["height"]):
            raise UserError(f"screen region {width}x{height}+{left}+{top} is outside the screen "
                            f"({everything['width']}x{everything['height']}+{everything['left']}+{everything['top']})")
        self.region = {"left": left, "top": top, "width": width, "height": height}
        self.size = (width, height)
        self.fps = float(fps)
        self.description = f"screen {width}x{height}+{left}+{top}"
        self._sct = None
        self._next_t: float | None = None
        self._index = 0

    def read(self) -> Frame | None:
        import mss

        now = time.monotonic()
        self._next_t = now if self._next_t is None else max(self._next_t + 1.0 / self.fps, now - 1.0 / self.fps)
        if self._next_t > now:
            time.sleep(self._next_t - now)
        if self._sct is None:
            self._sct = mss.mss()
        shot = self._sct.grab(self.region)
        image = np.ascontiguousarray(np.asarray(shot)[:, :, :3])  # BGRA -> BGR
        frame = Frame(image=image, index=self._index, timestamp=time.monotonic())
        self._index += 1
        return frame

    def close(self) -> None:
        if self._sct is not None:
            self._sct.close()
            self._sct = None


# --------------------------------------------------------------------------------------
# Cameras
# --------------------------------------------------------------------------------------
@dataclass
class CameraInfo:
    index: int
    label: str
    virtual: bool = False  # a v4l2loopback device: possibly our own output


def _v4l2_name(index: int) -> str:
    try:
        return Path(f"/sys/class/video4linux/video{index}/name").read_text().strip()
    except OSError:
        return ""


def probe_cameras(max_index: int = 4, skip: set[int] | None = None) -> list[CameraInfo]:
    """Cameras 0..max_index that deliver a frame. On Linux only existing /dev/videoN are
    tried, and loopback devices are labelled so nobody feeds our own output back in."""
    import cv2

    found = []
    linux = platform.system() == "Linux"
    nodes = set(glob.glob("/dev/video*")) if linux else set()
    for i in range(max_index + 1):
        if skip and i in skip:
            continue
        if linux and f"/dev/video{i}" not in nodes:
            continue
        name = _v4l2_name(i) if linux else ""
        virtual = any(k in name.lower() for k in ("loopback", "livedeid", "dummy", "obs"))
        cap = cv2.VideoCapture(i)
        try:
            if not cap.isOpened():
                continue
            ok, frame = cap.read()
            if not ok or frame is None:
                continue
            label = f"camera {i} ({frame.shape[1]}x{frame.shape[0]})" + (f" {name}" if name else "")
            found.append(CameraInfo(i, label + (" - virtual camera" if virtual else ""), virtual))
        finally:
            cap.release()
    return found
