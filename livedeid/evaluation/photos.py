"""Labelled face photos: the folders evaluation and training read, and how a photo is read.

Layout
    Any folder whose sub-folders are identities and whose images inside are photos of
    that identity (``idNN/*.jpg``, ORL's ``sN/*.pgm``, ...), listed in natural name order
    (ORL's ``1, 2, ..., 10``). The project's face data (``../shared/data/faces``) holds two
    such folders, ``celebrities`` and ``orl``; its identities are ``<dataset>/<person>``.
    Greyscale images are read as three equal BGR channels.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from livedeid.core.errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".bmp", ".tif", ".tiff", ".webp"}
FACE_DATASETS = ("celebrities", "orl")  # the sub-folders of ../shared/data/faces


@dataclass
class Sample:
    identity: str
    path: Path
    key: str  # "identity/stem": matches anonymised copies in --method-dir


def _natural(path: Path):
    """Sort key: ORL's 1.pgm, 2.pgm, ..., 10.pgm in numeric order."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def identity_photos(root: Path, prefix: str = "") -> list[Sample]:
    """Every image in every identity sub-folder of ``root`` (hidden folders skipped),
    identities named ``prefix + folder name``."""
    samples = []
    for sub in sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted((f for f in sub.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES),
                       key=_natural)
        identity = prefix + sub.name
        samples += [Sample(identity, f, f"{identity}/{f.stem}") for f in files]
    return samples


def list_identity_folder(root: str | Path, per_identity: int | None = None) -> list[Sample]:
    """Every image (or the first ``per_identity``, in natural name order) in every
    identity sub-folder of ``root``; at least two identities."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"dataset folder not found: {root}")
    if not root.is_dir():
        raise UserError(f"dataset path is not a folder: {root}")
    samples, taken = [], {}
    for s in identity_photos(root):
        taken[s.identity] = taken.get(s.identity, 0) + 1
        if per_identity is None or taken[s.identity] <= per_identity:
            samples.append(s)
    if not samples:
        raise UserError(f"no identity folders with images in {root} (expected {root}/<identity>/*.jpg)")
    if len({s.identity for s in samples}) < 2:
        raise UserError(f"{root} has only one identity folder; identification needs at least two")
    return samples


def list_face_images(root: str | Path) -> list[Sample]:
    """Every labelled photo under the project's faces folder (``.../data/faces``):
    ``celebrities/idNN/*.jpg`` and ``orl/sN/*.pgm``, identities ``<dataset>/<person>``."""
    root = Path(root)
    return [s for dataset in FACE_DATASETS if (root / dataset).is_dir()
            for s in identity_photos(root / dataset, f"{dataset}/")]


def read_image(path: Path, min_side: int = 0) -> np.ndarray:
    """BGR uint8 image. Photos whose longer side is under ``min_side`` are enlarged 3x
    (bicubic): ORL's 92x112 faces are too small for dlib's HOG detector (80 px minimum)."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)  # greyscale -> three equal channels
    if img is None:
        raise UserError(f"cannot read image: {path}")
    if max(img.shape[:2]) < min_side:
        img = cv2.resize(img, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)
    return img
