"""Optimising a personal cloak (torch): one fixed perturbation in face-aligned crop
coordinates that stops the recognisers from matching one person, optimised over that
person's own enrolment crops (OPOM's "one person, one mask", with Chameleon's quality
term).

The pattern
    ``pattern = W * delta`` with ``|delta| <= budget`` (:class:`SignPattern`): momentum
    steps on ``delta``, each recogniser's gradient normalised before they are summed so that
    every one of them is attacked. The default, ``method="l2"``, steps along the momentum
    itself and keeps the pattern's energy (root mean square over the region) at most
    ``rms``, the budget only capping single pixels: a face PSNR limit is a limit on energy,
    and spent along the gradient it goes where the recognisers look (on the celebrity
    probe: gallery match dlib 8 -> 0 %, SFace 25 -> 21 %, at 32.5 dB instead of 32.0).
    ``method="mifgsm"`` takes sign steps (MI-FGSM) and is projected back onto the budget,
    which spends it evenly over the region. ``W`` (:func:`weight_map`) is the mask the composite
    applies at run time: the feathered face oval grown by ``grow`` over the hairline, ears
    and jaw line, scaled down on the forehead and cheeks (the pulse regions) and up on the
    eyes, brows, nose and mouth (where identity lives), averaged over the enrolment faces.
    ``method="adam"`` is the first session's parameterisation, kept for comparison:
    ``budget * W * (a * tanh(up(C)) + (1 - a) * tanh(F))`` with a coarse grid ``C`` and a
    full-resolution field ``F``, moved by Adam; on the celebrity probe it could not even fit
    the enrolment crops (docs/decisions.md).

The loss, on random views of the cloaked crops (:mod:`livedeid.cloak.eot`)
    For each recogniser of the ensemble (frozen differentiable heads,
    :class:`livedeid.recognizers.heads.RecognizerHead`), a hinge pushing each cloaked crop
    ``margin`` beyond the match threshold from (a) the person's clean centre embedding
    (what an attacker's gallery of the person looks like) and (b) the crop's own clean
    embedding (a clean photo of the same moment); plus ``ssim_weight * (1 - SSIM)`` of the
    cloaked against the clean crop.

With a handful of photos the cloak would fit their exact poses, so by default it also
sees each crop mirrored (a mirrored face is the same person in a new pose).

Where the pattern lives
    ``repose=False``: in the aligned crop's own coordinates (a similarity fit on five
    points), so a turned head wears it shifted against its features by several pixels.
    ``repose=True``: drawn in a face layout, the mean face mesh of the enrolment crops
    (:func:`face_layout`), and moved onto each crop's own mesh by a thin-plate spline
    (:mod:`livedeid.core.reposing`; the frame path does the same per frame), so every view
    wears it on the same points of the face (Protego's per-user texture re-posed on
    every frame, in the mesh's image plane rather than a UV map).

Early stopping
    Every ``check_every`` steps the held-out crops (or the enrolment crops when none are
    kept out) are cloaked without random changes and through one fixed codec-like view
    (half size, JPEG 60). Only with held-out crops does the run stop early: once, for
    every recogniser, each of them is ``stop_margin`` beyond the threshold from the centre
    and from its own clean embedding in both (on the enrolment crops themselves that only
    measures the fit: on the celebrity probe it stopped at 15 steps with unseen photos
    still matching). Given an ``accept`` callback (enrolment passes the real recognisers'
    verification on the held-out images), that decides instead, asked whenever the
    surrogates clear the centre. ``max_seconds`` ends a run at the first check past it.
    The pattern returned is the accepted one, else the one of the best check.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import kornia
import numpy as np
import torch
import torch.nn.functional as F
from pytorch_msssim import ssim

from livedeid.cloak.eot import EotSettings, camera, cloaked_view
from livedeid.core.errors import UserError
from livedeid.core.face_regions import (
    FOREHEAD,
    LEFT_CHEEK,
    RIGHT_CHEEK,
    exclusion_polygons,
    fill_polygons,
    polygon_points,
)
from livedeid.core.reposing import anchor_points
from livedeid.io.profile import DEFAULT_BUDGET, DEFAULT_RMS
from livedeid.protect.cloak import reposer_for
from livedeid.protect.composite import oval_mask
from livedeid.recognizers.base import get_recognizer
from livedeid.recognizers.heads import RecognizerHead, hinge_term
from livedeid.tracking.still import still_landmarks


@dataclass
class CloakSettings:
    budget: float = DEFAULT_BUDGET   # L-infinity bound of the pattern
    steps: int = 200
    recognizers: tuple[str, ...] = ("dlib", "sface")
    seed: int = 0
    threads: int = 2                 # torch CPU threads
    margin: float = 0.3              # beyond each threshold, in the recogniser's units (cosine / distance)
    stop_margin: float = 0.05        # early stop once held-out crops are this far beyond every threshold
    own_weight: float = 0.25         # the same-photo term (b); the gallery term (a) weighs 1
    specific_weight: float = 0.0     # (c), with a population: measured only (docs/decisions.md, ninth session)
    ssim_weight: float = 0.3
    lr: float = 0.5                  # Adam on the tanh parameters: large steps drive the pattern to the
                                     # budget's edges as sign-PGD does (0.05-0.15 used ~1.5 dB less of it
                                     # and protected less on the probe)
    batch: int = 4                   # cloaked views per step
    coarse: int = 16                 # coarse grid cells across the crop
    coarse_share: float = 0.6        # of the budget
    feature_weight: float = 1.0      # eyes, brows, nose, mouth
    skin_weight: float = 1.0         # the rest of the region
    pulse_weight: float = 0.7        # forehead and cheeks
    grow: float = 0.25               # the cloak's region: the face oval scaled by 1 + this, over the hairline,
                                     # ears and jaw line (SFace leans on them: inside the bare oval a cloak
                                     # could not even fit the enrolment photos under alignment jitter)
    check_every: int = 25
    mirror: bool = True              # also optimise on the mirrored enrolment crops
    method: str = "l2"               # "l2": momentum steps along the gradient within the energy limit rms and
                                     # the budget; "mifgsm": momentum sign steps, projected onto the budget
                                     # (12/255 in earlier profiles); "adam": Adam on the tanh parameterisation
    rms: float = DEFAULT_RMS         # "l2" only: the pattern's root mean square over the region (where the
                                     # weight map exceeds a half): about 32.5 dB face PSNR on the probe
    momentum: float = 0.9            # MI-FGSM's decay of the normalised gradient
    step: float = 0.125              # first sign step, as a share of the budget (decays linearly to a tenth)
    smooth: float = 0.0              # sigma (crop px) of a Gaussian on the gradient before the sign (TI-FGSM);
                                     # off: at 1.5 the cloak could not fit SFace on the enrolment crops
    repose: bool = True              # draw the pattern in a face layout (the enrolment's mean mesh) and move it
                                     # onto each face's own mesh (livedeid.core.reposing), not the aligned crop
    max_seconds: float | None = None # stop at the first check after this long (None: run every step); the best
                                     # pattern so far is returned
    eot: EotSettings = field(default_factory=EotSettings)


@dataclass
class CloakResult:
    pattern: np.ndarray              # float32 (3, S, S), |pattern| <= budget
    history: list[dict]              # per check: step, seconds, loss, held-out match per recogniser
    stopped_early: bool
    layout: np.ndarray | None = None # repose only: the face layout (478, 2) the pattern is drawn in


# --------------------------------------------------------------------------------------
# where the cloak may go
# --------------------------------------------------------------------------------------
def crop_landmarks(crops: np.ndarray, keep_misses: bool = False) -> list[np.ndarray | None]:
    """Face-mesh landmarks (478, 2), in crop pixels, of each crop where the mesh finds the
    face (an aligned crop is a tight, upright face: it does on every celebrity photo);
    with ``keep_misses`` one entry per crop, None where it does not."""
    out = []
    for crop in crops:
        bgr = np.ascontiguousarray(np.clip(np.rint(crop.transpose(1, 2, 0)[:, :, ::-1] * 255), 0, 255).astype(np.uint8))
        lm = still_landmarks(bgr)
        if lm is not None or keep_misses:
            out.append(lm)
    return out


def face_layout(crops: np.ndarray, landmarks: list[np.ndarray] | None = None, mirror: bool = True) -> np.ndarray:
    """float32 (478, 2): the layout a re-posed cloak is drawn in, the mean face mesh (crop
    pixels) of the enrolment ``crops`` (and of their mirror images with ``mirror``, so the
    layout is as symmetric as the views the cloak is optimised on)."""
    lms = [lm for lm in (landmarks if landmarks is not None else crop_landmarks(crops)) if lm is not None]
    if mirror:
        lms += crop_landmarks(np.ascontiguousarray(np.asarray(crops)[..., ::-1]))
    if not lms:
        raise UserError("no face found in the enrolment crops; cannot place a cloak")
    return np.mean(np.stack(lms), axis=0).astype(np.float32)


def weight_map(landmarks: list[np.ndarray], crop_size: int, s: CloakSettings) -> np.ndarray:
    """float32 (S, S) in [0, 1]: the composite's feathered face oval, grown by ``s.grow``,
    times the region weights (features ``feature_weight``, forehead and cheeks
    ``pulse_weight``, the rest ``skin_weight``), smoothed so the weights blend, averaged over the faces."""
    if not landmarks:
        raise UserError("no face found in the enrolment crops; cannot place a cloak")
    maps = []
    for lm in landmarks:
        box, feather = oval_mask(lm, (crop_size, crop_size), grow=s.grow)
        oval = np.zeros((crop_size, crop_size), np.float32)
        if box is not None:
            x0, y0, x1, y1 = box
            oval[y0:y1, x0:x1] = feather
        pulse = [polygon_points(lm, poly) for poly in (FOREHEAD, RIGHT_CHEEK, LEFT_CHEEK)]
        levels = np.full((crop_size, crop_size), s.skin_weight, np.float32)
        levels[fill_polygons(np.zeros_like(levels, np.uint8), pulse) > 0] = s.pulse_weight
        levels[fill_polygons(np.zeros_like(levels, np.uint8), exclusion_polygons(lm)) > 0] = s.feature_weight
        maps.append(cv2.GaussianBlur(levels, (0, 0), crop_size / 64.0) * oval)
    return np.clip(np.mean(maps, axis=0), 0.0, 1.0).astype(np.float32)


class Pattern(torch.nn.Module):
    """The bounded, weighted coarse + fine parameterisation of the module docstring
    (``method="adam"``)."""

    def __init__(self, weights: np.ndarray, s: CloakSettings):
        super().__init__()
        size = weights.shape[-1]
        self.budget, self.share, self.size = float(s.budget), float(s.coarse_share), size
        self.register_buffer("weights", torch.from_numpy(weights)[None])
        self.coarse = torch.nn.Parameter(torch.zeros(1, 3, s.coarse, s.coarse))
        self.fine = torch.nn.Parameter(torch.zeros(3, size, size))

    def forward(self) -> torch.Tensor:
        up = F.interpolate(self.coarse, size=(self.size, self.size), mode="bicubic", align_corners=False)[0]
        mix = self.share * torch.tanh(up) + (1.0 - self.share) * torch.tanh(self.fine)
        return self.budget * self.weights * mix


class SignPattern(torch.nn.Module):
    """The pattern itself, ``W * delta`` with ``|delta| <= budget``, moved by momentum sign
    steps on a smoothed gradient (MI-FGSM with TI-FGSM's smoothing; ``method="mifgsm"``).
    Sign steps use the whole budget where the gradient agrees across views, which Adam on
    a tanh did not: on the celebrity probe it could not even fit the enrolment crops."""

    def __init__(self, weights: np.ndarray, s: CloakSettings):
        super().__init__()
        self.s = s
        self.register_buffer("weights", torch.from_numpy(weights)[None])
        self.delta = torch.nn.Parameter(torch.zeros(3, *weights.shape))
        self.register_buffer("velocity", torch.zeros(3, *weights.shape))

    def forward(self) -> torch.Tensor:
        return self.weights * self.delta

    def step(self, terms: list[torch.Tensor], weights: list[float], progress: float) -> None:
        """One descent step at ``progress`` (0..1) of the run on ``sum(w * term)``, each
        term's gradient normalised first (mean absolute value 1): summed raw, the recogniser
        with the steepest gradient decides every sign and the others are not attacked."""
        grads = [torch.autograd.grad(t, self.delta, retain_graph=i < len(terms) - 1)[0] for i, t in enumerate(terms)]
        g = sum(w * gi / (gi.abs().mean() + 1e-12) for w, gi in zip(weights, grads))
        self._descend(g, progress)

    @torch.no_grad()
    def _descend(self, g: torch.Tensor, progress: float) -> None:
        if self.s.smooth > 0:
            k = 2 * int(np.ceil(3 * self.s.smooth)) + 1
            g = kornia.filters.gaussian_blur2d(g[None], (k, k), (self.s.smooth, self.s.smooth))[0]
        self.velocity.mul_(self.s.momentum).add_(g / (g.abs().mean() + 1e-12))
        if self.s.method == "l2":
            self._descend_l2(progress)
            return
        size = self.s.budget * self.s.step * (1.0 - 0.9 * progress)
        self.delta.sub_(size * self.velocity.sign()).clamp_(-self.s.budget, self.s.budget)

    @torch.no_grad()
    def _descend_l2(self, progress: float) -> None:
        """A step along the momentum itself (not its sign), then back inside the budget and
        the energy limit ``rms``: a face PSNR limit bounds the energy, and sign steps spend
        it evenly over the region however little a pixel matters."""
        rms = min(self.s.rms, self.s.budget)  # a pattern within the budget cannot carry more
        v = self.velocity * self.weights
        size = rms * self.s.step * (1.0 - 0.9 * progress)
        self.delta.sub_(size * v / (v.pow(2).mean().sqrt() + 1e-12)).clamp_(-self.s.budget, self.s.budget)
        region = self.weights[0] > 0.5
        energy = (self.weights * self.delta)[:, region].pow(2).mean().sqrt()
        if energy > rms:
            self.delta.mul_(rms / energy)


def _layout_grids(layout: np.ndarray, landmarks: list[np.ndarray | None], size: int) -> torch.Tensor:
    """(N, S, S, 2) ``grid_sample`` grids moving a pattern drawn in ``layout`` onto each
    crop (the same maps as the frame path's, :func:`livedeid.protect.cloak.worn_pattern`)."""
    reposer = reposer_for(layout, size)
    anchors = anchor_points(layout)
    maps = np.stack([reposer.map(anchors if lm is None else anchor_points(lm)) for lm in landmarks])
    return torch.from_numpy((2.0 * maps + 1.0) / size - 1.0).float()


def _on_crops(p: torch.Tensor, grids: torch.Tensor | None) -> torch.Tensor:
    """The pattern as each crop wears it: itself, or re-posed by ``grids``."""
    if grids is None:
        return p
    return F.grid_sample(p.expand(len(grids), *p.shape), grids, mode="bilinear", padding_mode="zeros",
                         align_corners=False)


def worn_on_crops(pattern: np.ndarray, crops: np.ndarray, layout: np.ndarray | None,
                  landmarks: list[np.ndarray | None] | None = None) -> torch.Tensor:
    """The pattern as each of ``crops`` (N, 3, S, S) wears it: the pattern itself, or with a
    ``layout`` re-posed onto each crop's face mesh (``landmarks`` in crop pixels, else
    found on the crops)."""
    p = torch.as_tensor(np.asarray(pattern, np.float32))
    if layout is None:
        return p
    if landmarks is None:
        landmarks = crop_landmarks(np.asarray(crops), keep_misses=True)
    return _on_crops(p, _layout_grids(layout, landmarks, p.shape[-1]))


# --------------------------------------------------------------------------------------
# the loss and its check
# --------------------------------------------------------------------------------------
def centre_embedding(head: RecognizerHead, emb: torch.Tensor) -> torch.Tensor:
    """The person's centre on the recogniser's own scale: the mean of the unit embeddings
    (cosine) or the mean embedding (Euclidean)."""
    if head.metric == "cosine":
        return F.normalize(F.normalize(emb, dim=-1).mean(0), dim=-1)
    return emb.mean(0)


def specific_directions(heads, centres: dict, population: torch.Tensor) -> dict:
    """Per head, the unit direction of the person's centre minus the mean unit embedding of
    ``population`` crops (other people): what a closed-set ranking (top-1) compares."""
    with torch.no_grad():
        return {h.name: F.normalize(F.normalize(centres[h.name][0], dim=-1)
                                    - F.normalize(h(population), dim=-1).mean(0), dim=-1) for h in heads}


def cloak_losses(heads, views: torch.Tensor, refs: dict, own_idx: torch.Tensor, s: CloakSettings,
                 specific: dict | None = None) -> list[torch.Tensor]:
    """Per head, the hinges from the centre and from the own clean embeddings (``refs[name][1][own_idx]``)
    of the cloaked, transformed ``views``; with ``specific`` (:func:`specific_directions`),
    plus ``specific_weight`` times the views' positive projection on it."""
    out = []
    for head in heads:
        emb = head(views)
        centre, own = refs[head.name]
        term = (hinge_term(head, emb, centre.expand_as(emb), s.margin)
                + s.own_weight * hinge_term(head, emb, own[own_idx], s.margin))
        if specific is not None and s.specific_weight > 0:
            term = term + s.specific_weight * F.relu(F.normalize(emb, dim=-1) @ specific[head.name]).mean()
        out.append(term)
    return out


def held_out_check(heads, pattern: torch.Tensor, crops: torch.Tensor, refs: dict, s: CloakSettings) -> tuple[dict, bool]:
    """Per recogniser: the share of cloaked held-out crops still matching the centre and
    their own clean crop (plain and through a fixed half-size JPEG-60 view), and whether
    all of them are ``stop_margin`` beyond every threshold."""
    plain = (crops + pattern).clamp(0.0, 1.0)
    codec = EotSettings(light=0, misregister=0, align=0, min_scale=1.0, blur=0, noise=0,
                        jpeg=(60.0, 60.0), jpeg_share=1.0)
    small = F.interpolate(plain, scale_factor=0.5, mode="bilinear", antialias=True, align_corners=False)
    coded = camera(F.interpolate(small, size=plain.shape[-2:], mode="bilinear", align_corners=False),
                   torch.Generator().manual_seed(0), codec)
    info, safe = {}, True
    for head in heads:
        centre, own = refs[head.name]
        rec = {}
        for view_name, view in (("plain", plain), ("codec", coded)):
            emb = head(view)
            sc, so = head.score(emb, centre.expand_as(emb)), head.score(emb, own)
            rec[view_name] = {"centre": float((sc >= head.score_threshold).float().mean()),
                              "own": float((so >= head.score_threshold).float().mean()),
                              # how far past the threshold on average (negative: beyond it); breaks ties
                              "excess": float((torch.cat([sc, so]) - head.score_threshold).mean())}
            limit = head.score_threshold - s.stop_margin
            safe = safe and bool((sc < limit).all()) and bool((so < limit).all())
        info[head.name] = rec
    return info, safe


def _clear_of_centre(info: dict) -> bool:
    """No held-out crop, as it is (the view the real verification judges), matches the
    centre for any recogniser."""
    return all(rec["plain"]["centre"] == 0.0 for rec in info.values())


def _check_badness(info: dict) -> float:
    return sum(v["centre"] + v["own"] for rec in info.values() for v in rec.values())


# --------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------
def _as_crops(crops, what: str) -> torch.Tensor:
    a = np.asarray(crops, dtype=np.float32)
    if a.ndim != 4 or a.shape[1] != 3 or a.shape[2] != a.shape[3] or len(a) == 0:
        raise UserError(f"{what} must be a non-empty (N, 3, S, S) array, got shape {a.shape}")
    if not np.isfinite(a).all() or a.min() < 0.0 or a.max() > 1.0:
        raise UserError(f"{what} must hold finite values in [0, 1]")
    return torch.from_numpy(np.ascontiguousarray(a))


def _references(heads, enrol: torch.Tensor, held: torch.Tensor) -> tuple[dict, dict]:
    """(enrolment refs, held-out refs): per head (centre, own clean embeddings); the
    centre is always the enrolment crops'."""
    enrol_refs, held_refs = {}, {}
    with torch.no_grad():
        for head in heads:
            e = head(enrol)
            c = centre_embedding(head, e)
            enrol_refs[head.name] = (c, e)
            held_refs[head.name] = (c, e if held is enrol else head(held))
    return enrol_refs, held_refs


# long: the loop with its seeding, thread setting, checks and best-pattern bookkeeping reads best in one piece
def optimise_cloak(crops: np.ndarray, settings: CloakSettings, *, held_out: np.ndarray | None = None,
                   progress: Callable[[dict], None] | None = None,
                   landmarks: list[np.ndarray] | None = None, init: np.ndarray | None = None,
                   accept: Callable[[np.ndarray], bool] | None = None,
                   layout: np.ndarray | None = None, population: np.ndarray | None = None) -> CloakResult:
    """Optimise a cloak on ``crops`` (N, 3, S, S) float32 RGB in [0, 1] (enrolment crops);
    ``held_out`` crops are kept out of the optimisation and decide early stopping;
    ``landmarks`` (face mesh in crop pixels per crop) place the weight map, found on the
    crops when not given. ``progress`` gets each check's history entry (the final one has
    ``"last": True``). ``init``: a pattern to start from (background refinement continues
    the profile's cloak; ``l2`` or ``mifgsm``). With ``settings.repose`` the pattern is
    drawn in ``layout`` (478, 2), by default :func:`face_layout` of the crops, returned in
    the result; refinement passes the profile's so the pattern keeps its meaning. ``population``:
    other people's crops, for ``settings.specific_weight`` (probe only).

    ``accept`` (with ``held_out``): the real verification, asked at each check where the
    surrogates no longer match any held-out crop to the centre (plain view); the
    run stops with the first pattern it accepts. The surrogate check alone misjudges both
    ways: on the speech video it read 0 % while SFace itself still matched 2 of 8 held-out
    frames, and its stricter rule (the same-photo term and a margin) never let a run stop."""
    s = settings
    enrol = _as_crops(crops, "enrolment crops")
    held = enrol if held_out is None else _as_crops(held_out, "held-out crops")
    size = enrol.shape[-1]
    if held.shape[1:] != enrol.shape[1:]:
        raise UserError(f"held-out crops have shape {tuple(held.shape[1:])}, enrolment crops {tuple(enrol.shape[1:])}")
    if s.method not in ("mifgsm", "l2", "adam"):
        raise UserError(f"unknown cloak method {s.method!r} (mifgsm, l2 or adam)")
    if s.method == "l2" and not s.rms > 0:
        raise UserError("the l2 method needs an energy limit rms > 0")
    if s.specific_weight > 0 and population is None:  # probe only: no profile has a population
        raise UserError("specific_weight > 0 needs population crops (other people's faces)")
    if not 0 < s.budget <= 0.25 or s.steps < 1 or s.batch < 1 or not s.recognizers:
        raise UserError("cloak settings need 0 < budget <= 64/255, steps >= 1, batch >= 1 and a recogniser")
    lms = landmarks if landmarks is not None else crop_landmarks(enrol.numpy())
    enrol_grids = held_grids = None
    if s.repose:
        if layout is None:
            layout = face_layout(enrol.numpy(), lms, s.mirror)
        weights = weight_map([layout], size, s)
        # every crop gets its own map (a crop the mesh misses wears the layout as it is)
        enrol_lms = list(lms) if len(lms) == len(enrol) else crop_landmarks(enrol.numpy(), keep_misses=True)
        if s.mirror:
            enrol_lms += crop_landmarks(enrol.flip(-1).numpy(), keep_misses=True)
        enrol_grids = _layout_grids(layout, enrol_lms, size)
        held_grids = enrol_grids if held_out is None else _layout_grids(
            layout, crop_landmarks(held.numpy(), keep_misses=True), size)
    else:
        layout = None
        weights = weight_map(lms, size, s)
    if s.mirror:
        enrol = torch.cat([enrol, enrol.flip(-1)])
        held = enrol if held_out is None else held
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(s.threads)))
    try:
        torch.manual_seed(s.seed)
        gen = torch.Generator().manual_seed(s.seed)
        heads = [RecognizerHead.from_recognizer(get_recognizer(n), crop_size=size) for n in s.recognizers]
        refs, held_refs = _references(heads, enrol, held)
        specific = specific_directions(heads, refs, _as_crops(population, "population")) if s.specific_weight else None
        pattern = SignPattern(weights, s) if s.method in ("mifgsm", "l2") else Pattern(weights, s)
        if init is not None:
            if s.method not in ("mifgsm", "l2") or np.shape(init) != (3, size, size):
                raise UserError("a starting pattern needs method l2 or mifgsm and the crops' (3, S, S) shape")
            with torch.no_grad():  # pattern = W * delta: delta where the weight map lets it through
                start = torch.from_numpy(np.asarray(init, np.float32)) / pattern.weights.clamp_min(1e-3)
                pattern.delta.copy_(start.clamp(-s.budget, s.budget))
        opt = torch.optim.Adam(pattern.parameters(), lr=s.lr) if s.method == "adam" else None
        history, best, stopped = [], (np.inf, np.zeros((3, size, size), np.float32)), False
        t0, loss_sum, loss_n = time.perf_counter(), 0.0, 0
        for step in range(1, s.steps + 1):
            idx = torch.randint(len(enrol), (s.batch,), generator=gen)
            p = _on_crops(pattern(), None if enrol_grids is None else enrol_grids[idx])
            views = cloaked_view(enrol[idx], p, gen, s.eot)
            terms = cloak_losses(heads, views, refs, idx, s, specific)
            if s.ssim_weight > 0:
                clean = enrol[idx]
                terms.append(1.0 - ssim((clean + p).clamp(0, 1), clean, data_range=1.0))
            weights_ = [1.0] * len(heads) + ([s.ssim_weight] if s.ssim_weight > 0 else [])
            loss = sum(w * t for w, t in zip(weights_, terms))
            if opt is not None:
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            else:
                pattern.step(terms, weights_, (step - 1) / s.steps)
            loss_sum, loss_n = loss_sum + float(loss.detach()), loss_n + 1
            if step % s.check_every and step != s.steps:
                continue
            with torch.no_grad():
                p = pattern()
                info, safe = held_out_check(heads, _on_crops(p, held_grids), held, held_refs, s)
            entry = {"step": step, "seconds": round(time.perf_counter() - t0, 2),
                     "loss": round(loss_sum / loss_n, 5), "held_out_match": info}
            loss_sum, loss_n = 0.0, 0
            history.append(entry)
            badness = _check_badness(info)
            if badness <= best[0]:
                best = (badness, p.numpy().astype(np.float32).copy())
            if held_out is not None and accept is not None and _clear_of_centre(info):
                entry["accepted"] = safe = bool(accept(p.numpy().astype(np.float32)))
            done = safe and held_out is not None
            out_of_time = s.max_seconds is not None and entry["seconds"] >= s.max_seconds
            if done or out_of_time or step == s.steps:
                entry["last"] = True
            if progress is not None:
                progress(entry)
            if done:
                best, stopped = (badness, p.numpy().astype(np.float32).copy()), step < s.steps
            if done or out_of_time:
                break
    finally:
        torch.set_num_threads(threads)
    out = np.clip(best[1], -s.budget, s.budget).astype(np.float32)
    return CloakResult(pattern=out, history=history, stopped_early=stopped, layout=layout)
