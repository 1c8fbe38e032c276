"""The one harness that measures how well a method hides faces on labelled photos.

Clean photos are prepared once (:func:`load_clean_photos`: read, face region, each
recogniser's embedding of the face inside the region); each method then processes every
photo and :func:`measure_method` embeds the processed faces and scores them against the
clean ones (:func:`livedeid.evaluation.metrics.recognizer_metrics`) and measures the
face's PSNR/SSIM. ``livedeid eval`` (:func:`livedeid.evaluation.runs.run_eval`) and the
training's held-out evaluation both go through here. Photos without a face-mesh region
are left out of everything (their keys are kept in ``no_region``).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from livedeid.core.errors import UserError
from livedeid.evaluation.baselines import FaceRegion, Method, find_region
from livedeid.evaluation.metrics import (
    RecognizerMetrics,
    mse_to_psnr,
    probe_indices,
    recognizer_metrics,
    region_psnr_mse,
    region_ssim,
)
from livedeid.evaluation.photos import Sample, read_image


def _overlap(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    small = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return ix * iy / small if small > 0 else 0.0


def embed_region_face(recognizer, image: np.ndarray, region: FaceRegion) -> np.ndarray | None:
    """The recogniser's embedding of the face inside ``region`` (its own detector), or None.

    The face is the detection overlapping the region most (intersection over the smaller
    box, at least 30 %); on ties the larger face wins (``embed_faces`` lists the largest
    first), so a small spurious box inside the face cannot displace the face itself."""
    best, best_ov = None, 0.3
    for face in recognizer.embed_faces(image):
        ov = _overlap(face.box, region.box)
        if ov > best_ov or (best is None and ov >= best_ov):
            best, best_ov = face.embedding, ov
    return best


@dataclass
class CleanPhotos:
    samples: list[Sample]           # the photos with a face region, in listing order
    images: list[np.ndarray]
    regions: list[FaceRegion]
    no_region: list[str]            # keys of the photos without one (left out)
    embeddings: dict[str, list]     # recogniser name -> clean embedding per photo (None: no face)

    @property
    def ids(self) -> np.ndarray:
        return np.array([s.identity for s in self.samples])

    def found(self, recognizer: str) -> np.ndarray:
        return np.array([e is not None for e in self.embeddings[recognizer]])

    def probes(self, recognizer: str) -> np.ndarray:
        return probe_indices(self.ids, self.found(recognizer))


def load_clean_photos(samples: list[Sample], recognizers: list, *, min_side: int = 0, quiet: bool = True,
                      where: str = "the photos") -> CleanPhotos:
    """Read every photo (enlarged 3x when under ``min_side`` px), find its face region and
    embed its clean face with every recogniser. ``where`` names the photos in errors."""
    from tqdm import tqdm

    kept, images, regions, no_region = [], [], [], []
    for s in tqdm(samples, desc="clean photos", disable=quiet, unit="img", dynamic_ncols=True):
        img = read_image(s.path, min_side)
        r = find_region(img)
        if r is None:
            no_region.append(s.key)
            continue
        kept.append(s)
        images.append(img)
        regions.append(r)
    if len({s.identity for s in kept}) < 2:
        raise UserError(f"the face mesh found faces in photos of fewer than two identities in {where}")
    embeddings = {rec.name: [embed_region_face(rec, im, r) for im, r in
                             tqdm(list(zip(images, regions)), desc=f"clean {rec.name}", disable=quiet, unit="img",
                                  dynamic_ncols=True)]
                  for rec in recognizers}
    for rec in recognizers:
        if not any(e is not None for e in embeddings[rec.name]):
            raise UserError(f"{rec.name} finds no face in any clean photo of {where}")
    return CleanPhotos(kept, images, regions, no_region, embeddings)


@dataclass
class MethodResult:
    method: Method
    n_images: int
    psnr_db: float
    ssim: float
    per_recognizer: dict[str, RecognizerMetrics]
    embeddings: dict[str, list]     # recogniser name -> processed embedding per photo


def _quality(clean: np.ndarray, out: np.ndarray, region: FaceRegion) -> tuple[float, float]:
    """(MSE, SSIM) of the processed photo on the face region."""
    x0, y0, x1, y1 = region.box
    a, b = clean[y0:y1, x0:x1], out[y0:y1, x0:x1]
    mse = region_psnr_mse(a, b, region.mask)
    return mse, (region_ssim(a, b, region.mask) if mse > 0 else 1.0)


def measure_method(method: Method, clean: CleanPhotos, recognizers: list,
                   tick: Callable[[], None] | None = None) -> MethodResult:
    """Process every clean photo with ``method``; face PSNR/SSIM and every recogniser's
    metrics of the processed photos (``tick`` is called once per photo)."""
    mses, ssims, processed = [], [], {rec.name: [] for rec in recognizers}
    for i, (s, img, r) in enumerate(zip(clean.samples, clean.images, clean.regions)):
        out = method.apply(img, r, i, s)
        mse, ssim = _quality(img, out, r)
        mses.append(mse)
        ssims.append(ssim)
        for rec in recognizers:
            # The untouched photo's embedding is the clean one (the recognisers are
            # deterministic), so "none" reuses it.
            processed[rec.name].append(clean.embeddings[rec.name][i] if method.family == "none"
                                       else embed_region_face(rec, out, r))
        if tick is not None:
            tick()
    per_rec = {rec.name: recognizer_metrics(rec, clean.ids, clean.embeddings[rec.name], processed[rec.name],
                                            clean.probes(rec.name))
               for rec in recognizers}
    return MethodResult(method, len(clean.samples), mse_to_psnr(float(np.mean(mses))), float(np.nanmean(ssims)),
                        per_rec, processed)


def face_psnr(method: Method, clean: CleanPhotos, indices) -> float:
    """Pooled face PSNR of ``method`` on the photos ``indices`` only (no recognisers):
    for picking a baseline's strength."""
    mses = []
    for i in indices:
        img, r = clean.images[i], clean.regions[i]
        x0, y0, x1, y1 = r.box
        out = method.apply(img, r, i, clean.samples[i])
        mses.append(region_psnr_mse(img[y0:y1, x0:x1], out[y0:y1, x0:x1], r.mask))
    return mse_to_psnr(float(np.mean(mses)))
