import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
ARTIFACTS = ROOT / "test-artifacts"


def data_path(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test naming what is missing."""
    p = DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"../shared/data not found: {p} is missing")
    return p


# -- the command line as users run it: a subprocess, with a timeout so nothing can hang ------
def run_cli(*args, timeout=120):
    proc = subprocess.run([sys.executable, "-m", "livedeid", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def assert_one_line_error(rc, err, pattern):
    assert rc == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("livedeid: error:")]
    assert len(lines) == 1 and pattern in lines[0], err
    assert "Traceback" not in err


def write_video(path, n=30, size=(64, 48), faststart=False, codec="libx264", pix_fmt="yuv420p"):
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as c:
        s = c.add_stream(codec, rate=30)
        s.width, s.height, s.pix_fmt = size[0], size[1], pix_fmt
        for i in range(n):
            img = np.full((size[1], size[0], 3), (i * 8) % 255, np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)


def video_info(path):
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        n = sum(1 for _ in c.decode(v))
        return n, v.average_rate, (v.codec_context.width, v.codec_context.height), len(c.streams.audio)


@pytest.fixture(scope="session")
def astronaut_bgr() -> np.ndarray:
    """A real face photo that ships with scikit-image (no data folder needed)."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[:, :, ::-1])


@pytest.fixture(scope="session")
def two_heads(astronaut_bgr):
    """``two_heads(second)``: an 800x450 frame with the photo's head on the left and, if
    ``second``, again on the right (a second person sitting down beside the first)."""
    import cv2

    head = cv2.resize(astronaut_bgr[0:280, 80:340], (340, 366), interpolation=cv2.INTER_LINEAR)

    def frame(second: bool) -> np.ndarray:
        image = np.full((450, 800, 3), (40, 60, 50), np.uint8)
        image[40:406, 30:370] = head
        if second:
            image[40:406, 430:770] = head
        return image

    return frame


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def pytest_collection_modifyitems(session, config, items):
    """The panel's status tests run before tests/test_gui.py. Known, not yet understood:
    after test_gui's window opened through ``livedeid`` with no command (``main([])``)
    has closed, a new window's pipeline in the same process does not reach its running
    state within 90 s; alone, or before it, the status tests pass in 20 s. Recorded in
    docs/decisions.md; until it is found, the order keeps both honest."""
    first = [it for it in items if it.nodeid.startswith("tests/test_panel_status.py")]
    if first:
        items[:] = first + [it for it in items if not it.nodeid.startswith("tests/test_panel_status.py")]
