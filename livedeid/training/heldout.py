"""Held-out evaluation of a training run, and the rule that decides whether it is exported.

The trained model is compared with the untrained one (the shipped seed-0 placeholder) and
with blur / pixelate / noise baselines at the trained model's face PSNR, on people never
trained on, through the evaluation harness (:mod:`livedeid.evaluation.harness`): each
photo runs through the live pipeline (a window of identical frames), each recogniser
embeds the face with its own detector, and the metrics are ``livedeid eval``'s
(:mod:`livedeid.evaluation.metrics`). The heart-rate check runs synthetic pulse clips of
held-out faces through the pipeline (:func:`livedeid.evaluation.pulse.evaluate_pulse`).

``eval.json`` (what :func:`evaluate` returns): ``held_out_ids``, ``photos``, ``no_region``,
``methods.<name>`` with ``psnr``, ``ssim``, ``tracked`` and per recogniser ``faces``
(probes), ``detected``, ``self_match``, ``top1``, ``clean_top1``, ``self_score``,
``chance``, ``eer``, ``tar_at_far_1e-3``, the same per dataset under ``by_dataset``;
``hr`` (per clip: ``photo``, ``true_bpm``, ``input_bpm``, ``output_bpm``,
``change_bpm``) and ``better_than_untrained``.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from livedeid.evaluation.baselines import Method, ModelMethod, parse_method
from livedeid.evaluation.harness import CleanPhotos, MethodResult, face_psnr, load_clean_photos, measure_method
from livedeid.evaluation.metrics import RecognizerMetrics, recognizer_metrics
from livedeid.evaluation.photos import list_face_images
from livedeid.inference.engines import Engine
from livedeid.training.config import resolve_path

MIN_SIDE = 300  # ORL's 92x112 photos are enlarged 3x so that every detector finds the face
# Baseline strengths tried (per 100 px of face width, as in `livedeid eval`); each
# baseline runs at the one whose face PSNR on a few photos is closest to the model's.
STRENGTHS = {"blur": (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0), "pixelate": (1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0)}


class ModuleEngine(Engine):
    """A torch module in memory as the pipeline's engine (CPU, no gradients)."""

    name = "torch-module"

    def __init__(self, spec, module):
        super().__init__(spec)
        self.module = module.eval()

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.module(torch.from_numpy(self.check_input(windows))).numpy().astype(np.float32)


def held_out_photos(faces_root: Path, test_ids: list[str], per_identity: int) -> list:
    """The first ``per_identity`` photos of every held-out person."""
    taken: dict[str, int] = {}
    out = []
    for s in list_face_images(faces_root):
        if s.identity in test_ids and taken.get(s.identity, 0) < per_identity:
            taken[s.identity] = taken.get(s.identity, 0) + 1
            out.append(s)
    return out


def _rounded(values: dict) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v) for k, v in values.items()}


def _recognizer_json(m: RecognizerMetrics, clean_top1: float, identities: int) -> dict:
    return _rounded({"faces": m.probes, "detected": m.detection, "self_match": m.self_match, "top1": m.top1,
                     "clean_top1": clean_top1, "self_score": m.self_score, "chance": 1.0 / max(identities, 1),
                     "eer": m.eer, "tar_at_far_1e-3": m.tar})


def _method_json(result: MethodResult, clean: CleanPhotos, recs: list) -> dict:
    """One method's entry of eval.json; per dataset too (gallery and chance within one
    dataset: 1/3 celebrities, 1/10 ORL)."""
    m = result.method
    untracked = m.untracked_images if isinstance(m, ModelMethod) else 0
    rep = {"psnr": round(result.psnr_db, 2), "ssim": round(result.ssim, 4), "tracked": result.n_images - untracked}
    ids = clean.ids
    datasets = sorted({i.split("/")[0] for i in ids})
    for rec in recs:
        ce, pe = clean.embeddings[rec.name], result.embeddings[rec.name]
        clean_top1 = recognizer_metrics(rec, ids, ce, ce).top1
        rep[rec.name] = _recognizer_json(result.per_recognizer[rec.name], clean_top1, len(set(ids)))
        for ds in datasets:
            idx = np.flatnonzero(np.char.startswith(ids.astype(str), ds + "/"))
            sub_ids, sub_c, sub_p = ids[idx], [ce[i] for i in idx], [pe[i] for i in idx]
            rep.setdefault("by_dataset", {}).setdefault(ds, {})[rec.name] = _recognizer_json(
                recognizer_metrics(rec, sub_ids, sub_c, sub_p), recognizer_metrics(rec, sub_ids, sub_c, sub_c).top1,
                len(set(sub_ids)))
    return rep


def _baselines(clean: CleanPhotos, target_psnr: float) -> list[Method]:
    """Blur and pixelate at the strength whose face PSNR on a subset is closest to the
    target, and noise at the target itself."""
    subset = range(0, len(clean.samples), max(1, len(clean.samples) // 8))
    methods = [min((parse_method(f"{kind}:{g}") for g in grid), key=lambda m: abs(face_psnr(m, clean, subset) - target_psnr))
               for kind, grid in STRENGTHS.items()]
    if math.isfinite(target_psnr):
        methods.append(parse_method(f"noise:{round(target_psnr, 2)}"))
    return methods


def hr_check(method: ModelMethod, photos: list[Path], clips: int, seconds: float) -> list[dict]:
    """Synthetic pulse clips of held-out faces through the live pipeline: heart rate read
    from the input vs from the output (each with a fresh tracker, as the far end would)."""
    from livedeid.evaluation.pulse import evaluate_pulse, synthetic_clips

    photos = photos[:clips]
    if not photos:
        return []
    made = synthetic_clips(len(photos), seconds, faces=photos)
    row = evaluate_pulse(made, [method])[0]

    def bpm(x):
        return round(float(x), 2) if np.isfinite(x) else None

    out = []
    for photo, clip, cin, cout in zip(photos, made, row["clean_bpm"], row["hr_bpm"]):
        i, o = bpm(cin), bpm(cout)
        out.append({"photo": str(photo), "true_bpm": round(clip.true_hr, 2), "input_bpm": i, "output_bpm": o,
                    "change_bpm": round(abs(i - o), 2) if i is not None and o is not None else None})
    return out


def evaluate(model, cfg: dict, test_ids: list[str], names=("dlib", "sface")) -> dict:
    """Held-out metrics of ``model`` (torch, CPU) against the untrained model and blur /
    pixelate / noise baselines at the model's face PSNR (see the module doc)."""
    from livedeid.inference.manifest import ModelSpec
    from livedeid.nets.autoencoder import seeded_untrained
    from livedeid.recognizers.base import get_recognizer
    from livedeid.training.export import DEFAULT_CROP

    ec, mc = cfg["eval"], cfg["model"]
    spec = ModelSpec(name="eval", window=int(mc["window"]), crop_size=DEFAULT_CROP,
                     max_perturbation=float(mc["max_perturbation"]), trained=True)
    samples = held_out_photos(resolve_path(cfg["data"]["faces_root"]), test_ids, ec["max_photos_per_id"])
    recs = [get_recognizer(n) for n in names]
    clean = load_clean_photos(samples, recs, min_side=MIN_SIDE, where="the held-out photos")
    # The untrained reference is the shipped placeholder (seed 0), what users ran before.
    untrained = seeded_untrained(int(mc["window"]), float(mc["max_perturbation"]), 0)
    trained = ModelMethod(spec=spec, engine=ModuleEngine(spec, model), name="trained")
    methods: list[Method] = [trained, ModelMethod(spec=spec, engine=ModuleEngine(spec, untrained), name="untrained")]
    results = [measure_method(m, clean, recs) for m in methods]
    if ec.get("baselines"):
        results += [measure_method(m, clean, recs) for m in _baselines(clean, results[0].psnr_db)]
    report = {"held_out_ids": test_ids, "photos": len(clean.samples), "no_region": clean.no_region,
              "methods": {r.method.name: _method_json(r, clean, recs) for r in results}}
    if ec.get("hr_clips"):
        celebrities = [s.path for s in clean.samples if s.identity.startswith("celebrities/")]
        report["hr"] = hr_check(trained, celebrities, ec["hr_clips"], ec["hr_seconds"])
    report["better_than_untrained"] = better_than_untrained(report, [r.name for r in recs])
    return report


def better_than_untrained(report: dict, recognizers) -> bool:
    """The export rule: on the held-out people the trained model lets fewer protected faces
    match themselves than the untrained one for at least one recogniser and more for none,
    while keeping face PSNR >= 32 dB and every heart rate within 1 bpm of the input's. A
    model that passes but still misses the 5 % target ships with that measured share in its
    manifest, and every command and the panel say it protects only partly."""
    t, u = report["methods"]["trained"], report["methods"]["untrained"]
    fewer = [t[r]["self_match"] < u[r]["self_match"] for r in recognizers]
    more = [t[r]["self_match"] > u[r]["self_match"] for r in recognizers]
    quality = t["psnr"] >= 32.0 and all(h["change_bpm"] is not None and h["change_bpm"] <= 1.0
                                        for h in report.get("hr", []))
    return any(fewer) and not any(more) and quality


def format_report(report: dict) -> str:
    lines = [f"held-out identities: {len(report['held_out_ids'])}, photos: {report['photos']}"]
    first = next(iter(report["methods"].values()))
    names = [k for k in first if isinstance(first[k], dict) and k != "by_dataset"]
    head = f"{'method':16s} {'PSNR':>6s} {'SSIM':>6s}" + "".join(
        f" {n + ' self':>10s} {n + ' top1':>10s} {n + ' det':>9s}" for n in names)
    lines.append(head)
    for m, r in report["methods"].items():
        lines.append(f"{m:16s} {r['psnr']:6.2f} {r['ssim']:6.4f}" + "".join(
            f" {r[n]['self_match']:10.3f} {r[n]['top1']:10.3f} {r[n]['detected']:9.2f}" for n in names))
    chance = {n: first[n]["chance"] for n in names}
    clean = {n: report["methods"]["trained"][n]["clean_top1"] for n in names}
    lines.append(f"chance top-1: {chance}; clean top-1: {clean}")
    for h in report.get("hr", []):
        lines.append(f"HR {Path(h['photo']).parent.name}/{Path(h['photo']).name}: true {h['true_bpm']}, "
                     f"input {h['input_bpm']}, output {h['output_bpm']}, change {h['change_bpm']}")
    return "\n".join(lines)
