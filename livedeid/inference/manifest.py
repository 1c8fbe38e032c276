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

On disk, ``engines/<name>.json`` (the manifest) names every artefact - the ONNX file,
the FP16 ONNX (TensorRT), the torch state dict and the held-out evaluation that measured
those weights (``<name>.eval.json``) - each with its SHA-256, plus the contract numbers and
whether the weights are trained. A listed artefact without a hash is refused, and every
artefact is checked against its hash where it is loaded (:func:`verified_file`). The
evaluation records the hash of the weights it measured; :func:`load_spec` refuses a
manifest whose evaluation was of other weights or whose ``held_out_self_match`` is not the
evaluation's (see :func:`verified_evaluation`), so the protection the user is told about is
the one measured on the weights that run.
This module only needs numpy; the torch network lives in :mod:`livedeid.nets.autoencoder`.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
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
    onnx_fp16: str | None = None          # what TensorRT builds its plan from
    onnx_fp16_sha256: str | None = None
    evaluation: str | None = None         # the held-out evaluation of `weights` (<name>.eval.json)
    evaluation_sha256: str | None = None
    notes: str = ""
    # Measured by `livedeid train`'s evaluation on people never trained on: the share of
    # protected faces each recogniser still matches to their clean selves (recogniser ->
    # 0..1), copied from ``evaluation``. Shown to the user whenever it is above the target,
    # and its absence on a trained model is the strongest warning (see model_warning).
    held_out_self_match: dict[str, float] | None = None
    manifest_path: Path | None = None

    @property
    def onnx_path(self) -> Path | None:
        return self._resolve(self.onnx)

    @property
    def weights_path(self) -> Path | None:
        return self._resolve(self.weights)

    @property
    def onnx_fp16_path(self) -> Path | None:
        return self._resolve(self.onnx_fp16)

    @property
    def evaluation_path(self) -> Path | None:
        return self._resolve(self.evaluation)

    def artefact(self, kind: str) -> tuple[Path | None, str | None]:
        """Path and expected SHA-256 of one artefact (a key of :data:`ARTEFACTS`)."""
        if kind not in ARTEFACTS:
            raise ValueError(f"unknown model artefact {kind!r} (one of {', '.join(ARTEFACTS)})")
        return self._resolve(getattr(self, kind)), getattr(self, f"{kind}_sha256")

    def _resolve(self, name: str | None) -> Path | None:
        if name is None:
            return None
        base = self.manifest_path.parent if self.manifest_path else ENGINES_DIR
        return base / name

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("manifest_path")
        return d


# The files a manifest may list; each field ``<kind>`` has its hash in ``<kind>_sha256``.
ARTEFACTS = ("onnx", "weights", "onnx_fp16", "evaluation")
_SHA256 = re.compile(r"[0-9a-f]{64}")


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
    for kind in ARTEFACTS:
        name, digest = getattr(spec, kind), getattr(spec, f"{kind}_sha256")
        # A listed file without its hash could be swapped unnoticed: no hash, no loading.
        if name is not None and not (isinstance(digest, str) and _SHA256.fullmatch(digest)):
            raise UserError(f"model manifest {path} lists {kind} {name} without a valid {kind}_sha256 "
                            "(every artefact needs its hash; re-export with `livedeid export`)")
    if matches is not None and spec.evaluation is None:
        raise UserError(f"model manifest {path}: held_out_self_match without the evaluation that measured it "
                        "(export with --eval)")
    if spec.evaluation is not None:
        verified_evaluation(spec)
    return spec


def verified_file(spec: ModelSpec, kind: str) -> Path:
    """Path of one artefact (``onnx``, ``weights``, ``onnx_fp16``, ``evaluation``) after
    checking its SHA-256; an artefact without an expected hash is refused, not trusted."""
    path, expected = spec.artefact(kind)
    if path is None:
        raise UserError(f"model {spec.name} has no {kind} file")
    if not expected:
        raise UserError(f"model {spec.name}: {path.name} has no hash in its manifest; refusing to load it")
    if not path.is_file():
        raise UserError(f"model file missing: {path} (reinstall or run `livedeid export`)")
    if sha256_file(path) != expected:
        raise UserError(f"model file {path} does not match its manifest hash (corrupted or replaced)")
    return path


def read_evaluation(path: Path) -> dict:
    """A held-out evaluation (``eval.json`` of `livedeid train`, or a model's committed
    ``<name>.eval.json``) as a dict; unreadable files are a one-line error."""
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the evaluation {path}: {exc}") from None
    if not isinstance(report, dict):
        raise UserError(f"the evaluation {path} is not a JSON object")
    return report


def evaluation_self_match(report: dict, where: Path | str) -> dict[str, float]:
    """Per recogniser, the share of held-out protected faces still matching themselves
    (``methods.trained.<recogniser>.self_match``); a missing or non-numeric share is an error."""
    try:
        trained = report["methods"]["trained"]
        out = {name: float(trained[name]["self_match"]) for name in ("dlib", "sface") if name in trained}
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"cannot read the evaluation {where}: no self-match {exc}") from None
    if not out:
        raise UserError(f"the evaluation {where} has no recogniser results")
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in out.values()):
        raise UserError(f"the evaluation {where} has a self-match outside 0..1")
    return out


def verified_evaluation(spec: ModelSpec) -> dict:
    """The model's committed evaluation, after checking that it is the file the manifest
    lists (hash), that it measured these weights (its ``weights_sha256``), that the ONNX it
    names are the manifest's, and that the manifest's ``held_out_self_match`` is its figure."""
    path = verified_file(spec, "evaluation")
    report = read_evaluation(path)
    where = spec.manifest_path or path
    if report.get("weights_sha256") != spec.weights_sha256:
        raise UserError(f"model manifest {where}: its evaluation {path.name} measured other weights "
                        "(weights_sha256 differs)")
    for kind in ("onnx", "onnx_fp16"):
        recorded = (report.get("exported") or {}).get(f"{kind}_sha256")
        if recorded is not None and recorded != getattr(spec, f"{kind}_sha256"):
            raise UserError(f"model manifest {where}: its evaluation {path.name} names another {kind} file")
    measured = evaluation_self_match(report, path)
    if spec.held_out_self_match != measured:
        raise UserError(f"model manifest {where}: held_out_self_match is not what {path.name} measured")
    return report


def write_manifest(spec: ModelSpec, path: Path) -> None:
    path.write_text(json.dumps(spec.to_json(), indent=2) + "\n")


# The model card's target: a protected face matches itself for at most 5 % of faces.
SELF_MATCH_TARGET = 0.05


# The recognisers the model card's targets name; a model is only said to protect when
# its held-out evaluation measured every one of them.
MEASURED_RECOGNISERS = ("dlib", "sface")


def model_warning(spec: ModelSpec) -> str | None:
    """What the user must be told about the model's protection, or ``None``: an untrained
    placeholder protects nothing; a trained model never measured on held-out people (or
    not against every recogniser of the targets) must be treated as not protecting; a
    trained model whose measured held-out self-match is above the target protects only
    partly (with the numbers)."""
    if not spec.trained:
        return (
            f"model '{spec.name}' has NO TRAINED WEIGHTS (seeded random initialisation for plumbing): "
            "its output is NOT de-identified"
        )
    measured = spec.held_out_self_match or {}
    if not measured:
        # `trained: true` alone is a claim nobody checked: the weakest model there is.
        return (f"model '{spec.name}' is marked trained but was NEVER MEASURED on held-out people: "
                "treat its output as NOT de-identified (export it with --eval; see engines/MODEL_CARD.md)")
    unmeasured = [r for r in MEASURED_RECOGNISERS if r not in measured]
    weak = {k: v for k, v in measured.items() if v > SELF_MATCH_TARGET}
    if unmeasured and not weak:
        return (f"model '{spec.name}' was NEVER MEASURED against {', '.join(unmeasured)} on held-out people: "
                "treat its output as NOT de-identified for it (see engines/MODEL_CARD.md)")
    if not weak:
        return None
    shares = ", ".join(f"{name} {share:.0%}" for name, share in sorted(weak.items()))
    return (f"model '{spec.name}' protects only PARTLY: on people it never saw, face recognisers still "
            f"match {shares} of protected faces (target <= {SELF_MATCH_TARGET:.0%}; see engines/MODEL_CARD.md)")
