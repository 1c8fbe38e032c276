"""The de-identification autoencoder (torch). Contract: see :mod:`livedeid.inference.manifest`.

A small causal spatio-temporal encoder-decoder: the T crops of the window are stacked
on the channel axis, encoded at 1/2, 1/4 and 1/8 resolution, decoded with skip
connections, and turned into a residual bounded by ``tanh * max_perturbation`` that is
added to the current (last) frame. A learned face-aligned ``pattern`` is added before the
tanh: the part of an adversarial perturbation that works for every face (a universal
perturbation) is learned there directly, so the convolutions only have to learn the
input-dependent rest. Being fixed in crop coordinates it moves with the face and adds no
frame-to-frame change to the skin colour, so it cannot disturb the pulse.

Optionally (``identity_branch``, what the shipped model uses when trained with it) a
second decoder adds a residual computed from a frozen copy of SFace's first nine blocks run
on the current face's SFace chip: the features the recogniser itself relies on. Cost per
face at 128x128 and T=8 (multiply-accumulates of the convolutions): 0.35 GMAC without the
branch, 0.94 GMAC with it.
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


# SFace's MobileFaceNet up to its 9th block, as (name, in, out, stride): each block is a
# depthwise 3x3 conv (stride) and a pointwise 1x1 conv, each followed by batch norm (folded
# into the conv here) and PReLU; "conv_1" is a full 3x3 conv. Checked against the SFace
# ONNX graph by tests/test_autoencoder.py.
SFACE_PREFIX = (("conv_1", 3, 32, 1), ("conv_2", 32, 64, 1), ("conv_3", 64, 128, 2), ("conv_4", 128, 128, 1),
                ("conv_5", 128, 256, 2), ("conv_6", 256, 256, 1), ("conv_7", 256, 512, 2),
                ("conv_8", 512, 512, 1), ("conv_9", 512, 512, 1))
IDENTITY_TAPS = ("conv_4", "conv_6", "conv_9")   # 56x56x128, 28x28x256, 14x14x512 on a 112 chip
SFACE_CHIP = 112


class ChannelPReLU(nn.Module):
    """PReLU with one slope per channel, written as ``relu(x) * (1 - a) + a * x``: the same
    function and the same state dict as :class:`torch.nn.PReLU`, but exported to ONNX as
    Relu, Mul and Add. ONNX Runtime's CPU PRelu kernel is not fused with the convolution
    before it and forces layout reorders around it; this form lets the Relu fuse into the
    convolution (measured on the shipped model: PRelu took 28 % of its time; the whole
    network ran 37 % faster per face, docs/decisions.md, issue 16)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), 0.25))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.weight.view(1, -1, 1, 1)
        return F.relu(x) * (1.0 - a) + x * a


class FaceFeatureEncoder(nn.Module):
    """Frozen early layers of a face recogniser (SFace), run on the face's 112 px SFace
    chip: the features that carry identity, at 1/2, 1/4 and 1/8 of the chip. A residual
    decoded from them starts from what the recogniser itself looks at, instead of having
    to discover it from pixels (see the model card: the pixel-only network learned a
    universal pattern and little that was face-specific)."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleDict()
        for name, cin, cout, stride in SFACE_PREFIX:
            if name == "conv_1":
                layers = [nn.Conv2d(cin, cout, 3, stride, 1), ChannelPReLU(cout)]
            else:
                layers = [nn.Conv2d(cin, cin, 3, stride, 1, groups=cin), ChannelPReLU(cin),
                          nn.Conv2d(cin, cout, 1), ChannelPReLU(cout)]
            self.blocks[name] = nn.Sequential(*layers)
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, chip: torch.Tensor) -> list[torch.Tensor]:
        x = (chip * 255.0 - 127.5) / 128.0        # SFace's own input normalisation
        taps = []
        for name, block in self.blocks.items():
            x = block(x)
            if name in IDENTITY_TAPS:
                taps.append(x)
        return taps

    @torch.no_grad()
    def load_sface(self, graph) -> None:
        """Copy the weights from the SFace ONNX graph (``recognizers``' torch port),
        folding each batch norm into the conv before it."""
        nodes = {outs[0]: (op, ins, a) for op, ins, outs, a in graph.nodes}

        def const(n):
            return graph._get({}, n).float()

        def fold(conv: nn.Conv2d, prelu: ChannelPReLU, prefix: str):
            _, ins, _ = nodes[f"{prefix}_conv2d"]
            _, bn_ins, bn_a = nodes[f"{prefix}_batchnorm"]
            _, pr_ins, _ = nodes[f"{prefix}_relu"]
            gamma, beta, mean, var = (const(n) for n in bn_ins[1:5])
            k = gamma / torch.sqrt(var + bn_a.get("epsilon", 1e-5))
            conv.weight.copy_(const(ins[1]) * k[:, None, None, None])
            conv.bias.copy_(beta - mean * k)
            prelu.weight.copy_(const(pr_ins[1]).reshape(-1))

        for name, block in self.blocks.items():
            if name == "conv_1":
                fold(block[0], block[1], name)
            else:
                fold(block[0], block[1], f"{name}_dw")
                fold(block[2], block[3], name)


class DeidAutoencoder(nn.Module):
    """``forward(window (N,T,3,S,S) in [0,1]) -> protected current frame (N,3,S,S)``."""

    def __init__(self, window: int = 8, max_perturbation: float = 8.0 / 255.0, width: int = 32,
                 crop_size: int = 128, identity_branch: bool = False):
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
        self.identity_branch = identity_branch
        if identity_branch:
            # Identity branch: SFace features of the current crop's chip -> a residual in
            # chip coordinates -> warped back onto the crop. The two sampling grids (crop ->
            # chip and chip -> crop) are fixed buffers, set by set_chip_warp at training time.
            self.ident = FaceFeatureEncoder()
            # Skips are squeezed by 1x1 convs first: the branch stays near 0.6 GMAC
            # (encoder 0.33 + decoder 0.26) and the whole model under 1 GMAC per face.
            self.id_up3 = _conv(512, 2 * w)                              # 14x14
            self.id_skip2 = nn.Conv2d(256, 2 * w, 1)
            self.id_up2 = _conv(4 * w, 2 * w)                            # 28x28
            self.id_skip1 = nn.Conv2d(128, w, 1)
            self.id_up1 = _conv(3 * w, w)                                # 56x56
            self.id_out = _conv(w, w // 4)                               # 112x112
            self.id_head = nn.Conv2d(w // 4, 3, 3, 1, 1)
            nn.init.zeros_(self.id_head.weight)       # starts as a no-op: warm starts keep their output
            nn.init.zeros_(self.id_head.bias)
            self.register_buffer("chip_grid", torch.zeros(1, SFACE_CHIP, SFACE_CHIP, 2))
            self.register_buffer("crop_grid", torch.zeros(1, crop_size, crop_size, 2))

    def set_chip_warp(self, theta) -> None:
        """``theta``: SFace's (2, 3) crop->chip ``affine_grid`` matrix
        (:meth:`livedeid.recognizers.base.Recognizer.chip_grid_theta`)."""
        t = torch.as_tensor(theta, dtype=torch.float32).reshape(2, 3)
        full = torch.cat([t, torch.tensor([[0.0, 0.0, 1.0]])])
        inv = torch.linalg.inv(full)[:2]
        s = self.crop_grid.shape[1]
        self.chip_grid.copy_(F.affine_grid(t[None], (1, 3, SFACE_CHIP, SFACE_CHIP), align_corners=False))
        self.crop_grid.copy_(F.affine_grid(inv[None], (1, 3, s, s), align_corners=False))

    def identity_residual(self, current: torch.Tensor) -> torch.Tensor:
        n = current.shape[0]
        chip = F.grid_sample(current, self.chip_grid.expand(n, -1, -1, -1), mode="bilinear",
                             padding_mode="border", align_corners=False)
        f56, f28, f14 = self.ident(chip)
        x = self.id_up3(f14)
        x = self.id_up2(torch.cat([F.interpolate(x, scale_factor=2.0, mode="nearest"), self.id_skip2(f28)], 1))
        x = self.id_up1(torch.cat([F.interpolate(x, scale_factor=2.0, mode="nearest"), self.id_skip1(f56)], 1))
        x = self.id_head(self.id_out(F.interpolate(x, scale_factor=2.0, mode="nearest")))
        return F.grid_sample(x, self.crop_grid.expand(n, -1, -1, -1), mode="bilinear",
                             padding_mode="zeros", align_corners=False)

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
        pre = self.head(d1) + self.pattern
        if self.identity_branch:
            pre = pre + self.identity_residual(current)
        return torch.tanh(pre) * self.max_perturbation

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
    """Load a state dict with ``weights_only=True``: a pickle payload is refused. The
    architecture (with or without the identity branch) follows the state dict's keys."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = DeidAutoencoder(window, max_perturbation,
                            identity_branch=isinstance(state, dict) and "chip_grid" in state)
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
