"""Folders of PNG frames as videos: datasets such as PURE store a recording as one PNG per
frame, named by its capture time (``Image<nanoseconds>.png``), beside the pulse
oximeter's JSON.

:class:`FrameFolderSource` reads such a folder in name order (timestamps from the names);
:class:`FrameFolderSink` writes the protected frames back under the same names, into a
hidden folder beside the target that is renamed into place only when every frame is
written, so a failed run leaves no half folder that looks finished. :func:`open_video`
is the one place that tells a video file from a frame folder.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from livedeid.core.errors import UserError
from livedeid.core.records import Frame
from livedeid.io.sinks import Sink
from livedeid.io.sources import MAX_SIDE, FileSource, Source

# PURE's frame names: the capture time in nanoseconds.
TIMESTAMPED_NAME = re.compile(r"^Image(\d+)\.png$")


def frame_files(folder: Path) -> list[Path]:
    """The PNG frames of ``folder`` in capture order (by the number in their names)."""
    def key(p: Path):
        return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", p.name)]

    return sorted((p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file()), key=key)


def frame_times(files: list[Path]) -> list[float] | None:
    """Seconds since the first frame, from PURE-style names; None when a name carries none."""
    stamps = []
    for p in files:
        m = TIMESTAMPED_NAME.match(p.name)
        if m is None:
            return None
        stamps.append(int(m.group(1)))
    return [(s - stamps[0]) / 1e9 for s in stamps]


def is_frame_folder(path: Path) -> bool:
    return path.is_dir() and any(p.suffix.lower() == ".png" for p in path.iterdir())


class FrameFolderSource(Source):
    """The PNG frames of a folder as 8-bit BGR frames with their capture times."""

    has_audio = False

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder)
        self.description = f"frames {self.path.name}"
        if not self.path.is_dir():
            raise UserError(f"input not found: {self.path}")
        self.files = frame_files(self.path)
        if not self.files:
            raise UserError(f"no PNG frames in {self.path}")
        times = frame_times(self.files)
        if times is None:
            # A made-up frame rate would time the pulse wrongly (see FileSource).
            raise UserError(f"frames in {self.path} carry no capture times in their names (Image<ns>.png)")
        steps = np.diff(times)
        if len(steps) and not np.all(steps > 0):
            raise UserError(f"frames in {self.path} have repeated capture times")
        self.times = times
        self.fps = float(1.0 / np.median(steps)) if len(steps) else 30.0
        self.rate = Fraction(self.fps).limit_denominator(1001)
        self.frame_count = len(self.files)
        first = self._load(0)
        self.size = (first.shape[1], first.shape[0])
        if max(self.size) > MAX_SIDE:
            raise UserError(f"frames in {self.path} are too large ({self.size[0]}x{self.size[1]})")
        self._first = first
        self._index = 0

    def _load(self, i: int) -> np.ndarray:
        image = cv2.imread(str(self.files[i]), cv2.IMREAD_COLOR)
        if image is None:
            raise UserError(f"frame {self.files[i]} is damaged: it cannot be decoded")
        return image

    def read(self) -> Frame | None:
        i = self._index
        if i >= self.frame_count:
            return None
        image = self._first if i == 0 else self._load(i)
        if (image.shape[1], image.shape[0]) != self.size:
            raise UserError(f"frame {self.files[i]} is {image.shape[1]}x{image.shape[0]}, "
                            f"the first is {self.size[0]}x{self.size[1]}")
        self._index += 1
        return Frame(image=image, index=i, timestamp=self.times[i])

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.files]


class FrameFolderSink(Sink):
    """Protected frames written as PNG (lossless) under ``names``, one per frame, into
    ``folder`` atomically (a hidden sibling folder renamed into place on ``close()``)."""

    def __init__(self, folder: str | os.PathLike, names: list[str]):
        self.path = Path(folder)
        self.description = f"frames {self.path}"
        self.names = list(names)
        parent = self.path.parent
        if not parent.is_dir():
            raise UserError(f"output folder does not exist: {parent}")
        try:
            self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".partial", dir=parent))
        except OSError as exc:
            raise UserError(f"cannot write to {parent}: {exc.strerror or exc}") from None
        self._index = 0
        self._closed = False

    @property
    def frames_written(self) -> int:
        return self._index

    def send(self, image: np.ndarray) -> None:
        if self._index >= len(self.names):
            raise UserError(f"more frames than names for {self.path}")
        target = self._tmp / self.names[self._index]
        if not cv2.imwrite(str(target), image):
            self.abort()
            raise UserError(f"cannot write {target}")
        self._index += 1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._index != len(self.names):
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise UserError(f"{self.path}: {self._index} of {len(self.names)} frames written")
        os.chmod(self._tmp, 0o777 & ~_umask())  # mkdtemp makes it private
        old = None
        try:
            if self.path.exists():
                old = self.path.with_name(f".{self.path.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(self.path, old)
            os.replace(self._tmp, self.path)
        except OSError as exc:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise UserError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        if not self._closed:
            self._closed = True
            shutil.rmtree(self._tmp, ignore_errors=True)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def open_video(path: str | os.PathLike) -> Source:
    """A video file (:class:`~livedeid.io.sources.FileSource`) or, for a folder, its PNG
    frames (:class:`FrameFolderSource`)."""
    path = Path(path)
    return FrameFolderSource(path) if path.is_dir() else FileSource(path)
