"""Re-posing a face-registered pattern: where each pixel of an aligned crop finds its
place in a fixed face layout, so that a pattern drawn in that layout lands on the same
points of the face (eye corner, nostril, jaw line) whatever the pose.

The aligned crop only takes out position, turn in the image plane and size (a similarity
fit on five points); a head turned 20 degrees still moves the nose and the far cheek by
several crop pixels against it. Here the face mesh's anchor points of the crop are mapped
onto the layout's by a thin-plate spline (smooth, exact at the anchors), evaluated on a
coarse grid and interpolated: about a millisecond a face.

numpy and OpenCV only; imported by the frame path (``protect.cloak``) and the cloak's
optimiser (which samples the same maps with torch's ``grid_sample``).
"""
from __future__ import annotations

import cv2
import numpy as np

from livedeid.core.face_regions import FACE_OVAL, LEFT_BROW, LEFT_EYE, LIPS, NOSE_BASE, RIGHT_BROW, RIGHT_EYE

# Outline, eyes, brows, lips, nose, and the midline and cheekbones between them.
_MIDFACE = (1, 4, 5, 6, 168, 197, 195, 9, 151, 50, 280, 205, 425, 36, 266)
ANCHORS = tuple(dict.fromkeys(FACE_OVAL + RIGHT_EYE + LEFT_EYE + RIGHT_BROW + LEFT_BROW + LIPS + NOSE_BASE + _MIDFACE))

_ANCHOR_INDEX = np.array(ANCHORS)

_CELLS = 16         # the spline is evaluated on a lattice of about CELLS x CELLS cells, then interpolated
_SMOOTHING = 1e-4   # thin-plate regularisation (crop units): the mesh's jitter is not followed exactly


def _product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` without BLAS: these products are small, and a threaded BLAS beside the
    frame path's busy threads took 24 ms a face instead of 1.3 (its workers wait for cores)."""
    return np.einsum("ij,jk->ik", a, b)


def _kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The thin-plate radial function r^2 log r between every row of ``a`` and of ``b``."""
    r2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * np.einsum("id,jd->ij", a, b)
    np.maximum(r2, 1e-12, out=r2)
    return 0.5 * r2 * np.log(r2.astype(np.float32))


class Reposer:
    """Maps from crops onto one layout (``layout``: its ``(len(ANCHORS), 2)`` anchor points
    in pixels of a ``size`` crop). The spline is fitted from the layout to the crop, so its
    system (which depends on the layout alone) is inverted once; each crop's map is then
    that spline's displacement inverted by a fixed-point step (exact to a fraction of a
    pixel for the few-pixel displacements of a turned head)."""

    def __init__(self, layout: np.ndarray, size: int):
        self.size = int(size)
        self.layout = np.asarray(layout, np.float64) / self.size
        n = len(self.layout)
        system = np.zeros((n + 3, n + 3))
        system[:n, :n] = _kernel(self.layout, self.layout) + _SMOOTHING * np.eye(n)
        system[:n, n] = system[n, :n] = 1.0
        system[:n, n + 1:] = self.layout
        system[n + 1:, :n] = self.layout.T
        self._solve = np.linalg.inv(system)[:, :n]  # only the anchors' rows of the right-hand side are non-zero
        # A lattice every `cell` pixels reaching a cell past each edge, at the places cv2.resize's
        # bilinear scaling by `cell` assumes: crop pixel i is then the scaled lattice's pixel
        # i + cell, never at its clamped border.
        self._cell = max(2, self.size // _CELLS)
        n = int(np.ceil((self.size - 0.5) / self._cell + 1.5))
        px = self._cell * (np.arange(n) - 1) + (self._cell - 1) / 2.0
        ticks = (px + 0.5) / self.size
        gx, gy = np.meshgrid(ticks, ticks)
        self._lattice = n
        self._grid = np.stack([gx.ravel(), gy.ravel()], axis=1)
        self._grid_kernel = self._basis(self._grid)

    def _basis(self, pts: np.ndarray) -> np.ndarray:
        return np.concatenate([_kernel(pts, self.layout), np.ones((len(pts), 1)), pts], axis=1)

    def map(self, anchors: np.ndarray) -> np.ndarray:
        """float32 ``(size, size, 2)``: for each pixel ``(x, y)`` of a crop whose face has
        the anchor points ``anchors`` (crop pixels), the layout position that lands there
        (what ``cv2.remap`` of a layout-space pattern needs)."""
        coef = _product(self._solve, np.asarray(anchors, np.float64) / self.size - self.layout)  # displacement spline
        # x = u + d(u) for the layout point u landing on crop point x: u = x - d(u), iterated once from u = x
        guess = self._grid - _product(self._grid_kernel, coef)
        u = self._grid - _product(self._basis(guess), coef)
        n, c = self._lattice, self._cell
        coarse = (u.reshape(n, n, 2) * self.size - 0.5).astype(np.float32)  # pixel i's centre: (i + 0.5) / size
        fine = cv2.resize(coarse, (n * c, n * c), interpolation=cv2.INTER_LINEAR)
        return np.ascontiguousarray(fine[c:c + self.size, c:c + self.size])

    def __call__(self, pattern: np.ndarray, anchors: np.ndarray) -> np.ndarray:
        """``pattern`` (C, S, S), drawn in the layout, moved onto a crop whose face has
        ``anchors`` (zero where the layout has nothing to give)."""
        m = self.map(anchors)
        hwc = np.ascontiguousarray(np.asarray(pattern, np.float32).transpose(1, 2, 0))
        out = cv2.remap(hwc, m[..., 0], m[..., 1], interpolation=cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return out.reshape(self.size, self.size, -1).transpose(2, 0, 1)


def anchor_points(landmarks: np.ndarray) -> np.ndarray:
    """The ``ANCHORS`` rows of a (478, 2) face mesh."""
    return np.asarray(landmarks, np.float32)[_ANCHOR_INDEX]
