"""The "raw" rule of the leak metric (livedeid.evaluation.leaks): a face counts as
unprotected when some quarter of its core changed no more than codec noise."""
from __future__ import annotations

import numpy as np

from livedeid.evaluation.leaks import unprotected

BOX = (40, 30, 140, 150)


def face_like(seed: int = 0) -> np.ndarray:
    """A textured 200x180 image (smooth shading plus detail, as a face region has)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:180, 0:200]
    base = 120 + 50 * np.sin(x / 17.0) * np.cos(y / 23.0)
    detail = rng.normal(0, 12, (180, 200))
    img = np.clip(base[..., None] + detail[..., None] + np.array([0, 10, 25]), 0, 255)
    return img.astype(np.uint8)


def test_untouched_and_faint_changes_are_unprotected():
    im = face_like()
    assert unprotected(im, im.copy(), BOX)
    # A faint residual (a placeholder model): +-1 level everywhere is codec noise.
    faint = np.clip(im.astype(int) + np.random.default_rng(1).integers(-1, 2, im.shape), 0, 255).astype(np.uint8)
    assert unprotected(im, faint, BOX)


def test_a_cloak_sized_change_over_the_whole_core_protects():
    im = face_like()
    rng = np.random.default_rng(2)
    pattern = rng.choice([-12, 12], size=im.shape)  # a 12/255 sign pattern, as the cloak's
    cloaked = np.clip(im.astype(int) + pattern, 0, 255).astype(np.uint8)
    assert not unprotected(im, cloaked, BOX)
    masked = im.copy()
    masked[BOX[1]:BOX[3], BOX[0]:BOX[2]] = 128
    assert not unprotected(im, masked, BOX)


def test_one_untouched_quarter_leaves_the_face_unprotected():
    im = face_like()
    out = im.copy()
    x0, y0, x1, y1 = BOX
    out[y0:y1, x0:x1] = 128
    mx, my = (x0 + x1) // 2, (y0 + y1) // 2
    out[y0:my, x0:mx] = im[y0:my, x0:mx]  # protection slid off one eye
    assert unprotected(im, out, BOX)
