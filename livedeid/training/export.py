"""`livedeid export`: torch weights -> ONNX (FP32, optional FP16) + manifest in engines/.

Needs the ``train`` extra (torch). The FP32 ONNX is what ONNX Runtime runs on the CPU;
the FP16 ONNX is what TensorRT builds a strongly typed engine from.

Trained weights are copied byte for byte (not re-saved), so the hash a held-out
evaluation recorded for them is the hash of ``<name>.pt``. With an evaluation
(``--eval``), its recorded weights hash must be that of the weights exported; a copy of it
goes beside the weights as ``<name>.eval.json`` (with the hashes of the ONNX files made
from those weights), listed in the manifest with its own hash.
"""
from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from livedeid.core import strict_json
from livedeid.core.errors import UserError
from livedeid.inference.manifest import (
    ENGINES_DIR,
    ModelSpec,
    evaluation_self_match,
    model_warning,
    read_evaluation,
    sha256_file,
    write_manifest,
)

DEFAULT_WINDOW = 8
DEFAULT_CROP = 128
DEFAULT_MAX_PERTURBATION = 8.0 / 255.0


def export_model(weights: Path | None = None, out_dir: Path | None = None, name: str = "deid", seed: int = 0,
                 trained: bool = False, fp16: bool = False, tensorrt: bool = False, notes: str = "",
                 window: int = DEFAULT_WINDOW, crop_size: int = DEFAULT_CROP,
                 max_perturbation: float = DEFAULT_MAX_PERTURBATION,
                 evaluation: Path | None = None) -> Iterator[str]:
    """Write ``<name>.pt``, ``<name>.onnx`` (+ ``<name>.fp16.onnx``, + ``<name>.eval.json``
    from ``evaluation``) and the manifest ``<name>.json`` into ``out_dir``; yields what it did.
    Everything that can be refused (a missing torch, an evaluation of other weights) is
    refused before a file is written."""
    report = measured_weights_evaluation(evaluation, weights) if evaluation is not None else None
    if importlib.util.find_spec("torch") is None:
        raise UserError("export needs torch: pip install 'livedeid[train]'")
    import torch

    from livedeid.nets.autoencoder import export_onnx, load_weights, seeded_untrained

    out_dir = Path(out_dir) if out_dir else ENGINES_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    if weights is None:
        if trained:
            raise UserError("--trained needs --weights")
        model = seeded_untrained(window, max_perturbation, seed)
        notes = notes or f"seeded random initialisation (seed {seed}); NOT de-identifying"
    else:
        try:
            model = load_weights(weights, window, max_perturbation)
        except Exception as exc:
            raise UserError(f"cannot load weights {weights}: {str(exc).splitlines()[0]}") from None
    pt_path = out_dir / f"{name}.pt"
    onnx_path = out_dir / f"{name}.onnx"
    if weights is None:
        torch.save(model.state_dict(), pt_path)
    elif not (pt_path.exists() and pt_path.samefile(weights)):
        # The very file that was evaluated (and loaded above): its hash is the evaluation's.
        shutil.copyfile(weights, pt_path)
    export_onnx(model, onnx_path, crop_size)
    yield f"wrote {pt_path}"
    yield f"wrote {onnx_path}"

    diff = onnx_parity(model, onnx_path, window, crop_size)
    yield f"onnx parity: max abs diff {diff:.2e}"

    fp16_path = None
    if fp16 or tensorrt:
        fp16_path = out_dir / f"{name}.fp16.onnx"
        export_onnx(model, fp16_path, crop_size, fp16=True)
        yield f"wrote {fp16_path}"
    hashes = {"weights_sha256": sha256_file(pt_path), "onnx_sha256": sha256_file(onnx_path),
              "onnx_fp16_sha256": sha256_file(fp16_path) if fp16_path else None}
    eval_path = matches = None
    if report is not None:
        eval_path, matches = _write_evaluation(report, out_dir / f"{name}.eval.json", hashes, diff)
        yield f"wrote {eval_path}"
    spec = ModelSpec(name=name, window=window, crop_size=crop_size, max_perturbation=max_perturbation,
                     trained=trained, onnx=onnx_path.name, onnx_sha256=hashes["onnx_sha256"],
                     weights=pt_path.name, weights_sha256=hashes["weights_sha256"],
                     onnx_fp16=fp16_path.name if fp16_path else None, onnx_fp16_sha256=hashes["onnx_fp16_sha256"],
                     evaluation=eval_path.name if eval_path else None,
                     evaluation_sha256=sha256_file(eval_path) if eval_path else None, notes=notes,
                     held_out_self_match=matches, manifest_path=out_dir / f"{name}.json")
    write_manifest(spec, out_dir / f"{name}.json")
    yield f"wrote {out_dir / f'{name}.json'}"
    warning = model_warning(spec)
    if warning:
        yield f"WARNING: {warning}"
    if tensorrt:
        from livedeid.inference.engines import EngineUnavailable, TensorRTEngine

        try:
            eng = TensorRTEngine(spec)
            yield f"TensorRT plan: {eng.plan_path}"
        except EngineUnavailable as exc:
            raise UserError(f"TensorRT plan not built: {exc}") from None


def onnx_parity(model, onnx_path: Path, window: int, crop_size: int) -> float:
    """Max abs difference between the ONNX and torch on random windows; above the
    contract's 1e-4 the export is refused."""
    import onnxruntime as ort
    import torch

    x = torch.rand(2, window, 3, crop_size, crop_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x).numpy()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    diff = float(np.abs(sess.run(None, {"window": x.numpy()})[0] - ref).max())
    if diff > 1e-4:
        raise UserError(f"ONNX export does not match torch (max abs diff {diff:.2e})")
    return diff


def _write_evaluation(report: dict, path: Path, hashes: dict, parity: float) -> tuple[Path, dict[str, float]]:
    """The evaluation's copy beside the weights, naming the ONNX files made from them;
    returns its path and its held-out self-match (for the manifest)."""
    report = {**report, "exported": {
        "onnx_sha256": hashes["onnx_sha256"], "onnx_fp16_sha256": hashes["onnx_fp16_sha256"],
        "note": f"ONNX exported by `livedeid export` from the measured weights (parity max abs diff {parity:.2e}); "
                "the evaluation itself ran the torch weights"}}
    path.write_text(strict_json.dumps(report, indent=2) + "\n")
    return path, evaluation_self_match(report, path)


def held_out_self_match(eval_json: Path) -> dict[str, float]:
    """Per recogniser, the share of held-out protected faces still matching themselves, from
    a `livedeid train` evaluation (``eval.json``: ``methods.trained.<recogniser>.self_match``)."""
    return evaluation_self_match(read_evaluation(eval_json), eval_json)


def measured_weights_evaluation(eval_json: Path, weights: Path | None) -> dict:
    """The evaluation ``eval_json``, refused unless it recorded the hash of ``weights`` (the
    file being exported) and holds a self-match for at least one recogniser."""
    if weights is None:
        raise UserError("--eval needs --weights: an evaluation is of one weights file")
    report = read_evaluation(eval_json)
    recorded = report.get("weights_sha256")
    if not recorded:
        raise UserError(f"the evaluation {eval_json} does not record which weights it measured "
                        "(weights_sha256); re-evaluate them with `livedeid train --set steps=0`")
    if not Path(weights).is_file():
        raise UserError(f"weights not found: {weights}")
    if recorded != sha256_file(Path(weights)):
        raise UserError(f"the evaluation {eval_json} measured other weights than {weights} "
                        "(weights_sha256 differs): evaluate these weights, or export the ones it measured")
    evaluation_self_match(report, eval_json)
    return report
