"""Every container the file commands write decodes with increasing timestamps at the
input's rate: AVI carries no presentation times, so nothing there may reorder frames."""
from __future__ import annotations

import av
import numpy as np
import pytest
from conftest import run_cli

from livedeid.io.sinks import FileSink

CASES = [(ext, codec) for ext in ("mp4", "mkv", "avi", "mov") for codec in ("h264", "lossless", "ffv1")
         if not (ext == "mov" and codec == "ffv1")]


def moving_frames(n: int = 40, size=(320, 240)) -> list[np.ndarray]:
    """A textured picture panning 2 px a frame: content on which x264 uses B-frames."""
    w, h = size
    texture = np.random.default_rng(0).integers(0, 255, (h, w + 2 * n, 3), dtype=np.uint8)
    return [np.ascontiguousarray(texture[:, 2 * i:2 * i + w]) for i in range(n)]


def timestamps(path) -> list[float]:
    with av.open(str(path)) as c:
        return [f.time for f in c.decode(video=0)]


def assert_steady(ts: list[float], n: int, fps: float) -> None:
    assert len(ts) == n
    steps = np.diff(ts)
    assert (steps > 0).all(), ts[:8]
    assert np.allclose(steps, 1 / fps, atol=2e-3), steps[:8]


@pytest.mark.parametrize("ext,codec", CASES)
def test_written_files_decode_with_steady_timestamps(tmp_path, ext, codec):
    path = tmp_path / f"out.{ext}"
    sink = FileSink(path, 320, 240, 30, codec=codec)
    frames = moving_frames()
    for im in frames:
        sink.send(im)
    sink.close()
    assert_steady(timestamps(path), len(frames), 30.0)


def test_h264_output_keeps_the_colours(tmp_path):
    # The writer converts to YUV itself (OpenCV, BT.601 limited range); decoded the way
    # every reader here decodes (PyAV to BGR), flat colours come back within a few levels.
    colours = [(255, 255, 255), (0, 0, 0), (0, 0, 255), (0, 255, 0), (255, 0, 0), (40, 90, 200), (128, 128, 128)]
    frames = [np.full((64, 96, 3), c, np.uint8) for c in colours]
    path = tmp_path / "flat.mp4"
    sink = FileSink(path, 96, 64, 30, codec="h264")
    for im in frames:
        sink.send(im)
    sink.close()
    with av.open(str(path)) as c:
        decoded = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]
    assert len(decoded) == len(frames)
    for want, got in zip(frames, decoded):
        assert np.abs(got.astype(int) - want).max() <= 4, (want[0, 0], got[32, 48])


def test_ffv1_in_mov_is_refused_in_one_line(tmp_path):
    rc, _, err = run_cli("process", tmp_path / "missing.mp4", tmp_path / "out.mov", "--codec", "ffv1")
    assert rc != 0 and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_process_avi_to_avi_keeps_the_rate(tmp_path):
    """The trial of the issue: `process IN.avi OUT.avi` (H.264 in AVI) read back by a tool
    that trusts timestamps; the output has the input's rate."""
    from livedeid.io.synthetic import SyntheticPulseSource

    src = SyntheticPulseSource(hr_bpm=70, duration_s=1.5, fps=30.0, size=(320, 240), seed=0)
    path = tmp_path / "in.avi"
    sink = FileSink(path, 320, 240, 30, codec="lossless")
    for f in src:
        sink.send(f.image)
    sink.close()
    out = tmp_path / "out.avi"
    rc, _, err = run_cli("process", path, out, "-q", timeout=300)
    assert rc == 0, err
    assert_steady(timestamps(out), 45, 30.0)
