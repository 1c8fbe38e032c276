"""Face-mesh landmarks of a still photo: the one rule every offline user follows.

Calibration of the recognisers' chips, the synthetic pulse source, the evaluation's face
regions and the training crops all need MediaPipe's landmarks of one face in a photo.
They get them here, the same way:

* the mesh runs as the live tracker runs it (refined landmarks, up to
  :data:`MAX_FACES` faces, detection confidence 0.5) but in still-image mode;
* photos longer than :data:`MAX_SIDE` px are landmarked on a copy shrunk with area
  averaging and the landmarks scaled back: the mesh sees a 256 px face crop anyway, and
  resampling a 4000 px photo straight to it aliases (on the celebrity photos, landmarks
  at 1280 px are within 0.2 % of the face width of full-resolution ones, at a fraction of
  the time);
* when no face is found, the photo is searched again enlarged 2x and then 4x (cubic), as
  long as the enlarged copy stays within :data:`MAX_UPSCALED_SIDE` px: the mesh's
  detector misses faces of a few dozen pixels;
* of several faces, the largest (area of its landmarks' bounding box) is returned.
"""
from __future__ import annotations

import threading

import cv2
import numpy as np

MAX_SIDE = 1280
MAX_UPSCALED_SIDE = 1024
MAX_FACES = 4

_LOCK = threading.Lock()
_MESH = None


def _faces(image_bgr: np.ndarray, scale: float) -> list[np.ndarray]:
    """Landmarks (478, 2) of every face the mesh finds in ``image_bgr`` resized by
    ``scale``, in pixels of the image as given."""
    global _MESH
    h, w = image_bgr.shape[:2]
    if scale == 1.0:
        work = image_bgr
    else:
        interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_CUBIC
        work = cv2.resize(image_bgr, (max(1, round(w * scale)), max(1, round(h * scale))),
                          interpolation=interpolation)
    rgb = cv2.cvtColor(work, cv2.COLOR_BGR2RGB)
    with _LOCK:  # one mesh graph for the process; MediaPipe graphs are not re-entrant
        if _MESH is None:
            import mediapipe as mp

            _MESH = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=True, max_num_faces=MAX_FACES, refine_landmarks=True,
                min_detection_confidence=0.5,
            )
        result = _MESH.process(rgb)
    # Normalised coordinates: multiplying by the original size undoes the resize.
    return [np.array([[p.x * w, p.y * h] for p in face.landmark], dtype=np.float64)
            for face in result.multi_face_landmarks or []]


def still_landmarks(image_bgr: np.ndarray) -> np.ndarray | None:
    """Face-mesh landmarks (478, 2), in pixels, of the largest face of a BGR (or
    greyscale) still photo, or ``None`` when there is none; see the module docstring for
    the rule."""
    if image_bgr.ndim == 2:
        image_bgr = cv2.cvtColor(image_bgr, cv2.COLOR_GRAY2BGR)
    long_side = max(image_bgr.shape[:2])
    faces = _faces(image_bgr, min(1.0, MAX_SIDE / long_side))
    for up in (2, 4):
        if faces or long_side * up > MAX_UPSCALED_SIDE:
            break
        faces = _faces(image_bgr, float(up))
    if not faces:
        return None
    return max(faces, key=lambda lm: float(np.prod(np.ptp(lm, axis=0))))
