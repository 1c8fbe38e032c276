"""Parity of the PyTorch port of dlib's face-recognition ResNet with dlib itself."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from livedeid.core.errors import UserError  # noqa: E402
from livedeid.nets.dlib_port import (  # noqa: E402
    CHIP_SIZE,
    DESCRIPTOR_DIM,
    chip_to_tensor,
    default_model_path,
    load_dlib_resnet,
    read_dlib_resnet,
)
from livedeid.recognizers.base import get_recognizer  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CELEBRITIES = DATA / "faces" / "celebrities"


@pytest.fixture(scope="module")
def model_path() -> Path:
    try:
        return default_model_path()
    except UserError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def net(model_path):
    return load_dlib_resnet(model_path)


@pytest.fixture(scope="module")
def celebrity_chips():
    """(chips (N,150,150,3) uint8, dlib descriptors (N,128), photo names): the largest face
    of each photo as the dlib recogniser (dlib's own detector, chip and network) sees it."""
    cv2 = pytest.importorskip("cv2")
    try:
        recogniser = get_recognizer("dlib")
    except UserError as exc:
        pytest.skip(str(exc))
    photos = sorted(CELEBRITIES.glob("*/*.jpg"))
    if not photos:
        pytest.skip(f"../shared/data not found: no photos under {CELEBRITIES}")
    chips, names, missed = [], [], []
    for photo in photos:
        faces = recogniser.face_chips(cv2.imread(str(photo)))
        if not faces:
            missed.append(photo.name)
            continue
        chips.append(faces[0][1])
        names.append(f"{photo.parent.name}/{photo.name}")
    assert not missed, f"dlib found no face in {missed}"
    chips = np.stack(chips)
    return chips, recogniser.embed_chips(chips).astype(np.float64), names


@pytest.mark.slow
@pytest.mark.data
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


def test_reader_rejects_truncated_file(tmp_path, model_path):
    src = model_path
    bad = tmp_path / "truncated.dat"
    bad.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(ValueError, match="end of file"):
        read_dlib_resnet(bad)
