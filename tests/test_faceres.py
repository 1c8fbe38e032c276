"""The faceres recogniser (Human's FaceRes TF.js model, torch port) on real images.

The parity references were computed by TF.js itself (@tensorflow/tfjs 4.22.0, CPU backend,
node 20; ``tf.loadGraphModel(tf.io.fromMemory(...))``): on the shipped faceres.json / .bin
for two fixed inputs rebuilt here without node (a 224x224 cut of scikit-image's astronaut
and a sine pattern), and on a small synthetic graph of the interpreter's other ops. Everything else runs the real model; celebrity photos (../shared/data)
where marked.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
torch = pytest.importorskip("torch")

from conftest import data_path  # noqa: E402

from livedeid.core.errors import UserError  # noqa: E402
from livedeid.core.geometry import apply_affine  # noqa: E402
from livedeid.recognizers.base import RECOGNIZER_NAMES, cosine, get_recognizer  # noqa: E402
from livedeid.recognizers.chips import crop_chip_pairs, fit_crop_to_chip, livedeid_crop  # noqa: E402
from livedeid.recognizers.faceres import MODEL_FILE, faceres_dir  # noqa: E402
from livedeid.recognizers.tfjs_torch import read_tfjs, read_weights, tfjs_to_torch  # noqa: E402

DESCRIPTOR, GENDER, AGE = "global_pooling/Mean", "gender_pred/Sigmoid", "age_pred/Softmax"
# TF.js's outputs: descriptor values at these indices, descriptor L2 norm and sum, gender
# sigmoid and the age softmax's argmax, for the two inputs of _parity_inputs().
REF_INDEX = [2, 3, 100, 160, 165, 198, 257, 463, 495, 511, 584, 623, 756, 768, 818, 837]
REF = [
    {"values": [0.35505, 0.0128718, 0.619734, 0.0244649, 1.09056, 0.0, 0.0293927, 1.29473, 0.364558,
                0.168617, 0.0, 1.10847, 1.06195, 0.0148784, 0.0, 1.44765],
     "norm": 7.97877, "sum": 131.177, "gender": 0.560252, "age_argmax": 26},
    {"values": [0.0, 0.0, 0.669301, 4.39076, 0.0, 4.20326, 0.0, 0.0, 3.38443, 0.0, 4.40218, 0.0, 0.0, 0.0,
                4.05935, 0.0],
     "norm": 10.4523, "sum": 41.479, "gender": 0.904834, "age_argmax": 29},
]


def _parity_inputs() -> np.ndarray:
    """(2, 224, 224, 3) float32 NHWC, 0..255: the inputs TF.js was run on."""
    from skimage import data

    astronaut = data.astronaut()[9:233, 111:335].astype(np.float32)
    h, w, c = np.meshgrid(np.arange(224), np.arange(224), np.arange(3), indexing="ij")
    pattern = (127.5 + 127.5 * np.sin(0.05 * h * (c + 1) + 0.031 * w * (3 - c) + c)).astype(np.float32)
    return np.stack([astronaut, pattern])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # One torch thread: a 224 px MobileNet gains little from more, and on busy cores
    # contending threads cost seconds per call; the numbers are the same.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def rec():
    try:
        return get_recognizer("faceres")
    except UserError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def graph():
    """The shipped TF.js model, read without building the recogniser (no YuNet needed)."""
    path = faceres_dir() / MODEL_FILE
    if not path.is_file():
        pytest.skip(f"faceres model not installed: {path}")
    return read_tfjs(path)


def test_torch_port_matches_tfjs(graph):
    x = torch.from_numpy(_parity_inputs()).permute(0, 3, 1, 2)
    folded = tfjs_to_torch(graph, [DESCRIPTOR, GENDER, AGE])
    literal = tfjs_to_torch(graph, [DESCRIPTOR], fold=False)  # no conv + batch-norm folding
    with torch.no_grad():
        desc, gender, age = (t.numpy().astype(np.float64) for t in folded(x))
        desc_literal = literal(x)[0].numpy()
    for k, ref in enumerate(REF):
        np.testing.assert_allclose(desc[k, REF_INDEX], ref["values"], rtol=1e-4, atol=1e-4)
        assert np.linalg.norm(desc[k]) == pytest.approx(ref["norm"], rel=1e-4)
        assert desc[k].sum() == pytest.approx(ref["sum"], rel=1e-4)
        assert gender[k, 0] == pytest.approx(ref["gender"], abs=1e-4)
        assert int(np.argmax(age[k])) == ref["age_argmax"]
    assert np.abs(desc_literal - desc).max() < 1e-4
    # Only the descriptor's nodes are built when only it is asked for.
    assert len(literal.program) < len(graph.nodes) and len(folded.program) < len(literal.program)


def _synthetic_model(folder: Path) -> np.ndarray:
    """A small TF.js graph of the interpreter's other ops (odd sizes for asymmetric SAME
    padding, foldable Conv2D + Mul + AddV2, fused depthwise with multiplier 2, Pad, Max/AvgPool,
    ConcatV2, fused Conv2D + Prelu, LeakyRelu, Mean, Squeeze, Reshape, MatMul, Softmax;
    float16 weights) written to ``folder``; returns its (2, 9, 11, 3) input."""
    import base64
    import json

    def s(v):
        return base64.b64encode(v.encode()).decode()

    def li(v):
        return {"list": {"i": [str(x) for x in v]}}

    rng, weights = np.random.default_rng(7), {}

    def const(name, value, dtype=np.float32):
        weights[name] = np.asarray(value, dtype)
        return {"name": name, "op": "Const", "attr": {}}

    conv = {"padding": {"s": s("SAME")}, "data_format": {"s": s("NHWC")}, "dilations": li([1, 1, 1, 1])}
    pool = {"ksize": li([1, 3, 3, 1]), "strides": li([1, 2, 2, 1]), "padding": {"s": s("SAME")}}

    def fused(*ops):
        return {"fused_ops": {"list": {"s": [s(o) for o in ops]}}, "num_args": {"i": str(len(ops) - 1)}}

    nodes = [
        {"name": "x", "op": "Placeholder", "attr": {}},
        const("k1", rng.normal(size=(3, 3, 3, 4)) * 0.3), const("s1", rng.uniform(0.5, 1.5, 4)),
        const("b1", rng.normal(size=4)), const("dk", rng.normal(size=(3, 3, 4, 2)) * 0.3),
        const("db", rng.normal(size=8) * 0.1), const("pads", [[0, 0], [1, 0], [0, 2], [0, 0]], np.int32),
        const("axis", 3, np.int32), const("k2", rng.normal(size=(1, 1, 16, 6)) * 0.3),
        const("b2", rng.normal(size=6) * 0.1), const("al", rng.uniform(0, 0.3, 6)), const("red", [1, 2], np.int32),
        const("shape", [-1, 72], np.int32), const("W", rng.normal(size=(72, 5)) * 0.2), const("half", 0.5),
        const("six", 1.0),
        {"name": "c1", "op": "Conv2D", "input": ["x", "k1"], "attr": {**conv, "strides": li([1, 2, 2, 1])}},
        {"name": "m1", "op": "Mul", "input": ["c1", "s1"]},
        {"name": "a1", "op": "AddV2", "input": ["m1", "b1"]},
        {"name": "r1", "op": "Relu6", "input": ["a1"]},
        {"name": "d1", "op": "FusedDepthwiseConv2dNative", "input": ["r1", "dk", "db"],
         "attr": {**conv, "strides": li([1, 1, 1, 1]), **fused("BiasAdd", "Relu")}},
        {"name": "p1", "op": "Pad", "input": ["d1", "pads"]},
        {"name": "mp", "op": "MaxPool", "input": ["p1"], "attr": pool},
        {"name": "ap", "op": "AvgPool", "input": ["p1"], "attr": pool},
        {"name": "cat", "op": "ConcatV2", "input": ["mp", "ap", "axis"]},
        {"name": "fc", "op": "_FusedConv2D", "input": ["cat", "k2", "b2", "al"],
         "attr": {**conv, "strides": li([1, 1, 1, 1]), **fused("BiasAdd", "Prelu")}},
        {"name": "lk", "op": "LeakyRelu", "input": ["fc"], "attr": {"alpha": {"f": 0.1}}},
        {"name": "mean", "op": "Mean", "input": ["lk", "red"], "attr": {"keep_dims": {"b": True}}},
        {"name": "sq", "op": "Squeeze", "input": ["mean"], "attr": {"squeeze_dims": li([1, 2])}},
        {"name": "rs", "op": "Reshape", "input": ["lk", "shape"]},
        {"name": "mm", "op": "MatMul", "input": ["rs", "W"]},
        {"name": "sm", "op": "Softmax", "input": ["mm"]},
        {"name": "sub", "op": "Sub", "input": ["sq", "half"]},
        {"name": "mn", "op": "Minimum", "input": ["sub", "six"]},
        {"name": "sig", "op": "Sigmoid", "input": ["mn"]},
    ]
    specs, blob = [], b""
    for name, value in weights.items():
        spec = {"name": name, "shape": list(value.shape), "dtype": "int32" if value.dtype == np.int32 else "float32"}
        if name in ("k1", "W"):
            spec["quantization"] = {"dtype": "float16", "original_dtype": "float32"}
            value = value.astype(np.float16)
        specs.append(spec)
        blob += value.tobytes()
    model = {"format": "graph-model", "modelTopology": {"node": nodes},
             "weightsManifest": [{"paths": ["syn.bin"], "weights": specs}]}
    (folder / "syn.json").write_text(json.dumps(model))
    (folder / "syn.bin").write_bytes(blob)
    return np.random.default_rng(8).uniform(-1, 2, (2, 9, 11, 3)).astype(np.float32)


def test_interpreter_ops_match_tfjs(tmp_path):
    """The ops faceres does not use, on a synthetic graph, against TF.js's outputs (same
    TF.js as above, on the same model and input)."""
    x = torch.from_numpy(_synthetic_model(tmp_path)).permute(0, 3, 1, 2)
    graph = read_tfjs(tmp_path / "syn.json")
    ref_softmax = [0.178723, 0.208485, 0.209979, 0.197584, 0.205229, 0.171334, 0.229951, 0.225434, 0.180174,
                   0.193107]
    ref_sigmoid = [0.413962, 0.382161, 0.38016, 0.391467, 0.378124, 0.376612, 0.410361, 0.383507, 0.382408,
                   0.380453, 0.378353, 0.37674]
    ref_reshape = [0.276906, -0.00248774, -0.00168963, 0.0784749, -0.00465108, -0.00694159, 0.108606, -0.00870756]
    for fold in (True, False):
        with torch.no_grad():
            sm, sig, rs = (t.numpy() for t in tfjs_to_torch(graph, ["sm", "sig", "rs"], fold=fold)(x))
        np.testing.assert_allclose(sm.ravel(), ref_softmax, atol=2e-6)
        np.testing.assert_allclose(sig.ravel(), ref_sigmoid, atol=2e-6)
        np.testing.assert_allclose(rs[0, :8], ref_reshape, atol=2e-6)  # NHWC flattening order
        assert np.abs(rs).sum() == pytest.approx(5.90486, rel=1e-5)


def test_weights_reader_dequantises(tmp_path):
    q8 = np.array([0, 128, 255], np.uint8)
    q16 = np.array([0, 65535], np.uint16)
    f16 = np.array([[1.5, -2.25]], np.float16)
    ints = np.array([7, -3], np.int32)
    (tmp_path / "w.bin").write_bytes(q8.tobytes() + q16.tobytes() + f16.tobytes() + ints.tobytes())
    f32 = np.array([0.5], np.float32)
    (tmp_path / "w2.bin").write_bytes(f32.tobytes())
    manifest = [
        {"paths": ["w.bin"], "weights": [
            {"name": "a", "shape": [3], "dtype": "float32", "quantization": {"dtype": "uint8", "min": -1.0, "scale": 0.01}},
            {"name": "b", "shape": [2], "dtype": "float32", "quantization": {"dtype": "uint16", "min": 0.0, "scale": 2.0}},
            {"name": "c", "shape": [1, 2], "dtype": "float32", "quantization": {"dtype": "float16"}},
            {"name": "d", "shape": [2], "dtype": "int32"}]},
        {"paths": ["w2.bin"], "weights": [{"name": "e", "shape": [], "dtype": "float32"}]},
    ]
    w = read_weights(manifest, tmp_path)
    np.testing.assert_allclose(w["a"], [-1.0, 0.28, 1.55], rtol=1e-6)
    np.testing.assert_allclose(w["b"], [0.0, 131070.0])
    np.testing.assert_array_equal(w["c"], [[1.5, -2.25]])
    assert w["c"].dtype == np.float32 and w["d"].dtype == np.int32 and w["e"].shape == ()
    np.testing.assert_array_equal(w["d"], [7, -3])
    manifest[1]["weights"][0]["shape"] = [2]  # more than the shard holds
    with pytest.raises(ValueError):
        read_weights(manifest, tmp_path)


def test_astronaut_embeds_and_matches_itself(rec, astronaut_bgr):
    faces = rec.face_chips(astronaut_bgr)
    assert len(faces) == 1
    box, chip, m = faces[0]
    assert chip.shape == (224, 224, 3) and chip.dtype == np.uint8 and m.shape == (2, 3)
    emb = rec.embed_largest(astronaut_bgr)
    assert emb.shape == (1024,) and emb.dtype == np.float32 and np.isfinite(emb).all()
    assert np.linalg.norm(emb) > 1.0 and emb.min() >= 0.0  # mean of ReLU6 features
    mirrored = rec.embed_largest(np.ascontiguousarray(astronaut_bgr[:, ::-1]))
    smaller = rec.embed_largest(cv2.resize(astronaut_bgr, None, fx=0.8, fy=0.8, interpolation=cv2.INTER_AREA))
    assert rec.is_match(emb, mirrored) and rec.score(emb, mirrored) > 0.85
    assert rec.is_match(emb, smaller) and rec.score(emb, smaller) > 0.85
    assert rec.embed_largest(np.full((240, 320, 3), 127, np.uint8)) is None


@pytest.mark.data
def test_different_people_do_not_match(rec, astronaut_bgr):
    celeb = data_path("faces", "celebrities")
    a1, a2, b = (rec.embed_largest(cv2.imread(str(celeb / p)))
                 for p in ("id02/img1.jpg", "id02/img10.jpg", "id03/img47.jpg"))
    assert rec.is_match(a1, a2)              # one person, two press photos
    assert not rec.is_match(a1, b)           # two people
    assert not rec.is_match(rec.embed_largest(astronaut_bgr), a1)
    assert rec.score(a1, a2) - rec.score(a1, b) > 0.15


def test_torch_module_is_the_evaluator_and_has_gradients(rec, astronaut_bgr):
    chip = rec.face_chips(astronaut_bgr)[0][1]
    module = rec.torch_module()
    assert not any(p.requires_grad for p in module.parameters())
    x = torch.from_numpy(chip[None]).permute(0, 3, 1, 2).float().div(255.0).requires_grad_(True)
    out = module(x)
    assert out.shape == (1, 1024)
    assert cosine(out.detach().numpy()[0], rec.embed_chips(chip[None])[0]) > 0.99999
    out[0].pow(2).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_registry(rec, monkeypatch, tmp_path):
    assert rec.name == "faceres" and rec.metric == "cosine" and rec.chip_size == 224
    assert rec.score_threshold == rec.threshold
    assert "faceres" not in RECOGNIZER_NAMES  # asked for by name; the defaults are unchanged
    assert Path(rec.model_path).parent.name == "faceres"
    import livedeid.recognizers.faceres as faceres

    monkeypatch.setattr(faceres, "faceres_dir", lambda: tmp_path)
    with pytest.raises(UserError, match="faceres model file missing"):
        get_recognizer("faceres")


@pytest.mark.data
def test_crop_to_chip_constants_match_a_fresh_fit(rec):
    """The shipped crop->chip constants are what fit_crop_to_chip gives on the celebrities
    today, and a livedeid crop warped with them embeds like the evaluator's own chip."""
    pytest.importorskip("mediapipe")
    files = sorted(data_path("faces", "celebrities").glob("*/*.jpg"))
    images = [cv2.imread(str(f)) for f in files]
    pairs = crop_chip_pairs(rec, images, 128)
    assert len(pairs) >= len(images) - 3
    fitted = fit_crop_to_chip(pairs, rec.chip_size)
    shipped = rec.crop_to_chip(128)
    g = np.linspace(0, 128, 5)
    pts = np.stack(np.meshgrid(g, g), axis=-1).reshape(-1, 2)
    moved = np.abs(apply_affine(fitted, pts) - apply_affine(shipped, pts)).max()
    assert moved < 1.0, f"refit moves chip points by {moved:.2f} px: update the shipped crop->chip constants"
    # One face through the training path: crop -> chip (cv2 and grid_sample agree) -> embed.
    import torch.nn.functional as F

    from livedeid.tracking.still import still_landmarks

    image = images[0]
    crop, _ = livedeid_crop(image, still_landmarks(image), 128)
    ref = cv2.warpAffine(crop, shipped, (224, 224), flags=cv2.INTER_LINEAR)
    x = torch.from_numpy(crop[:, :, ::-1].astype(np.float32) / 255).permute(2, 0, 1)[None]
    grid = F.affine_grid(torch.from_numpy(rec.chip_grid_theta(128))[None], (1, 3, 224, 224), align_corners=False)
    chip = F.grid_sample(x, grid, mode="bilinear", align_corners=False)
    inner = slice(8, 216)
    assert np.abs(chip[0].permute(1, 2, 0).numpy()[inner, inner] * 255 - ref[inner, inner, ::-1]).mean() < 0.5
    with torch.no_grad():
        got = rec.torch_module()(chip).numpy()[0]
    assert rec.score(got, rec.embed_largest(image)) > 0.85
