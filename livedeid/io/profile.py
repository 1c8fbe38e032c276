"""A person's cloak profile on disk: one ``.npz`` file per enrolled person.

What is stored: the cloak pattern (float32 ``(3, S, S)`` in aligned-crop coordinates, or
drawn in a face layout: the mean face-mesh shape of the enrolment crops, stored beside it,
onto which each frame's face is re-posed), its L-infinity budget, the crop size, which
recognisers (package versions, model-file hashes) it was optimised against, the
verification figures measured on held-out images, the creation date (UTC) and the
optimiser's settings. No face image and no clean embedding is
written unless enrolment was asked to keep them (``keep_enrolment``).

Format: ``numpy.savez`` arrays only, read back with ``allow_pickle=False`` so a pickled
payload (a classic code-execution vector in ``.npy``/``.pt`` files) is refused rather than
run. Metadata is one JSON string inside. A sha256 over every array (name, dtype, shape,
bytes) is stored beside them and checked on load: it catches corruption and casual
edits; it is a checksum, not a signature (whoever can write the file can recompute it),
which is why the pattern is also checked against its budget and :data:`MAX_BUDGET`.

Lives in ``io`` (not in ``livedeid.cloak``) because the patient's pipeline loads it: the
cloak's optimisation side imports evaluation, which imports the pipeline, so a pipeline
import of ``livedeid.cloak`` would close an import cycle. numpy only: no torch here.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from livedeid.core.errors import UserError
from livedeid.io.sinks import temp_file_beside

FORMAT = "livedeid-profile"
FORMAT_VERSION = 1
# The strongest change per pixel a profile may carry: 16/255 filled everywhere is visible as
# grain on a face; a file asking for more is not one `livedeid enrol` wrote.
MAX_BUDGET = 16 / 255
# The per-pixel bound enrolment uses unless told otherwise. The cloak's energy, which sets the
# face PSNR, is limited separately and more tightly (the optimiser's `rms`, 8/255), so the
# bound only caps the few pixels where the energy is spent (docs/decisions.md).
DEFAULT_BUDGET = 16 / 255
# The cloak's energy (root mean square over its region) enrolment uses unless told otherwise:
# about 32.5 dB face PSNR, the floor with a margin. `enrol --strength 11` (about 30.5 dB)
# protected more on the celebrity probe (SFace gallery match 21 -> 8 %; docs/decisions.md).
DEFAULT_RMS = 8 / 255
STRONG_RMS = 11 / 255  # the stronger choice offered (`enrol --strength 11`, the panel's "strong")
# How far past the face oval a cloak may reach (the oval scaled by 1 + this): the hairline, ears
# and jaw line, not the background.
MAX_REGION_GROW = 0.3
LAYOUT_POINTS = 478  # the refined face mesh's landmarks
# Names become file names in the profile folder: no separators, no leading dot.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SUFFIX = ".npz"
_ENROLMENT_PREFIX = "enrolment_"


@dataclass
class Profile:
    """One enrolled person's cloak and what is known about it."""

    name: str
    pattern: np.ndarray                      # float32 (3, crop_size, crop_size), |pattern| <= budget
    budget: float                            # L-infinity bound, in [0, 1] units
    crop_size: int = 128
    recognizers: dict = field(default_factory=dict)   # name -> {"packages": {...}, "files": {file: sha256}}
    verification: dict = field(default_factory=dict)  # verify_cloak's figures on held-out images
    created: str = ""                        # UTC ISO 8601
    settings: dict = field(default_factory=dict)      # the optimiser's settings
    region_grow: float = 0.0                 # the cloak's region: the face oval scaled by 1 + this
    layout: np.ndarray | None = None         # float32 (478, 2): the face layout (crop pixels) the pattern is
                                             # drawn in, re-posed onto each face's mesh; None: the aligned crop
    enrolment: dict[str, np.ndarray] = field(default_factory=dict)  # only with keep_enrolment
    sha256: str = ""                         # set by save/load

    @property
    def energy(self) -> float:
        """The energy limit the cloak was optimised under (root mean square over its region,
        `enrol --strength`): what refining it must keep. Profiles that record none, or
        nothing usable, used the default."""
        rms = self.settings.get("rms")
        usable = isinstance(rms, (int, float)) and not isinstance(rms, bool) and np.isfinite(rms) and rms > 0
        return float(min(rms if usable else DEFAULT_RMS, self.budget))

    @property
    def protects(self) -> bool:
        """Whether the stored held-out verification met its target (missing = no)."""
        return self.verification.get("protects") is True

    def warning(self) -> str | None:
        """The line a user must see when this cloak is not verified to protect, with the
        held-out numbers; None when it is."""
        if self.protects:
            return None
        recs = self.verification.get("recognizers") or {}
        shares = ", ".join(f"{name} {fig.get('gallery_match', float('nan')):.0%}"
                           for name, fig in sorted(recs.items()) if isinstance(fig, dict))
        target = self.verification.get("target", 0.05)
        measured = f"held-out gallery match {shares}" if shares else "no verification figures"
        return (f"profile '{self.name}' is NOT PROTECTING: {measured} (target <= {target:.0%}); "
                "re-enrol (more steps, more varied images or a larger budget)")



def check_pattern(pattern: np.ndarray, crop_size: int, budget: float) -> np.ndarray:
    """``pattern`` as float32 ``(3, crop_size, crop_size)``; ValueError when its shape is
    wrong, it is not finite or it exceeds ``budget`` (a tampered or foreign cloak)."""
    p = np.asarray(pattern, dtype=np.float32)
    if p.shape != (3, crop_size, crop_size):
        raise ValueError(f"cloak pattern has shape {p.shape}, expected (3, {crop_size}, {crop_size})")
    if not np.isfinite(p).all():
        raise ValueError("cloak pattern has non-finite values")
    if float(np.abs(p).max(initial=0.0)) > budget + 1e-6:
        raise ValueError(f"cloak pattern exceeds its budget {budget * 255:.1f}/255")
    return p

def check_layout(layout, crop_size: int) -> np.ndarray | None:
    """``layout`` as float32 ``(478, 2)`` (or None); ValueError when its shape is wrong or
    its points are not finite or lie far outside the crop."""
    if layout is None:
        return None
    a = np.asarray(layout)
    if a.shape != (LAYOUT_POINTS, 2) or a.dtype != np.float32:
        raise ValueError(f"cloak layout is {a.dtype} {a.shape}, expected float32 ({LAYOUT_POINTS}, 2)")
    if not np.isfinite(a).all() or a.min() < -crop_size or a.max() > 2 * crop_size:
        raise ValueError("cloak layout has points that are not finite or lie far outside the crop")
    return a


def profile_dir() -> Path:
    """The user's profile folder (``LIVEDEID_PROFILE_DIR`` overrides), not created here."""
    override = os.environ.get("LIVEDEID_PROFILE_DIR")
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir("livedeid")) / "profiles"


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name or ""):
        raise UserError(f"profile name '{name}' must be 1-64 letters, digits, '_', '-' or '.', "
                        "starting with a letter or digit")
    return name


def default_path(name: str) -> Path:
    return profile_dir() / f"{check_name(name)}{SUFFIX}"


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def digest(arrays: dict[str, np.ndarray]) -> str:
    """The checksum stored in a profile: sha256 over every array but itself (name, dtype,
    shape, bytes), in name order."""
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _plain(value):
    """numpy scalars and arrays in the figures, as JSON numbers and lists."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"cannot store {type(value).__name__} in a profile")


def _arrays(profile: Profile) -> dict[str, np.ndarray]:
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "name": profile.name, "budget": float(profile.budget),
            "crop_size": int(profile.crop_size), "recognizers": profile.recognizers,
            "verification": profile.verification, "created": profile.created or utc_now(),
            "settings": profile.settings, "region_grow": float(profile.region_grow)}
    arrays = {"pattern": np.ascontiguousarray(profile.pattern, dtype=np.float32),
              "meta": np.array([json.dumps(meta, sort_keys=True, default=_plain)])}
    if profile.layout is not None:
        arrays["layout"] = np.ascontiguousarray(profile.layout, dtype=np.float32)
    for key, value in profile.enrolment.items():
        arrays[_ENROLMENT_PREFIX + key] = np.ascontiguousarray(value)
    return arrays


def save_profile(profile: Profile, path: Path) -> Path:
    """Write ``profile`` to ``path`` atomically (temporary file, then rename) and set its
    ``sha256``. The file is private to the user (0600): it describes a person's face
    protection and, with ``keep_enrolment``, holds their face crops."""
    check_name(profile.name)
    check_pattern(profile.pattern, profile.crop_size, profile.budget)
    try:
        check_layout(None if profile.layout is None else np.asarray(profile.layout, np.float32), profile.crop_size)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if not 0 < profile.budget <= MAX_BUDGET + 1e-9:
        raise UserError(f"cloak budget must be in (0, {MAX_BUDGET * 255:.0f}/255]")
    if not 0.0 <= profile.region_grow <= MAX_REGION_GROW:
        raise UserError(f"cloak region must grow the face oval by 0..{MAX_REGION_GROW}")
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {path.parent}: {exc.strerror or exc}") from None
    arrays = _arrays(profile)
    arrays["sha256"] = np.array([digest(arrays)])
    tmp = temp_file_beside(path)
    try:
        os.chmod(tmp, 0o600)
        with open(tmp, "wb") as fh:  # a file object: savez would append .npz to a bare name
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"cannot write profile {path}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    profile.sha256 = str(arrays["sha256"][0])
    profile.created = json.loads(str(arrays["meta"][0]))["created"]
    return path


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError("a bare array, not a profile archive")
        with npz:
            return {key: npz[key] for key in npz.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"profile {path} is not a livedeid profile ({why})") from None


def load_profile(path: Path) -> Profile:
    """The profile in ``path``; a one-line UserError when it is missing, not a profile,
    pickled, tampered with (checksum), or its pattern has the wrong shape or exceeds its
    budget."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"profile {path} not found")
    arrays = _read_arrays(path)
    try:
        stored = str(arrays.pop("sha256")[0])
        meta = json.loads(str(arrays["meta"][0]))
        pattern = arrays["pattern"]
    except (KeyError, IndexError, ValueError):
        raise UserError(f"profile {path} is not a livedeid profile (missing or unreadable parts)") from None
    if digest(arrays) != stored:
        raise UserError(f"profile {path} fails its checksum (damaged or edited); enrol again")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"profile {path} is not a livedeid profile")
    if meta.get("version") != FORMAT_VERSION:
        raise UserError(f"profile {path} has format version {meta.get('version')}, this livedeid reads "
                        f"{FORMAT_VERSION}; enrol again")
    try:
        budget, crop_size = float(meta["budget"]), int(meta["crop_size"])
        region_grow = float(meta.get("region_grow", 0.0))
        if not 0.0 <= region_grow <= MAX_REGION_GROW:
            raise ValueError(f"its region grows the face oval by {region_grow:.2f}, beyond {MAX_REGION_GROW}")
        if not 0 < budget <= MAX_BUDGET + 1e-9:
            raise ValueError(f"its budget {budget * 255:.1f}/255 is outside (0, {MAX_BUDGET * 255:.0f}/255]")
        if pattern.dtype != np.float32:
            raise ValueError(f"cloak pattern is {pattern.dtype}, expected float32")
        pattern = check_pattern(pattern, crop_size, budget)
        layout = check_layout(arrays.get("layout"), crop_size)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"profile {path} is refused: {exc}") from None
    enrolment = {k[len(_ENROLMENT_PREFIX):]: v for k, v in arrays.items() if k.startswith(_ENROLMENT_PREFIX)}
    return Profile(name=str(meta.get("name", path.stem)), pattern=pattern, budget=budget, crop_size=crop_size,
                   recognizers=meta.get("recognizers") or {}, verification=meta.get("verification") or {},
                   created=str(meta.get("created", "")), settings=meta.get("settings") or {},
                   enrolment=enrolment, sha256=stored, region_grow=region_grow, layout=layout)


def resolve_profile(name_or_file: str | os.PathLike) -> Profile:
    """``name_or_file``: an existing file, else the name of a profile in :func:`profile_dir`."""
    text = str(name_or_file).strip()
    if not text:
        raise UserError("profile name is empty")
    path = Path(text).expanduser()
    if path.is_file():
        return load_profile(path)
    if NAME_PATTERN.match(text) and not text.endswith(SUFFIX):
        candidate = profile_dir() / f"{text}{SUFFIX}"
        if candidate.is_file():
            return load_profile(candidate)
        raise UserError(f"no profile '{text}': not a file, and not in {profile_dir()} "
                        "(enrol first: livedeid enrol NAME --from SOURCE)")
    raise UserError(f"profile {path} not found")
