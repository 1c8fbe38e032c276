"""The personal cloak's second form (torch): the generic de-identification model
fine-tuned on one enrolled person's crops, so that its input-dependent residual stops the
recognisers from matching that person, instead of a fixed pattern
(:mod:`livedeid.cloak.optimise`). Only the measurement exists
(``benchmarks/cloak_finetune.py``, the protocol of :mod:`livedeid.cloak.protocol`); no
profile carries such a model.

The model
    Any module with the model contract of :mod:`livedeid.inference.manifest`
    (``window`` (N, T, 3, S, S) RGB in [0, 1], oldest frame first -> the protected current
    frame (N, 3, S, S)) and a ``window`` attribute (T). The caller loads it (the shipped
    ``engines/deid.pt`` through :mod:`livedeid.nets.autoencoder`: ``cloak`` may not import
    ``nets``, ``inference`` or ``assets``); :func:`finetune_autoencoder` trains a copy and
    returns it wrapped in :class:`BudgetedModel`, which clamps the residual to the budget
    (12/255 by default, the sign-step static cloak's of r5), so the bound holds at run time whatever the
    weights became.

The windows
    A photo is a window of T identical frames (as the held-out evaluation and
    :class:`~livedeid.evaluation.baselines.ModelMethod` feed photos to the pipeline),
    optionally with independent sensor noise per frame (``frame_noise``).

The loss: the static cloak's, by import
    The recogniser hinges of :func:`~livedeid.cloak.optimise.cloak_losses` (from the
    person's clean centre :func:`~livedeid.cloak.optimise.centre_embedding` and, weighted
    ``own_weight``, from each crop's own clean embedding) on random views, plus
    ``ssim_weight * (1 - SSIM)`` of the protected against the clean crop. The residual only
    reaches the frame under the composite's feathered face oval (the bare oval: the model's
    region is not grown as a profile's is), so the loss sees ``crop + oval * residual``.

The views (:mod:`livedeid.cloak.eot`), in the order they happen
    light on the face the camera sees; our tracker's alignment jitter (``misregister``: the
    crop the model receives and its oval move together, the residual being computed on
    that crop); the protected crop; then the attacker's alignment and the camera (face
    size, blur, noise, JPEG) as for the static cloak.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from pytorch_msssim import ssim

from livedeid.cloak.eot import EotSettings, camera, light, random_similarity, warp
from livedeid.cloak.optimise import CloakSettings, centre_embedding, cloak_losses, held_out_check
from livedeid.core.errors import UserError
from livedeid.protect.composite import oval_mask
from livedeid.recognizers.base import get_recognizer
from livedeid.recognizers.heads import RecognizerHead


@dataclass
class FinetuneSettings:
    budget: float = 12 / 255         # L-infinity bound of the residual (the sign-step static cloak's of r5;
                                     # at it the generic model's residual already costs about 30 dB)
    steps: int = 200
    lr: float = 5e-4                 # Adam on every trainable weight of the model
    batch: int = 4                   # views per step
    recognizers: tuple[str, ...] = ("dlib", "sface")
    seed: int = 0
    threads: int = 2                 # torch CPU threads
    margin: float = 0.3              # as CloakSettings: beyond each threshold, in the recogniser's units
    own_weight: float = 0.25         # the same-photo hinge; the gallery hinge weighs 1
    ssim_weight: float = 0.3
    mirror: bool = True              # also train on the mirrored enrolment crops
    frame_noise: float = 0.004       # per-frame sensor noise inside a window (0: identical frames)
    check_every: int = 50
    eot: EotSettings = field(default_factory=EotSettings)

    def loss_settings(self) -> CloakSettings:
        """The static cloak's settings for its loss and check functions: this margin and
        own weight, every other loss term at the static cloak's default."""
        return CloakSettings(budget=self.budget, margin=self.margin, own_weight=self.own_weight,
                             recognizers=self.recognizers)


@dataclass
class FinetuneResult:
    module: torch.nn.Module          # a BudgetedModel around the fine-tuned copy, in eval mode
    history: list[dict]              # per check: step, seconds, loss, enrolment match per recogniser
    seconds: float                   # in all: loading the recognisers' heads, the steps and the checks
    setup_seconds: float             # of which loading the heads and embedding the clean crops


class BudgetedModel(torch.nn.Module):
    """``model`` with its residual clamped to ``budget``: the same contract, and
    ``|protected - current frame| <= budget`` by construction."""

    def __init__(self, model: torch.nn.Module, budget: float):
        super().__init__()
        self.model, self.budget, self.window = model, float(budget), int(model.window)

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        current = window[:, -1]
        return (current + (self.model(window) - current).clamp(-self.budget, self.budget)).clamp(0.0, 1.0)


def oval_weights(landmarks: list[np.ndarray], crop_size: int) -> torch.Tensor:
    """(N, 1, S, S) float32: the composite's feathered face oval (not grown) of each crop,
    where the model's residual reaches the frame."""
    out = np.zeros((len(landmarks), 1, crop_size, crop_size), np.float32)
    for i, lm in enumerate(landmarks):
        box, feather = oval_mask(lm, (crop_size, crop_size))
        if box is not None:
            x0, y0, x1, y1 = box
            out[i, 0, y0:y1, x0:x1] = feather
    return torch.from_numpy(out)


def photo_windows(crops: torch.Tensor, window: int, gen: torch.Generator | None = None,
                  noise: float = 0.0) -> torch.Tensor:
    """(N, T, 3, S, S): each crop as a window of ``window`` frames (a still photo as a
    clip), each frame with its own Gaussian sensor noise of standard deviation ``noise``."""
    w = crops[:, None].expand(-1, window, -1, -1, -1)
    if noise > 0 and gen is not None:
        w = (w + noise * torch.randn(w.shape, generator=gen)).clamp(0.0, 1.0)
    return w


def composited(model: torch.nn.Module, windows: torch.Tensor, ovals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the current frames, what the composite makes of them: current + oval * residual)."""
    current = windows[:, -1]
    return current, (current + ovals * (model(windows) - current)).clamp(0.0, 1.0)


def _view(model, crops: torch.Tensor, ovals: torch.Tensor, gen: torch.Generator, s: FinetuneSettings):
    """(clean current frames, protected views as the attacker receives them, protected
    crops before the attacker's changes) of one random draw (module docstring)."""
    n = crops.shape[0]
    x = light(crops, gen, s.eot.light)
    if s.eot.misregister > 0:  # our alignment jitter: the crop and its oval move together
        both = warp(torch.cat([x, ovals], 1), random_similarity(gen, n, s.eot.misregister))
        x, ovals = both[:, :3], both[:, 3:]
    current, protected = composited(model, photo_windows(x, model.window, gen, s.frame_noise), ovals)
    y = protected
    if s.eot.align > 0:
        y = warp(y, random_similarity(gen, n, s.eot.align))
    return current, camera(y, gen, s.eot), protected


def _check(model, heads, crops: torch.Tensor, ovals: torch.Tensor, refs: dict, s: CloakSettings) -> dict:
    """Per recogniser, the share of the (un-mirrored) enrolment crops whose composited
    output, plain and through a half-size JPEG-60 view, still matches the centre and its
    own clean crop (:func:`~livedeid.cloak.optimise.held_out_check` on the per-crop residual)."""
    with torch.no_grad():
        current, protected = composited(model, photo_windows(crops, model.window), ovals)
        info, _ = held_out_check(heads, protected - current, current, refs, s)
    return info


def _validated(crops, landmarks, s: FinetuneSettings) -> torch.Tensor:
    a = np.asarray(crops, dtype=np.float32)
    if a.ndim != 4 or a.shape[1] != 3 or a.shape[2] != a.shape[3] or len(a) == 0:
        raise UserError(f"enrolment crops must be a non-empty (N, 3, S, S) array, got shape {a.shape}")
    if not np.isfinite(a).all() or a.min() < 0.0 or a.max() > 1.0:
        raise UserError("enrolment crops must hold finite values in [0, 1]")
    if len(landmarks) != len(a):
        raise UserError(f"{len(landmarks)} landmark sets for {len(a)} enrolment crops (one per crop needed)")
    if not 0 < s.budget <= 0.25 or s.steps < 1 or s.batch < 1 or not s.recognizers or s.lr <= 0:
        raise UserError("fine-tuning needs 0 < budget <= 64/255, steps >= 1, batch >= 1, lr > 0 and a recogniser")
    return torch.from_numpy(np.ascontiguousarray(a))


# long: the loop with its seeding, thread setting and checks reads best in one piece
def finetune_autoencoder(model: torch.nn.Module, crops: np.ndarray, landmarks: list[np.ndarray],
                         settings: FinetuneSettings,
                         progress: Callable[[dict], None] | None = None) -> FinetuneResult:
    """Fine-tune a copy of ``model`` (module docstring; ``model`` itself is left as it is)
    on ``crops`` (N, 3, S, S) float32 RGB in [0, 1] (enrolment crops) with ``landmarks``
    (face mesh in crop pixels, one per crop: they place the composite's oval). ``progress``
    gets each check's history entry (every ``check_every`` steps and the last)."""
    s, loss_s = settings, settings.loss_settings()
    enrol = _validated(crops, landmarks, s)
    size = enrol.shape[-1]
    ovals = oval_weights(landmarks, size)
    n_plain = len(enrol)
    if s.mirror:
        enrol, ovals = torch.cat([enrol, enrol.flip(-1)]), torch.cat([ovals, ovals.flip(-1)])
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(s.threads)))
    t0 = time.perf_counter()
    try:
        torch.manual_seed(s.seed)
        gen = torch.Generator().manual_seed(s.seed)
        tuned = BudgetedModel(copy.deepcopy(model), s.budget).eval()  # eval: GroupNorm only, no dropout
        params = [p for p in tuned.parameters() if p.requires_grad]
        if not params:
            raise UserError("the model has no trainable weights to fine-tune")
        opt = torch.optim.Adam(params, lr=s.lr)
        heads = [RecognizerHead.from_recognizer(get_recognizer(n), crop_size=size) for n in s.recognizers]
        refs, plain_refs = {}, {}
        with torch.no_grad():
            for head in heads:
                e = head(enrol)
                refs[head.name] = (centre_embedding(head, e), e)
                plain_refs[head.name] = (refs[head.name][0], e[:n_plain])
        history, loss_sum, loss_n, setup = [], 0.0, 0, time.perf_counter() - t0
        for step in range(1, s.steps + 1):
            idx = torch.randint(len(enrol), (s.batch,), generator=gen)
            current, views, protected = _view(tuned, enrol[idx], ovals[idx], gen, s)
            terms = cloak_losses(heads, views, refs, idx, loss_s)
            loss = sum(terms)
            if s.ssim_weight > 0:
                loss = loss + s.ssim_weight * (1.0 - ssim(protected, current, data_range=1.0))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum, loss_n = loss_sum + float(loss.detach()), loss_n + 1
            if step % s.check_every and step != s.steps:
                continue
            entry = {"step": step, "seconds": round(time.perf_counter() - t0, 2), "loss": round(loss_sum / loss_n, 5),
                     "enrol_match": _check(tuned, heads, enrol[:n_plain], ovals[:n_plain], plain_refs, loss_s)}
            loss_sum, loss_n = 0.0, 0
            history.append(entry)
            if progress is not None:
                progress(entry)
    finally:
        torch.set_num_threads(threads)
    for p in tuned.parameters():
        p.requires_grad_(False)
    return FinetuneResult(module=tuned.eval(), history=history, seconds=time.perf_counter() - t0, setup_seconds=setup)
