"""The de-identification autoencoder (torch). Contract: see :mod:`livedeid.model`.

A small causal spatio-temporal encoder-decoder: the T crops of the window are stacked
on the channel axis, encoded at 1/2, 1/4 and 1/8 resolution, decoded with skip
connections, and turned into a residual bounded by ``tanh * max_perturbation`` that is
added to the current (last) frame. A learned face-aligned ``pattern`` is added before the
tanh: the part of an adversarial perturbation that works for every face (a universal
perturbation) is learned there directly, so the convolutions only have to learn the
input-dependent rest. Being fixed in crop coordinates it moves with the face and adds no
frame-to-frame change to the skin colour, so it cannot disturb the pulse. About 0.27 GMAC per face at 128x128 and T=8, so the
CPU path (ONNX Runtime on two cores) keeps camera rate.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU())


class _ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(_conv(ch, ch), nn.Conv2d(ch, ch, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x + self.body(x))


class DeidAutoencoder(nn.Module):
    """``forward(window (N,T,3,S,S) in [0,1]) -> protected current frame (N,3,S,S)``."""

    def __init__(self, window: int = 8, max_perturbation: float = 8.0 / 255.0, width: int = 32,
                 crop_size: int = 128):
        super().__init__()
        self.window = window
        self.max_perturbation = max_perturbation
        w = width
        self.enc1 = _conv(3 * window, w, stride=2)          # S/2
        self.enc2 = _conv(w, 2 * w, stride=2)               # S/4
        self.enc3 = _conv(2 * w, 3 * w, stride=2)           # S/8
        self.mid = nn.Sequential(_ResBlock(3 * w), _ResBlock(3 * w))
        self.dec3 = _conv(3 * w + 2 * w, 2 * w)             # S/4
        # The two full/half-resolution decoder stages dominate the cost: keep them narrow.
        self.dec2 = _conv(2 * w + w, w // 2)                 # S/2
        self.dec1 = _conv(w // 2 + 3, w // 2)                # S, sees the current frame
        self.head = nn.Conv2d(w // 2, 3, 3, 1, 1)
        self.pattern = nn.Parameter(torch.zeros(1, 3, crop_size, crop_size))

    def residual(self, window: torch.Tensor) -> torch.Tensor:
        n, t, c, h, w = window.shape
        current = window[:, -1]
        x = (window.reshape(n, t * c, h, w) - 0.5) * 2.0
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.mid(self.enc3(e2))
        d3 = self.dec3(torch.cat([F.interpolate(e3, size=e2.shape[-2:], mode="nearest"), e2], 1))
        d2 = self.dec2(torch.cat([F.interpolate(d3, size=e1.shape[-2:], mode="nearest"), e1], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, size=(h, w), mode="nearest"), current], 1))
        return torch.tanh(self.head(d1) + self.pattern) * self.max_perturbation

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        return (window[:, -1] + self.residual(window)).clamp(0.0, 1.0)


def seeded_untrained(window: int = 8, max_perturbation: float = 8.0 / 255.0, seed: int = 0) -> DeidAutoencoder:
    """Deterministic random initialisation, for plumbing only (not de-identifying)."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return DeidAutoencoder(window, max_perturbation).eval()
    finally:
        torch.random.set_rng_state(gen_state)


def load_weights(path, window: int, max_perturbation: float) -> DeidAutoencoder:
    """Load a state dict with ``weights_only=True``: a pickle payload is refused."""
    model = DeidAutoencoder(window, max_perturbation)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def export_onnx(model: DeidAutoencoder, path, crop_size: int, opset: int = 17, fp16: bool = False) -> None:
    """ONNX with a dynamic face axis (N = 1..4 in practice). ``fp16`` converts weights and
    I/O to float16 for a strongly typed TensorRT build."""
    m = model.eval()
    dummy = torch.rand(1, model.window, 3, crop_size, crop_size)
    if fp16:
        m = m.half()
        dummy = dummy.half()
    torch.onnx.export(
        m, (dummy,), str(path), input_names=["window"], output_names=["protected"],
        dynamic_axes={"window": {0: "faces"}, "protected": {0: "faces"}}, opset_version=opset,
        dynamo=False,
    )
