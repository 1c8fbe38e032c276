"""Inference engines behind one interface: ``engine(windows) -> protected crops``.

``windows`` is float32 ``(N, T, 3, S, S)`` (see :mod:`livedeid.inference.manifest`), the result float32
``(N, 3, S, S)``. Backends:

* ``onnxruntime`` — the patient's CPU path (no torch needed); uses the CUDA execution
  provider when ``onnxruntime-gpu`` is installed and a GPU is present.
* ``torch`` — CPU or CUDA (FP16, channels-last on CUDA); needs the ``train`` extra.
* ``tensorrt`` — strongly typed FP16 network built from the FP16 ONNX, plan cached in
  ``engines/`` per GPU compute capability + TensorRT version + model hash, torch CUDA
  tensors as I/O buffers, ``execute_async_v3`` on torch's current stream.

Which one runs (``auto``'s preference order, the run-time fallback) is
:mod:`livedeid.inference.registry`.
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np

from livedeid import assets
from livedeid.core.errors import UserError
from livedeid.inference.manifest import ModelSpec, sha256_file, verified_file

log = logging.getLogger(__name__)

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


def session_options(threads: int = 0):
    """ONNX Runtime's settings for the frame path (and for benchmarks that time it)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    # Idle pool threads sleep instead of spin-waiting: the frame path runs the engine
    # beside the mesh, the safety net, decode and encode threads on a few cores, and a
    # spinning pool takes their time (benchmarks/speed_720p.py; docs/decisions.md).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return opts


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
        try:
            self.session = ort.InferenceSession(str(path), sess_options=session_options(threads),
                                                providers=providers)
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
    """The network in torch: FP32 on the CPU; FP16 channels-last on CUDA, optionally
    replayed from CUDA graphs captured per face count (1..4).

    Graphs: the network has fixed shapes for a given face count, so each count's forward
    pass is captured once into a :class:`torch.cuda.CUDAGraph` with static input/output
    buffers; a frame then costs one input copy and one graph launch instead of ~100
    kernel launches from Python. Capture happens in ``__init__`` (after a warm-up on a
    side stream, as torch requires) so no frame pays for it when a second face appears.
    """

    name = "torch"

    def __init__(self, spec: ModelSpec, device: str = "auto", half: bool | None = None,
                 cuda_graphs: bool = False):
        super().__init__(spec)
        if importlib.util.find_spec("torch") is None:
            raise EngineUnavailable("torch is not installed (pip install 'livedeid[train]')")
        import torch

        from livedeid.nets.autoencoder import load_weights

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise EngineUnavailable("torch has no CUDA device")
        if cuda_graphs and not device.startswith("cuda"):
            raise EngineUnavailable("CUDA graphs need a CUDA device")
        self.device = device
        path = verified_file(spec, "weights")
        try:
            model = load_weights(path, spec.window, spec.max_perturbation)
        except Exception as exc:  # pickle refusal, wrong keys, truncated file
            raise UserError(f"cannot load weights {path}: {str(exc).splitlines()[0]}") from None
        # FP16 by default on CUDA (tensor cores; the residual is bounded by 8/255, far
        # above FP16's resolution), FP32 elsewhere. ``half=False`` keeps an FP32 CUDA
        # reference for benchmarks.
        self.half = device.startswith("cuda") if half is None else bool(half)
        model = model.to(device)
        if self.half:
            model = model.half()
        if device.startswith("cuda"):
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self._torch = torch
        self._graphs: dict[int, tuple] = {}
        if cuda_graphs:
            self._capture_graphs()

    @property
    def dtype(self):
        return self.model.head.weight.dtype

    def describe(self) -> str:
        extra = (", fp16" if self.half else ", fp32") + (", CUDA graphs" if self._graphs else "")
        return f"{self.name} ({self.device}{extra})"

    def _capture_graphs(self) -> None:
        torch = self._torch
        s, t = self.spec.crop_size, self.spec.window
        pool = torch.cuda.graph_pool_handle()  # graphs replay one at a time: share memory
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.inference_mode():
            for n in range(1, MAX_FACES + 1):
                static_in = torch.rand((n, t, 3, s, s), device=self.device).to(self.dtype)
                # Warm-up outside capture: cuDNN picks its algorithms and allocates its
                # workspace here, which capture would otherwise record or forbid.
                with torch.cuda.stream(side):
                    for _ in range(3):
                        self.model(static_in)
                torch.cuda.current_stream(self.device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    static_out = self.model(static_in)
                self._graphs[n] = (graph, static_in, static_out)
        torch.cuda.synchronize(self.device)

    def run_tensor(self, windows):
        """Device tensor in, device tensor out (used by the GPU-resident path), ordered on
        torch's current stream. The result is a fresh tensor, never a graph's static buffer
        (the next replay would overwrite it)."""
        torch = self._torch
        graph = self._graphs.get(int(windows.shape[0]))
        with torch.inference_mode():
            if graph is None:
                return self.model(windows.to(self.dtype))
            g, static_in, static_out = graph
            static_in.copy_(windows)  # converts dtype; on the current stream, like replay
            g.replay()
            return static_out.clone()

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        torch = self._torch
        x = torch.from_numpy(self.check_input(windows)).to(self.device)
        return self.run_tensor(x).float().cpu().numpy()


_TRT_LOGGER = None


def _trt_logger(trt):
    """One logger for every builder and runtime: TensorRT keeps a single global logger and
    warns when a second, different one is passed in."""
    global _TRT_LOGGER
    if _TRT_LOGGER is None:
        _TRT_LOGGER = trt.Logger(trt.Logger.WARNING)
    return _TRT_LOGGER


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
        self.logger = _trt_logger(trt)
        onnx_path = fp16_onnx or self._fp16_onnx_path()
        self.plan_path = plan_cache_path(spec, onnx_path, cache_dir, trt.__version__, torch.cuda.get_device_capability())
        # The runtime is kept: engines must not outlive the runtime that deserialised them.
        self.runtime = trt.Runtime(self.logger)
        engine = None
        if self.plan_path.is_file():
            engine = self.runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
            if engine is None:  # stale (other TensorRT build) or truncated plan: rebuild it
                log.warning("TensorRT plan %s could not be deserialised; rebuilding", self.plan_path)
        if engine is None:
            engine = self.runtime.deserialize_cuda_engine(self._build(onnx_path))
        if engine is None:
            raise EngineUnavailable(f"TensorRT plan {self.plan_path} could not be deserialised")
        self.engine = engine
        self.context = engine.create_execution_context()
        if self.context is None:
            raise EngineUnavailable("TensorRT could not create an execution context (out of GPU memory?)")
        # I/O from the engine itself (TensorRT 10's name-based API), not assumed names.
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise EngineUnavailable(f"TensorRT plan has inputs {inputs} and outputs {outputs}; expected one each")
        self.input_name, self.output_name = inputs[0], outputs[0]
        to_torch = {trt.DataType.HALF: torch.float16, trt.DataType.FLOAT: torch.float32}
        try:
            self.input_dtype = to_torch[engine.get_tensor_dtype(self.input_name)]
            self.output_dtype = to_torch[engine.get_tensor_dtype(self.output_name)]
        except KeyError as exc:
            raise EngineUnavailable(f"TensorRT plan uses an unsupported I/O type {exc}") from None

    def _fp16_onnx_path(self) -> Path:
        return verified_fp16_onnx(self.spec)

    def _build(self, onnx_path: Path) -> bytes:
        trt = self._trt
        builder = trt.Builder(self.logger)
        # Strongly typed: precisions come from the FP16 ONNX itself; the FP16 builder flag
        # is deprecated in TensorRT 10.12 and gone in 11. (Explicit batch is implicit in 10.)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, self.logger)
        # the path lets the parser find external weight files next to the model
        if not parser.parse(onnx_path.read_bytes(), str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineUnavailable(f"TensorRT could not parse {onnx_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 30)
        cache_file = self.plan_path.with_suffix(".timing_cache")
        cache = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
        s, t = self.spec.crop_size, self.spec.window
        input_name = network.get_input(0).name
        profile = builder.create_optimization_profile()
        profile.set_shape(input_name, (1, t, 3, s, s), (1, t, 3, s, s), (MAX_FACES, t, 3, s, s))
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

    def describe(self) -> str:
        return f"{self.name} ({self.device}, fp16)"

    def run_tensor(self, windows):
        """CUDA tensor (N,T,3,S,S) in, CUDA tensor (N,3,S,S) out (the plan's output type).

        Runs on torch's *current* stream, the one that produced ``windows`` (the caller's
        stream context): the dtype conversion, the TensorRT kernels and the caller's next
        kernels are then ordered on one stream without host syncs. Buffers come from torch's
        caching allocator on that same stream, so their memory cannot be reused before
        TensorRT has finished with it."""
        torch = self._torch
        n = int(windows.shape[0])
        if not 1 <= n <= MAX_FACES:
            raise ValueError(f"TensorRT profile covers 1..{MAX_FACES} faces, got {n}")
        stream = torch.cuda.current_stream()
        x = windows.to(device=stream.device, dtype=self.input_dtype).contiguous()
        if not self.context.set_input_shape(self.input_name, tuple(x.shape)):
            raise RuntimeError(f"TensorRT rejected input shape {tuple(x.shape)}")
        shape = tuple(self.context.get_tensor_shape(self.output_name))
        if shape != (n, 3, self.spec.crop_size, self.spec.crop_size):
            raise RuntimeError(f"TensorRT output shape {shape} does not match the model contract")
        out = torch.empty(shape, device=stream.device, dtype=self.output_dtype)
        if not (self.context.set_tensor_address(self.input_name, x.data_ptr())
                and self.context.set_tensor_address(self.output_name, out.data_ptr())):
            raise RuntimeError("TensorRT rejected a tensor address")
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed (see TensorRT log)")
        return out

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        torch = self._torch
        # Pageable host memory: the copy is synchronous w.r.t. the host, then stream-ordered.
        x = torch.from_numpy(self.check_input(windows)).to("cuda")
        return self.run_tensor(x).float().cpu().numpy()


def verified_fp16_onnx(spec: ModelSpec) -> Path:
    """The FP16 ONNX the manifest lists (``onnx_fp16``), after checking its SHA-256. Not
    listed or not there: the TensorRT engine is unavailable here (``auto`` moves on); there
    but not matching its hash: refused, as every other artefact is."""
    path = spec.onnx_fp16_path
    if path is None:
        raise EngineUnavailable("the model manifest lists no FP16 ONNX (run `livedeid export --fp16`)")
    if not path.is_file():
        raise EngineUnavailable(f"no FP16 ONNX at {path} (run `livedeid export --fp16`)")
    return verified_file(spec, "onnx_fp16")


def plan_cache_path(spec: ModelSpec, onnx_path: Path, cache_dir: Path | None, trt_version: str,
                    capability: tuple[int, int]) -> Path:
    """``<user cache>/trt/<model>-<onnx sha12>-sm<cc>-trt<version>.plan``: a plan is only
    valid for the GPU architecture and TensorRT version that built it."""
    base = cache_dir or assets.cache_dir("trt")
    digest = sha256_file(onnx_path)[:12]
    return base / f"{spec.name}-{digest}-sm{capability[0]}{capability[1]}-trt{trt_version}.plan"
