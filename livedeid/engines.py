"""Inference engines behind one interface: ``engine(windows) -> protected crops``.

``windows`` is float32 ``(N, T, 3, S, S)`` (see :mod:`livedeid.model`), the result float32
``(N, 3, S, S)``. Backends:

* ``onnxruntime`` — the patient's CPU path (no torch needed); uses the CUDA execution
  provider when ``onnxruntime-gpu`` is installed and a GPU is present.
* ``torch`` — CPU or CUDA (FP16, channels-last on CUDA); needs the ``train`` extra.
* ``tensorrt`` — strongly typed FP16 network built from the FP16 ONNX, plan cached in
  ``engines/`` per GPU compute capability + TensorRT version + model hash, torch CUDA
  tensors as I/O buffers, ``execute_async_v3`` on torch's current stream.
* ``auto`` — TensorRT > torch CUDA > ONNX Runtime (CUDA, then CPU), with the reason.
"""
from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError
from .model import ModelSpec, sha256_file, verified_file

log = logging.getLogger(__name__)

ENGINE_NAMES = ("auto", "onnxruntime", "torch", "tensorrt")
MAX_FACES = 4


class EngineUnavailable(RuntimeError):
    """The backend cannot run on this machine (missing package, no GPU, bad plan)."""


class Engine:
    name = "base"
    device = "cpu"

    def __init__(self, spec: ModelSpec):
        self.spec = spec

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.name} ({self.device})"

    def check_input(self, windows: np.ndarray) -> np.ndarray:
        s, t = self.spec.crop_size, self.spec.window
        if windows.ndim != 5 or windows.shape[1:] != (t, 3, s, s):
            raise ValueError(f"window must be (N, {t}, 3, {s}, {s}), got {windows.shape}")
        return np.ascontiguousarray(windows, dtype=np.float32)


class OnnxRuntimeEngine(Engine):
    name = "onnxruntime"

    def __init__(self, spec: ModelSpec, use_cuda: bool | None = None, threads: int = 0):
        super().__init__(spec)
        import onnxruntime as ort

        path = verified_file(spec, "onnx")
        available = ort.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if use_cuda is not False and "CUDAExecutionProvider" in available:
            providers.insert(0, "CUDAExecutionProvider")
        elif use_cuda:
            raise EngineUnavailable("onnxruntime has no CUDA provider (install onnxruntime-gpu)")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as exc:  # ORT raises its own exception types for bad files
            raise UserError(f"cannot load ONNX model {path}: {str(exc).splitlines()[0]}") from None
        self.device = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        inp = self.session.get_inputs()[0]
        self._input_name = inp.name
        expected = [spec.window, 3, spec.crop_size, spec.crop_size]
        if list(inp.shape[1:]) != expected:
            raise UserError(f"ONNX model {path} takes {inp.shape}, manifest promises (N, {expected})")

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self._input_name: self.check_input(windows)})[0]


class TorchEngine(Engine):
    name = "torch"

    def __init__(self, spec: ModelSpec, device: str = "auto"):
        super().__init__(spec)
        if importlib.util.find_spec("torch") is None:
            raise EngineUnavailable("torch is not installed (pip install 'livedeid[train]')")
        import torch

        from .autoencoder import load_weights

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise EngineUnavailable("torch has no CUDA device")
        self.device = device
        path = verified_file(spec, "weights")
        try:
            model = load_weights(path, spec.window, spec.max_perturbation)
        except Exception as exc:  # pickle refusal, wrong keys, truncated file
            raise UserError(f"cannot load weights {path}: {str(exc).splitlines()[0]}") from None
        self.half = device == "cuda"
        model = model.to(device)
        if self.half:
            model = model.half().to(memory_format=torch.channels_last)
        self.model = model
        self._torch = torch

    def run_tensor(self, windows):
        """Device tensor in, device tensor out (used by the GPU-resident path)."""
        with self._torch.inference_mode():
            return self.model(windows.to(self.model.head.weight.dtype))

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        torch = self._torch
        x = torch.from_numpy(self.check_input(windows)).to(self.device)
        return self.run_tensor(x).float().cpu().numpy()


class TensorRTEngine(Engine):
    """TensorRT 10/11 FP16 engine. Built once from the FP16 ONNX and cached."""

    name = "tensorrt"
    device = "cuda"

    def __init__(self, spec: ModelSpec, cache_dir: Path | None = None, fp16_onnx: Path | None = None):
        super().__init__(spec)
        if importlib.util.find_spec("tensorrt") is None:
            raise EngineUnavailable("TensorRT is not installed (NVIDIA's `tensorrt` wheel)")
        if importlib.util.find_spec("torch") is None:
            raise EngineUnavailable("the TensorRT engine uses torch CUDA tensors as buffers: install torch")
        import tensorrt as trt
        import torch

        if not torch.cuda.is_available():
            raise EngineUnavailable("no CUDA device for TensorRT")
        self._trt, self._torch = trt, torch
        self.logger = trt.Logger(trt.Logger.WARNING)
        onnx_path = fp16_onnx or self._fp16_onnx_path()
        self.plan_path = plan_cache_path(spec, onnx_path, cache_dir, trt.__version__, torch.cuda.get_device_capability())
        runtime = trt.Runtime(self.logger)
        plan = self.plan_path.read_bytes() if self.plan_path.is_file() else self._build(onnx_path)
        self.engine = runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise EngineUnavailable(f"TensorRT plan {self.plan_path} could not be deserialised (stale or corrupt)")
        self.context = self.engine.create_execution_context()
        self.input_name, self.output_name = "window", "protected"

    def _fp16_onnx_path(self) -> Path:
        onnx_path = verified_file(self.spec, "onnx")
        fp16 = onnx_path.with_name(onnx_path.stem + ".fp16.onnx")
        if not fp16.is_file():
            raise EngineUnavailable(f"no FP16 ONNX at {fp16} (run `livedeid export --fp16`)")
        return fp16

    def _build(self, onnx_path: Path) -> bytes:
        trt = self._trt
        builder = trt.Builder(self.logger)
        # Strongly typed: precisions come from the FP16 ONNX itself; the FP16 builder flag
        # is deprecated in TensorRT 10.12 and gone in 11.
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse(onnx_path.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineUnavailable(f"TensorRT could not parse {onnx_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 30)
        cache_file = self.plan_path.with_suffix(".timing_cache")
        cache = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
        s, t = self.spec.crop_size, self.spec.window
        profile = builder.create_optimization_profile()
        profile.set_shape("window", (1, t, 3, s, s), (1, t, 3, s, s), (MAX_FACES, t, 3, s, s))
        config.add_optimization_profile(profile)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise EngineUnavailable("TensorRT engine build failed (see TensorRT log above)")
        data = bytes(plan)
        self.plan_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.plan_path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(self.plan_path)
        cache_file.write_bytes(bytes(config.get_timing_cache().serialize()))
        return data

    def run_tensor(self, windows):
        """CUDA FP16 tensor (N,T,3,S,S) in, CUDA FP16 tensor (N,3,S,S) out, on torch's
        current stream (so it is ordered after whatever produced ``windows``)."""
        torch = self._torch
        x = windows.to(device="cuda", dtype=torch.float16).contiguous()
        n = x.shape[0]
        if not 1 <= n <= MAX_FACES:
            raise ValueError(f"TensorRT profile covers 1..{MAX_FACES} faces, got {n}")
        out = torch.empty((n, 3, self.spec.crop_size, self.spec.crop_size), device="cuda", dtype=torch.float16)
        self.context.set_input_shape(self.input_name, tuple(x.shape))
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        self.context.set_tensor_address(self.output_name, out.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        return out

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        torch = self._torch
        x = torch.from_numpy(self.check_input(windows)).cuda(non_blocking=True)
        return self.run_tensor(x).float().cpu().numpy()


def plan_cache_path(spec: ModelSpec, onnx_path: Path, cache_dir: Path | None, trt_version: str,
                    capability: tuple[int, int]) -> Path:
    """``engines/trt_cache/<model>-<onnx sha12>-sm<cc>-trt<version>.plan``: a plan is only
    valid for the GPU architecture and TensorRT version that built it."""
    base = cache_dir or (onnx_path.parent / "trt_cache")
    digest = sha256_file(onnx_path)[:12]
    return base / f"{spec.name}-{digest}-sm{capability[0]}{capability[1]}-trt{trt_version}.plan"


@dataclass
class EngineChoice:
    engine: Engine
    reason: str
    fallbacks: list[str]


def _cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def create_engine(name: str, spec: ModelSpec) -> EngineChoice:
    """Build the named engine; ``auto`` walks the preference order and records why each
    better backend was skipped. A named engine that cannot run raises ``UserError``."""
    if name not in ENGINE_NAMES:
        raise UserError(f"unknown engine '{name}' (choose from {', '.join(ENGINE_NAMES)})")
    if name == "onnxruntime":
        return EngineChoice(OnnxRuntimeEngine(spec), "requested", [])
    if name in ("torch", "tensorrt"):
        try:
            eng = TorchEngine(spec) if name == "torch" else TensorRTEngine(spec)
        except EngineUnavailable as exc:
            raise UserError(f"engine '{name}' unavailable: {exc}") from None
        return EngineChoice(eng, "requested", [])
    skipped: list[str] = []
    candidates = [("tensorrt", lambda: TensorRTEngine(spec))]
    if _cuda_available():
        candidates.append(("torch-cuda", lambda: TorchEngine(spec, "cuda")))
    else:
        skipped.append("torch-cuda: no CUDA device or torch not installed")
    for label, build in candidates:
        try:
            return EngineChoice(build(), f"auto: {label} is the fastest available", skipped)
        except EngineUnavailable as exc:
            skipped.append(f"{label}: {exc}")
    eng = OnnxRuntimeEngine(spec)
    return EngineChoice(eng, f"auto: onnxruntime ({eng.device}) — faster backends unavailable", skipped)


def fallback_engine(failed: Engine, spec: ModelSpec) -> EngineChoice:
    """The engine to use after ``failed`` raised at run time: ONNX Runtime on the CPU."""
    eng = OnnxRuntimeEngine(spec, use_cuda=False)
    return EngineChoice(eng, f"fallback after {failed.describe()} failed", [])
