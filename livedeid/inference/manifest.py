"""The de-identification model's contract and its on-disk format.

Contract (shared by every engine, the trainer and the exporter)
----------------------------------------------------------------
* input  ``window``: float32 ``(N, T, 3, S, S)``, RGB, values in [0, 1], oldest frame
  first; ``N`` faces (1..4), ``T`` = :attr:`ModelSpec.window`, ``S`` = :attr:`ModelSpec.crop_size`.
  Live use is causal: the last frame of the window is the current one.
* output ``protected``: float32 ``(N, 3, S, S)`` in [0, 1], the protected current frame.
  It equals the current frame plus a residual bounded by ``max_perturbation`` (L-inf).
* crops are aligned with a similarity transform that maps five landmarks (eye centres,
  nose tip, mouth corners) onto :func:`crop_template`; the whole face oval fits inside.

On disk, ``engines/<name>.json`` (the manifest) names the ONNX file and the torch
state dict, their SHA-256, the contract numbers and whether the weights are trained.
This module only needs numpy; the torch network lives in :mod:`livedeid.nets.autoencoder`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from livedeid.assets import engines_dir
from livedeid.core.errors import UserError

ENGINES_DIR = engines_dir()
DEFAULT_MANIFEST = ENGINES_DIR / "deid.json"

@dataclass(frozen=True)
class ModelSpec:
    """What a model file promises; read from its manifest."""

    name: str
    window: int
    crop_size: int
    max_perturbation: float
    trained: bool
    onnx: str | None = None
    onnx_sha256: str | None = None
    weights: str | None = None
    weights_sha256: str | None = None
    notes: str = ""
    # Measured by `livedeid train`'s evaluation on people never trained on: the share of
    # protected faces each recogniser still matches to their clean selves (recogniser ->
    # 0..1). Shown to the user whenever it is above the target (see model_warning).
    held_out_self_match: dict[str, float] | None = None
    manifest_path: Path | None = None

    @property
    def onnx_path(self) -> Path | None:
        return self._resolve(self.onnx)

    @property
    def weights_path(self) -> Path | None:
        return self._resolve(self.weights)

    def _resolve(self, name: str | None) -> Path | None:
        if name is None:
            return None
        base = self.manifest_path.parent if self.manifest_path else ENGINES_DIR
        return base / name

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("manifest_path")
        return d


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_spec(manifest: str | Path | None = None) -> ModelSpec:
    """Read and validate a model manifest (default: the shipped ``engines/deid.json``)."""
    path = Path(manifest) if manifest else DEFAULT_MANIFEST
    if not path.is_file():
        raise UserError(f"model manifest not found: {path} (run `livedeid doctor`)")
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"model manifest {path} is not valid JSON: {exc}") from None
    known = set(ModelSpec.__dataclass_fields__) - {"manifest_path"}
    unknown = set(raw) - known
    if unknown:
        raise UserError(f"model manifest {path} has unknown keys: {', '.join(sorted(unknown))}")
    try:
        spec = ModelSpec(**raw, manifest_path=path)
    except TypeError as exc:
        raise UserError(f"model manifest {path} is incomplete: {exc}") from None
    if not (1 <= spec.window <= 64 and 32 <= spec.crop_size <= 512 and 0 < spec.max_perturbation <= 0.25):
        raise UserError(f"model manifest {path} has out-of-range contract values")
    matches = spec.held_out_self_match
    if matches is not None and not (isinstance(matches, dict) and all(
            isinstance(k, str) and isinstance(v, (int, float)) and 0.0 <= v <= 1.0 for k, v in matches.items())):
        raise UserError(f"model manifest {path}: held_out_self_match must map recognisers to shares in 0..1")
    return spec


def verified_file(spec: ModelSpec, kind: str) -> Path:
    """Path of the ONNX (``kind='onnx'``) or weights file, after checking its SHA-256."""
    path = spec.onnx_path if kind == "onnx" else spec.weights_path
    expected = spec.onnx_sha256 if kind == "onnx" else spec.weights_sha256
    if path is None:
        raise UserError(f"model {spec.name} has no {kind} file")
    if not path.is_file():
        raise UserError(f"model file missing: {path} (reinstall or run `livedeid export`)")
    if expected and sha256_file(path) != expected:
        raise UserError(f"model file {path} does not match its manifest hash (corrupted or replaced)")
    return path


def write_manifest(spec: ModelSpec, path: Path) -> None:
    path.write_text(json.dumps(spec.to_json(), indent=2) + "\n")


# The model card's target: a protected face matches itself for at most 5 % of faces.
SELF_MATCH_TARGET = 0.05


def model_warning(spec: ModelSpec) -> str | None:
    """What the user must be told about the model's protection, or ``None``: an untrained
    placeholder protects nothing; a trained model whose measured held-out self-match is
    above the target protects only partly (with the numbers)."""
    if not spec.trained:
        return (
            f"model '{spec.name}' has NO TRAINED WEIGHTS (seeded random initialisation for plumbing): "
            "its output is NOT de-identified"
        )
    weak = {k: v for k, v in (spec.held_out_self_match or {}).items() if v > SELF_MATCH_TARGET}
    if not weak:
        return None
    shares = ", ".join(f"{name} {share:.0%}" for name, share in sorted(weak.items()))
    return (f"model '{spec.name}' protects only PARTLY: on people it never saw, face recognisers still "
            f"match {shares} of protected faces (target <= {SELF_MATCH_TARGET:.0%}; see engines/MODEL_CARD.md)")
