"""Face geometry shared by tracking, recognisers and training: the five alignment points,
the model's crop template, the one similarity fit and 2x3 affine helpers."""
from __future__ import annotations

import numpy as np

# ArcFace's 5-point template for 112x112 crops (left eye, right eye, nose tip, left and
# right mouth corner). We shrink and lift it so that the whole MediaPipe face oval, forehead
# to chin, fits inside the crop with a margin (measured on the celebrity photos: the oval
# spans about x 22..106, y 14..114 of a 128 crop).
ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
_TEMPLATE_SCALE = 0.9
_TEMPLATE_LIFT = 14.0 / 128.0

# MediaPipe face-mesh indices for the template's five points. Eye centres are the mean of
# the two eye corners rather than the iris, which moves with gaze and would shake the crop.
_EYE_CORNERS = ((33, 133), (362, 263))
_NOSE_TIP = 1
_MOUTH_CORNERS = (61, 291)


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """The (5, 2) alignment points of a (478, 2) face-mesh landmark array, in template order
    (image-left eye, image-right eye, nose tip, image-left and image-right mouth corner)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    return np.stack(
        [
            lm[list(_EYE_CORNERS[0])].mean(axis=0),
            lm[list(_EYE_CORNERS[1])].mean(axis=0),
            lm[_NOSE_TIP],
            lm[_MOUTH_CORNERS[0]],
            lm[_MOUTH_CORNERS[1]],
        ]
    )


def crop_template(crop_size: int) -> np.ndarray:
    """Five template points (5, 2) in pixel coordinates of a ``crop_size`` square crop."""
    centre = np.array([crop_size / 2.0, crop_size / 2.0 - _TEMPLATE_LIFT * crop_size])
    return (ARCFACE_112 - 56.0) * _TEMPLATE_SCALE * (crop_size / 112.0) + centre


def similarity_fit(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, shift) mapping ``src`` points onto
    ``dst`` points, as a 2x3 matrix for ``cv2.warpAffine``.

    Umeyama's closed form (the fit ArcFace-style aligners use, so recogniser chips match
    their reference alignment). ``ValueError`` when ``src`` has no spread (all points equal).
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"similarity fit needs two matching (N>=2, 2) point sets, got {src.shape}, {dst.shape}")
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - mu_s, dst - mu_d
    var_s = (s ** 2).sum() / len(src)
    if var_s < 1e-12:
        raise ValueError(f"similarity fit failed for {len(src)} points: they coincide")
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # a reflection is not a similarity
        sign[1, 1] = -1.0
    rot = u @ sign @ vt
    scale = np.trace(np.diag(sig) @ sign) / var_s
    shift = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, shift[:, None]])


def invert_affine(m: np.ndarray) -> np.ndarray:
    """The inverse of a 2x3 affine matrix, as 2x3."""
    return np.linalg.inv(np.vstack([m, [0.0, 0.0, 1.0]]))[:2]


def compose_affine(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """outer(inner(p)) as one 2x3 matrix."""
    return (np.vstack([outer, [0.0, 0.0, 1.0]]) @ np.vstack([inner, [0.0, 0.0, 1.0]]))[:2]


def apply_affine(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Map (N, 2) points through a 2x3 affine matrix."""
    return np.asarray(pts) @ m[:, :2].T + m[:, 2]


# -- boxes (x0, y0, x1, y1) -------------------------------------------------------------
def overlap_area(a, b) -> float:
    """Area of the intersection of two boxes (0 when they do not meet)."""
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def inside_any(box, regions, share: float = 0.9) -> bool:
    """Whether at least ``share`` of ``box``'s area lies inside one of ``regions``."""
    area = max(1e-6, (box[2] - box[0]) * (box[3] - box[1]))
    return any(overlap_area(box, r) >= share * area for r in regions)


def box_centre(box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
