"""Sinks: where protected frames go — a virtual camera, a video file, or nowhere.

Every sink takes uint8 BGR frames of one fixed size via ``send(image)`` and is closed
exactly once. :class:`FileSink` writes to a temporary file next to the target and
renames it into place only when complete, so a failed run leaves nothing partial.
"""
from __future__ import annotations

import os
import platform
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np

from .errors import UserError


class Sink:
    description = "sink"

    def send(self, image: np.ndarray) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def abort(self) -> None:
        """Close after a failure: discard anything partial."""
        self.close()


class NullSink(Sink):
    description = "null"

    def __init__(self):
        self.frames = 0

    def send(self, image: np.ndarray) -> None:
        self.frames += 1


def virtual_camera_hint() -> str:
    system = platform.system()
    if system == "Linux":
        return ("install v4l2loopback and run: sudo modprobe v4l2loopback devices=1 exclusive_caps=1 "
                "card_label=livedeid")
    if system == "Darwin":
        return "install OBS Studio and start its Virtual Camera once (OBS >= 30)"
    return "install OBS Studio (its virtual camera) or Unity Capture"


class VirtualCameraSink(Sink):
    """pyvirtualcam: v4l2loopback on Linux, OBS (or Unity Capture) on Windows, OBS on macOS.
    Frames are sent in BGR so no per-frame colour conversion is needed on our side."""

    def __init__(self, width: int, height: int, fps: float, backend: str | None = None, device: str | None = None):
        import pyvirtualcam

        try:
            self.camera = pyvirtualcam.Camera(
                width=width, height=height, fps=fps, fmt=pyvirtualcam.PixelFormat.BGR,
                backend=backend, device=device,
            )
        except (RuntimeError, ValueError, FileNotFoundError, OSError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"no virtual camera ({first}); fix: {virtual_camera_hint()}") from None
        self.size = (width, height)
        self.description = f"virtual camera {self.camera.device} ({self.camera.backend})"

    def send(self, image: np.ndarray) -> None:
        if (image.shape[1], image.shape[0]) != self.size:
            raise ValueError(f"frame {image.shape[1]}x{image.shape[0]} does not match camera {self.size}")
        self.camera.send(image)

    def close(self) -> None:
        self.camera.close()


# Codec choices for file output: name -> (codec, pixel format, options, container suffix hint)
CODECS = {
    "h264": ("libx264", "yuv420p", {"crf": "17", "preset": "veryfast"}),
    "lossless": ("libx264rgb", "bgr24", {"qp": "0", "preset": "veryfast"}),
    "ffv1": ("ffv1", "bgr0", {}),
}


class FileSink(Sink):
    """Frame-exact video file writer (PyAV): one output frame per input frame, the input's
    frame rate as the time base, and the audio track copied from ``audio_from``."""

    def __init__(self, path: str | os.PathLike, width: int, height: int, rate: Fraction | float,
                 codec: str = "h264", audio_from: str | os.PathLike | None = None):
        import av

        self.path = Path(path)
        self.description = f"file {self.path}"
        if codec not in CODECS:
            raise UserError(f"unknown codec '{codec}' (choose from {', '.join(CODECS)})")
        parent = self.path.parent if str(self.path.parent) else Path(".")
        if not parent.is_dir():
            raise UserError(f"output folder does not exist: {parent}")
        if not os.access(parent, os.W_OK):
            raise UserError(f"output folder is not writable: {parent}")
        if codec == "h264" and (width % 2 or height % 2):
            codec = "lossless"  # yuv420p needs even sizes; keep every pixel instead of cropping
        self.rate = Fraction(rate).limit_denominator(100000)
        self.audio_from = Path(audio_from) if audio_from else None
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.stem}.",
                                       suffix=f".partial{self.path.suffix or '.mp4'}", dir=parent)
        except OSError as exc:
            raise UserError(f"cannot write to {parent}: {exc.strerror or exc}") from None
        os.close(fd)
        self._tmp = Path(tmp)
        name, pix_fmt, options = CODECS[codec]
        try:
            self._container = av.open(str(self._tmp), mode="w", format=self._format())
            self._stream = self._container.add_stream(name, rate=self.rate, options=dict(options))
        except (av.error.FFmpegError, ValueError) as exc:
            self._tmp.unlink(missing_ok=True)
            raise UserError(f"cannot write {self.path}: {str(exc).splitlines()[0]}") from None
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, pix_fmt
        self._frame_time_base = 1 / self.rate  # frame n has pts n: one output frame per input frame
        self._index = 0
        self._closed = False

    def _format(self) -> str | None:
        return {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi"}.get(self.path.suffix.lower())

    def send(self, image: np.ndarray) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts = self._index
        frame.time_base = self._frame_time_base
        self._index += 1
        try:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        except OSError as exc:  # ENOSPC and friends
            self.abort()
            raise UserError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    @property
    def frames_written(self) -> int:
        return self._index

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._container.close()
            if self.audio_from is not None:
                self._add_audio()
            self._tmp.replace(self.path)
        except OSError as exc:
            self._tmp.unlink(missing_ok=True)
            raise UserError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._container.close()
        except Exception:  # nothing of the partial file is kept anyway
            pass
        self._tmp.unlink(missing_ok=True)

    def _add_audio(self) -> None:
        """Remux: our video packets + the source's audio packets (copied, not re-encoded)."""
        import av

        with av.open(str(self.audio_from)) as src:
            if not src.streams.audio:
                return
            muxed = self._tmp.with_name(self._tmp.name + ".av" + self._tmp.suffix)
            try:
                with av.open(str(self._tmp)) as vid, av.open(str(muxed), "w", format=self._format()) as out:
                    v_in = vid.streams.video[0]
                    a_in = src.streams.audio[0]
                    v_out = out.add_stream_from_template(v_in)
                    a_out = out.add_stream_from_template(a_in)
                    for packet in vid.demux(v_in):
                        if packet.dts is None:
                            continue
                        packet.stream = v_out
                        out.mux(packet)
                    for packet in src.demux(a_in):
                        if packet.dts is None:
                            continue
                        packet.stream = a_out
                        out.mux(packet)
                muxed.replace(self._tmp)
            finally:
                muxed.unlink(missing_ok=True)
