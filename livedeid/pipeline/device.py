"""GPU-resident frame path: the frame goes up once, crops, windows, engine and composite
run on the device, and the frame comes down once.

:class:`TorchFrameProcessor` is a :class:`~livedeid.pipeline.processor.FrameProcessor` whose
window -> engine -> composite stages run in torch on ``device`` ("cuda", or "cpu" so the
same code is tested on machines without a GPU). Tracking stays on the CPU (the parent's
MediaPipe tracker, on its downscaled copy), and so do the fail-closed hiding, the
``hold`` policy and the heart rate, on the downloaded frame, with the parent's own code.

Per frame with at least one trusted face::

    host frame --(memcpy into pinned staging, non_blocking H2D)--> uint8 frame on device
    (plus one small non_blocking H2D of every face's sampling maps and oval masks)
      -> per face: bilinear crop (grid_sample, the same sampling as cv2.warpAffine
         in window.extract_crop, rounded to 8 bits as cv2 does) -> device ring buffer
      -> engine.run_tensor(windows)                (TorchEngine / TensorRTEngine)
      -> residual = protected - crop, warped back into the face's box (grid_sample,
         zeros outside the crop, as cv2's BORDER_CONSTANT) x feathered oval mask
         (composite.oval_mask, computed on the CPU and uploaded: it is small)
      -> rounded, clamped and written into the device frame
    --(non_blocking D2H into pinned memory, CUDA event)--> host frame for the sinks

Frames without a trusted face never touch the device.

Overlap. ``process(frame)`` keeps the parent's contract (the frame comes back finished).
``submit(frame)`` is the overlapped form: it tracks frame n on the CPU *while the GPU
still runs frame n-1's work* (everything is queued on the processor's own CUDA stream,
so nothing blocks the host), then waits on frame n-1's CUDA event, finishes it on the host
(fail-closed hiding, heart rate), queues frame n and returns frame n-1. ``flush()``
returns the last one. Latency grows by at most one frame; throughput becomes
max(track, device) instead of their sum.

Stage timings: ``track``, ``upload``, ``window``, ``engine``, ``composite``, ``download``
and ``rppg`` (ms). On CUDA the device stages are measured with CUDA events, i.e. on the
GPU's timeline, not as the (asynchronous) time the host spent queueing them.

Fail closed exactly like the parent: lost or implausible faces are hidden on the host;
if anything on the device path raises (engine, CUDA error, out of memory) the processor
switches for good to the parent's CPU path, whose engine call falls back to ONNX Runtime
on the CPU and, if that fails too, hides every face.

``FaceTrack.crop``/``protected`` are not filled on the device path (they would cost a
download per face); they are on the CPU fallback path.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from livedeid.core.errors import UserError
from livedeid.core.records import FaceTrack, Frame
from livedeid.core.settings import PipelineConfig
from livedeid.inference.engines import Engine, EngineUnavailable, TensorRTEngine, TorchEngine
from livedeid.inference.manifest import ModelSpec, load_spec
from livedeid.pipeline.processor import FrameProcessor
from livedeid.protect.composite import apply_protection, oval_mask
from livedeid.protect.windows import FaceWindows

log = logging.getLogger(__name__)

GPU_STAGES = ("track", "upload", "window", "engine", "composite", "download", "rppg")


def grid_coefficients(matrix: np.ndarray, in_hw: tuple[int, int]) -> np.ndarray:
    """(2, 3) float32 map from output pixel (x, y, 1) to grid_sample's normalised input
    coordinates, for a ``matrix`` that maps output pixels to input pixels.

    This is cv2.warpAffine's convention (pixel centres at integer coordinates; cv2 applies
    the inverse of the matrix it is given to every output pixel). With
    ``align_corners=True`` grid_sample puts -1 and +1 on the centres of the first and last
    input pixel, so input pixel x maps to 2x/(W-1)-1; that normalisation is folded into
    the matrix here, in float64.
    """
    in_h, in_w = in_hw
    m = np.asarray(matrix, np.float64)
    norm = np.array([[2.0 / max(in_w - 1, 1), 0.0, -1.0], [0.0, 2.0 / max(in_h - 1, 1), -1.0]])
    return np.concatenate([norm[:, :2] @ m[:, :2], (norm[:, :2] @ m[:, 2] + norm[:, 2])[:, None]],
                          axis=1).astype(np.float32)


def sample_grid(coef, out_hw: tuple[int, int]):
    """grid_sample grid (1, h, w, 2) from :func:`grid_coefficients` already on the device.
    Built directly rather than with F.affine_grid so that 1-pixel-wide outputs (a face box
    clipped at the frame edge) need no special case."""
    import torch

    h, w = out_hw
    xs = torch.arange(w, dtype=torch.float32, device=coef.device)[None, :]
    ys = torch.arange(h, dtype=torch.float32, device=coef.device)[:, None]
    gx = coef[0, 0] * xs + coef[0, 1] * ys + coef[0, 2]
    gy = coef[1, 0] * xs + coef[1, 1] * ys + coef[1, 2]
    return torch.stack([gx, gy], dim=-1)[None]


class DeviceFaceWindows(FaceWindows):
    """:class:`livedeid.protect.windows.FaceWindows` holding torch tensors on the device:
    ``push(track_id, crop)`` takes a (3, S, S) device tensor."""

    def push(self, track_id: int, crop):  # type: ignore[override]
        return self.push_crop(track_id, crop)


class _Clock:
    """Stage boundaries: CUDA events on the processor's stream (GPU timeline) on CUDA,
    perf_counter on the CPU (where every op is synchronous)."""

    def __init__(self, torch, stream):
        self._torch, self._stream = torch, stream
        self.marks: list[tuple[str, object]] = []

    def mark(self, stage: str) -> None:
        if self._stream is None:
            self.marks.append((stage, time.perf_counter()))
        else:
            ev = self._torch.cuda.Event(enable_timing=True)
            ev.record(self._stream)
            self.marks.append((stage, ev))

    def stage_ms(self) -> dict[str, float]:
        """{stage: ms from the previous mark}; call after the last event completed."""
        out = {}
        for (_, a), (stage, b) in zip(self.marks, self.marks[1:]):
            out[stage] = (b - a) * 1000.0 if self._stream is None else float(a.elapsed_time(b))
        return out


@dataclass
class _InFlight:
    frame: Frame
    trusted: list[FaceTrack]
    hidden: list[FaceTrack]
    out: object = None                  # host ndarray, or pinned tensor still being written
    done: object = None                 # CUDA event after the download (None: ready)
    clock: _Clock | None = None
    host_ms: dict[str, float] = field(default_factory=dict)


class TorchFrameProcessor(FrameProcessor):
    """:class:`FrameProcessor` with the window/engine/composite stages on a torch device.

    ``engine`` must offer ``run_tensor(device tensor) -> device tensor``
    (:class:`TorchEngine`, :class:`TensorRTEngine`). By default (``config.engine`` auto or
    tensorrt) TensorRT on CUDA when it is available, else :class:`TorchEngine` on ``device``
    (FP16 + CUDA graphs on CUDA, FP32 on the CPU).
    """

    def __init__(self, config: PipelineConfig | None = None, spec: ModelSpec | None = None,
                 engine: Engine | None = None, device: str = "cuda"):
        import torch

        config = config or PipelineConfig()
        config.validate()
        spec = spec or load_spec(config.manifest)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError("the GPU frame path needs torch with a CUDA device")
        reason, skipped = "given", []
        if engine is None:
            engine, reason, skipped = self._pick_engine(config.engine, spec, device)
        if not hasattr(engine, "run_tensor"):
            raise UserError(f"engine {engine.describe()} has no device-tensor entry (run_tensor)")
        super().__init__(config, spec, engine)
        self.engine_reason, self.engine_skipped = reason, skipped
        self.device = torch.device(device)
        self._torch = torch
        self._F = torch.nn.functional
        self.dev_windows = DeviceFaceWindows(spec.window, spec.crop_size)
        self._cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(device=self.device) if self._cuda else None
        self._pending: _InFlight | None = None
        self._host_only = False  # set for good when the device path failed once

    @staticmethod
    def _pick_engine(name: str, spec: ModelSpec, device: str) -> tuple[Engine, str, list[str]]:
        """The same preference as engines.create_engine, restricted to engines that take
        device tensors: TensorRT, then torch (FP16 + CUDA graphs on CUDA, FP32 on the CPU)."""
        if name == "onnxruntime":
            raise UserError("the GPU frame path runs torch or TensorRT engines, not onnxruntime")
        skipped: list[str] = []
        if device.startswith("cuda") and name in ("auto", "tensorrt"):
            try:
                return TensorRTEngine(spec), f"{name}: TensorRT on the GPU frame path", skipped
            except EngineUnavailable as exc:
                if name == "tensorrt":
                    raise UserError(f"engine 'tensorrt' unavailable: {exc}") from None
                skipped.append(f"tensorrt: {exc}")
        try:
            eng = TorchEngine(spec, device, cuda_graphs=device.startswith("cuda"))
        except EngineUnavailable as exc:
            raise UserError(f"engine 'torch' unavailable: {exc}") from None
        return eng, f"{name}: {eng.describe()} on the GPU frame path", skipped

    # -- public ------------------------------------------------------------------------
    def process(self, frame: Frame) -> Frame:
        """Synchronous: the frame comes back finished (the parent's contract)."""
        if self._pending is not None:
            raise RuntimeError("process() while a submitted frame is in flight: flush() first")
        self._track(frame)
        return self._finish(self._launch(frame))

    def submit(self, frame: Frame) -> Frame | None:
        """Overlapped: track ``frame`` while the device works on the previous one, then
        return the previous frame finished (None for the first frame)."""
        self._track(frame)
        done = self._finish(self._pending) if self._pending is not None else None
        self._pending = None
        self._pending = self._launch(frame)
        return done

    def flush(self) -> Frame | None:
        """The frame still in flight after the last ``submit``, finished (or None)."""
        if self._pending is None:
            return None
        inflight, self._pending = self._pending, None
        return self._finish(inflight)

    def close(self) -> None:
        self._pending = None
        super().close()

    # -- stages ------------------------------------------------------------------------
    def _track(self, frame: Frame) -> None:
        t = time.perf_counter()
        self.track(frame)
        frame.stage_ms["track"] = (time.perf_counter() - t) * 1000.0

    def _launch(self, frame: Frame) -> _InFlight:
        cfg = self.config
        trusted = [f for f in frame.faces if not f.is_lost and f.confidence >= cfg.min_confidence]
        hidden = [f for f in frame.faces if f not in trusted]
        for f in hidden:  # a face coming back starts a fresh window
            self.dev_windows.reset(f.track_id)
            self.windows.reset(f.track_id)
        alive = {f.track_id for f in frame.faces}
        self.dev_windows.retain(alive)
        self.windows.retain(alive)
        job = _InFlight(frame, trusted, hidden)
        if cfg.protect and trusted and not self._host_only:
            try:
                # inference mode: no autograd bookkeeping on any of these ops (the ring
                # buffers are then inference tensors, only ever updated in here)
                with self._torch.inference_mode():
                    if self._cuda:
                        with self._torch.cuda.stream(self.stream):
                            self._device_protect(job)
                    else:
                        self._device_protect(job)
                return job
            except UserError:
                raise
            except Exception as exc:  # CUDA errors, TensorRT failures, out of memory
                self._device_failed(exc)
                job = _InFlight(frame, trusted, hidden)
        self._host_protect(job)
        return job

    def _device_failed(self, exc: BaseException) -> None:
        msg = (f"GPU frame path ({self.engine.describe()}) failed ({type(exc).__name__}: {exc}); "
               "continuing on the CPU path")
        log.warning(msg)
        self.events.append(msg)
        self._host_only = True
        self.dev_windows = DeviceFaceWindows(self.spec.window, self.spec.crop_size)

    def _device_protect(self, job: _InFlight) -> None:
        """Queue upload, crops, windows, engine, composite and download for ``job``."""
        torch, F = self._torch, self._F
        frame, trusted = job.frame, job.trusted
        s = self.spec.crop_size
        h, w = frame.image.shape[:2]
        n = len(trusted)

        # Host-side numbers first (no device work yet): per face the crop map, the
        # face box, its feathered oval mask (composite.oval_mask: small, CPU) and the map
        # from box pixels back into the crop -- the inverses exactly as cv2.warpAffine
        # computes them in extract_crop and apply_protection.
        coefs = [grid_coefficients(cv2.invertAffineTransform(f.to_crop), (h, w)) for f in trusted]
        boxes, masks = [], []
        for f in trusted:
            box, mask = oval_mask(f.landmarks, (h, w))
            boxes.append(box)
            if box is not None:
                to_box = f.from_crop.copy()
                to_box[:, 2] -= box[:2]
                coefs.append(grid_coefficients(cv2.invertAffineTransform(to_box), (s, s)))
                masks.append(mask)
        aux_host = np.concatenate([np.stack(coefs).ravel()] + [m.ravel() for m in masks])

        clock = _Clock(torch, self.stream)
        clock.mark("start")
        if self._cuda:
            # Two H2D copies per frame, both from pinned (page-locked) memory so the DMA
            # runs asynchronously on the stream: the frame, and one buffer with every
            # face's maps and masks. torch's caching host allocator keeps each pinned block
            # until its copy has completed. (A pageable copy would sync the stream and
            # stall the overlap with tracking.)
            staging = torch.empty((h, w, 3), dtype=torch.uint8, pin_memory=True)
            staging.numpy()[...] = frame.image
            aux_pinned = torch.empty(aux_host.shape, dtype=torch.float32, pin_memory=True)
            aux_pinned.numpy()[...] = aux_host
            img = staging.to(self.device, non_blocking=True)
            aux = aux_pinned.to(self.device, non_blocking=True)
        else:
            img = torch.from_numpy(np.ascontiguousarray(frame.image))
            aux = torch.from_numpy(aux_host)
        n_coef = len(coefs) * 6
        coef = aux[:n_coef].view(-1, 2, 3)
        clock.mark("upload")

        # Crops of all faces in one grid_sample: the faces' grids are stacked along the
        # height, so the output is (1, 3, N*S, S). BORDER_REPLICATE == padding "border".
        src = img.permute(2, 0, 1)[None].float()  # BGR, (1, 3, H, W)
        grid = torch.cat([sample_grid(coef[i], (s, s)) for i in range(n)], dim=1)
        crops = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=True)
        # cv2 warps the uint8 frame into a uint8 crop: round likewise, then RGB in [0, 1]
        crops = crops.round_().reshape(3, n, s, s).permute(1, 0, 2, 3).flip(1) * (1.0 / 255.0)
        windows = torch.stack([self.dev_windows.push(f.track_id, c) for f, c in zip(trusted, crops)])
        clock.mark("window")

        protected = self.engine.run_tensor(windows)
        clock.mark("engine")

        residual = (protected.float() - crops).flip(1)  # back to BGR, (N, 3, S, S)
        out = img.clone()
        k, offset = n, n_coef
        for r, box in zip(residual, boxes):
            if box is None:  # the oval is outside the frame
                continue
            x0, y0, x1, y1 = box
            bh, bw = y1 - y0, x1 - x0
            m = aux[offset:offset + bh * bw].view(bh, bw, 1)
            offset += bh * bw
            # zeros outside the crop == cv2's BORDER_CONSTANT 0 in apply_protection
            g = sample_grid(coef[k], (bh, bw))
            k += 1
            warped = F.grid_sample(r[None], g, mode="bilinear", padding_mode="zeros", align_corners=True)
            region = out[y0:y1, x0:x1]
            blended = region.float() + warped[0].permute(1, 2, 0) * (m * 255.0)
            region.copy_(blended.round_().clamp_(0, 255).to(torch.uint8))
        clock.mark("composite")

        if self._cuda:
            host = torch.empty((h, w, 3), dtype=torch.uint8, pin_memory=True)
            host.copy_(out, non_blocking=True)  # the one D2H copy, into pinned memory
            job.out = host
        else:
            job.out = out.numpy()
        clock.mark("download")
        if self._cuda:
            job.done = clock.marks[-1][1]  # recorded after the download: wait on it
        job.clock = clock

    def _host_protect(self, job: _InFlight) -> None:
        """The parent's CPU path for the window/engine/composite stages."""
        cfg, frame = self.config, job.frame
        t = time.perf_counter()
        if cfg.protect and job.trusted:
            windows = [self.windows.push(frame.image, f) for f in job.trusted]
            t1 = time.perf_counter()
            job.host_ms["window"] = (t1 - t) * 1000.0
            protected = self._run_engine(np.stack(windows))
            t = time.perf_counter()
            job.host_ms["engine"] = (t - t1) * 1000.0
            if protected is None:  # every engine failed: fail closed on all faces
                job.hidden, job.trusted = list(frame.faces), []
            else:
                for f, p in zip(job.trusted, protected):
                    f.protected = p
        out = frame.image.copy()
        if cfg.protect:
            for f in job.trusted:
                apply_protection(out, f)
        job.out = out
        job.host_ms["composite"] = (time.perf_counter() - t) * 1000.0

    def _finish(self, job: _InFlight) -> Frame:
        frame = job.frame
        if job.done is not None:
            try:
                job.done.synchronize()  # the download has landed in pinned host memory
            except Exception as exc:  # CUDA reports kernel faults asynchronously, here
                self._device_failed(exc)
                job = _InFlight(frame, job.trusted, job.hidden)
                self._host_protect(job)
        if job.clock is not None:
            frame.stage_ms.update(job.clock.stage_ms())
        frame.stage_ms.update(job.host_ms)
        t = time.perf_counter()
        out = job.out.numpy() if not isinstance(job.out, np.ndarray) else job.out
        out = self.fail_closed(frame, out, job.hidden)
        self.finish_output(frame, out, job.trusted)
        frame.stage_ms["rppg"] = (time.perf_counter() - t) * 1000.0
        for stage in GPU_STAGES:
            frame.stage_ms.setdefault(stage, 0.0)
        frame.stage_ms["total"] = sum(frame.stage_ms[s] for s in GPU_STAGES)
        return frame
