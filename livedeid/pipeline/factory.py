"""The one wiring point: a :class:`~livedeid.core.settings.PipelineConfig` becomes a frame
processor. Every entry (CLI, panel, benchmarks, evaluation) builds its processor here, so
the choice between the CPU processor and the device processor is made in one place."""
from __future__ import annotations

from livedeid.core.settings import PipelineConfig
from livedeid.inference.engines import Engine
from livedeid.inference.manifest import ModelSpec
from livedeid.inference.registry import cuda_available
from livedeid.pipeline.processor import FrameProcessor

FRAME_PATHS = ("auto", "host", "device")


def build_processor(config: PipelineConfig, spec: ModelSpec | None = None, engine: Engine | None = None,
                    path: str = "auto", device: str = "cuda") -> FrameProcessor:
    """A processor for ``config`` (``spec`` and ``engine`` default to the configured ones).

    ``path``: ``host`` is :class:`FrameProcessor` (windows, engine input and composite in
    numpy); ``device`` is :class:`~livedeid.pipeline.device.TorchFrameProcessor` on the
    torch ``device``; ``auto`` takes the device path on CUDA when the engine may run there
    (not ONNX Runtime) and a CUDA device exists, else the host path. With a profile
    (``config.profile``) the host path is used: the processor loads the profile and the
    enrolled person's face wears its cloak.
    """
    if path not in FRAME_PATHS:
        raise ValueError(f"frame path must be one of {', '.join(FRAME_PATHS)}, not {path!r}")
    if config.profile is not None:
        # The cloak is applied by the host processor (a crop plus a fixed pattern, well
        # under a millisecond); the device processor has no cloak stage.
        if path == "device":
            raise ValueError("a profile's cloak runs on the host frame path only")
        path = "host"
    if path == "auto":
        on_device = engine is None or hasattr(engine, "run_tensor")
        path = "device" if on_device and config.engine != "onnxruntime" and cuda_available() else "host"
        device = "cuda"
    if path == "device":
        from livedeid.pipeline.device import TorchFrameProcessor  # imports torch

        return TorchFrameProcessor(config, spec, engine, device=device)
    return FrameProcessor(config, spec, engine)
