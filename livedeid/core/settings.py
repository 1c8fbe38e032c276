"""The one settings object for the live and file pipelines (``run``, ``process``, ``demo``,
``gui`` and ``--config`` files all build a :class:`PipelineConfig`), and the names its
fields may take. Imports nothing else of livedeid, so every stage can read it."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from livedeid.core.errors import UserError

ENGINE_NAMES = ("auto", "onnxruntime", "torch", "tensorrt")
FAIL_CLOSED_POLICIES = ("blur", "mask", "hold")
HR_METHODS = ("pos", "chrom", "green")


@dataclass
class PipelineConfig:
    engine: str = "auto"
    manifest: Path | None = None
    max_faces: int = 4
    fail_closed: str = "blur"
    min_confidence: float = 0.5
    protect: bool = True
    hr_method: str = "pos"
    hr_window_s: float = 10.0
    hr_overlay: bool = False
    detect_long_side: int = 640
    safety_net: bool = True       # a second (full-range) detector; faces no track holds are hidden
    startup_guard: bool = True    # hide the whole frame until the first face is found
    profile: Path | None = None   # an enrolled person's cloak: a profile file or a name in the profile folder
    hide_unverified: bool = False  # hide (fail-closed policy) every face whose protection is not verified
    engine_every: int = 3         # run the network for a face on 1 frame in N at most (CPU path; the device path
                                  # runs it on every frame); between, its last residual moves with the face ...
    engine_reuse_change: float = 4 / 255  # ... while its aligned crop differs from the one the network saw by at most
                                  # this (mean absolute, 0-1); above it the network runs (protect/residuals.py)
    engine_threads: int = 0       # ONNX Runtime's threads (0: its default, every core; `batch` sets its CPUs per video)

    def validate(self) -> None:
        if self.engine not in ENGINE_NAMES:
            raise UserError(f"engine must be one of {', '.join(ENGINE_NAMES)}")
        if self.fail_closed not in FAIL_CLOSED_POLICIES:
            raise UserError(f"fail-closed policy must be one of {', '.join(FAIL_CLOSED_POLICIES)}")
        if not 1 <= self.max_faces <= 4:
            raise UserError("max faces must be between 1 and 4")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise UserError("min confidence must be within [0, 1]")
        if self.hr_method not in HR_METHODS:
            raise UserError("heart-rate method must be pos, chrom or green")
        if not 4.0 <= self.hr_window_s <= 60.0:
            raise UserError("heart-rate window must be 4..60 s")
        if not 160 <= self.detect_long_side <= 1920:
            raise UserError("detection size (detect_long_side) must be 160..1920 px")
        if not 0 <= self.engine_threads <= 256:
            raise UserError("engine_threads must be 0..256 (0: ONNX Runtime's default, every core)")
        if not 1 <= self.engine_every <= 4:
            raise UserError("engine_every must be 1..4 (the network on one frame in N)")
        if not 0.0 <= self.engine_reuse_change <= 1.0:
            raise UserError("engine_reuse_change must be within 0..1 (mean absolute change of the face's crop)")
        if self.profile is not None and not str(self.profile).strip():
            raise UserError("profile name is empty")


def load_pipeline_config(path: Path) -> PipelineConfig:
    """A :class:`PipelineConfig` from a JSON or TOML file (``.toml`` by suffix). Unknown keys,
    wrong types and out-of-range values are one-line user errors, never silently ignored."""
    import tomllib  # Python >= 3.11; imported here so 3.10 users without --config still run

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"cannot read config {path}: {exc.strerror or exc}") from None
    try:
        raw = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"config {path} is not valid {'TOML' if path.suffix.lower() == '.toml' else 'JSON'}: "
                        f"{str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise UserError(f"config {path} must hold an object of settings")
    raw = dict(raw)
    if "model" in raw:  # the user-facing name of the manifest path, as on the command line
        raw["manifest"] = raw.pop("model")
    types = {f.name: f.type for f in dataclasses.fields(PipelineConfig) if f.name != "protect"}
    unknown = sorted(set(raw) - set(types))
    if unknown:
        raise UserError(f"config {path}: unknown setting(s) {', '.join(unknown)} "
                        f"(known: {', '.join(sorted(k if k != 'manifest' else 'model' for k in types))})")
    expected = {"str": str, "int": int, "float": (int, float), "bool": bool, "Path | None": (str, type(None))}
    for key, value in raw.items():
        want = expected[types[key]]
        if isinstance(value, bool) and types[key] in ("int", "float") or not isinstance(value, want):
            raise UserError(f"config {path}: {key if key != 'manifest' else 'model'} has the wrong type "
                            f"({type(value).__name__})")
    if raw.get("manifest") is not None:
        manifest = Path(raw["manifest"]).expanduser()
        raw["manifest"] = manifest if manifest.is_absolute() else path.parent / manifest
    if raw.get("profile") is not None:
        # A file beside the settings file is meant relative to it; anything else stays as
        # written (a profile name, or an absolute path) for the profile lookup to judge.
        beside = path.parent / Path(raw["profile"]).expanduser()
        raw["profile"] = beside if beside.is_file() else Path(raw["profile"]).expanduser()
    config = PipelineConfig(**raw)
    try:
        config.validate()
    except UserError as exc:
        raise UserError(f"config {path}: {exc}") from None
    return config
