"""The network on one frame in N (``engine_every``, issue 16): between runs a face wears
its last residual, in crop space, so the protection moves with the face, but only while
the face's crop has not changed (``engine_reuse_change``); a hidden face starts afresh.
Real tracker, real ONNX Runtime engine; the engine is only counted."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from livedeid.core.errors import UserError
from livedeid.core.records import Frame
from livedeid.core.settings import PipelineConfig
from livedeid.pipeline.processor import FrameProcessor


def _scene(face, i, size=(800, 450)):
    m = np.float32([[1.3, 0, 60 + 6 * i], [0, 1.3, -120 + 2 * i]])  # the face moves 6 px a frame
    return cv2.warpAffine(face, m, size, borderValue=(40, 60, 50))


class CountingEngine:
    """The real engine, with a count of the faces it protected."""

    def __init__(self, engine):
        self.engine, self.faces = engine, 0

    def __call__(self, windows):
        self.faces += len(windows)
        return self.engine(windows)

    def __getattr__(self, name):
        return getattr(self.engine, name)


def _run(astronaut_bgr, every, frames=9, change=1.0):
    proc = FrameProcessor(PipelineConfig(engine="onnxruntime", engine_every=every, engine_reuse_change=change,
                                         safety_net=False))
    proc.engine = counting = CountingEngine(proc.engine)
    done = [proc.process(Frame(_scene(astronaut_bgr, i), i, i / 30)) for i in range(frames)]
    proc.close()
    return done, counting.faces


def _face_change(frame) -> float:
    """Mean absolute change inside the tracked face's box."""
    x0, y0, x1, y1 = (max(0, v) for v in frame.faces[0].bbox())
    return float(np.abs(frame.output[y0:y1, x0:x1].astype(int) - frame.image[y0:y1, x0:x1]).mean())


def test_the_network_runs_on_one_frame_in_n_and_the_residual_moves_with_the_face(astronaut_bgr):
    every, every_frame = _run(astronaut_bgr, 1)
    third, third_runs = _run(astronaut_bgr, 3)
    assert all(f.faces and not f.fail_closed_regions for f in every + third)
    assert every_frame == 9 and third_runs == 3
    for a, b in zip(every, third):
        # reused frames change the face as much as fresh ones (the residual went with it) ...
        assert _face_change(b) > 0.5 * _face_change(a)
        # ... and nothing outside the face's region
        outside = np.ones(b.image.shape[:2], bool)
        x0, y0, x1, y1 = (max(0, v) for v in b.faces[0].bbox())
        m = (x1 - x0) // 2
        outside[max(0, y0 - m):y1 + m, max(0, x0 - m):x1 + m] = False
        assert np.array_equal(b.output[outside], b.image[outside])
    # the reused frames differ from the fresh ones by little: same residual, new crop
    diff = [np.abs(a.output.astype(int) - b.output).mean() for a, b in zip(every, third)]
    assert diff[0] == diff[3] == 0.0 and max(diff) < 2.0


def _still(face, i, blurred=()):
    image = _scene(face, 0)
    return cv2.GaussianBlur(image, (0, 0), 4) if i in blurred else image


def test_a_face_that_changed_gets_the_network_again(astronaut_bgr):
    """A still face wears its residual for every-1 frames; a frame whose face is blurred
    (and the sharp one after it) differs from what the network saw, so it runs again."""

    def runs(blurred):
        proc = FrameProcessor(PipelineConfig(engine="onnxruntime", engine_every=3, engine_reuse_change=4 / 255,
                                             safety_net=False))
        proc.engine = counting = CountingEngine(proc.engine)
        done = [proc.process(Frame(_still(astronaut_bgr, i, blurred), i, i / 30)) for i in range(3)]
        proc.close()
        assert all(f.faces and not f.fail_closed_regions for f in done)
        return counting.faces, proc.residuals.reused

    assert runs(blurred=()) == (1, 2)
    assert runs(blurred=(1,)) == (3, 0)


def test_a_hidden_face_starts_afresh(astronaut_bgr):
    proc = FrameProcessor(PipelineConfig(engine="onnxruntime", engine_every=3, safety_net=False))
    proc.engine = counting = CountingEngine(proc.engine)
    proc.process(Frame(_scene(astronaut_bgr, 0), 0, 0.0))
    assert counting.faces == 1
    track = next(iter(proc.residuals._residuals))
    proc.residuals.reset(track)  # what sort_faces does for a hidden face
    proc.process(Frame(_scene(astronaut_bgr, 1), 1, 1 / 30))
    proc.close()
    assert counting.faces == 2


def test_engine_every_is_checked():
    with pytest.raises(UserError, match="engine_every"):
        PipelineConfig(engine_every=0).validate()
    with pytest.raises(UserError, match="engine_every"):
        PipelineConfig(engine_every=5).validate()
    with pytest.raises(UserError, match="engine_reuse_change"):
        PipelineConfig(engine_reuse_change=-0.1).validate()
