"""The panel pipeline's one sink: the virtual camera and a recording, attachable while running."""
from __future__ import annotations

import logging
import math
import threading
from pathlib import Path

import numpy as np

from livedeid.core.errors import UserError
from livedeid.io.sinks import FileSink, Sink, VirtualCameraSink, virtual_camera_hint
from livedeid.panel.common import UnprotectedImage

log = logging.getLogger(__name__)


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
