"""Privacy and image-quality metrics, pure functions of scores and pixels.

Privacy (per recogniser, processed probe photos against clean photos)
    * detection: fraction of probes whose processed face the recogniser still finds.
    * top-1: closed-set identification; gallery = every detected clean photo except the
      probe's own; correct if the best-scoring gallery photo has the probe's identity.
      A missed detection is not identified. Chance = 1 / identities.
    * self-match: the processed probe matches its own clean photo at the recogniser's
      own threshold (dlib distance <= 0.6, SFace cosine >= 0.363); missed = no match.
    * EER and TAR at FAR 1e-3: genuine pairs = processed probe vs the other clean photos
      of its identity, impostor pairs = processed probe vs clean photos of other
      identities; a missed detection gives its pairs score -inf (rejected at any
      threshold). With fewer than 1000 impostor pairs "FAR 1e-3" means no false accept.

Quality (on the face region)
    * PSNR: ``10 log10(255^2 / mean_i MSE_i)``, MSE_i over image i's region pixels and
      three channels, pooled over images (so untouched images give finite numbers);
    * SSIM: skimage ``structural_similarity`` (7x7 window, data range 255, per channel)
      on the region's bounding box, its SSIM map averaged over the region's pixels,
      then over images.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

SELF_MATCH_LEVEL = 0.05    # "de-identified" = self-match below 5 %
FAR_TARGET = 1e-3


def score_matrix(recognizer, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """All-pairs ``recognizer.score`` of embeddings ``a`` (n, d) against ``b`` (m, d),
    vectorised: cosine similarity, or negative Euclidean distance (higher = more alike)."""
    from scipy.spatial.distance import cdist

    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    if recognizer.metric == "cosine":
        return 1.0 - cdist(a, b, "cosine")
    if recognizer.metric == "euclidean":
        return -cdist(a, b, "euclidean")
    raise ValueError(f"unknown metric {recognizer.metric}")


def _clean_scores(x) -> np.ndarray:
    x = np.asarray(x, np.float64).ravel()
    return np.where(np.isnan(x), -np.inf, x)  # NaN = no face = never accepted


def eer(genuine, impostor) -> float:
    """Equal error rate of a verifier that accepts ``score >= t``.

    FAR(t) = share of impostor scores >= t, FRR(t) = share of genuine scores < t, over
    every observed score as t; the crossing is interpolated linearly between the two
    thresholds around it. -inf / NaN scores (no face) are rejected at every threshold."""
    g, i = _clean_scores(genuine), _clean_scores(impostor)
    if g.size == 0 or i.size == 0:
        return float("nan")
    t = np.unique(np.concatenate([g, i]))
    t = np.append(t, np.inf)
    gs, is_ = np.sort(g), np.sort(i)
    far = 1.0 - np.searchsorted(is_, t, side="left") / i.size   # impostors >= t
    frr = np.searchsorted(gs, t, side="left") / g.size          # genuines  <  t
    d = far - frr  # decreasing in t: from >= 0 to <= 0
    k = int(np.argmax(d <= 0))
    if k == 0:
        return float((far[0] + frr[0]) / 2)
    d0, d1 = d[k - 1], d[k]
    w = d0 / (d0 - d1) if d0 != d1 else 0.5
    return float(far[k - 1] + w * (far[k] - far[k - 1]))


def tar_at_far(genuine, impostor, far: float = FAR_TARGET) -> float:
    """True accept rate at the strictest threshold whose false accept rate is <= ``far``:
    at most ``floor(far * n_impostor)`` impostor scores may be accepted, so with fewer
    than ``1/far`` impostor pairs this is the share of genuine scores above every
    impostor score."""
    g, i = _clean_scores(genuine), _clean_scores(impostor)
    if g.size == 0 or i.size == 0:
        return float("nan")
    allowed = int(math.floor(far * i.size + 1e-9))
    if allowed >= i.size:
        return float(np.mean(g > -np.inf))
    bar = np.sort(i)[::-1][allowed]  # accept strictly above the (allowed+1)-th impostor
    return float(np.mean(g > bar))


def top1_accuracy(scores: np.ndarray, probe_ids, gallery_ids) -> float:
    """Closed-set rank-1 identification rate. ``scores`` (probes, gallery) with -inf/NaN
    where a pair must not count (the probe's own photo, undetected gallery photos, or a
    whole row for a probe whose face was not found - which is then not identified)."""
    s = np.where(np.isnan(scores), -np.inf, np.asarray(scores, np.float64))
    if s.shape[0] == 0:
        return float("nan")
    best = np.argmax(s, axis=1)
    found = np.isfinite(s[np.arange(len(s)), best])
    hit = np.asarray(gallery_ids)[best] == np.asarray(probe_ids)
    return float(np.mean(found & hit))


def self_match_rate(own_scores, threshold: float) -> float:
    """Share of processed photos whose score against their own clean photo reaches the
    recogniser's match threshold (``score >= threshold``; -inf/NaN = no face = no match)."""
    s = _clean_scores(own_scores)
    return float(np.mean(s >= threshold)) if s.size else float("nan")


def psnr_crossing(points: Iterable[tuple[float, float]], level: float = SELF_MATCH_LEVEL):
    """Where a family's curve first drops below ``level``, walking from the mildest
    setting (highest PSNR) down. ``points`` are (psnr_db, rate). Returns
    ``(first_psnr, interpolated_psnr)``: the PSNR of the first point below ``level`` and
    the PSNR where the straight line from the previous point crosses ``level`` (equal to
    the first when no milder point exists); ``(None, None)`` if it never drops below."""
    pts = sorted(((float(p), float(r)) for p, r in points if np.isfinite(r)), key=lambda x: -x[0])
    for k, (p, r) in enumerate(pts):
        if r < level:
            if k == 0 or not np.isfinite(pts[k - 1][0]):
                return p, p
            p0, r0 = pts[k - 1]
            return p, p0 + (r0 - level) / (r0 - r) * (p - p0)
    return None, None


def region_psnr_mse(clean_box: np.ndarray, processed_box: np.ndarray, mask: np.ndarray) -> float:
    """Mean squared error (8-bit units) over the masked pixels, all channels."""
    d = clean_box[mask].astype(np.float64) - processed_box[mask].astype(np.float64)
    return float(np.mean(d * d))


def mse_to_psnr(mse: float) -> float:
    return float("inf") if mse <= 0 else float(10.0 * np.log10(255.0 ** 2 / mse))


def region_ssim(clean_box: np.ndarray, processed_box: np.ndarray, mask: np.ndarray) -> float:
    """skimage SSIM map over the box (7x7 window, per channel), averaged over the mask."""
    from skimage.metrics import structural_similarity

    side = min(mask.shape)
    win = min(7, side if side % 2 else side - 1)
    if win < 3:
        return float("nan")
    _, smap = structural_similarity(clean_box, processed_box, win_size=win, data_range=255,
                                    channel_axis=2, full=True)
    return float(smap[mask].mean())


@dataclass
class RecognizerMetrics:
    probes: int
    detection: float
    top1: float
    self_match: float
    self_score: float   # mean score against the own clean photo, over faces still found
    eer: float
    tar: float
    genuine_pairs: int
    impostor_pairs: int


def probe_indices(ids: np.ndarray, clean_found: np.ndarray) -> np.ndarray:
    """Photos that can be probes: the recogniser finds their clean face, and at least one
    other clean photo of their identity (so each can be identified and verified at all)."""
    others = np.array([np.sum(clean_found & (ids == ids[i])) - 1 for i in range(len(ids))])
    return np.flatnonzero(clean_found & (others >= 1))


def recognizer_metrics(rec, ids: np.ndarray, clean: list, processed: list,
                       probes: np.ndarray | None = None) -> RecognizerMetrics:
    """Every privacy metric of one recogniser (see the module doc). ``clean`` and
    ``processed`` are per-photo embeddings, None where no face was found; ``probes``
    default to :func:`probe_indices`."""
    ids = np.asarray(ids)
    vc = np.array([e is not None for e in clean])
    vp = np.array([e is not None for e in processed])
    if probes is None:
        probes = probe_indices(ids, vc)
    dim = next((e.shape[0] for e in [*clean, *processed] if e is not None), 1)
    ec = np.stack([e if e is not None else np.zeros(dim, np.float32) for e in clean])
    ep = np.stack([e if e is not None else np.zeros(dim, np.float32) for e in processed])
    s = score_matrix(rec, ep[probes], ec)            # (P, N): processed probe vs clean photo
    s[~vp[probes]] = -np.inf                          # face not found: rejected everywhere
    own = s[np.arange(len(probes)), probes].copy()
    s[:, ~vc] = np.nan                                # undetected clean photos: no pair at all
    s[np.arange(len(probes)), probes] = np.nan        # a photo is never its own gallery
    pid = ids[probes]
    same = pid[:, None] == ids[None, :]
    valid = ~np.isnan(s)
    genuine, impostor = s[valid & same], s[valid & ~same]
    found_own = own[np.isfinite(own)]
    return RecognizerMetrics(
        probes=int(len(probes)), detection=float(vp[probes].mean()) if len(probes) else float("nan"),
        top1=top1_accuracy(s, pid, ids), self_match=self_match_rate(own, rec.score_threshold),
        self_score=float(found_own.mean()) if found_own.size else float("nan"),
        eer=eer(genuine, impostor), tar=tar_at_far(genuine, impostor, FAR_TARGET),
        genuine_pairs=int(genuine.size), impostor_pairs=int(impostor.size),
    )
