"""Baselines: the classic ways of hiding a face, and the product itself, as methods that
process a photo's face region.

Face region (where every filter acts and where PSNR/SSIM are measured)
    The MediaPipe face mesh of the *clean* photo (:func:`livedeid.tracking.still.still_landmarks`:
    the largest face; photos over 1280 px landmarked shrunk, small ones searched again at
    2x and 4x size because the mesh's detector misses faces that small). The region is
    the mesh's face oval (:data:`livedeid.core.face_regions.FACE_OVAL`, 36 landmarks,
    hairline to chin) filled at 1/16 px precision by the same rasteriser
    (:func:`~livedeid.core.face_regions.fill_polygons`) as
    :func:`livedeid.protect.composite.oval_mask`, which lays the product's perturbation
    under it (before its inward feather). Pixels outside it are never changed by a baseline.

Filters (strengths scale with the face, so a setting means the same on a 92 px ORL face
and a 1000 px press photo: ``s = face-oval width / 100 px``)
    ``blur:S``      Gaussian blur, sigma ``S * s`` px.
    ``pixelate:B``  the oval's bounding box resampled to cells of ``B * s`` px (area
                    average), enlarged back with nearest neighbour; grid anchored at the box.
    ``noise:P``     i.i.d. Gaussian noise with sigma ``255 / 10**(P/20)``, i.e. PSNR ``P``
                    dB on the region before rounding and clipping; ``noise`` alone takes
                    the measured PSNR of the first method under test, else 32 dB.
    ``jpeg:Q``      the whole photo JPEG-encoded at quality Q (OpenCV), region pasted back.
    ``model``       the product: :class:`livedeid.pipeline.processor.FrameProcessor` fed the
                    photo as ``window`` identical frames; the last output is kept.
    ``dir:NAME``    already-anonymised images from ``--method-dir`` (same layout).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from livedeid.core.errors import UserError
from livedeid.core.face_regions import fill_polygons, oval_points
from livedeid.evaluation.photos import IMAGE_SUFFIXES, Sample, read_image
from livedeid.tracking.still import still_landmarks

FACE_UNIT_PX = 100.0       # filter strengths are per 100 px of face-oval width

DEFAULT_METHODS = ("none", "blur:2", "blur:8", "pixelate:8", "noise", "jpeg:10")
SWEEP = {
    "blur": (1, 2, 4, 8, 16),
    "pixelate": (2, 4, 8, 12, 16, 24),
    "noise": (40, 35, 30, 25, 20),
    "jpeg": (50, 30, 20, 10, 5),
}
FAMILIES = ("none", "blur", "pixelate", "noise", "jpeg", "model", "dir")


@dataclass
class FaceRegion:
    box: tuple[int, int, int, int]   # x0, y0, x1, y1 (exclusive)
    mask: np.ndarray                 # bool (y1-y0, x1-x0): inside the face-oval polygon
    landmarks: np.ndarray            # (478, 2) face mesh, image pixels

    @property
    def width(self) -> float:
        return float(np.ptp(oval_points(self.landmarks)[:, 0]))

    @property
    def scale(self) -> float:
        return max(self.width, 1.0) / FACE_UNIT_PX


def face_region(landmarks: np.ndarray, hw: tuple[int, int], grow: float = 0.0) -> FaceRegion | None:
    """The face-oval polygon of ``landmarks`` as a box + boolean mask (see module doc);
    ``grow``: the oval scaled about its centre (a personal cloak's region)."""
    h, w = hw
    poly = oval_points(landmarks, grow)
    x0, y0 = np.maximum(np.floor(poly.min(axis=0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(poly.max(axis=0)).astype(int) + 1, [w, h])
    if x1 - x0 < 4 or y1 - y0 < 4:
        return None
    hard = fill_polygons(np.zeros((y1 - y0, x1 - x0), np.uint8), [poly], 255, origin=(x0, y0))
    if not hard.any():
        return None
    return FaceRegion((int(x0), int(y0), int(x1), int(y1)), hard > 0, np.asarray(landmarks, np.float64))


def find_region(image: np.ndarray) -> FaceRegion | None:
    """Face region of the largest face in a still photo, from
    :func:`livedeid.tracking.still.still_landmarks` (small photos searched again enlarged)."""
    landmarks = still_landmarks(image)
    return None if landmarks is None else face_region(landmarks, image.shape[:2])


def _paste(image: np.ndarray, region: FaceRegion, filtered_box: np.ndarray) -> np.ndarray:
    out = image.copy()
    x0, y0, x1, y1 = region.box
    sub = out[y0:y1, x0:x1]
    sub[region.mask] = filtered_box[region.mask]
    return out


def _padded(image: np.ndarray, box, pad: int):
    h, w = image.shape[:2]
    x0, y0, x1, y1 = box
    px0, py0, px1, py1 = max(x0 - pad, 0), max(y0 - pad, 0), min(x1 + pad, w), min(y1 + pad, h)
    return image[py0:py1, px0:px1], (x0 - px0, y0 - py0)


def blur_face(image: np.ndarray, region: FaceRegion, strength: float) -> np.ndarray:
    sigma = strength * region.scale
    # Blur a padded crop (OpenCV's 8-bit kernel reaches 3 sigma) instead of a 12 MP photo.
    crop, (ox, oy) = _padded(image, region.box, int(math.ceil(4 * sigma)) + 1)
    x0, y0, x1, y1 = region.box
    blurred = cv2.GaussianBlur(crop, (0, 0), sigma)
    return _paste(image, region, blurred[oy:oy + y1 - y0, ox:ox + x1 - x0])


def pixelate_face(image: np.ndarray, region: FaceRegion, strength: float) -> np.ndarray:
    block = max(strength * region.scale, 1.0)
    x0, y0, x1, y1 = region.box
    box = image[y0:y1, x0:x1]
    h, w = box.shape[:2]
    small = cv2.resize(box, (max(1, round(w / block)), max(1, round(h / block))), interpolation=cv2.INTER_AREA)
    return _paste(image, region, cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST))


def noise_face(image: np.ndarray, region: FaceRegion, psnr_db: float, seed: int) -> np.ndarray:
    sigma = 255.0 / 10.0 ** (psnr_db / 20.0)
    x0, y0, x1, y1 = region.box
    rng = np.random.default_rng(seed)
    box = image[y0:y1, x0:x1].astype(np.float32) + rng.normal(0.0, sigma, (y1 - y0, x1 - x0, 3)).astype(np.float32)
    return _paste(image, region, np.clip(np.rint(box), 0, 255).astype(np.uint8))


def jpeg_face(image: np.ndarray, region: FaceRegion, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    dec = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    x0, y0, x1, y1 = region.box
    return _paste(image, region, dec[y0:y1, x0:x1])


@dataclass
class Method:
    """One way of processing a face. ``apply(image, region, index)`` -> processed photo."""

    name: str
    family: str
    param: float | None = None
    under_test: bool = False
    notes: list[str] = field(default_factory=list)
    core: bool = False  # one of the requested (non-sweep) methods: also run on pulse clips

    def apply(self, image: np.ndarray, region: FaceRegion, index: int, sample: Sample | None = None) -> np.ndarray:
        f, p = self.family, self.param
        if f == "none":
            return image
        if f == "blur":
            return blur_face(image, region, p)
        if f == "pixelate":
            return pixelate_face(image, region, p)
        if f == "noise":
            if p is None:
                raise RuntimeError("noise PSNR not resolved yet")
            return noise_face(image, region, p, seed=index)
        if f == "jpeg":
            return jpeg_face(image, region, int(p))
        raise ValueError(f"method {self.name} cannot process photos")

    def video(self, frames: Iterable, regions: list) -> Iterator[np.ndarray]:
        """Processed images of a clip, frame by frame (``regions[i]`` may be None: no
        face found in frame i, which is then left as it is)."""
        for i, fr in enumerate(frames):
            r = regions[i]
            yield fr.image if r is None else self.apply(fr.image, r, i)

    def close(self) -> None:
        pass


class ModelMethod(Method):
    """The product's model through the real frame processor: the shipped model with ONNX
    Runtime, or a given ``spec`` and ``engine`` (training evaluates its torch model so)."""

    def __init__(self, manifest: Path | None = None, *, spec=None, engine=None, name: str = "model"):
        from livedeid.inference.manifest import load_spec

        super().__init__(name, "model", None, under_test=True)
        self.manifest = manifest
        self.spec = spec if spec is not None else load_spec(manifest)
        if engine is None:
            from livedeid.inference.registry import create_engine

            engine = create_engine("onnxruntime", self.spec).engine
        self.engine = engine
        self.fail_closed_images = 0
        self.untracked_images = 0

    def _processor(self):
        from livedeid.core.settings import PipelineConfig
        from livedeid.pipeline.processor import FrameProcessor

        return FrameProcessor(PipelineConfig(engine="onnxruntime", manifest=self.manifest), self.spec, self.engine)

    def apply(self, image, region, index, sample=None):
        from livedeid.core.records import Frame

        # A still photo as a clip of `window` identical frames, so the model sees a full,
        # genuine window (the first frame alone would be a window of repeats as well, but
        # the tracker's smoothing settles over the frames too). Keep the last output.
        proc = self._processor()
        try:
            for i in range(self.spec.window):
                frame = proc.process(Frame(image=image, index=i, timestamp=i / 30.0))
        finally:
            proc.close()
        if frame.fail_closed_regions:
            self.fail_closed_images += 1
        if not [f for f in frame.faces if not f.is_lost]:
            self.untracked_images += 1
        return frame.output

    def video(self, frames, regions):
        proc = self._processor()
        try:
            for fr in frames:
                yield proc.process(fr).output
        finally:
            proc.close()


class DirMethod(Method):
    """Already-anonymised photos in a folder with the dataset's layout."""

    def __init__(self, folder: Path, samples: list[Sample]):
        folder = Path(folder)
        if not folder.is_dir():
            raise UserError(f"method folder not found: {folder}")
        super().__init__(f"dir:{folder.name}", "dir", None, under_test=True)
        found = {f"{p.parent.name}/{p.stem}": p for p in folder.glob("*/*")
                 if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}
        missing = [s.key for s in samples if s.key not in found]
        if missing:
            raise UserError(f"{folder} lacks {len(missing)} of {len(samples)} images "
                            f"(e.g. {missing[0]}.*); it must mirror the dataset's identity/name layout")
        self.files = found

    def apply(self, image, region, index, sample=None):
        out = read_image(self.files[sample.key])
        if out.shape != image.shape:
            raise UserError(f"{self.files[sample.key]} is {out.shape[1]}x{out.shape[0]}, "
                            f"the clean photo {image.shape[1]}x{image.shape[0]}: sizes must match")
        return out

    def video(self, frames, regions):
        raise ValueError("a folder of photos cannot process clips")


def parse_method(spec: str) -> Method:
    """``none``, ``blur:S``, ``pixelate:B``, ``noise[:PSNR]``, ``jpeg:Q`` (see module doc)."""
    fam, _, arg = spec.strip().partition(":")
    fam = fam.lower()
    if fam == "none" and not arg:
        return Method("none", "none")
    if fam == "noise" and not arg:
        return Method("noise", "noise", None)
    if fam not in ("blur", "pixelate", "noise", "jpeg"):
        raise UserError(f"unknown method '{spec}' (use none, blur:S, pixelate:B, noise[:PSNR], jpeg:Q, model)")
    try:
        value = float(arg)
    except ValueError:
        raise UserError(f"method '{spec}' needs a number after ':'") from None
    ok = {"blur": 0 < value <= 200, "pixelate": 0 < value <= 200, "noise": 0 < value <= 100,
          "jpeg": 1 <= value <= 100 and value == int(value)}[fam]
    if not ok:
        raise UserError(f"method '{spec}' is out of range")
    return Method(f"{fam}:{value:g}", fam, value)


def baseline_methods(specs: Iterable[str] = DEFAULT_METHODS, sweep: bool = False) -> list[Method]:
    methods = [parse_method(s) for s in specs]
    for m in methods:
        m.core = True
    if sweep:
        for fam, values in SWEEP.items():
            methods += [parse_method(f"{fam}:{v}") for v in values]
    seen, out = set(), []
    for m in methods:
        if m.name not in seen:
            seen.add(m.name)
            out.append(m)
    order = {f: i for i, f in enumerate(FAMILIES)}
    # Families together, mildest first (noise: high PSNR first; jpeg: high quality first).
    mild = lambda m: (m.param is not None, -(m.param or 0) if m.family in ("noise", "jpeg") else (m.param or 0))  # noqa: E731
    return sorted(out, key=lambda m: (order[m.family], mild(m)))
