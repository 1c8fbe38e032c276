"""Parity of the PyTorch port of dlib's face-recognition ResNet with dlib itself."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from livedeid.nets.dlib_port import (  # noqa: E402
    CHIP_SIZE,
    DESCRIPTOR_DIM,
    chip_to_tensor,
    default_model_path,
    dlib_chip,
    load_dlib_resnet,
    read_dlib_resnet,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CELEBRITIES = DATA / "faces" / "celebrities"
# Press photos are up to 4352 px wide; HOG detection at that size would take most of the
# time budget. Parity compares both networks on the *same* chip, so a smaller source
# image does not weaken it.
MAX_SIDE = 800


def _models_dir() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("face_recognition_models not installed")
    return Path(spec.submodule_search_locations[0]) / "models"


@pytest.fixture(scope="module")
def net():
    _models_dir()
    return load_dlib_resnet()


@pytest.fixture(scope="module")
def celebrity_chips():
    """(chips (N,150,150,3) uint8, dlib descriptors (N,128), photo names), one face per photo."""
    dlib = pytest.importorskip("dlib", reason="dlib not installed")
    cv2 = pytest.importorskip("cv2")
    models = _models_dir()
    photos = sorted(CELEBRITIES.glob("*/*.jpg"))
    if not photos:
        pytest.skip(f"../shared/data not found: no photos under {CELEBRITIES}")
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
    recogniser = dlib.face_recognition_model_v1(str(default_model_path()))
    chips, refs, names, missed = [], [], [], []
    for photo in photos:
        bgr = cv2.imread(str(photo))
        scale = MAX_SIDE / max(bgr.shape[:2])
        if scale < 1:
            bgr = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        faces = detector(rgb, 1)
        if not faces:
            missed.append(photo.name)
            continue
        shape = predictor(rgb, max(faces, key=lambda r: r.area()))
        chip = dlib_chip(rgb, shape)
        chips.append(chip)
        refs.append(np.asarray(recogniser.compute_face_descriptor(chip), dtype=np.float64))
        names.append(f"{photo.parent.name}/{photo.name}")
    assert not missed, f"dlib found no face in {missed}"
    return np.stack(chips), np.stack(refs), names


def test_descriptors_match_dlib(net, celebrity_chips):
    chips, refs, names = celebrity_chips
    assert chips.shape[1:] == (CHIP_SIZE, CHIP_SIZE, 3) and chips.dtype == np.uint8
    with torch.no_grad():
        ours = net(chip_to_tensor(chips)).double().numpy()
    assert ours.shape == (len(names), DESCRIPTOR_DIM)
    cos = (ours * refs).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(refs, axis=1))
    worst = int(np.argmin(cos))
    assert cos.min() >= 0.999, f"cosine {cos[worst]:.6f} on {names[worst]}"
    # Same numbers, not just the same direction: dlib does not re-normalise its
    # descriptors and neither may the port (float32 sums in another order: ~1e-6).
    diff = np.abs(ours - refs).max()
    assert diff < 1e-4, f"max abs diff {diff:.2e}"
    # Different people give clearly different descriptors, so the agreement above is not
    # between two near-constant outputs.
    assert np.linalg.norm(refs[0] - refs[-1]) > 0.3


def test_gradient_reaches_the_input(net):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, CHIP_SIZE, CHIP_SIZE, generator=gen, requires_grad=True)
    desc = net(x)
    # An identity loss: pull the first face's descriptor towards the second's.
    loss = (desc[0] - desc[1].detach()).pow(2).sum()
    loss.backward()
    grad = x.grad
    assert torch.isfinite(grad).all()
    assert grad[0].abs().max() > 0
    assert torch.all(grad[1] == 0)  # the detached sample gets no gradient
    assert all(not p.requires_grad for p in net.parameters())


def test_rejects_wrong_input_shape(net):
    with pytest.raises(ValueError, match="150"):
        net(torch.zeros(1, 3, 112, 112))


def test_reader_rejects_truncated_file(tmp_path):
    src = _models_dir() / "dlib_face_recognition_resnet_model_v1.dat"
    bad = tmp_path / "truncated.dat"
    bad.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(ValueError, match="end of file"):
        read_dlib_resnet(bad)
