"""The autoencoder's identity branch: SFace's own early layers, the chip warp, export."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from livedeid.core.errors import UserError  # noqa: E402
from livedeid.nets.autoencoder import IDENTITY_TAPS, SFACE_CHIP, DeidAutoencoder, FaceFeatureEncoder, load_weights  # noqa: E402


@pytest.fixture(scope="module")
def sface():
    from livedeid.recognizers.base import get_recognizer

    try:
        return get_recognizer("sface")
    except UserError as exc:
        pytest.skip(f"SFace not installed: {exc}")


@pytest.fixture(scope="module")
def identity_model(sface):
    model = DeidAutoencoder(identity_branch=True)
    model.ident.load_sface(sface.torch_module().graph)
    model.set_chip_warp(sface.chip_grid_theta(128))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a non-zero identity head, as after training
        model.id_head.weight.copy_(torch.randn(model.id_head.weight.shape, generator=gen) * 0.05)
    return model.eval()


@pytest.mark.slow
def test_feature_encoder_reproduces_sface_intermediate_layers(sface):
    graph = sface.torch_module().graph
    encoder = FaceFeatureEncoder()
    encoder.load_sface(graph)
    chips = torch.rand(2, 3, SFACE_CHIP, SFACE_CHIP, generator=torch.Generator().manual_seed(1))
    want = graph(chips * 255.0, taps=[f"{name}_relu" for name in IDENTITY_TAPS])
    got = encoder(chips)
    assert [tuple(t.shape[1:]) for t in got] == [(128, 56, 56), (256, 28, 28), (512, 14, 14)]
    for a, b in zip(got, want):
        assert float((a - b).abs().max()) <= 1e-4 * float(b.abs().max())
    assert not any(p.requires_grad for p in encoder.parameters())  # frozen in training


def test_chip_warp_round_trip_lands_where_it_came_from(identity_model):
    # A smooth image sampled crop -> chip -> crop comes back in place wherever the chip
    # covers the crop (bilinear twice: small error), and zero residual outside it.
    s = 128
    yy, xx = torch.meshgrid(torch.linspace(0, 1, s), torch.linspace(0, 1, s), indexing="ij")
    crop = torch.stack([xx, yy, (xx + yy) / 2])[None]
    chip = torch.nn.functional.grid_sample(crop, identity_model.chip_grid, align_corners=False,
                                           padding_mode="border")
    back = torch.nn.functional.grid_sample(chip, identity_model.crop_grid, align_corners=False,
                                           padding_mode="zeros")
    centre = (slice(None), slice(None), slice(30, 100), slice(24, 104))   # inside the chip
    assert float((back - crop)[centre].abs().max()) < 0.01
    assert float(back[..., -2:, :].abs().max()) == 0.0    # below the chin: outside the chip


@pytest.mark.slow
def test_identity_branch_changes_the_residual_within_the_budget(identity_model):
    window = torch.rand(2, 8, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        with_branch = identity_model.residual(window)
        head = identity_model.id_head.weight.clone()
        identity_model.id_head.weight.zero_()
        without = identity_model.residual(window)
        identity_model.id_head.weight.copy_(head)
    assert float((with_branch - without).abs().max()) > 1e-3
    assert float(with_branch.abs().max()) <= identity_model.max_perturbation + 1e-7


@pytest.mark.slow
def test_identity_branch_weights_load_and_export_with_onnx_parity(identity_model, tmp_path):
    from livedeid.inference.manifest import load_spec
    from livedeid.training.export import export_model

    weights = tmp_path / "w.pt"
    torch.save(identity_model.state_dict(), weights)
    loaded = load_weights(weights, 8, identity_model.max_perturbation)
    assert loaded.identity_branch
    window = torch.rand(1, 8, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(loaded(window), identity_model(window))
    lines = list(export_model(weights=weights, out_dir=tmp_path / "engines", trained=True, notes="test"))
    parity = [line for line in lines if "parity" in line][0]
    assert float(parity.rsplit(" ", 1)[1]) <= 1e-4
    spec = load_spec(tmp_path / "engines" / "deid.json")
    import onnxruntime as ort

    sess = ort.InferenceSession(str(spec.onnx_path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"window": window.numpy()})[0]
    assert np.abs(out - identity_model(window).detach().numpy()).max() <= 1e-4


@pytest.mark.parametrize("identity_branch, low, high", [(False, 0.3, 0.4), (True, 0.9, 1.0)])
def test_cost_per_face_stays_under_one_gmac(identity_branch, low, high):
    # Multiply-accumulates of every convolution for one face window (the budget:
    # <= 1 GMAC per frame at the crop size); the ranges pin the numbers the docs quote.
    model = DeidAutoencoder(identity_branch=identity_branch).eval()
    macs = []

    def count(mod, _inputs, out):
        macs.append(out.numel() * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1])

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(torch.rand(1, 8, 3, 128, 128))
    for h in hooks:
        h.remove()
    assert low <= sum(macs) / 1e9 <= high
