"""FrameProcessor and Pipeline on real frames: protection, fail-closed, fallback, queues."""
import cv2
import numpy as np
import pytest

from livedeid.core.errors import UserError
from livedeid.core.records import Frame
from livedeid.core.settings import PipelineConfig
from livedeid.inference.engines import Engine
from livedeid.io.sinks import NullSink
from livedeid.io.sources import Source
from livedeid.pipeline.factory import build_processor
from livedeid.pipeline.processor import FrameProcessor
from livedeid.pipeline.runner import Pipeline
from livedeid.protect.composite import oval_mask


def _scene(face, i, size=(800, 450)):
    m = np.float32([[1.3, 0, 60 + 3 * i], [0, 1.3, -120 + i]])
    return cv2.warpAffine(face, m, size, borderValue=(40, 60, 50))


class ListSource(Source):
    def __init__(self, images, fps=30.0, live=False):
        self.images, self.fps, self.is_live = list(images), fps, live
        self.size = (images[0].shape[1], images[0].shape[0])
        self.frame_count = len(images)
        self.closed = False
        self._i = 0

    def read(self):
        if self._i >= len(self.images):
            return None
        f = Frame(self.images[self._i], self._i, self._i / self.fps)
        self._i += 1
        return f

    def close(self):
        self.closed = True


class BrokenEngine(Engine):
    name = "broken"

    def __call__(self, windows):
        raise RuntimeError("simulated CUDA error")


@pytest.fixture(scope="module")
def processor():
    proc = FrameProcessor(PipelineConfig(engine="onnxruntime"))
    yield proc
    proc.close()


def test_faces_are_protected_and_background_is_untouched(astronaut_bgr):
    proc = FrameProcessor(PipelineConfig(engine="onnxruntime"))
    for i in range(5):
        frame = proc.process(Frame(_scene(astronaut_bgr, i), i, i / 30))
    proc.close()
    assert len(frame.faces) == 1 and frame.faces[0].protected is not None
    box, mask = oval_mask(frame.faces[0].landmarks, frame.image.shape[:2])
    full = np.zeros(frame.image.shape[:2], np.float32)
    full[box[1]:box[3], box[0]:box[2]] = mask
    changed = np.any(frame.output != frame.image, axis=2)
    assert changed.any() and not np.any(changed & (full == 0))
    assert set(frame.stage_ms) >= {"track", "window", "engine", "composite", "rppg", "total"}


def test_lost_face_is_hidden_until_it_returns(astronaut_bgr):
    proc = FrameProcessor(PipelineConfig(engine="onnxruntime"))
    for i in range(4):
        seen = proc.process(Frame(_scene(astronaut_bgr, i), i, i / 30))
    # the person steps back: the face shrinks below what the detector finds, but it is
    # still in the picture, where the face was. The lost track's region must hide it.
    lm = seen.faces[0].landmarks
    cx, cy = lm.mean(axis=0)
    m = cv2.getRotationMatrix2D((float(cx), float(cy)), 0, 0.3)
    far = cv2.warpAffine(_scene(astronaut_bgr, 4), m, (800, 450), borderValue=(40, 60, 50))
    far_lm = lm @ m[:, :2].T + m[:, 2]
    x0, y0 = np.floor(far_lm.min(0)).astype(int)
    x1, y1 = np.ceil(far_lm.max(0)).astype(int)
    frame = proc.process(Frame(far, 4, 4 / 30))
    assert frame.faces and frame.faces[0].is_lost
    assert frame.fail_closed_regions == 1 and len(frame.hidden_boxes) == 1
    hx0, hy0, hx1, hy1 = frame.hidden_boxes[0]
    assert hx0 <= x0 and hy0 <= y0 and hx1 >= x1 and hy1 >= y1  # the small face is inside
    small_face = frame.output[y0:y1, x0:x1].astype(int)
    assert np.abs(small_face - far[y0:y1, x0:x1]).mean() > 5  # and it is not raw
    back = proc.process(Frame(_scene(astronaut_bgr, 5), 5, 5 / 30))
    assert not back.faces[0].is_lost and back.fail_closed_regions == 0
    proc.close()


def test_hold_policy_repeats_last_protected_frame(astronaut_bgr):
    proc = FrameProcessor(PipelineConfig(engine="onnxruntime", fail_closed="hold"))
    for i in range(3):
        good = proc.process(Frame(_scene(astronaut_bgr, i), i, i / 30)).output.copy()
    blank = np.full_like(good, 50)  # the person left the picture
    frame = proc.process(Frame(blank, 3, 3 / 30))
    proc.close()
    assert frame.fail_closed_regions == 1
    assert np.array_equal(frame.output, good)  # the last protected frame, not the new one


def test_engine_failure_falls_back_then_fails_closed(astronaut_bgr, monkeypatch):
    proc = FrameProcessor(PipelineConfig(engine="onnxruntime"))
    spec = proc.spec
    proc.engine = BrokenEngine(spec)
    frame = proc.process(Frame(_scene(astronaut_bgr, 0), 0, 0.0))
    assert proc.engine.name == "onnxruntime" and any("falling back" in e for e in proc.events)
    assert frame.faces[0].protected is not None and frame.fail_closed_regions == 0
    # now the fallback breaks too: every face is hidden, nothing raw goes out
    proc.engine = BrokenEngine(spec)
    import livedeid.pipeline.processor as pl

    monkeypatch.setattr(pl, "fallback_engine", lambda failed, spec: (_ for _ in ()).throw(RuntimeError("no ORT")))
    frame = proc.process(Frame(_scene(astronaut_bgr, 1), 1, 1 / 30))
    proc.close()
    assert frame.fail_closed_regions == 1
    x0, y0, x1, y1 = frame.hidden_boxes[0]
    assert np.abs(frame.output[y0:y1, x0:x1].astype(int) - frame.image[y0:y1, x0:x1]).mean() > 5


def test_build_processor_picks_the_frame_path(astronaut_bgr):
    """One wiring point: ONNX Runtime always runs on the host path; the device path is
    asked for by name (here on the CPU device) and keeps the processor interface."""
    host = build_processor(PipelineConfig(engine="onnxruntime"))
    host.close()
    assert type(host) is FrameProcessor and host.engine.name == "onnxruntime"
    with pytest.raises(ValueError, match="frame path"):
        build_processor(PipelineConfig(), path="gpu")
    pytest.importorskip("torch")
    dev = build_processor(PipelineConfig(engine="torch"), path="device", device="cpu")
    try:
        assert dev.engine.name == "torch" and "GPU frame path" in dev.engine_reason
        assert dev.submit(Frame(_scene(astronaut_bgr, 0), 0, 0.0)) is None  # in flight
        assert dev.flush().output is not None and dev.flush() is None
    finally:
        dev.close()


def test_protection_off_passes_frames_and_says_so(astronaut_bgr):
    proc = FrameProcessor(PipelineConfig(engine="onnxruntime", protect=False))
    frame = proc.process(Frame(_scene(astronaut_bgr, 0), 0, 0.0))
    proc.close()
    assert frame.protected is False and np.array_equal(frame.output, frame.image)


@pytest.mark.parametrize("field, value", [("fail_closed", "show"), ("max_faces", 9), ("min_confidence", 2.0),
                                          ("hr_method", "ica")])
def test_bad_config_is_a_user_error(field, value):
    with pytest.raises(UserError):
        FrameProcessor(PipelineConfig(**{field: value}))


def test_file_pipeline_never_drops_and_keeps_order(astronaut_bgr):
    images = [_scene(astronaut_bgr, i) for i in range(20)]
    for k, im in enumerate(images):
        cv2.putText(im, str(k), (10, 40), cv2.FONT_HERSHEY_SIMPLEX, 1, (255, 255, 255), 2)
    src = ListSource(images)
    seen = []

    class Recorder(NullSink):
        def send(self, image):
            seen.append(image[:60, :100].copy())

    result = Pipeline(src, FrameProcessor(PipelineConfig(engine="onnxruntime")), [Recorder()], queue_size=2).run()
    assert result.frames_in == result.frames_out == 20 and result.stats["dropped"] == 0
    assert all(np.array_equal(s, im[:60, :100]) for s, im in zip(seen, images))  # order kept
    assert src.closed


def test_live_pipeline_drops_oldest_when_processing_lags(astronaut_bgr):
    images = [_scene(astronaut_bgr, 0)] * 40

    class FastLive(ListSource):
        pass

    src = FastLive(images, live=True)  # delivers instantly: far faster than processing
    result = Pipeline(src, FrameProcessor(PipelineConfig(engine="onnxruntime")), [NullSink()], queue_size=2).run()
    assert result.stats["dropped"] > 0
    assert result.frames_out + result.stats["dropped"] >= 38  # every frame is either shown or counted


def test_two_faces_are_tracked_and_protected_separately(astronaut_bgr):
    face = astronaut_bgr[0:400, 60:420]  # the astronaut's head and shoulders
    scene = np.full((420, 800, 3), 60, np.uint8)
    scene[10:410, 20:380] = face
    scene[10:410, 420:780] = face[:, ::-1]
    proc = FrameProcessor(PipelineConfig(engine="onnxruntime"))
    for i in range(3):
        frame = proc.process(Frame(scene.copy(), i, i / 30))
    proc.close()
    assert len(frame.faces) == 2 and len({f.track_id for f in frame.faces}) == 2
    assert all(f.protected is not None for f in frame.faces)
    changed = np.any(frame.output != frame.image, axis=2)
    assert changed[:, :400].any() and changed[:, 400:].any()


def test_live_simulation_keeps_real_time_when_the_reader_stalls():
    """A slow reader gets the frame due *now* with its true timeline timestamp, as from a
    camera; it never receives a burst of stale frames with compressed time."""
    import time as _time

    from livedeid.io.sources import LiveSimulation

    images = [np.full((8, 8, 3), i, np.uint8) for i in range(300)]
    live = LiveSimulation(lambda: ListSource(images, fps=100.0), loop=True)
    first = live.read()
    _time.sleep(0.25)  # the reader stalls for 25 frame periods
    after = live.read()
    nxt = live.read()
    assert after.image[0, 0, 0] >= 24          # frames during the stall were skipped
    assert abs((after.timestamp - first.timestamp) - after.image[0, 0, 0] / 100.0) < 1e-6
    assert nxt.timestamp - after.timestamp == pytest.approx(0.01 * (nxt.image[0, 0, 0] - after.image[0, 0, 0]))
    # looping continues the timeline
    live2 = LiveSimulation(lambda: ListSource(images[:5], fps=1000.0), loop=True)
    frames = [live2.read() for _ in range(12)]
    positions = [round((f.timestamp - frames[0].timestamp) * 1000.0) for f in frames]
    assert all(b > a for a, b in zip(positions, positions[1:]))  # time only moves forward
    assert [int(f.image[0, 0, 0]) for f in frames] == [p % 5 for p in positions]


def test_pipeline_drives_an_overlapped_processor_in_order(astronaut_bgr):
    """The GPU frame path's submit()/flush() (one frame in flight) through the threaded
    pipeline, on the CPU device: every frame comes out once, in order."""
    pytest.importorskip("torch")
    from livedeid.pipeline.device import TorchFrameProcessor

    images = [_scene(astronaut_bgr, i) for i in range(8)]
    for k, im in enumerate(images):
        cv2.putText(im, str(k), (10, 40), cv2.FONT_HERSHEY_SIMPLEX, 1, (255, 255, 255), 2)
    seen = []

    class Recorder(NullSink):
        def send(self, image):
            seen.append(image[:60, :100].copy())

    proc = TorchFrameProcessor(PipelineConfig(engine="torch"), device="cpu")
    result = Pipeline(ListSource(images), proc, [Recorder()]).run()
    assert result.frames_in == result.frames_out == 8
    assert all(np.array_equal(s, im[:60, :100]) for s, im in zip(seen, images))


def test_camera_disconnect_reconnects_and_keeps_the_virtual_camera_fed(astronaut_bgr):
    """A camera that dies mid-run: the capture thread retries with back-off, the sink keeps
    receiving a content-free placeholder at the camera rate meanwhile, and frames resume
    when the camera is back."""
    import threading
    import time as _time

    from livedeid.io.sources import CameraLost

    class FlakyCamera(ListSource):
        def __init__(self):
            super().__init__([_scene(astronaut_bgr, 0)] * 3, fps=20.0, live=True)
            self.reads = 0
            self.reopen_calls = 0
            self.fail_after, self.plugged_back = 5, None

        def read(self):
            self.reads += 1
            if self.reads == self.fail_after:
                threading.Timer(0.8, lambda: setattr(self, "plugged_back", True)).start()
                raise CameraLost("camera 0 stopped delivering frames")
            if self.reads > 25:
                return None
            _time.sleep(0.05)
            return Frame(self.images[0].copy(), self.reads, _time.monotonic())

        def reopen(self):
            self.reopen_calls += 1
            if not self.plugged_back:
                raise CameraLost("camera 0 is still unavailable")

    received = []

    class Recorder(NullSink):
        def send(self, image):
            received.append((_time.monotonic(), image.copy()))

    cam = FlakyCamera()
    pipeline = Pipeline(cam, FrameProcessor(PipelineConfig(engine="onnxruntime")), [Recorder()],
                        reconnect_backoff_s=(0.1, 0.4))
    result = pipeline.run()
    assert cam.reopen_calls >= 2                       # retried, with back-off, until back
    assert cam.reads > 25                              # capture read on to the end
    assert result.frames_in > cam.fail_after           # frames resumed after the reconnect
    placeholders = [img for _, img in received if img.std() < 40 and img.mean() < 60]
    assert len(placeholders) >= 3 and pipeline.placeholders_sent == len(placeholders)
    assert any("reconnected 1 time" in e for e in result.events)
    # Placeholders are paced by the camera's frame rate; how many arrive depends on the
    # machine's load, so only their presence is asserted here (no wall-clock bound).


def _tiny_face_scene(face, width_px=44, size=(640, 360), at=(420, 200)):
    """The astronaut's face (about 104 px wide in the photo) shrunk to ``width_px``: too
    small for the face mesh's detector, large enough for the full-range one."""
    scale = width_px / 104
    m = np.float32([[scale, 0, at[0]], [0, scale, at[1]]])
    return cv2.warpAffine(face, m, size, borderValue=(40, 60, 50))


def test_tiny_face_the_mesh_cannot_track_is_hidden_by_the_safety_net(astronaut_bgr):
    proc = FrameProcessor(PipelineConfig(engine="onnxruntime"))
    frames = [proc.process(Frame(_tiny_face_scene(astronaut_bgr), i, i / 30)) for i in range(4)]
    proc.close()
    assert not any(f.faces for f in frames)  # far below the face mesh's detector
    last = frames[-1]
    assert last.unheld_boxes and last.fail_closed_regions >= 1
    x0, y0, x1, y1 = last.unheld_boxes[0]
    assert x1 - x0 < 200  # a region around the small face, not the whole picture
    assert np.abs(last.output[y0:y1, x0:x1].astype(int) - last.image[y0:y1, x0:x1]).mean() > 3
    outside = np.ones(last.image.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(last.output[outside], last.image[outside])


def test_whole_frame_is_hidden_until_the_first_face_is_found(astronaut_bgr):
    """A face no detector finds at start-up (here: none yet, then one) must not go out raw:
    the startup guard hides the whole picture until a face is found; afterwards an empty
    scene passes unchanged (there is nobody to protect)."""
    empty = np.random.default_rng(0).integers(0, 255, (450, 800, 3), dtype=np.uint8)
    proc = FrameProcessor(PipelineConfig(engine="onnxruntime"))
    first = proc.process(Frame(empty.copy(), 0, 0.0))
    assert first.no_face_yet and first.hidden_boxes == [(0, 0, 800, 450)]
    assert np.abs(first.output.astype(int) - empty).mean() > 20
    seen = proc.process(Frame(_scene(astronaut_bgr, 1), 1, 1 / 30))
    assert not seen.no_face_yet and seen.faces
    proc.tracker.clear()  # the person has left for good
    later = proc.process(Frame(empty.copy(), 2, 2 / 30))
    proc.close()
    assert not later.no_face_yet and np.array_equal(later.output, empty)
    off = FrameProcessor(PipelineConfig(engine="onnxruntime", startup_guard=False))
    unguarded = off.process(Frame(empty.copy(), 0, 0.0))
    off.close()
    assert np.array_equal(unguarded.output, empty)


def test_a_second_face_entering_beside_a_lone_one_is_never_shown_raw(two_heads):
    """The mesh follows a lone face without its detector (tracking.mesh.SPOT_EVERY); a face
    that enters is hidden by the safety net on its first frame and tracked from the next:
    no frame shows it unprotected."""
    from livedeid.tracking.mesh import SEARCH_HOLD

    proc = FrameProcessor(PipelineConfig(engine="onnxruntime"))
    start = SEARCH_HOLD + 2  # the first frame looks for everyone, and keeps looking a while
    try:
        for i in range(start):
            proc.process(Frame(two_heads(False), i, i / 30))
        assert proc.tracker.graph_switches == 1  # following the lone face
        for i in range(start, start + 4):
            image = two_heads(True)
            done = proc.process(Frame(image.copy(), i, i / 30))
            out = done.output
            core = (slice(150, 260), slice(575, 665))  # the newcomer's eyes, nose and mouth
            changed = np.abs(out[core].astype(int) - image[core]).mean()
            assert changed > 0.5, f"frame {i}: the newcomer's face is untouched"
        assert len([f for f in done.faces if not f.is_lost]) == 2  # both tracked by now
    finally:
        proc.close()
