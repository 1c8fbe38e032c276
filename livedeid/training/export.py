"""`livedeid export`: torch weights -> ONNX (FP32, optional FP16) + manifest in engines/.

Needs the ``train`` extra (torch). The FP32 ONNX is what ONNX Runtime runs on the CPU;
the FP16 ONNX is what TensorRT builds a strongly typed engine from.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from livedeid.core.errors import UserError
from livedeid.inference.manifest import ENGINES_DIR, ModelSpec, sha256_file, write_manifest

DEFAULT_WINDOW = 8
DEFAULT_CROP = 128
DEFAULT_MAX_PERTURBATION = 8.0 / 255.0


def export_model(weights: Path | None = None, out_dir: Path | None = None, name: str = "deid", seed: int = 0,
                 trained: bool = False, fp16: bool = False, tensorrt: bool = False, notes: str = "",
                 window: int = DEFAULT_WINDOW, crop_size: int = DEFAULT_CROP,
                 max_perturbation: float = DEFAULT_MAX_PERTURBATION,
                 held_out_self_match: dict[str, float] | None = None) -> Iterator[str]:
    if importlib.util.find_spec("torch") is None:
        raise UserError("export needs torch: pip install 'livedeid[train]'")
    import onnxruntime as ort
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
    torch.save(model.state_dict(), pt_path)
    export_onnx(model, onnx_path, crop_size)
    yield f"wrote {pt_path}"
    yield f"wrote {onnx_path}"

    # Parity check: the ONNX must reproduce torch (contract: max abs diff <= 1e-4).
    x = torch.rand(2, window, 3, crop_size, crop_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x).numpy()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"window": x.numpy()})[0]
    diff = float(np.abs(got - ref).max())
    if diff > 1e-4:
        raise UserError(f"ONNX export does not match torch (max abs diff {diff:.2e})")
    yield f"onnx parity: max abs diff {diff:.2e}"

    if fp16 or tensorrt:
        fp16_path = out_dir / f"{name}.fp16.onnx"
        export_onnx(model, fp16_path, crop_size, fp16=True)
        yield f"wrote {fp16_path}"
    spec = ModelSpec(name=name, window=window, crop_size=crop_size, max_perturbation=max_perturbation,
                     trained=trained, onnx=onnx_path.name, onnx_sha256=sha256_file(onnx_path),
                     weights=pt_path.name, weights_sha256=sha256_file(pt_path), notes=notes,
                     held_out_self_match=held_out_self_match, manifest_path=out_dir / f"{name}.json")
    write_manifest(spec, out_dir / f"{name}.json")
    yield f"wrote {out_dir / f'{name}.json'}"
    if tensorrt:
        from livedeid.inference.engines import EngineUnavailable, TensorRTEngine

        try:
            eng = TensorRTEngine(spec)
            yield f"TensorRT plan: {eng.plan_path}"
        except EngineUnavailable as exc:
            raise UserError(f"TensorRT plan not built: {exc}") from None


def held_out_self_match(eval_json: Path) -> dict[str, float]:
    """Per recogniser, the share of held-out protected faces still matching themselves, from
    a `livedeid train` evaluation (``eval.json``: ``methods.trained.<recogniser>.self_match``)."""
    import json

    try:
        report = json.loads(Path(eval_json).read_text())
        trained = report["methods"]["trained"]
        out = {name: float(trained[name]["self_match"]) for name in ("dlib", "sface") if name in trained}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"cannot read the evaluation {eval_json}: {exc}") from None
    if not out:
        raise UserError(f"the evaluation {eval_json} has no recogniser results")
    return out
