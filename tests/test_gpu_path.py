"""The GPU-resident frame path (livedeid.pipeline.device) and `livedeid bench`.

On a machine without a GPU the device path runs on the CPU (device="cpu", same code) and
is compared with the numpy FrameProcessor on real frames; the CUDA/TensorRT tests are
marked and skip naming what is missing (benchmarks/gpu_check.sh runs them on a GPU).
"""
import importlib.util
import json

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch not installed (the `train` extra)")

from livedeid.core.records import Frame  # noqa: E402
from livedeid.core.settings import PipelineConfig  # noqa: E402
from livedeid.inference.engines import Engine, OnnxRuntimeEngine, TorchEngine  # noqa: E402
from livedeid.inference.manifest import load_spec  # noqa: E402
from livedeid.pipeline.device import TorchFrameProcessor, grid_coefficients, sample_grid  # noqa: E402
from livedeid.pipeline.processor import FrameProcessor  # noqa: E402
from livedeid.protect.composite import oval_mask  # noqa: E402
from livedeid.protect.windows import FaceWindows  # noqa: E402

CUDA = torch.cuda.is_available()
HAS_TRT = importlib.util.find_spec("tensorrt") is not None
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs an NVIDIA GPU: torch.cuda.is_available() is False")
needs_trt = pytest.mark.skipif(not (CUDA and HAS_TRT),
                               reason="needs TensorRT (`tensorrt` wheel) and an NVIDIA GPU: "
                                      f"tensorrt {'found' if HAS_TRT else 'missing'}, CUDA {'yes' if CUDA else 'no'}")


def _scene(face, i, size=(800, 450)):
    m = np.float32([[1.3, 0, 60 + 3 * i], [0, 1.3, -120 + i]])
    return cv2.warpAffine(face, m, size, borderValue=(40, 60, 50))


def _face_masks(frame):
    full = np.zeros(frame.image.shape[:2], bool)
    for f in frame.faces:
        box, mask = oval_mask(f.landmarks, frame.image.shape[:2])
        if box is not None:
            full[box[1]:box[3], box[0]:box[2]] |= mask > 0
    return full


@pytest.fixture(scope="module")
def spec():
    return load_spec()


@pytest.fixture(scope="module")
def cpu_engine(spec):
    return TorchEngine(spec, "cpu")


def _compare(ref_proc, dev_proc, face, n=5):
    """Run both processors on the same real frames, then close them; return per-frame
    (mean |diff| inside the face masks, max |diff| inside, max |diff| outside, pixels
    changed by protection)."""
    rows = []
    try:
        for i in range(n):
            img = _scene(face, i)
            a = ref_proc.process(Frame(img.copy(), i, i / 30))
            b = dev_proc.process(Frame(img.copy(), i, i / 30))
            assert len(a.faces) == len(b.faces) == 1
            inside = _face_masks(a)
            d = np.abs(a.output.astype(int) - b.output.astype(int))
            rows.append((d[inside].mean(), d[inside].max(), d[~inside].max(),
                         int((b.output != img).any(axis=2).sum())))
    finally:
        ref_proc.close()
        dev_proc.close()
    return rows


# -- sampling conventions --------------------------------------------------------------------
def test_grid_sampling_matches_cv2_warp_affine(astronaut_bgr):
    img = cv2.cvtColor(astronaut_bgr, cv2.COLOR_BGR2GRAY)[100:250, 150:330]  # a real face
    m = cv2.getRotationMatrix2D((80.0, 60.0), 17.0, 1.7)  # frame -> crop, like FaceTrack.to_crop
    m[:, 2] += (3.3, -5.1)
    coef = torch.from_numpy(grid_coefficients(cv2.invertAffineTransform(m), img.shape))
    grid = sample_grid(coef, (128, 128))

    def warp(x, align_corners=True):
        src = torch.from_numpy(x.astype(np.float32))[None, None]
        return torch.nn.functional.grid_sample(src, grid, mode="bilinear", padding_mode="border",
                                               align_corners=align_corners)[0, 0].numpy()

    f = img.astype(np.float32) / 255
    ref = cv2.warpAffine(f, m, (128, 128), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    d = np.abs(warp(f) - ref)
    # cv2 quantises sample positions to 1/32 px; that is all that separates the two
    assert d.max() < 0.02 and d.mean() < 0.001
    # the check has teeth: a half-pixel convention error (align_corners=False) is far off
    d_wrong = np.abs(warp(f, align_corners=False) - ref)
    assert d_wrong.max() > 0.05 and d_wrong.mean() > 0.003
    # 8-bit, as extract_crop warps the frame: rounded results agree but for rare flips
    ref8 = cv2.warpAffine(img, m, (128, 128), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    d8 = np.abs(np.round(warp(img)) - ref8)
    assert d8.max() <= 2 and d8.mean() < 0.2


def test_windows_of_device_tensors_are_causal_ring_buffers():
    w = FaceWindows(window=4, crop_size=2)
    crops = [torch.full((3, 2, 2), float(i)) for i in range(7)]
    first = w.push_crop(5, crops[0])
    assert first[:, 0, 0, 0].tolist() == [0, 0, 0, 0]  # warm-up repeats the first crop
    for i in range(1, 7):
        win = w.push_crop(5, crops[i])
    assert win[:, 0, 0, 0].tolist() == [3, 4, 5, 6]  # oldest first, current last
    w.retain({9})
    assert len(w) == 0 and w.push_crop(5, crops[1])[:, 0, 0, 0].tolist() == [1, 1, 1, 1]


# -- the device path on the CPU vs the numpy pipeline ----------------------------------------
def test_device_path_on_cpu_matches_numpy_pipeline(astronaut_bgr, spec, cpu_engine):
    # the device path runs the network on every frame: so does the reference here
    ref = FrameProcessor(PipelineConfig(engine="onnxruntime", engine_every=1), spec, cpu_engine)
    dev = TorchFrameProcessor(PipelineConfig(), spec, cpu_engine, device="cpu")
    rows = _compare(ref, dev, astronaut_bgr)
    for mean_in, max_in, max_out, changed in rows:
        assert changed > 1000          # the face really went through the engine and composite
        assert max_out == 0            # outside the face masks: bit-identical
        # The two paths warp the crop slightly differently (rounding flips); the trained
        # model's residual responds to those (measured max 3 levels), the raw face never
        # shows through (the residual is bounded by 8/255 on both paths).
        assert mean_in <= 1.0 and max_in <= 4
    assert np.mean([r[0] for r in rows]) < 0.1  # in practice only rare rounding flips


def test_submit_overlap_gives_the_same_frames_as_process(astronaut_bgr, spec, cpu_engine):
    a = TorchFrameProcessor(PipelineConfig(), spec, cpu_engine, device="cpu")
    b = TorchFrameProcessor(PipelineConfig(), spec, cpu_engine, device="cpu")
    images = [_scene(astronaut_bgr, i) for i in range(4)]
    try:
        sync = [a.process(Frame(im.copy(), i, i / 30)) for i, im in enumerate(images)]
        done = [b.submit(Frame(im.copy(), i, i / 30)) for i, im in enumerate(images)]
        assert done[0] is None  # the first frame is still in flight
        done = [f for f in done if f is not None] + [b.flush()]
        assert b.flush() is None
    finally:
        a.close()
        b.close()
    assert [f.index for f in done] == [0, 1, 2, 3]
    for x, y in zip(sync, done):
        assert np.array_equal(x.output, y.output)
        assert set(y.stage_ms) >= {"track", "upload", "window", "engine", "composite", "download", "rppg", "total"}


def test_hold_policy_on_device_path(astronaut_bgr, spec, cpu_engine):
    proc = TorchFrameProcessor(PipelineConfig(fail_closed="hold"), spec, cpu_engine, device="cpu")
    for i in range(3):
        good = proc.process(Frame(_scene(astronaut_bgr, i), i, i / 30)).output.copy()
    frame = proc.process(Frame(np.full_like(good, 50), 3, 3 / 30))  # the person left
    proc.close()
    assert frame.fail_closed_regions == 1
    assert np.array_equal(frame.output, good)


class _BrokenDeviceEngine(Engine):
    name = "broken-device"

    def run_tensor(self, windows):
        raise RuntimeError("simulated CUDA error: an illegal memory access was encountered")

    def __call__(self, windows):
        raise RuntimeError("simulated CUDA error")


def test_device_failure_falls_back_to_cpu_then_fails_closed(astronaut_bgr, spec, monkeypatch):
    proc = TorchFrameProcessor(PipelineConfig(), spec, _BrokenDeviceEngine(spec), device="cpu")
    img = _scene(astronaut_bgr, 0)
    frame = proc.process(Frame(img.copy(), 0, 0.0))
    assert any("GPU frame path" in e for e in proc.events)
    assert proc.engine.name == "onnxruntime"  # the parent's fallback engine
    assert frame.fail_closed_regions == 0 and frame.faces[0].protected is not None
    assert _face_masks(frame)[np.any(frame.output != img, axis=2)].all()  # changed only in the mask
    # the fallback breaks too: every face is hidden, nothing raw goes out
    proc.engine = _BrokenDeviceEngine(spec)
    import livedeid.pipeline.processor as pl

    monkeypatch.setattr(pl, "fallback_engine", lambda failed, spec: (_ for _ in ()).throw(RuntimeError("no ORT")))
    frame = proc.process(Frame(_scene(astronaut_bgr, 1), 1, 1 / 30))
    proc.close()
    assert frame.fail_closed_regions == 1
    x0, y0, x1, y1 = frame.hidden_boxes[0]
    assert np.abs(frame.output[y0:y1, x0:x1].astype(int) - frame.image[y0:y1, x0:x1]).mean() > 5


class _FaultyEvent:
    """Stands in for a CUDA event whose wait reports an asynchronous kernel fault (what CUDA
    does for e.g. an illegal address); only the processor's reaction is under test."""

    def synchronize(self):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


class _AsyncFaultProcessor(TorchFrameProcessor):
    def device_protect(self, job):
        super().device_protect(job)
        job.done = _FaultyEvent()


def test_asynchronous_device_fault_redoes_the_frame_on_the_cpu(astronaut_bgr, spec, cpu_engine):
    proc = _AsyncFaultProcessor(PipelineConfig(), spec, cpu_engine, device="cpu")
    img = _scene(astronaut_bgr, 0)
    frame = proc.process(Frame(img.copy(), 0, 0.0))
    later = proc.process(Frame(_scene(astronaut_bgr, 1), 1, 1 / 30))  # stays on the CPU path
    proc.close()
    assert any("GPU frame path" in e for e in proc.events) and proc.host_only
    for f in (frame, later):
        assert f.fail_closed_regions == 0 and f.faces[0].protected is not None  # protected on the CPU
        changed = np.any(f.output != f.image, axis=2)
        assert changed.sum() > 1000 and _face_masks(f)[changed].all()


# -- bench ------------------------------------------------------------------------------------
def test_bench_quick_writes_markdown_and_json_with_ratios(tmp_path):
    from livedeid.cli.dev import cmd_bench
    from livedeid.cli.main import build_parser, main
    from livedeid.evaluation.bench import run_bench

    assert build_parser().parse_args(["bench", "--quick", "--out", str(tmp_path)]).func is cmd_bench
    assert main(["bench", "--engines", "no-such-engine"]) == 2  # one-line user error, nothing run
    assert main(["bench", "--resolutions", "640"]) == 2
    result = run_bench(tmp_path, quick=True, engines=["onnxruntime-cpu"], frames=2, offline_seconds=0.2,
                       log=lambda m: None)
    md = (tmp_path / "bench.md").read_text()
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data == json.loads(json.dumps(result))
    assert "| vs base |" in md and "fps overlap" in md and "x real time" in md
    base = data["baseline"]
    assert base == ("torch-cuda-fp32" if CUDA else "torch-cpu-fp32")
    rows = {r["engine"]: r for r in data["pipeline"]}
    assert set(rows) == {"onnxruntime-cpu", base}
    assert rows[base]["vs_baseline"] == 1.0
    for r in rows.values():
        assert r["faces_protected"] == 1.0 and r["fps"] > 0
        assert r["stages_ms"]["engine"]["p50"] > 0 and r["stages_ms"]["total"]["p95"] >= r["stages_ms"]["total"]["p50"]
    assert {r["engine"] for r in data["engine_only"]} == set(rows)
    assert all(r["x_realtime"] > 0 and r["frames"] == 6 for r in data["offline"])
    if not CUDA:
        assert "torch-cuda-fp16-graphs" in data["skipped"]


# -- CUDA / TensorRT (run by benchmarks/gpu_check.sh) -----------------------------------------
@pytest.fixture(scope="module")
def windows(spec):
    rng = np.random.default_rng(0)
    return rng.uniform(0, 1, (3, spec.window, 3, spec.crop_size, spec.crop_size)).astype(np.float32)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("kind", ["fp16", "fp16-graphs"])
def test_torch_cuda_fp16_engines_close_to_fp32_cpu(spec, windows, kind):
    ref = TorchEngine(spec, "cpu")(windows)
    eng = TorchEngine(spec, "cuda", cuda_graphs=kind.endswith("graphs"))
    assert np.abs(eng(windows) - ref).max() <= 2 / 255
    # and on device tensors (the frame path's entry), for every face count 1..4
    for n in range(1, 5):
        x = torch.from_numpy(np.resize(windows, (n, *windows.shape[1:]))).cuda()
        got = eng.run_tensor(x).float().cpu().numpy()
        assert np.abs(got - TorchEngine(spec, "cpu")(x.cpu().numpy())).max() <= 2 / 255


@pytest.mark.cuda
@needs_cuda
def test_cuda_graph_replay_equals_eager(spec, windows):
    eng = TorchEngine(spec, "cuda", cuda_graphs=True)
    x = torch.from_numpy(windows).cuda()
    with torch.inference_mode():
        eager = eng.model(x.half())
    graphed = eng.run_tensor(x)
    again = eng.run_tensor(x[:1])  # another graph, then the first one again
    assert torch.allclose(graphed.float(), eager.float(), atol=1 / 1024, rtol=0)
    assert torch.equal(eng.run_tensor(x), graphed) and again.shape[0] == 1


@pytest.mark.cuda
@needs_cuda
def test_onnxruntime_cuda_close_to_cpu(spec, windows):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDAExecutionProvider (onnxruntime-gpu not installed)")
    ref = OnnxRuntimeEngine(spec, use_cuda=False)(windows)
    assert np.abs(OnnxRuntimeEngine(spec, use_cuda=True)(windows) - ref).max() <= 2 / 255


@pytest.mark.cuda
@needs_cuda
def test_frame_processor_on_cuda_matches_cpu(astronaut_bgr, spec, cpu_engine):
    ref = FrameProcessor(PipelineConfig(engine="onnxruntime", engine_every=1), spec, cpu_engine)
    dev = TorchFrameProcessor(PipelineConfig(), spec, TorchEngine(spec, "cuda", cuda_graphs=True), device="cuda")
    rows = _compare(ref, dev, astronaut_bgr)
    for mean_in, max_in, max_out, changed in rows:
        assert changed > 1000 and max_out == 0 and mean_in <= 1.0 and max_in <= 2


@pytest.mark.cuda
@needs_cuda
def test_cuda_submit_overlap_matches_process(astronaut_bgr, spec):
    eng = TorchEngine(spec, "cuda", cuda_graphs=True)
    a = TorchFrameProcessor(PipelineConfig(), spec, eng, device="cuda")
    b = TorchFrameProcessor(PipelineConfig(), spec, eng, device="cuda")
    images = [_scene(astronaut_bgr, i) for i in range(6)]
    try:
        sync = [a.process(Frame(im.copy(), i, i / 30)).output for i, im in enumerate(images)]
        done = [b.submit(Frame(im.copy(), i, i / 30)) for i, im in enumerate(images)]
        done = [f for f in done if f is not None] + [b.flush()]
    finally:
        a.close()
        b.close()
    for x, y in zip(sync, done):
        assert np.array_equal(x, y.output)


@pytest.mark.tensorrt
@needs_trt
def test_tensorrt_engine_and_frame_path(astronaut_bgr, spec, windows, cpu_engine, tmp_path):
    from livedeid.inference.engines import TensorRTEngine

    eng = TensorRTEngine(spec, cache_dir=tmp_path)
    ref = cpu_engine(windows)
    assert np.abs(eng(windows) - ref).max() <= 2 / 255
    with pytest.raises(ValueError, match="1..4"):
        eng.run_tensor(torch.zeros((5, spec.window, 3, spec.crop_size, spec.crop_size), device="cuda"))
    # on a side stream: the engine must run on (and be ordered by) the caller's stream
    side = torch.cuda.Stream()
    x = torch.from_numpy(windows).cuda()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        y = eng.run_tensor(x * 1.0)
    torch.cuda.current_stream().wait_stream(side)
    assert np.abs(y.float().cpu().numpy() - ref).max() <= 2 / 255
    rp = FrameProcessor(PipelineConfig(engine="onnxruntime"), spec, cpu_engine)
    dev = TorchFrameProcessor(PipelineConfig(), spec, eng, device="cuda")
    rows = _compare(rp, dev, astronaut_bgr)
    for mean_in, max_in, max_out, changed in rows:
        assert changed > 1000 and max_out == 0 and mean_in <= 1.0 and max_in <= 2
