"""A rectangle of the screen as a video source (mss): the clinician watches the patient's
tile in a video call."""
from __future__ import annotations

import time

import numpy as np

from livedeid.core.errors import UserError
from livedeid.core.records import Frame
from livedeid.io.sources import Source


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
