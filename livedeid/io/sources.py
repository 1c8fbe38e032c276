"""Capture: video files (PyAV, frame-exact), cameras (OpenCV) and the synthetic source.

Every source yields :class:`~livedeid.core.records.Frame` records. Files carry their
presentation timestamps; live sources are stamped with ``time.monotonic()`` when the
frame arrives. :class:`CaptureThread` decouples reading from processing with a bounded
queue: live sources drop the *oldest* frame when processing lags, files never drop.
"""
from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from livedeid.core.errors import UserError
from livedeid.core.records import Frame

log = logging.getLogger(__name__)


class Source:
    """Base class. ``fps`` is nominal, ``frame_count`` is None for live sources."""

    is_live = False
    fps: float = 30.0
    frame_count: int | None = None
    size: tuple[int, int] = (0, 0)  # (width, height)
    description = "source"

    def read(self) -> Frame | None:  # None = end of stream
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __iter__(self) -> Iterator[Frame]:
        while (frame := self.read()) is not None:
            yield frame

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# 8K UHD (7680x4320) and DCI 8K (8192x4320) are the largest frames supported: H.264's
# highest level stops there, and a few larger frames in the queues would exhaust memory.
MAX_SIDE = 8192


class FileSource(Source):
    """A video file decoded with PyAV (FFmpeg): every frame, in order, as BGR uint8.

    Greyscale, 10/16-bit and odd pixel formats are converted to 8-bit BGR by FFmpeg.
    A file whose decoding stops before its declared frame count is reported as
    truncated rather than silently producing a shorter output.
    """

    def __init__(self, path: str | os.PathLike):
        import av

        self.path = Path(path)
        self.description = f"file {self.path.name}"
        if not self.path.exists():
            raise UserError(f"input not found: {self.path}")
        if not self.path.is_file():
            raise UserError(f"input is not a file: {self.path}")
        if self.path.stat().st_size == 0:
            raise UserError(f"input is empty (0 bytes): {self.path}")
        try:
            # FFmpeg replaces a declared frame rate of 0 or 0/0 with its 25 fps default and
            # only says so in its log; a clip played or timed at a made-up rate would give
            # wrong heart rates, so that log line is an error here.
            previous_level = av.logging.get_level()
            av.logging.set_level(av.logging.WARNING)
            try:
                with av.logging.Capture() as ffmpeg_log:
                    self._container = av.open(str(self.path))
            finally:
                av.logging.set_level(previous_level)
        except PermissionError:
            raise UserError(f"cannot read video {self.path}: permission denied") from None
        except (av.error.FFmpegError, OSError, UnicodeDecodeError):
            # FFmpeg's own words ("[Errno 1094995529] Invalid data ... moov atom not found")
            # say nothing to a patient; the cause they can act on is this.
            raise UserError(f"cannot read video {self.path}: not a video file, or the file is damaged") from None
        bad_rate = [msg for _, _, msg in ffmpeg_log if "rate is" in msg and "invalid" in msg]
        if bad_rate:
            self._container.close()
            raise UserError(f"video {self.path} declares an invalid frame rate "
                            f"({bad_rate[0].split('rate is', 1)[1].split('which')[0].strip()})")
        if not self._container.streams.video:
            self._container.close()
            raise UserError(f"no video stream in {self.path}")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        rate = self._stream.average_rate or self._stream.guessed_rate
        fps = float(rate) if rate else float("nan")
        if not math.isfinite(fps) or fps <= 0 or fps > 1000:
            self._container.close()
            raise UserError(f"video {self.path} has no valid frame rate ({fps})")
        self.fps = fps
        self.rate = Fraction(rate).limit_denominator(100000)
        self.size = (self._stream.codec_context.width, self._stream.codec_context.height)
        if self.size[0] < 2 or self.size[1] < 2:
            self._container.close()
            raise UserError(f"video {self.path} is too small ({self.size[0]}x{self.size[1]})")
        if max(self.size) > MAX_SIDE:
            self._container.close()
            raise UserError(f"video {self.path} is too large ({self.size[0]}x{self.size[1]}; "
                            f"frames up to {MAX_SIDE} px on a side are supported)")
        self.frame_count = self._stream.frames or None
        self.has_audio = bool(self._container.streams.audio)
        self._frames = self._container.decode(self._stream)
        self._index = 0

    def read(self) -> Frame | None:
        import av

        try:
            vf = next(self._frames)
        except StopIteration:
            if self.frame_count and self._index < self.frame_count:
                raise UserError(
                    f"video {self.path} is truncated: {self._index} of {self.frame_count} frames decodable"
                ) from None
            return None
        except (av.error.FFmpegError, OSError) as exc:
            log.info("decoder error at frame %d of %s: %s", self._index, self.path, _one_line(exc))
            raise UserError(f"video {self.path} is damaged at frame {self._index}: it cannot be decoded "
                            "from there on") from None
        image = vf.to_ndarray(format="bgr24")
        t = float(vf.time) if vf.time is not None else self._index / self.fps
        frame = Frame(image=image, index=self._index, timestamp=t)
        self._index += 1
        return frame

    def skip(self, count: int) -> None:
        """Decode and drop the next ``count`` frames (``process --resume``): exact, unlike a
        keyframe seek."""
        for _ in range(count):
            if self.read() is None:
                raise UserError(f"video {self.path} has fewer frames than the run being resumed")

    def close(self) -> None:
        self._container.close()


class CameraSource(Source):
    """An OpenCV camera (index) or stream URL, asking for MJPG where the camera offers it
    (uncompressed YUYV at 720p+ is limited to low frame rates over USB 2)."""

    is_live = True

    def __init__(self, device: int | str = 0, width: int | None = None, height: int | None = None,
                 fps: float | None = None, mjpg: bool = True):
        self.device = device
        self.description = f"camera {device}"
        self._cap = cv2.VideoCapture(device)
        if not self._cap.isOpened():
            raise UserError(f"camera {device} is not available (see `livedeid doctor` for the cameras found)")
        self._settings = (width, height, fps, mjpg)
        self._configure()
        ok, first = self._cap.read()
        if not ok or first is None:
            self._cap.release()
            raise UserError(f"camera {device} opened but delivers no frames")
        self._pending: np.ndarray | None = first
        self.size = (first.shape[1], first.shape[0])
        reported = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(reported) if reported and math.isfinite(reported) and reported > 0 else (fps or 30.0)
        self._index = 0

    def _configure(self) -> None:
        width, height, fps, mjpg = self._settings
        if mjpg:
            self._cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"MJPG"))
        if width:
            self._cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        if height:
            self._cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        if fps:
            self._cap.set(cv2.CAP_PROP_FPS, fps)

    def reopen(self) -> None:
        """Open the device again after it failed (unplugged and plugged back); raises
        :class:`CameraLost` while it is still unavailable or has another frame size."""
        self._cap.release()
        self._cap = cv2.VideoCapture(self.device)
        if not self._cap.isOpened():
            raise CameraLost(f"camera {self.device} is still unavailable")
        self._configure()
        ok, first = self._cap.read()
        if not ok or first is None or (first.shape[1], first.shape[0]) != self.size:
            raise CameraLost(f"camera {self.device} is not delivering {self.size[0]}x{self.size[1]} frames yet")
        self._pending = first

    def read(self) -> Frame | None:
        if self._pending is not None:
            image, self._pending = self._pending, None
        else:
            ok, image = self._cap.read()
            if not ok or image is None:
                raise CameraLost(f"camera {self.device} stopped delivering frames")
        frame = Frame(image=image, index=self._index, timestamp=time.monotonic())
        self._index += 1
        return frame

    def close(self) -> None:
        self._cap.release()


class CameraLost(RuntimeError):
    """A live source failed mid-run (unplugged, driver error)."""


class SyntheticSource(Source):
    """The built-in pulse clip (:class:`livedeid.io.synthetic.SyntheticPulseSource`) as a source:
    a real face photo animated with head motion, light flicker, noise and a known pulse."""

    def __init__(self, **kwargs):
        from livedeid.io.synthetic import SyntheticPulseSource

        try:
            self.clip = SyntheticPulseSource(**kwargs)
        except ValueError as exc:
            raise UserError(f"synthetic source: {exc}") from None
        self.fps, self.size, self.frame_count = self.clip.fps, self.clip.size, self.clip.frame_count
        self.rate = Fraction(self.fps).limit_denominator(1000)
        self.true_hr = self.clip.mean_true_hr
        self.description = f"synthetic clip ({self.true_hr:.0f} bpm)"
        self._index = 0

    def read(self) -> Frame | None:
        if self._index >= self.frame_count:
            return None
        frame = self.clip.frame(self._index)
        self._index += 1
        return frame

    def frame_at(self, index: int) -> Frame:
        """Random access (rendering is per frame), so live playback can skip cheaply."""
        self._index = index + 1
        return self.clip.frame(index)


class LiveSimulation(Source):
    """Plays a finite source in real time, as a camera would (used for `run` with a file or
    the synthetic source); ``loop`` restarts it at the end.

    Like a camera, it does not slow down when the reader is slow: the frame delivered is
    the one due at the current wall-clock time, frames in between are skipped, and each
    frame's timestamp is its due time on the clip's timeline. (Stamping frames when they
    happen to be produced would compress time after a stall and distort the heart rate.)
    """

    is_live = True

    def __init__(self, make_source, loop: bool = False):
        self._make = make_source
        self._src = make_source()
        self.fps, self.size, self.loop = self._src.fps, self._src.size, loop
        self.description = f"{self._src.description} (live at {self.fps:.1f} fps)"
        self._t0: float | None = None
        self._clip_index = 0     # index of the next frame the current source will return
        self._clip_offset = 0    # frames of earlier loops
        self._next_due = 0       # first timeline frame not yet delivered
        self._index = 0

    def read(self) -> Frame | None:
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
        target = max(self._next_due, int((now - self._t0) * self.fps))
        due = self._t0 + target / self.fps
        if due > now:
            time.sleep(due - now)
        frame = self._frame_at(target)
        if frame is None:
            return None
        self._next_due = target + 1
        frame.index, frame.timestamp = self._index, due
        self._index += 1
        return frame

    def _frame_at(self, target: int) -> Frame | None:
        """The frame at timeline position ``target``, skipping (decoding and dropping)
        the ones before it; across loop restarts."""
        while True:
            local = target - self._clip_offset
            seek = getattr(self._src, "frame_at", None)
            if seek is not None and local < (self._src.frame_count or 0):
                self._clip_index = local + 1
                return seek(local)
            frame = self._src.read()
            if frame is None:
                if not self.loop or self._clip_index == 0:
                    return None
                self._src.close()
                self._src = self._make()
                self._clip_offset += self._clip_index
                self._clip_index = 0
                continue
            self._clip_index += 1
            if self._clip_index - 1 >= local:
                return frame

    def close(self) -> None:
        self._src.close()


def open_source(spec: str, *, width: int | None = None, height: int | None = None, fps: float | None = None,
                live: bool = False) -> Source:
    """``spec``: camera index ("0"), ``synthetic[:HR]`` (built-in pulse clip), or a file.
    ``live`` plays files at their frame rate like a camera."""
    if spec.isdigit():
        return CameraSource(int(spec), width, height, fps)
    if spec.startswith("synthetic"):
        try:
            hr = float(spec.split(":", 1)[1]) if ":" in spec else 72.0
        except ValueError:
            raise UserError(f"bad synthetic source '{spec}': use synthetic or synthetic:HR (bpm)") from None
        make = lambda: SyntheticSource(hr_bpm=hr, fps=fps or 30.0,  # noqa: E731
                                       size=(width or 1280, height or 720))
        make()  # validate the settings now, with a clear error
        return LiveSimulation(make, loop=True) if live else make()
    if "://" in spec:
        return CameraSource(spec, width, height, fps)
    if live:
        return LiveSimulation(lambda: FileSource(spec), loop=True)
    return FileSource(spec)


class CaptureThread(threading.Thread):
    """Reads a source into a bounded queue. Live: when the queue is full the oldest frame
    is dropped (and counted) so latency stays bounded. Files: the reader waits."""

    def __init__(self, source: Source, maxsize: int = 4, backoff_s: tuple[float, float] = (0.5, 5.0)):
        super().__init__(name="livedeid-capture", daemon=True)
        self.source = source
        self.frames: queue.Queue = queue.Queue(maxsize=maxsize)
        self.dropped = 0
        self.error: BaseException | None = None
        self.status = "ok"
        self.reconnects = 0
        self.backoff_s = backoff_s
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                try:
                    frame = self.source.read()
                except CameraLost as exc:
                    if not hasattr(self.source, "reopen"):
                        raise
                    self._reconnect(exc)
                    continue
                if frame is None:
                    break
                self._put(frame)
        except BaseException as exc:  # handed to the consumer, which decides
            self.error = exc
        finally:
            self._put(None, final=True)

    def _reconnect(self, why: BaseException) -> None:
        """Retry a lost camera with exponential back-off until it returns or we are
        stopped; the sink side keeps the virtual camera fed meanwhile."""
        delay, longest = self.backoff_s
        while not self._halt.is_set():
            self.status = f"{why}; reconnecting in {delay:.1f} s"
            if self._halt.wait(delay):
                return
            try:
                self.source.reopen()
            except CameraLost as exc:
                why = exc
                delay = min(longest, delay * 2)
                continue
            self.reconnects += 1
            self.status = "ok"
            return

    def _put(self, item, final: bool = False) -> None:
        if self.source.is_live and not final:
            while True:
                try:
                    self.frames.put_nowait(item)
                    return
                except queue.Full:
                    try:
                        self.frames.get_nowait()
                        self.dropped += 1
                    except queue.Empty:
                        pass
        while not self._halt.is_set() or final:
            try:
                self.frames.put(item, timeout=0.1)
                return
            except queue.Full:
                if final and self._halt.is_set():
                    try:  # consumer is gone: make room for the end marker
                        self.frames.get_nowait()
                    except queue.Empty:
                        pass


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
