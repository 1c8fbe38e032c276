"""Engines behind one interface, the model manifest and its integrity checks."""
import importlib.util
import json
import pickle
import shutil

import numpy as np
import pytest

from livedeid.core.errors import UserError
from livedeid.inference.engines import OnnxRuntimeEngine, TensorRTEngine, TorchEngine, plan_cache_path
from livedeid.inference.manifest import load_spec, model_warning, sha256_file
from livedeid.inference.registry import create_engine, cuda_available

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def _cuda():
    return cuda_available()


@pytest.fixture(scope="module")
def spec():
    return load_spec()


@pytest.fixture(scope="module")
def windows(spec):
    rng = np.random.default_rng(0)
    return rng.uniform(0, 1, (2, spec.window, 3, spec.crop_size, spec.crop_size)).astype(np.float32)


def test_shipped_manifest_is_honest(spec):
    assert spec.window == 8 and spec.crop_size == 128
    if not spec.trained:
        assert "NOT de-identified" in model_warning(spec)


def test_onnxruntime_output_contract(spec, windows):
    eng = OnnxRuntimeEngine(spec)
    out = eng(windows)
    assert out.shape == (2, 3, spec.crop_size, spec.crop_size) and out.dtype == np.float32
    residual = out - windows[:, -1]
    assert np.abs(residual).max() <= spec.max_perturbation + 1e-6  # bounded perturbation
    assert np.abs(residual).max() > 0
    with pytest.raises(ValueError):
        eng(windows[:, :3])


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed (train extra)")
def test_torch_matches_onnxruntime(spec, windows):
    a = OnnxRuntimeEngine(spec)(windows)
    b = TorchEngine(spec, "cpu")(windows)
    assert np.abs(a - b).max() <= 1e-4


def test_auto_picks_best_available_and_says_why(spec):
    choice = create_engine("auto", spec)
    if not _cuda():
        assert choice.engine.name == "onnxruntime"
        assert any("tensorrt" in s for s in choice.fallbacks)
        assert "onnxruntime" in choice.reason


@pytest.mark.skipif(HAS_TRT and _cuda(), reason="TensorRT is present: the unavailable path is not reachable")
def test_tensorrt_missing_is_a_clear_user_error(spec):
    with pytest.raises(UserError, match="(?i)tensorrt"):
        create_engine("tensorrt", spec)


def test_unknown_engine_name(spec):
    with pytest.raises(UserError, match="unknown engine"):
        create_engine("magic", spec)


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed (the `train` extra)")
def test_device_frame_path_walks_the_same_order_over_device_tensor_engines(spec):
    """The device frame path takes engines with run_tensor only: on the CPU device auto
    skips TensorRT (CUDA only) and says so, and ONNX Runtime is refused by name."""
    choice = create_engine("auto", spec, device="cpu")
    assert choice.engine.name == "torch" and hasattr(choice.engine, "run_tensor")
    assert any(s.startswith("tensorrt:") for s in choice.fallbacks) and "GPU frame path" in choice.reason
    with pytest.raises(UserError, match="not onnxruntime"):
        create_engine("onnxruntime", spec, device="cpu")
    with pytest.raises(UserError, match="(?i)tensorrt"):
        create_engine("tensorrt", spec, device="cpu")


def test_plan_cache_key_names_gpu_trt_and_model(spec, tmp_path):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"model-a")
    p1 = plan_cache_path(spec, onnx, tmp_path, "10.13.0", (9, 0))
    p2 = plan_cache_path(spec, onnx, tmp_path, "10.13.0", (8, 6))
    p3 = plan_cache_path(spec, onnx, tmp_path, "11.0.0", (9, 0))
    onnx.write_bytes(b"model-b")
    p4 = plan_cache_path(spec, onnx, tmp_path, "10.13.0", (9, 0))
    assert len({p1, p2, p3, p4}) == 4 and "sm90" in p1.name and "trt10.13.0" in p1.name


def _copy_model(tmp_path):
    src = load_spec()
    for name in (src.onnx, src.weights, src.onnx_fp16, src.evaluation, "deid.json"):
        shutil.copy(src.manifest_path.parent / name, tmp_path / name)
    return tmp_path / "deid.json"


def test_tampered_onnx_is_refused(tmp_path):
    manifest = _copy_model(tmp_path)
    (tmp_path / "deid.onnx").write_bytes(b"\x08\x07garbage")
    with pytest.raises(UserError, match="does not match its manifest hash"):
        OnnxRuntimeEngine(load_spec(manifest))


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed (train extra)")
def test_pickle_payload_weights_are_refused(tmp_path):
    manifest = _copy_model(tmp_path)

    class Boom:
        def __reduce__(self):
            return (print, ("pickle code ran",))

    (tmp_path / "deid.pt").write_bytes(pickle.dumps({"x": Boom()}))
    raw = json.loads(manifest.read_text())
    # Even with a manifest that matches the payload (and no evaluation, which measured
    # other weights) the payload must not run.
    raw["weights_sha256"] = sha256_file(tmp_path / "deid.pt")
    for key in ("evaluation", "evaluation_sha256", "held_out_self_match"):
        raw.pop(key)
    manifest.write_text(json.dumps(raw))
    with pytest.raises(UserError, match="cannot load weights"):
        TorchEngine(load_spec(manifest), "cpu")


@pytest.mark.parametrize("change, message", [
    ({"colour": "blue"}, "unknown keys"),
    ({"window": 0}, "out-of-range"),
    ({"max_perturbation": 2.0}, "out-of-range"),
])
def test_bad_manifest_is_one_clear_error(tmp_path, change, message):
    manifest = _copy_model(tmp_path)
    raw = json.loads(manifest.read_text())
    raw.update(change)
    manifest.write_text(json.dumps(raw))
    with pytest.raises(UserError, match=message):
        load_spec(manifest)


def test_missing_manifest(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_spec(tmp_path / "nope.json")


@pytest.mark.cuda
@pytest.mark.skipif(not _cuda(), reason="needs an NVIDIA GPU with torch CUDA")
def test_torch_cuda_fp16_close_to_cpu_reference(spec, windows):
    ref = OnnxRuntimeEngine(spec, use_cuda=False)(windows)
    got = TorchEngine(spec, "cuda")(windows)
    assert np.abs(ref - got).max() <= 2 / 255


@pytest.mark.tensorrt
@pytest.mark.skipif(not (HAS_TRT and _cuda()), reason="needs TensorRT and an NVIDIA GPU")
def test_tensorrt_fp16_close_to_cpu_reference(spec, windows, tmp_path):
    ref = OnnxRuntimeEngine(spec, use_cuda=False)(windows)
    eng = TensorRTEngine(spec, cache_dir=tmp_path)
    got = eng(windows)
    assert np.abs(ref - got).max() <= 2 / 255
    assert eng.plan_path.is_file()  # cached for the next start
    again = TensorRTEngine(spec, cache_dir=tmp_path)
    assert np.abs(again(windows) - got).max() == 0


def _spec(**kw):
    from livedeid.inference.manifest import ModelSpec

    base = dict(name="deid", window=8, crop_size=128, max_perturbation=8 / 255, trained=True)
    return ModelSpec(**{**base, **kw})


def test_model_warning_says_what_protection_was_measured():
    assert "NOT de-identified" in model_warning(_spec(trained=False))
    partly = model_warning(_spec(held_out_self_match={"dlib": 0.42, "sface": 0.88}))
    assert "PARTLY" in partly and "dlib 42%" in partly and "sface 88%" in partly
    only_sface = model_warning(_spec(held_out_self_match={"dlib": 0.0, "sface": 0.3}))
    assert "sface 30%" in only_sface and "dlib" not in only_sface
    assert model_warning(_spec(held_out_self_match={"dlib": 0.04, "sface": 0.0})) is None


@pytest.mark.parametrize("value", [{"dlib": 1.5}, {"dlib": "most"}, [0.5]])
def test_manifest_with_a_bad_self_match_is_refused(tmp_path, value):
    from livedeid.inference.manifest import write_manifest

    path = tmp_path / "m.json"
    write_manifest(_spec(), path)
    raw = json.loads(path.read_text())
    raw["held_out_self_match"] = value
    path.write_text(json.dumps(raw))
    with pytest.raises(UserError, match="held_out_self_match"):
        load_spec(path)


def test_export_reads_the_held_out_self_match_from_an_evaluation(tmp_path):
    from livedeid.training.export import held_out_self_match

    report = {"methods": {"trained": {"psnr": 34.0, "dlib": {"self_match": 0.25}, "sface": {"self_match": 0.75}},
                          "untrained": {"dlib": {"self_match": 1.0}}}}
    (tmp_path / "eval.json").write_text(json.dumps(report))
    assert held_out_self_match(tmp_path / "eval.json") == {"dlib": 0.25, "sface": 0.75}
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(UserError, match="cannot read the evaluation"):
        held_out_self_match(tmp_path / "bad.json")
