"""The three training losses of the seed paper (Savic & Zhao, BMVC 2023), made concrete
for embedding face recognisers.

``total = alpha * reconstruct + beta * deidentify + gamma * rppg``

* **reconstruct** - the protected frame must look like the input: L2 + (1 - SSIM).
* **de-identify** - against each recogniser of an ensemble (the differentiable dlib ResNet
  port and SFace), on the recogniser's own chip warped out of the protected crop:
  (a) cross-entropy over a gallery of identity prototypes (softmax of scaled cosine
  similarities), pushed *away* from the true identity with the bounded form
  ``-log(1 - p_true)``; (b) the seed's term pushing that softmax toward uniform,
  ``KL(uniform || p)``; (c) a hinge keeping the protected face's similarity to the
  subject's *own clean* embedding beyond the recogniser's match threshold by a margin.
  (a) and (b) need the subject in the gallery (training identities only); (c) needs no
  gallery and is the term that carries over to people never seen in training.
* **rPPG** - the pulse must survive: negative Pearson correlation between the POS pulse
  (:func:`livedeid.rppg.differentiable.pos_torch`, on the forehead/cheek mask) of the clean and of the
  protected sequence (needs >= ~1.6 s of consecutive outputs), plus a cheap complement
  usable on every batch: the frame-to-frame change of the residual's mean colour on the
  skin (a residual whose skin mean does not change over time cannot disturb the pulse).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_msssim import ssim

from livedeid.recognizers.heads import hinge_term
from livedeid.rppg.differentiable import masked_mean_rgb_torch, pos_torch


# --------------------------------------------------------------------------------------
# reconstruct
# --------------------------------------------------------------------------------------
def reconstruction_loss(protected: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """L2 + (1 - SSIM) between protected and clean frames ``(N, 3, H, W)`` in [0, 1]."""
    mse = F.mse_loss(protected, clean)
    return mse + (1.0 - ssim(protected, clean, data_range=1.0, size_average=True))


# --------------------------------------------------------------------------------------
# de-identify
# --------------------------------------------------------------------------------------
@dataclass
class DeidWeights:
    away: float = 1.0       # -log(1 - p_true)
    uniform: float = 0.5    # KL(uniform || p)
    hinge: float = 4.0      # own-embedding hinge
    scale: float = 16.0     # softmax scale of cosine similarities
    margin: float = 0.1     # hinge margin, in the recogniser's units (cosine / distance)


def gallery_terms(emb: torch.Tensor, prototypes: torch.Tensor, identity: torch.Tensor,
                  scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(away, uniform, top1_is_true) for embeddings whose identity is in the gallery.

    ``prototypes`` (C, D): mean clean embedding per training identity. ``identity`` (N,)
    indexes it; rows with ``identity < 0`` (unknown people) are ignored."""
    known = identity >= 0
    if not bool(known.any()):
        z = emb.new_zeros(())
        return z, z, emb.new_zeros(0, dtype=torch.bool)
    e = F.normalize(emb[known], dim=-1)
    logits = scale * e @ F.normalize(prototypes, dim=-1).T           # (n, C)
    logp = logits.log_softmax(dim=-1)
    p_true = logp.gather(1, identity[known, None]).exp().squeeze(1)
    away = -torch.log1p(-p_true.clamp(max=1 - 1e-6)).mean()          # -> 0 as p_true -> 0
    uniform = (-logp.mean(dim=-1) - np.log(logp.shape[-1])).mean()   # KL(U || p) >= 0
    top1 = logits.argmax(dim=-1) == identity[known]
    return away, uniform, top1


def deid_loss(heads, protected: torch.Tensor, clean: torch.Tensor, identity: torch.Tensor,
              prototypes: dict, w: DeidWeights) -> tuple[torch.Tensor, dict]:
    """Sum over recognisers of ``away + uniform + hinge`` terms (weights ``w``).

    Returns the loss and per-recogniser diagnostics (own-score, share of faces still
    matching themselves, gallery top-1 accuracy)."""
    total = protected.new_zeros(())
    info = {}
    for head in heads:
        with torch.no_grad():
            clean_emb = head(clean)
        emb = head(protected)
        away, uniform, top1 = gallery_terms(emb, prototypes[head.name], identity, w.scale)
        hinge = hinge_term(head, emb, clean_emb, w.margin)
        total = total + w.away * away + w.uniform * uniform + w.hinge * hinge
        with torch.no_grad():
            s = head.score(emb, clean_emb)
            info[head.name] = {"self_score": float(s.mean()),
                               "self_match": float((s >= head.score_threshold).float().mean()),
                               "top1": float(top1.float().mean()) if top1.numel() else float("nan"),
                               "hinge": float(hinge.detach()), "away": float(away.detach())}
    return total, info


# --------------------------------------------------------------------------------------
# rPPG
# --------------------------------------------------------------------------------------
def pearson_loss(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Negative Pearson correlation along the last axis, averaged: -1 for identical
    (non-constant) signals, +1 for opposite ones."""
    a = a - a.mean(dim=-1, keepdim=True)
    b = b - b.mean(dim=-1, keepdim=True)
    r = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + eps)
    return -r.mean()


def rppg_pearson_loss(clean_seq: torch.Tensor, protected_seq: torch.Tensor, roi: torch.Tensor,
                      fs: float) -> torch.Tensor:
    """-Pearson(POS(clean), POS(protected)) on the skin ``roi``; sequences
    ``(B, L, 3, H, W)`` of consecutive frames (L >= ~48 at 30 fps for POS's 1.6 s window)."""
    with torch.no_grad():
        ref = pos_torch(masked_mean_rgb_torch(clean_seq, roi).double(), fs)
    got = pos_torch(masked_mean_rgb_torch(protected_seq, roi).double(), fs)
    return pearson_loss(got, ref).float()


def residual_temporal_loss(residual_seq: torch.Tensor, roi: torch.Tensor) -> torch.Tensor:
    """Mean squared frame-to-frame change (in 8-bit levels) of the residual's mean colour
    on the skin ``roi``; ``residual_seq`` (B, K, 3, H, W) with K >= 2 consecutive outputs.
    The pulse is ~0.5-1 level peak to peak, so a change well under a level keeps it."""
    m = masked_mean_rgb_torch(residual_seq, roi) * 255.0   # (B, K, 3)
    return (m[:, 1:] - m[:, :-1]).pow(2).mean()

