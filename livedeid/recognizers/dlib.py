"""dlib's face recogniser: HOG detector, 5-point shape predictor and ResNet descriptor,
as ``face_recognition_models`` ships them. Its torch port lives in
:mod:`livedeid.nets.dlib_port`; dlib itself is imported only when the recogniser is built."""
from __future__ import annotations

import threading

import numpy as np

from livedeid.core.errors import UserError
from livedeid.core.geometry import invert_affine
from livedeid.recognizers.base import FaceEmbedding, Recognizer, package_dir, require_package


class DlibRecognizer(Recognizer):
    """dlib ResNet: HOG detector + 5-point shape predictor + ``get_face_chip(150, 0.25)``.

    HOG detection runs on a copy no larger than ``max_side`` pixels, upsampled ``upsample``
    times; ``None`` upsamples once (face_recognition's default) only images whose long side
    is at most 640 (webcam frames, small faces), since HOG's smallest face is 80 px and the
    upsampled pass on larger photos costs seconds without finding more faces (same 61/61
    faces and scores on the celebrity set). Landmarks and chips use the full-resolution image."""

    name = "dlib"
    metric = "euclidean"
    threshold = 0.6
    chip_size = 150
    padding = 0.25

    def __init__(self, upsample: int | None = None, max_side: int = 800):
        require_package("dlib", "install the 'recognizers' extra: pip install dlib-bin face-recognition-models")
        models = package_dir("face_recognition_models")
        if models is None:
            raise UserError("python package 'face_recognition_models' is not installed "
                            "(pip install face-recognition-models)")
        models = models / "models"
        files = {k: models / v for k, v in {
            "shape": "shape_predictor_5_face_landmarks.dat",
            "net": "dlib_face_recognition_resnet_model_v1.dat",
        }.items()}
        for path in files.values():
            if not path.is_file():
                raise UserError(f"dlib model file missing: {path} (reinstall face-recognition-models)")
        import dlib

        self._dlib = dlib
        self._detector = dlib.get_frontal_face_detector()
        self._shape = dlib.shape_predictor(str(files["shape"]))
        self._net = dlib.face_recognition_model_v1(str(files["net"]))
        self.resnet_path = files["net"]
        self.upsample = upsample
        self.max_side = max_side
        self._lock = threading.Lock()  # dlib's objects are not documented as thread-safe

    def _shapes(self, image_bgr: np.ndarray):
        import cv2

        dlib = self._dlib
        rgb = np.ascontiguousarray(image_bgr[:, :, ::-1])
        h, w = rgb.shape[:2]
        s = min(1.0, self.max_side / max(h, w))
        small = cv2.resize(rgb, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA) if s < 1 else rgb
        with self._lock:
            up = self.upsample if self.upsample is not None else int(max(small.shape[:2]) <= 640)
            rects = self._detector(small, up)
            shapes = []
            for r in sorted(rects, key=lambda r: -r.area()):
                rect = dlib.rectangle(int(round(r.left() / s)), int(round(r.top() / s)),
                                      int(round(r.right() / s)), int(round(r.bottom() / s)))
                shapes.append((rect, self._shape(rgb, rect)))
        return rgb, shapes

    def _faces(self, image_bgr: np.ndarray, transforms: bool):
        rgb, shapes = self._shapes(image_bgr)
        out = []
        for rect, shape in shapes:
            chip = self._dlib.get_face_chip(rgb, shape, size=self.chip_size, padding=self.padding)
            box = (max(rect.left(), 0), max(rect.top(), 0), min(rect.right() + 1, rgb.shape[1]),
                   min(rect.bottom() + 1, rgb.shape[0]))
            out.append((box, chip, self._chip_transform(rgb.shape[:2], shape) if transforms else None))
        return out

    def face_chips(self, image_bgr: np.ndarray):
        return self._faces(image_bgr, transforms=True)

    def _chip_transform(self, hw, shape) -> np.ndarray:
        """image->chip 2x3 affine, measured rather than re-derived: dlib samples two
        coordinate ramps (x and y) exactly like the face (linear data survive its bilinear /
        pyramid resampling), and a least-squares affine reads the mapping off them."""
        h, w = hw
        xs = np.broadcast_to(np.arange(w, dtype=np.float64), (h, w)).copy()
        ys = np.broadcast_to(np.arange(h, dtype=np.float64)[:, None], (h, w)).copy()
        cx = self._dlib.get_face_chip(xs, shape, size=self.chip_size, padding=self.padding)
        cy = self._dlib.get_face_chip(ys, shape, size=self.chip_size, padding=self.padding)
        # Chip pixels that sample outside the image (zeros) or near its border (where dlib's
        # pyramid blur mixes in the zeros) are not on the ramp: fit, drop poor samples, refit.
        gy, gx = np.mgrid[0:self.chip_size, 0:self.chip_size]
        design = np.stack([gx.ravel(), gy.ravel(), np.ones(gx.size)], axis=1)
        target = np.stack([cx.ravel(), cy.ravel()], axis=1)
        keep = ((target[:, 0] > 0.5) & (target[:, 0] < w - 1.5) & (target[:, 1] > 0.5) & (target[:, 1] < h - 1.5))
        for _ in range(2):
            sol = np.linalg.lstsq(design[keep], target[keep], rcond=None)[0]
            keep &= np.abs(design @ sol - target).max(axis=1) < 0.25
        return invert_affine(sol.T)

    def embed_faces(self, image_bgr: np.ndarray) -> list[FaceEmbedding]:
        # As the base class, without measuring chip transforms it does not need.
        faces = self._faces(image_bgr, transforms=False)
        emb = self.embed_chips([chip for _, chip, _ in faces])
        return [FaceEmbedding(box=box, embedding=e) for (box, _, _), e in zip(faces, emb)]

    def embed_chips(self, chips_rgb: np.ndarray) -> np.ndarray:
        chips = [np.ascontiguousarray(c, dtype=np.uint8) for c in chips_rgb]
        if not chips:
            return np.zeros((0, 128), np.float32)
        if any(c.shape != (self.chip_size, self.chip_size, 3) for c in chips):
            raise ValueError(f"dlib chips must be ({self.chip_size}, {self.chip_size}, 3) uint8 RGB")
        with self._lock:
            vecs = self._net.compute_face_descriptor(chips)
        return np.array([np.array(v) for v in vecs], dtype=np.float32)

    def torch_module(self):
        try:
            from livedeid.nets.dlib_port import load_dlib_resnet
        except ImportError as exc:
            raise UserError(f"the dlib torch port is unavailable ({exc}); it needs torch "
                            "(pip install '.[train]')") from None
        return load_dlib_resnet(self.resnet_path).eval()
