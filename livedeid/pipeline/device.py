"""GPU-resident frame path: the frame goes up once, crops, windows, engine and composite
run on the device, and the frame comes down once.

:class:`TorchFrameProcessor` is a :class:`~livedeid.pipeline.processor.FrameProcessor` whose
window -> engine -> composite stages run in torch on ``device`` ("cuda", or "cpu" so the
same code is tested on machines without a GPU). Tracking stays on the CPU (the parent's
MediaPipe tracker, on its downscaled copy), and so do the trusted/hidden split, the
fail-closed hiding, the ``hold`` policy and the heart rate, on the downloaded frame, with
the parent's own code.

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
GPU's timeline, not as the (asynchronous) time the host spent queueing them; the host's
fail-closed hiding is added to ``composite``.

Fail closed exactly like the parent: lost or implausible faces are hidden on the host;
if anything on the device path raises (engine, CUDA error, out of memory) the processor
switches for good to the parent's CPU path (``protect_on_host``), whose engine call falls
back to ONNX Runtime on the CPU and, if that fails too, hides every face.

``FaceTrack.crop``/``protected`` are not filled on the device path (they would cost a
download per face); they are on the CPU fallback path.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import cv2
import numpy as np

from livedeid.core.errors import UserError
from livedeid.core.records import FaceTrack, Frame
from livedeid.core.settings import PipelineConfig
from livedeid.inference.engines import Engine
from livedeid.inference.manifest import ModelSpec, load_spec
from livedeid.inference.registry import create_engine
from livedeid.pipeline.processor import FrameProcessor
from livedeid.pipeline.stats import DEVICE_STAGES
from livedeid.protect.composite import oval_mask
from livedeid.protect.windows import FaceWindows


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
class FaceMaps:
    """The host-side numbers of one frame's device work, uploaded as one buffer ``aux``:
    per trusted face the map from crop pixels into the frame, then per face whose oval is
    in the frame the map from its box pixels back into the crop (the inverses exactly as
    cv2.warpAffine computes them in extract_crop and apply_protection), then those faces'
    feathered oval masks (composite.oval_mask: small, computed on the CPU)."""

    aux: np.ndarray                                       # float32, flat
    boxes: list[tuple[int, int, int, int] | None]         # per trusted face: its oval's box
    n_coef: int                                           # floats of maps at the start of aux

    @classmethod
    def of(cls, trusted: list[FaceTrack], frame_hw: tuple[int, int], crop_size: int) -> FaceMaps:
        coefs = [grid_coefficients(cv2.invertAffineTransform(f.to_crop), frame_hw) for f in trusted]
        boxes, masks = [], []
        for f in trusted:
            box, mask = oval_mask(f.landmarks, frame_hw)
            boxes.append(box)
            if box is not None:
                to_box = f.from_crop.copy()
                to_box[:, 2] -= box[:2]
                coefs.append(grid_coefficients(cv2.invertAffineTransform(to_box), (crop_size, crop_size)))
                masks.append(mask)
        aux = np.concatenate([np.stack(coefs).ravel()] + [m.ravel() for m in masks])
        return cls(aux, boxes, len(coefs) * 6)


@dataclass
class InFlight:
    """One frame between launch and finish: its faces, and its output (a host array, or
    a pinned tensor the download is still writing until ``done`` has completed)."""

    frame: Frame
    trusted: list[FaceTrack]
    hidden: list[FaceTrack]
    out: object = None                  # host ndarray, or pinned tensor still being written
    done: object = None                 # CUDA event after the download (None: ready)
    clock: _Clock | None = None


class TorchFrameProcessor(FrameProcessor):
    """:class:`FrameProcessor` with the window/engine/composite stages on a torch device.

    ``engine`` must offer ``run_tensor(device tensor) -> device tensor``
    (:class:`TorchEngine`, :class:`TensorRTEngine`). By default the registry's preference
    order restricted to those (:func:`livedeid.inference.registry.create_engine` with a
    device): TensorRT on CUDA when it is available, else torch on ``device`` (FP16 + CUDA
    graphs on CUDA, FP32 on the CPU).
    """

    STAGES = DEVICE_STAGES

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
            choice = create_engine(config.engine, spec, device=device)
            engine, reason, skipped = choice.engine, choice.reason, choice.fallbacks
        if not hasattr(engine, "run_tensor"):
            raise UserError(f"engine {engine.describe()} has no device-tensor entry (run_tensor)")
        super().__init__(config, spec, engine)
        self.engine_reason, self.engine_skipped = reason, skipped
        self.device = torch.device(device)
        self._torch = torch
        self._F = torch.nn.functional
        self.dev_windows = FaceWindows(spec.window, spec.crop_size)  # holds device tensors
        self._cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(device=self.device) if self._cuda else None
        self._pending: InFlight | None = None
        self.host_only = False  # set for good when the device path failed once

    # -- public ------------------------------------------------------------------------
    def process(self, frame: Frame) -> Frame:
        """Synchronous: the frame comes back finished (the parent's contract)."""
        if self._pending is not None:
            raise RuntimeError("process() while a submitted frame is in flight: flush() first")
        self.track(frame)
        return self._finish(self._launch(frame))

    def submit(self, frame: Frame) -> Frame | None:
        """Overlapped: track ``frame`` while the device works on the previous one, then
        return the previous frame finished (None for the first frame)."""
        self.track(frame)
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
    def _window_sets(self) -> list[FaceWindows]:
        return [self.windows, self.dev_windows]

    def _launch(self, frame: Frame) -> InFlight:
        trusted, hidden = self.sort_faces(frame)
        job = InFlight(frame, trusted, hidden)
        if self.config.protect and trusted and not self.host_only:
            try:
                # inference mode: no autograd bookkeeping on any of these ops (the ring
                # buffers are then inference tensors, only ever updated in here)
                with self._torch.inference_mode():
                    if self._cuda:
                        with self._torch.cuda.stream(self.stream):
                            self.device_protect(job)
                    else:
                        self.device_protect(job)
                return job
            except UserError:
                raise
            except Exception as exc:  # CUDA errors, TensorRT failures, out of memory
                self._device_failed(exc)
                job = InFlight(frame, trusted, hidden)
        job.out, job.trusted, job.hidden = self.protect_on_host(frame, trusted, hidden)
        return job

    def _device_failed(self, exc: BaseException) -> None:
        self._event(logging.WARNING, f"GPU frame path ({self.engine.describe()}) failed "
                                     f"({type(exc).__name__}: {exc}); continuing on the CPU path")
        self.host_only = True
        self.dev_windows = FaceWindows(self.spec.window, self.spec.crop_size)

    def device_protect(self, job: InFlight) -> None:
        """Queue upload, crops, windows, engine, composite and download for ``job`` on the
        current stream (fills ``job.out``, ``job.done`` and ``job.clock``)."""
        torch = self._torch
        trusted, n = job.trusted, len(job.trusted)
        maps = FaceMaps.of(trusted, job.frame.image.shape[:2], self.spec.crop_size)
        clock = _Clock(torch, self.stream)
        clock.mark("start")
        img, aux = self._upload(job.frame.image, maps.aux)
        coef = aux[:maps.n_coef].view(-1, 2, 3)
        clock.mark("upload")
        crops = self._crops(img, coef[:n])
        windows = torch.stack([self.dev_windows.push_crop(f.track_id, c) for f, c in zip(trusted, crops)])
        clock.mark("window")
        protected = self.engine.run_tensor(windows)
        clock.mark("engine")
        out = self._composite(img, protected.float() - crops, maps, coef[n:], aux)
        clock.mark("composite")
        job.out = self._download(out)
        clock.mark("download")
        if self._cuda:
            job.done = clock.marks[-1][1]  # recorded after the download: wait on it
        job.clock = clock

    def _upload(self, image: np.ndarray, aux_host: np.ndarray):
        """(frame, aux) on the device. On CUDA two H2D copies per frame, both from pinned
        (page-locked) memory so the DMA runs asynchronously on the stream; torch's caching
        host allocator keeps each pinned block until its copy has completed. (A pageable
        copy would sync the stream and stall the overlap with tracking.)"""
        torch = self._torch
        if not self._cuda:
            return torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(aux_host)
        staging = torch.empty(image.shape, dtype=torch.uint8, pin_memory=True)
        staging.numpy()[...] = image
        aux_pinned = torch.empty(aux_host.shape, dtype=torch.float32, pin_memory=True)
        aux_pinned.numpy()[...] = aux_host
        return staging.to(self.device, non_blocking=True), aux_pinned.to(self.device, non_blocking=True)

    def _crops(self, img, coef):
        """The faces' aligned crops, RGB in [0, 1], (N, 3, S, S): one grid_sample, the
        faces' grids stacked along the height. BORDER_REPLICATE == padding "border"."""
        torch, s, n = self._torch, self.spec.crop_size, int(coef.shape[0])
        src = img.permute(2, 0, 1)[None].float()  # BGR, (1, 3, H, W)
        grid = torch.cat([sample_grid(coef[i], (s, s)) for i in range(n)], dim=1)
        crops = self._F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=True)
        # cv2 warps the uint8 frame into a uint8 crop: round likewise, then RGB in [0, 1]
        return crops.round_().reshape(3, n, s, s).permute(1, 0, 2, 3).flip(1) * (1.0 / 255.0)

    def _composite(self, img, residual, maps: FaceMaps, box_coef, aux):
        """A copy of the device frame with each face's ``residual`` (RGB, crop space)
        warped into its box and added under its oval mask, rounded and clamped."""
        torch = self._torch
        out = img.clone()
        k, offset = 0, maps.n_coef
        for r, box in zip(residual.flip(1), maps.boxes):  # back to BGR
            if box is None:  # the oval is outside the frame
                continue
            x0, y0, x1, y1 = box
            bh, bw = y1 - y0, x1 - x0
            m = aux[offset:offset + bh * bw].view(bh, bw, 1)
            offset += bh * bw
            # zeros outside the crop == cv2's BORDER_CONSTANT 0 in apply_protection
            g = sample_grid(box_coef[k], (bh, bw))
            k += 1
            warped = self._F.grid_sample(r[None], g, mode="bilinear", padding_mode="zeros", align_corners=True)
            region = out[y0:y1, x0:x1]
            blended = region.float() + warped[0].permute(1, 2, 0) * (m * 255.0)
            region.copy_(blended.round_().clamp_(0, 255).to(torch.uint8))
        return out

    def _download(self, out):
        """The one D2H copy, into pinned memory (CUDA), or the array itself (CPU)."""
        if not self._cuda:
            return out.numpy()
        host = self._torch.empty(tuple(out.shape), dtype=self._torch.uint8, pin_memory=True)
        host.copy_(out, non_blocking=True)
        return host

    def _finish(self, job: InFlight) -> Frame:
        frame = job.frame
        if job.done is not None:
            try:
                job.done.synchronize()  # the download has landed in pinned host memory
            except Exception as exc:  # CUDA reports kernel faults asynchronously, here
                self._device_failed(exc)
                job = InFlight(frame, job.trusted, job.hidden)
                job.out, job.trusted, job.hidden = self.protect_on_host(frame, job.trusted, job.hidden)
        if job.clock is not None:
            frame.stage_ms.update(job.clock.stage_ms())
        out = job.out if isinstance(job.out, np.ndarray) else job.out.numpy()
        return self.finish(frame, out, job.trusted, job.hidden)
