"""Differentiable POS for training losses (torch is imported inside the functions, so
importing this module does not need it; only training calls them)."""
from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from livedeid.rppg.methods import EPS, POS_PROJECTION, window_len
from livedeid.rppg.spectrum import bandpass

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch


@lru_cache(maxsize=16)
def _bandpass_matrix(n: int, fs: float) -> np.ndarray:
    # detrend + sosfiltfilt are linear maps of the signal, so applying them to the
    # identity yields their exact matrix: y = M @ x reproduces :func:`bandpass`.
    return np.ascontiguousarray(bandpass(np.eye(n), fs, axis=0))


def pos_torch(rgb: "torch.Tensor", fs: float = 30.0, filtered: bool = True) -> "torch.Tensor":
    """Differentiable POS: ``(B, T, 3)`` RGB traces -> ``(B, T)`` pulses.

    Same algorithm, window and sign as :func:`livedeid.rppg.methods.pos`; with
    ``filtered`` the detrend and band-pass are applied as the exact linear operator of
    :func:`~livedeid.rppg.spectrum.bandpass`, so the result matches ``pos`` to float
    precision and gradients flow through all of it.
    """
    import torch
    import torch.nn.functional as F

    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected (B, T, 3), got {tuple(rgb.shape)}")
    b, n, _ = rgb.shape
    win = min(window_len(fs), n)
    w = rgb.unfold(1, win, 1)                                   # (B, m, 3, win)
    cn = w / (w.mean(dim=-1, keepdim=True) + EPS)
    p = torch.as_tensor(POS_PROJECTION, dtype=rgb.dtype, device=rgb.device)
    s = torch.einsum("pc,bmcw->bmpw", p, cn)
    s1, s2 = s[:, :, 0], s[:, :, 1]
    alpha = s1.std(dim=-1, unbiased=False) / (s2.std(dim=-1, unbiased=False) + EPS)
    h = s1 + alpha.unsqueeze(-1) * s2
    h = h - h.mean(dim=-1, keepdim=True)                        # (B, m, win)
    # Overlap-add with fold: columns are windows, kernel (1, win), stride 1.
    out = F.fold(h.transpose(1, 2), output_size=(1, n), kernel_size=(1, win)).reshape(b, n)
    out = -out
    if filtered:
        m = torch.as_tensor(_bandpass_matrix(n, float(fs)), dtype=rgb.dtype, device=rgb.device)
        out = out @ m.T
    return out


def masked_mean_rgb_torch(images: "torch.Tensor", mask: "torch.Tensor") -> "torch.Tensor":
    """Mean colour under a (soft) mask: images ``(B, T, 3, H, W)``, mask ``(B|1, 1, H, W)``
    -> ``(B, T, 3)``. Differentiable in both arguments."""
    if images.ndim != 5 or mask.ndim != 4:
        raise ValueError("expected images (B, T, 3, H, W) and mask (B|1, 1, H, W)")
    m = mask.to(images.dtype).unsqueeze(1)                     # (B|1, 1, 1, H, W)
    num = (images * m).sum(dim=(-2, -1))
    den = m.sum(dim=(-2, -1)).clamp_min(1e-6)
    return num / den
