"""Calibration of :meth:`~livedeid.recognizers.base.Recognizer.crop_to_chip`: how a
livedeid model crop (MediaPipe landmarks, the tracker's alignment) relates to a
recogniser's own chip of the same face, measured on still photos."""
from __future__ import annotations

import cv2
import numpy as np

from livedeid.core.geometry import apply_affine, compose_affine, invert_affine, similarity_fit
from livedeid.recognizers.base import Recognizer
from livedeid.tracking.mesh import alignment
from livedeid.tracking.still import still_landmarks


def livedeid_crop(image_bgr: np.ndarray, landmarks: np.ndarray, crop_size: int = 128):
    """(crop, M): the livedeid aligned crop (BGR uint8) of a face with face-mesh
    ``landmarks``, and its 2x3 image->crop similarity, built by the tracker's own
    :func:`livedeid.tracking.mesh.alignment`."""
    m = alignment(landmarks, crop_size)[0]
    crop = cv2.warpAffine(image_bgr, m, (crop_size, crop_size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return crop, m


def crop_chip_pair(image_bgr: np.ndarray, landmarks: np.ndarray | None, faces: list,
                   crop_size: int = 128) -> tuple[np.ndarray, np.ndarray] | None:
    """(image->crop, image->chip) 2x3 transforms of one image's largest face, from its
    MediaPipe ``landmarks`` (livedeid crop, tracker alignment) and the recogniser's
    :meth:`~Recognizer.face_chips`; ``None`` when either found nothing or they picked
    different faces."""
    if landmarks is None or not faces:
        return None
    box, _, m_chip = faces[0]
    nose = landmarks[1]
    if not (box[0] <= nose[0] <= box[2] and box[1] <= nose[1] <= box[3]):
        return None
    return livedeid_crop(image_bgr, landmarks, crop_size)[1], m_chip


def crop_chip_pairs(recognizer: Recognizer, images_bgr, crop_size: int = 128) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`crop_chip_pair` over many images (MediaPipe and the recogniser run here)."""
    pairs = []
    for image in images_bgr:
        landmarks = still_landmarks(image)
        faces = recognizer.face_chips(image) if landmarks is not None else []
        pair = crop_chip_pair(image, landmarks, faces, crop_size)
        if pair is not None:
            pairs.append(pair)
    return pairs


def fit_crop_to_chip(pairs, chip_size: int, grid: int = 9) -> np.ndarray:
    """One least-squares similarity crop->chip for many faces: each face's exact crop->chip
    map (chip o crop^-1) is sampled on a grid over the chip's face region (15..85 %), and
    all samples are pooled into one fit. ``pairs`` from :func:`crop_chip_pairs`."""
    g = np.linspace(0.15 * chip_size, 0.85 * chip_size, grid)
    chip_pts = np.stack(np.meshgrid(g, g), axis=-1).reshape(-1, 2)
    src = [apply_affine(compose_affine(m_crop, invert_affine(m_chip)), chip_pts) for m_crop, m_chip in pairs]
    if not src:
        raise ValueError("no faces to fit")
    return similarity_fit(np.concatenate(src), np.concatenate([chip_pts] * len(src)))
