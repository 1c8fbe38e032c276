"""Which engine runs: one preference order for every frame path, and the fallback after an
engine failed at run time.

``auto`` takes the fastest backend that can run here: TensorRT, then torch on CUDA, then
ONNX Runtime (CUDA provider when installed, else CPU); each better backend it skips is
recorded with the reason. The device frame path (:mod:`livedeid.pipeline.device`) walks
the same order restricted to engines that take device tensors (TensorRT, torch).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from livedeid.core.errors import UserError
from livedeid.core.settings import ENGINE_NAMES
from livedeid.inference.engines import Engine, EngineUnavailable, OnnxRuntimeEngine, TensorRTEngine, TorchEngine
from livedeid.inference.manifest import ModelSpec

PREFERENCE = ("tensorrt", "torch", "onnxruntime")  # fastest first
DEVICE_TENSOR_ENGINES = ("tensorrt", "torch")     # those with run_tensor(device tensor)


@dataclass
class EngineChoice:
    engine: Engine
    reason: str
    fallbacks: list[str]


def cuda_available() -> bool:
    """torch is installed and sees a CUDA device."""
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def _build(name: str, spec: ModelSpec, device: str | None, auto: bool, threads: int = 0) -> Engine:
    """The backend ``name``: for host arrays (``device`` None) or for the device frame path
    on the torch ``device``. Raises EngineUnavailable when it cannot run here."""
    if name == "tensorrt":
        if device is not None and not device.startswith("cuda"):
            raise EngineUnavailable(f"TensorRT runs on CUDA devices only, not {device}")
        return TensorRTEngine(spec)
    if name == "torch":
        if device is not None:
            return TorchEngine(spec, device, cuda_graphs=device.startswith("cuda"))
        if not auto:
            return TorchEngine(spec)
        # on the CPU ONNX Runtime is faster than torch, so auto only takes torch on CUDA
        if not cuda_available():
            raise EngineUnavailable("no CUDA device or torch not installed")
        return TorchEngine(spec, "cuda")
    return OnnxRuntimeEngine(spec, threads=threads)


def create_engine(name: str, spec: ModelSpec, device: str | None = None, threads: int = 0) -> EngineChoice:
    """Build the named engine; ``auto`` walks :data:`PREFERENCE` and records why each
    better backend was skipped. ``device`` (a torch device, "cuda" or "cpu") asks for an
    engine for the device frame path on it. ``threads``: ONNX Runtime's intra-op threads (0:
    its default). A named engine that cannot run raises ``UserError``."""
    if name not in ENGINE_NAMES:
        raise UserError(f"unknown engine '{name}' (choose from {', '.join(ENGINE_NAMES)})")
    where = "" if device is None else " on the GPU frame path"
    if name != "auto":
        if device is not None and name not in DEVICE_TENSOR_ENGINES:
            raise UserError(f"the GPU frame path runs torch or TensorRT engines, not {name}")
        try:
            return EngineChoice(_build(name, spec, device, auto=False, threads=threads), "requested" + where, [])
        except EngineUnavailable as exc:
            raise UserError(f"engine '{name}' unavailable: {exc}") from None
    skipped: list[str] = []
    for label in PREFERENCE if device is None else DEVICE_TENSOR_ENGINES:
        try:
            eng = _build(label, spec, device, auto=True, threads=threads)
        except EngineUnavailable as exc:
            skipped.append(f"{label}: {exc}")
            continue
        return EngineChoice(eng, f"auto: {eng.describe()} is the fastest available{where}", skipped)
    raise UserError(f"no engine can run{where}: {'; '.join(skipped)}")


def fallback_engine(failed: Engine, spec: ModelSpec, threads: int = 0) -> EngineChoice:
    """The engine to use after ``failed`` raised at run time: ONNX Runtime on the CPU."""
    eng = OnnxRuntimeEngine(spec, use_cuda=False, threads=threads)
    return EngineChoice(eng, f"fallback after {failed.describe()} failed", [])
