"""Which cameras deliver frames here: the one probe behind ``livedeid doctor`` and the
panel's camera list."""
from __future__ import annotations

import glob
import platform
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# Words in a V4L2 device name that mark a virtual (loopback) camera: possibly our own
# output, which must never be fed back in as the patient's camera.
VIRTUAL_CAMERA_WORDS = ("loopback", "livedeid", "dummy", "obs")


@dataclass
class CameraInfo:
    index: int
    size: tuple[int, int]   # (width, height) of the first frame it delivered
    name: str = ""          # the driver's device name, where the OS tells it (Linux)
    virtual: bool = False   # a loopback device: possibly our own output

    @property
    def label(self) -> str:
        text = f"camera {self.index} ({self.size[0]}x{self.size[1]})" + (f" {self.name}" if self.name else "")
        return text + (" - virtual camera" if self.virtual else "")


def video_nodes() -> set[str] | None:
    """The /dev/video* device nodes on Linux; None elsewhere (no cheap way to list)."""
    if platform.system() != "Linux":
        return None
    return set(glob.glob("/dev/video*"))


def _v4l2_name(index: int) -> str:
    try:
        return Path(f"/sys/class/video4linux/video{index}/name").read_text().strip()
    except OSError:
        return ""


def probe_cameras(max_index: int = 4, skip: Iterable[int] = ()) -> list[CameraInfo]:
    """Cameras 0..max_index that deliver a frame, except those in ``skip`` (a camera in
    use: opening it would steal it). On Linux only existing /dev/videoN are tried, and
    loopback devices are marked ``virtual``."""
    import cv2

    skip = set(skip)
    nodes = video_nodes()
    found = []
    for i in range(max_index + 1):
        if i in skip or (nodes is not None and f"/dev/video{i}" not in nodes):
            continue
        name = _v4l2_name(i) if nodes is not None else ""
        cap = cv2.VideoCapture(i)
        try:
            if not cap.isOpened():
                continue
            ok, frame = cap.read()
            if not ok or frame is None:
                continue
        finally:
            cap.release()
        virtual = any(word in name.lower() for word in VIRTUAL_CAMERA_WORDS)
        found.append(CameraInfo(i, (frame.shape[1], frame.shape[0]), name, virtual))
    return found
