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

from livedeid.core.errors import UserError


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


LINUX_VIRTUAL_CAMERA_COMMAND = "sudo modprobe v4l2loopback devices=1 exclusive_caps=1 card_label=livedeid"
OBS_DOWNLOAD = "https://obsproject.com/download"


def virtual_camera_hint() -> str:
    system = platform.system()
    if system == "Linux":
        return f"install v4l2loopback and run: {LINUX_VIRTUAL_CAMERA_COMMAND}"
    if system == "Darwin":
        return "install OBS Studio and start its Virtual Camera once (OBS >= 30)"
    return "install OBS Studio (its virtual camera) or Unity Capture"


def virtual_camera_setup() -> tuple[str, str]:
    """How a patient sets up a virtual camera on this system: (one plain sentence, the
    text a "copy" button puts on the clipboard: the command, or where to get OBS)."""
    system = platform.system()
    if system == "Linux":
        return ("Video-call apps see livedeid through a virtual camera, which Linux provides once the "
                "v4l2loopback module is installed and loaded: copy the command, paste it into a terminal "
                "(it asks for your password), then press Check again.", LINUX_VIRTUAL_CAMERA_COMMAND)
    app = "OBS Studio" + (" (version 30 or newer)" if system == "Darwin" else "")
    return (f"Video-call apps see livedeid through a virtual camera: install {app} from the copied link, "
            "open it once and click Start Virtual Camera, then press Check again.", OBS_DOWNLOAD)


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


def container_format(path: Path) -> str | None:
    return {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi"}.get(path.suffix.lower())


# AVI stores no presentation timestamps, only decode order: a codec that reorders frames
# (H.264 B-frames) then decodes with shuffled timestamps (0.033, 0.133, 0.100, ...), and a
# reader that trusts them measures the wrong frame rate. Such containers get no B-frames.
NO_REORDER_FORMATS = ("avi",)


def codec_options(codec: str, container: str | None) -> dict[str, str]:
    """The encoder options of ``codec`` (a :data:`CODECS` key) in ``container`` (a
    :func:`container_format` name)."""
    name, _, options = CODECS[codec]
    options = dict(options)
    if container in NO_REORDER_FORMATS and name.startswith("libx264"):
        options["bf"] = "0"
    return options


def temp_file_beside(path: Path) -> Path:
    """An empty hidden ``.partial`` file in ``path``'s folder, to be renamed onto ``path``
    once complete (same filesystem, so the rename is atomic)."""
    parent = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".partial{path.suffix or '.mp4'}", dir=parent)
    except OSError as exc:
        raise UserError(f"cannot write to {parent}: {exc.strerror or exc}") from None
    os.close(fd)
    # mkstemp makes the file private (0600); the finished video gets the permissions any
    # new file of this user gets.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return Path(tmp)


class FileSink(Sink):
    """Frame-exact video file writer (PyAV): one output frame per input frame, the input's
    frame rate as the time base, and the audio track copied from ``audio_from``."""

    def __init__(self, path: str | os.PathLike, width: int, height: int, rate: Fraction | float,
                 codec: str = "h264", audio_from: str | os.PathLike | None = None,
                 extra_options: dict[str, str] | None = None):
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
        self._tmp = temp_file_beside(self.path)
        name, pix_fmt, _ = CODECS[codec]
        options = codec_options(codec, self._format())
        try:
            self._container = av.open(str(self._tmp), mode="w", format=self._format())
            self._stream = self._container.add_stream(name, rate=self.rate,
                                                      options={**options, **(extra_options or {})})
        except (av.error.FFmpegError, ValueError) as exc:
            self._tmp.unlink(missing_ok=True)
            raise UserError(f"cannot write {self.path}: {str(exc).splitlines()[0]}") from None
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, pix_fmt
        self._pix_fmt = pix_fmt
        self._frame_time_base = 1 / self.rate  # frame n has pts n: one output frame per input frame
        self._index = 0
        self._closed = False

    def _format(self) -> str | None:
        return container_format(self.path)

    def send(self, image: np.ndarray) -> None:
        import av
        import cv2

        if self._pix_fmt == "yuv420p":
            # OpenCV's conversion (BT.601, limited range: the matrix swscale uses) costs the
            # encode thread 0.8-1.1 ms a 720p frame where PyAV's swscale path cost 3.5 ms.
            frame = av.VideoFrame.from_ndarray(cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420), format="yuv420p")
        else:
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
        muxed = self._tmp.with_name(self._tmp.name + ".av" + self._tmp.suffix)
        try:
            join_video(muxed, [self._tmp], self._format(), self.audio_from)
            muxed.replace(self._tmp)
        finally:
            muxed.unlink(missing_ok=True)


def join_video(out_path: Path, parts: list[Path], container_format: str | None,
               audio_from: Path | None = None) -> None:
    """Stream-copy the video of ``parts`` one after another (timestamps shifted so each part
    starts where the previous one ended) plus the audio of ``audio_from`` into ``out_path``.
    Parts must share codec settings and must not reorder frames across their ends (no
    B-frames), so their decode timestamps stay increasing."""
    import av

    with av.open(str(out_path), "w", format=container_format) as out:
        v_out = a_in = a_out = src = None
        try:
            if audio_from is not None:
                src = av.open(str(audio_from))
                if src.streams.audio:
                    a_in = src.streams.audio[0]
            offset = Fraction(0)  # seconds
            for part in parts:
                with av.open(str(part)) as vid:
                    v_in = vid.streams.video[0]
                    if v_out is None:
                        v_out = out.add_stream_from_template(v_in)
                        if a_in is not None:
                            a_out = out.add_stream_from_template(a_in)
                    shift = int(round(offset / v_in.time_base))
                    rate = v_in.average_rate or v_in.guessed_rate
                    frame_ticks = int(round(1 / (rate * v_in.time_base)))
                    end = offset
                    for packet in vid.demux(v_in):
                        if packet.dts is None:
                            continue
                        end = max(end, offset + (packet.pts + (packet.duration or frame_ticks)) * v_in.time_base)
                        packet.pts += shift
                        packet.dts += shift
                        packet.stream = v_out
                        out.mux(packet)
                    offset = end
            if a_out is not None:
                for packet in src.demux(a_in):
                    if packet.dts is None:
                        continue
                    packet.stream = a_out
                    out.mux(packet)
        finally:
            if src is not None:
                src.close()


class ResumableFileSink(Sink):
    """``process --resume``: the output is written as finished segments of a few seconds in a
    hidden folder beside it (``.NAME.resume/``, with a ``state.json``), so a run stopped by a
    full disk, Ctrl+C or a crash keeps every finished segment. Run again with ``--resume`` and
    the same input and settings, it continues after the last finished segment. ``close()``
    joins the segments (stream copy) and the input's audio into the output atomically and
    deletes the folder. Segments are encoded without B-frames so they join seamlessly."""

    def __init__(self, path: str | os.PathLike, width: int, height: int, rate: Fraction | float,
                 codec: str = "h264", audio_from: str | os.PathLike | None = None,
                 fingerprint: dict | None = None, segment_frames: int = 150):
        import json

        self.path = Path(path)
        self.description = f"file {self.path} (resumable)"
        if codec not in CODECS:
            raise UserError(f"unknown codec '{codec}' (choose from {', '.join(CODECS)})")
        if segment_frames < 1:
            raise UserError("resume segments must hold at least one frame")
        self.work = self.path.with_name(f".{self.path.name}.resume")
        self.size, self.rate = (width, height), Fraction(rate).limit_denominator(100000)
        self.codec, self.audio_from = codec, Path(audio_from) if audio_from else None
        self.state = {"version": 1, "fingerprint": fingerprint or {}, "size": [width, height],
                      "rate": str(self.rate), "codec": codec, "segment_frames": segment_frames,
                      "segments": []}
        state_path = self.work / "state.json"
        if state_path.is_file():
            try:
                saved = json.loads(state_path.read_text())
            except (OSError, ValueError) as exc:
                raise UserError(f"cannot read resume state {state_path}: {exc}; delete {self.work}") from None
            if {k: v for k, v in saved.items() if k != "segments"} != \
                    {k: v for k, v in self.state.items() if k != "segments"}:
                raise UserError(f"{self.work} holds a run with another input or other settings; "
                                f"delete it or use the same command")
            segments = saved.get("segments", [])
            if not all((self.work / s["file"]).is_file() for s in segments):
                raise UserError(f"resume state {state_path} names missing segments; delete {self.work}")
            self.state["segments"] = segments
        for stale in self.work.glob(".*partial*"):  # the segment being written when it stopped
            stale.unlink()
        self._writer: FileSink | None = None
        self._closed = False

    @property
    def frames_done(self) -> int:
        """Frames already in finished segments: the input frame to continue from."""
        return sum(int(s["frames"]) for s in self.state["segments"])

    def _save_state(self) -> None:
        import json

        tmp = self.work / ".state.json.partial"
        tmp.write_text(json.dumps(self.state, indent=1) + "\n")
        tmp.replace(self.work / "state.json")

    def _finish_segment(self) -> None:
        writer, self._writer = self._writer, None
        writer.close()
        self.state["segments"].append({"file": writer.path.name, "frames": writer.frames_written})
        self._save_state()

    def send(self, image: np.ndarray) -> None:
        if self._writer is None:
            try:
                self.work.mkdir(exist_ok=True)
            except OSError as exc:
                raise UserError(f"cannot write {self.work}: {exc.strerror or exc}") from None
            name = f"part{len(self.state['segments']):05d}{self.path.suffix or '.mp4'}"
            self._writer = FileSink(self.work / name, *self.size, rate=self.rate, codec=self.codec,
                                    extra_options={"bf": "0"} if self.codec != "ffv1" else None)
        self._writer.send(image)
        if self._writer.frames_written >= self.state["segment_frames"]:
            self._finish_segment()

    def close(self) -> None:
        import shutil

        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._finish_segment()
        parts = [self.work / s["file"] for s in self.state["segments"]]
        if not parts:
            raise UserError(f"nothing to write to {self.path}: no frames")
        tmp = temp_file_beside(self.path)
        fmt = container_format(self.path)
        try:
            join_video(tmp, parts, fmt, self.audio_from)
            tmp.replace(self.path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise UserError(f"cannot write {self.path}: {exc.strerror or exc} "
                            f"(finished segments kept; run again with --resume)") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        shutil.rmtree(self.work, ignore_errors=True)

    def abort(self) -> None:
        """Keep the finished segments for ``--resume``; drop only the unfinished one."""
        import shutil

        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._writer.abort()
        if not self.state["segments"]:
            shutil.rmtree(self.work, ignore_errors=True)
