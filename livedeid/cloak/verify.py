"""Verifying a cloak with the real recognisers on whole images, the way it reaches pixels
at run time (no torch).

Each probe (a held-out photo or frame of the person, never seen by the optimisation) is
landmarked (:func:`livedeid.tracking.still.still_landmarks`), aligned like a tracked face
(:func:`livedeid.tracking.mesh.alignment`, the pipeline's crop warp), cloaked
(:func:`livedeid.protect.cloak.cloak_face`) and composited under the feathered face oval
(:func:`livedeid.protect.composite.apply_protection`). Each real recogniser then runs its
own detector, alignment and network on the cloaked image; the face taken is its
detection overlapping the mesh's face region (as ``livedeid eval`` does).

Per recogniser
    * ``detection``: share of probes (whose clean face the recogniser finds) in which it
      still finds the cloaked face. A missed face is reported here and is never counted as
      privacy: the match rates below are over the faces it found.
    * ``gallery_match``: share of found cloaked probes that match the *centre of the clean
      gallery embeddings* at the recogniser's threshold (the attacker holds other clean
      photos of the person; the centre is the mean embedding, or for cosine recognisers
      the mean of the unit embeddings). ``gallery_any_match``: share matching *any*
      single gallery photo (a stricter attacker). ``clean_gallery_match``: the same
      centre rule for the clean probes (what the cloak has to undo).
    * ``top1`` (only when the other identities' gallery centres are given): share of found
      cloaked probes whose best-scoring centre among every identity's is the person's own
      (closed-set identification; chance is one over the identities); ``clean_top1`` the same
      for the clean probes.
    * ``same_photo_match``: share of found cloaked probes matching their own clean
      version.
Quality: face PSNR (pooled MSE) and SSIM on the face-oval polygon, as ``livedeid eval``.
``protects``: every recogniser found at least one cloaked face and its gallery match is
at most ``target`` (the issue's 5 %), and every probe could be cloaked at all.
"""
from __future__ import annotations

import numpy as np

from livedeid.core.errors import UserError
from livedeid.core.records import FaceTrack
from livedeid.evaluation.baselines import face_region
from livedeid.evaluation.harness import embed_region_face
from livedeid.evaluation.metrics import mse_to_psnr, region_psnr_mse, region_ssim, score_matrix
from livedeid.io.profile import check_pattern
from livedeid.protect.cloak import cloak_face
from livedeid.protect.composite import apply_protection
from livedeid.protect.windows import extract_crop
from livedeid.recognizers.base import get_recognizer
from livedeid.tracking.mesh import alignment
from livedeid.tracking.still import still_landmarks

TARGET = 0.05  # gallery match at or below this for every recogniser = protects (issue 13)


def cloak_image(image_bgr: np.ndarray, pattern: np.ndarray, landmarks: np.ndarray | None = None,
                grow: float = 0.0, layout: np.ndarray | None = None):
    """``(cloaked image, region)`` of the largest face of a BGR image, through the run-time
    path (alignment, crop warp, cloak re-posed from ``layout`` when given, composite; the
    region is the face oval grown by ``grow``, where the cloak may reach), or
    ``(None, None)`` when the face mesh finds no face."""
    lm = still_landmarks(image_bgr) if landmarks is None else landmarks
    if lm is None:
        return None, None
    crop_size = pattern.shape[-1]
    to_crop, from_crop, _ = alignment(lm, crop_size)
    face = FaceTrack(track_id=0, landmarks=lm.astype(np.float32), to_crop=to_crop, from_crop=from_crop,
                     confidence=1.0, crop=extract_crop(image_bgr, to_crop, crop_size))
    cloak_face(face, pattern, grow, layout)
    out = image_bgr.copy()
    apply_protection(out, face)
    return out, face_region(lm, image_bgr.shape[:2], grow)


def _centre(rec, embeddings: list[np.ndarray]) -> np.ndarray:
    e = np.stack(embeddings).astype(np.float64)
    if rec.metric == "cosine":
        e /= np.linalg.norm(e, axis=1, keepdims=True)
    return e.mean(axis=0)


def _rate(flags: list[bool]) -> float:
    return float(np.mean(flags)) if flags else float("nan")


def _judge(rec, gallery_emb: list, clean: list, cloaked: list, others: list | None = None) -> dict:
    """One recogniser's figures (module docstring) from per-probe embeddings (None =
    not found) and the clean gallery's embeddings; with ``others`` (the centres of every
    other identity's clean gallery) also closed-set top-1: the probe's best-scoring centre
    is the person's own."""
    if not gallery_emb:
        raise UserError(f"{rec.name} finds no face in any gallery image; cannot verify against it")
    centre = _centre(rec, gallery_emb)
    thr = rec.score_threshold
    found = [(c, p) for c, p in zip(clean, cloaked) if c is not None]
    hit = [(c, p) for c, p in found if p is not None]
    g = np.stack(gallery_emb)
    return {
        "probes": len(found),
        "detection": _rate([p is not None for _, p in found]),
        "gallery_match": _rate([rec.score(p, centre) >= thr for _, p in hit]),
        "gallery_any_match": _rate([bool((score_matrix(rec, p[None], g) >= thr).any()) for _, p in hit]),
        "clean_gallery_match": _rate([rec.score(c, centre) >= thr for c, _ in found]),
        "same_photo_match": _rate([rec.is_match(p, c) for c, p in hit]),
        **({} if not others else {
            "top1": _rate([_is_top1(rec, p, centre, others) for _, p in hit]),
            "clean_top1": _rate([_is_top1(rec, c, centre, others) for c, _ in found]),
            "identities": len(others) + 1}),
    }


def _is_top1(rec, probe: np.ndarray, own: np.ndarray, others: list) -> bool:
    return rec.score(probe, own) > max(rec.score(probe, o) for o in others)


def identity_centre(rec, images: list[np.ndarray]) -> np.ndarray | None:
    """The centre of one identity's clean gallery for ``rec`` (None: no face found)."""
    emb = _gallery_embeddings(rec, images)
    return _centre(rec, emb) if emb else None


def _gallery_embeddings(rec, gallery: list[np.ndarray]) -> list[np.ndarray]:
    out = []
    for img in gallery:
        lm = still_landmarks(img)
        region = face_region(lm, img.shape[:2]) if lm is not None else None
        e = embed_region_face(rec, img, region) if region is not None else rec.embed_largest(img)
        if e is not None:
            out.append(e)
    return out


def verify_cloak(pattern: np.ndarray, probes: list[np.ndarray], gallery: list[np.ndarray],
                 recognizers=None, grow: float = 0.0, others: dict | None = None,
                 layout: np.ndarray | None = None) -> dict:
    """Verify ``pattern`` (3, S, S) on ``probes`` (BGR images of the person the
    optimisation never saw) against ``gallery`` (other clean BGR images of the person)
    with the real ``recognizers`` (names or :class:`Recognizer` objects; default dlib and
    SFace), the cloak (re-posed from ``layout`` when given) laid under the face oval grown
    by ``grow``; ``others`` (recogniser
    name -> centres of the other identities' galleries) adds closed-set top-1. Returns
    ``{"recognizers": {name: {...}}, "psnr_db", "ssim", "cloaked", "probes", "protects",
    "target"}`` (figures defined in the module docstring). To verify several patterns on
    the same images, build one :class:`CloakVerifier`."""
    return CloakVerifier(probes, gallery, recognizers, grow=grow, others=others, layout=layout)(pattern)


class CloakVerifier:
    """:func:`verify_cloak` for many patterns on the same probes and gallery: the probes'
    landmarks and clean embeddings and the gallery's embeddings are computed once (on the
    speech video's 8 held-out and 16 gallery frames a verification took 12 s, most of it
    in work that does not depend on the pattern), so an enrolment can ask the real
    recognisers at every promising check."""

    def __init__(self, probes: list[np.ndarray], gallery: list[np.ndarray], recognizers=None, grow: float = 0.0,
                 others: dict | None = None, layout: np.ndarray | None = None):
        if not probes or not gallery:
            raise UserError("verifying a cloak needs at least one probe and one gallery image")
        self.recs = _recognizers(recognizers)
        self.layout = layout
        self.grow, self.others, self.probes = float(grow), others, list(probes)
        # A face the mesh misses would be hidden (fail-closed) at run time, not cloaked; the
        # verification cannot vouch for it, so it counts against "protects" (found < probes).
        self.found = []  # (clean image, landmarks, region)
        for img in self.probes:
            lm = still_landmarks(img)
            region = face_region(lm, img.shape[:2], self.grow) if lm is not None else None
            if region is not None:
                self.found.append((img, lm, region))
        self.gallery_emb = {r.name: _gallery_embeddings(r, gallery) for r in self.recs}
        self.clean = {r.name: [embed_region_face(r, img, region) for img, _, region in self.found] for r in self.recs}

    def __call__(self, pattern: np.ndarray) -> dict:
        pattern = np.asarray(pattern, np.float32)
        check_pattern(pattern, pattern.shape[-1], float(np.abs(pattern).max(initial=0.0)))
        pairs = [(img, cloak_image(img, pattern, landmarks=lm, grow=self.grow, layout=self.layout)[0], region)
                 for img, lm, region in self.found]
        return _figures(self.recs, pairs, self.gallery_emb, self.clean, len(self.probes), self.others)


def _recognizers(recognizers) -> list:
    return [get_recognizer(r) if isinstance(r, str) else r for r in (recognizers or ("dlib", "sface"))]


def judge_outputs(pairs: list, gallery: list[np.ndarray], recognizers=None, probes: int | None = None,
                  others: dict | None = None) -> dict:
    """The figures of :func:`verify_cloak` for protected images that already exist:
    ``pairs`` of (clean BGR image, protected BGR image, the face's
    :class:`~livedeid.evaluation.baselines.FaceRegion` in the clean image), e.g. the
    pipeline's output frames beside its input; ``probes`` (default ``len(pairs)``) is how
    many there should have been."""
    if not gallery:
        raise UserError("judging protected images needs at least one clean gallery image")
    recs = _recognizers(recognizers)
    clean = {r.name: [embed_region_face(r, img, region) for img, _, region in pairs] for r in recs}
    gallery_emb = {r.name: _gallery_embeddings(r, gallery) for r in recs}
    return _figures(recs, pairs, gallery_emb, clean, len(pairs) if probes is None else probes, others)


def _figures(recs, pairs: list, gallery_emb: dict, clean: dict, probes: int, others: dict | None) -> dict:
    """The figures of :func:`verify_cloak` from (clean, protected, region) ``pairs`` and
    the clean sides' embeddings per recogniser (``clean[name][i]`` belongs to ``pairs[i]``)."""
    cloaked = {r.name: [] for r in recs}
    mses, ssims = [], []
    for img, out, region in pairs:
        x0, y0, x1, y1 = region.box
        a, b = img[y0:y1, x0:x1], out[y0:y1, x0:x1]
        mse = region_psnr_mse(a, b, region.mask)
        mses.append(mse)
        ssims.append(region_ssim(a, b, region.mask) if mse > 0 else 1.0)
        for r in recs:
            cloaked[r.name].append(embed_region_face(r, out, region))
    per_rec = {r.name: _judge(r, gallery_emb[r.name], clean[r.name], cloaked[r.name], (others or {}).get(r.name))
               for r in recs}
    protects = bool(pairs) and len(pairs) == probes and all(
        v["detection"] > 0 and v["gallery_match"] <= TARGET for v in per_rec.values())
    return {
        "recognizers": per_rec,
        "psnr_db": mse_to_psnr(float(np.mean(mses))) if mses else float("nan"),
        "ssim": float(np.mean(ssims)) if ssims else float("nan"),
        "cloaked": len(pairs),
        "probes": probes,
        "protects": bool(protects),
        "target": TARGET,
    }
