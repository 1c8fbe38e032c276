"""Expectation over transformations: the random changes a cloaked face goes through
between enrolment and an attacker's recogniser, as differentiable torch operations on
model crops ``(N, 3, S, S)`` RGB in [0, 1].

A cloak optimised on the enrolment crops alone fits their exact pixels and is undone by
anything that moves them; averaging the loss over these changes makes it survive them.
In the order they happen:

* **light** (before the cloak is added: the camera sees the face, the cloak is added to
  whatever it saw): brightness, contrast and white balance (a gain per channel);
* **misregistration** of the cloak against the face (the tracker's landmarks jitter, so
  the pattern lands a little off): a small shift, scale and rotation of the pattern alone;
* **the attacker's alignment** (their detector and landmarks differ from ours): a small
  shift, scale and rotation of the whole cloaked crop;
* **the camera and the channel**: face size (down-scale then up-scale), blur, sensor
  noise and JPEG (kornia's differentiable codec) as a stand-in for a video codec's
  quantisation.

Every draw comes from the ``torch.Generator`` passed in, so a seeded run repeats exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import kornia
import torch
import torch.nn.functional as F


@dataclass
class EotSettings:
    """Strength of each transformation (0 switches it off)."""

    light: float = 0.08          # brightness +-, contrast +-(light), white balance +-(light / 2)
    misregister: float = 0.01    # shift as a share of the crop; scale +-(this), rotation +-(this * 100) degrees
    align: float = 0.02          # the attacker's alignment, same units
    min_scale: float = 0.5       # face size: down-scaled to between this and 1 of the crop, then back
    blur: float = 0.7            # Gaussian blur sigma up to this, in crop pixels
    noise: float = 0.01          # sensor noise standard deviation up to this
    jpeg: tuple[float, float] = (35.0, 90.0)  # JPEG quality range
    jpeg_share: float = 0.15     # share of steps that go through JPEG (kornia's codec costs as much as a recogniser)


def _uniform(gen: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def random_similarity(gen: torch.Generator, n: int, strength: float) -> torch.Tensor:
    """``(n, 2, 3)`` affine ``theta`` (``F.affine_grid``'s normalised coordinates) of a
    random similarity: shift up to ``strength`` of the crop, scale within
    ``1 +- strength`` and rotation within ``+-100 * strength`` degrees."""
    angle = _uniform(gen, n, -1.0, 1.0) * math.radians(100.0 * strength)
    scale = 1.0 + _uniform(gen, n, -strength, strength)
    shift = _uniform(gen, 2 * n, -2.0 * strength, 2.0 * strength).view(n, 2)  # normalised: crop = 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    return torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)


def warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample ``x`` (N, C, H, W) through ``theta`` (N, 2, 3); outside the crop the border
    repeats (as the pipeline's crop warp does)."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def light(x: torch.Tensor, gen: torch.Generator, strength: float) -> torch.Tensor:
    """Brightness, contrast and white balance, each drawn per crop."""
    if strength <= 0:
        return x
    n = x.shape[0]
    gain = (1.0 + _uniform(gen, 3 * n, -strength / 2, strength / 2).view(n, 3, 1, 1))
    contrast = (1.0 + _uniform(gen, n, -strength, strength)).view(n, 1, 1, 1)
    bright = _uniform(gen, n, -strength, strength).view(n, 1, 1, 1) * 0.5
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x * gain - mean) * contrast + mean + bright).clamp(0.0, 1.0)


def camera(x: torch.Tensor, gen: torch.Generator, s: EotSettings) -> torch.Tensor:
    """Face size, blur, sensor noise and (on a share of calls) JPEG, drawn per call."""
    size = x.shape[-1]
    if s.min_scale < 1.0:
        small = max(8, int(round(size * float(_uniform(gen, 1, s.min_scale, 1.0)))))
        if small < size:
            x = F.interpolate(x, size=(small, small), mode="bilinear", antialias=True, align_corners=False)
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    if s.blur > 0:
        sigma = float(_uniform(gen, 1, 0.1, s.blur))
        k = 2 * int(math.ceil(2.5 * sigma)) + 1
        x = kornia.filters.gaussian_blur2d(x, (k, k), (sigma, sigma))
    if s.noise > 0:
        std = float(_uniform(gen, 1, 0.0, s.noise))
        x = x + std * torch.randn(x.shape, generator=gen)
    x = x.clamp(0.0, 1.0)
    if s.jpeg_share > 0 and float(torch.rand(1, generator=gen)) < s.jpeg_share:
        quality = _uniform(gen, x.shape[0], *s.jpeg)
        x = kornia.enhance.jpeg_codec_differentiable(x, quality)
    return x


def cloaked_view(crops: torch.Tensor, pattern: torch.Tensor, gen: torch.Generator, s: EotSettings) -> torch.Tensor:
    """One random view of ``crops`` cloaked with ``pattern`` (3, S, S) as the attacker's
    recogniser would receive it (see the module docstring for the order)."""
    n = crops.shape[0]
    x = light(crops, gen, s.light)
    p = pattern if pattern.dim() == 4 else pattern.expand(n, *pattern.shape)
    if s.misregister > 0:
        p = warp(p, random_similarity(gen, n, s.misregister))
    y = (x + p).clamp(0.0, 1.0)
    if s.align > 0:
        y = warp(y, random_similarity(gen, n, s.align))
    return camera(y, gen, s)
