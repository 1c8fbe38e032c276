"""What an evaluation run writes: eval.md (tables), eval.csv (one row per method),
pulse.csv and eval.png (privacy against face PSNR), each written whole then renamed."""
from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from livedeid.core.errors import UserError
from livedeid.evaluation.metrics import SELF_MATCH_LEVEL, psnr_crossing

if TYPE_CHECKING:
    from livedeid.evaluation.runs import EvalReport

METRIC_COLUMNS = (("detection", "det"), ("top1", "top-1"), ("self_match", "self"), ("eer", "EER"),
                  ("tar", "TAR@1e-3"))



def shown_path(path) -> str:
    """A path as a report shows it: relative to the working directory (reports are committed
    and read on other machines, where this machine's absolute paths mean nothing)."""
    import os

    try:
        return os.path.relpath(path)
    except ValueError:  # another drive on Windows: no relative form exists
        return str(path)

def _fmt(x: float, pct: bool = True) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return f"{100 * x:.1f}" if pct else f"{x:.2f}"


def csv_rows(report: EvalReport) -> list[dict]:
    rows = []
    for r in report.results:
        row = {"method": r.method.name, "family": r.method.family,
               "param": "" if r.method.param is None else f"{r.method.param:g}",
               "under_test": int(r.method.under_test), "images": r.n_images,
               "face_psnr_db": round(r.psnr_db, 3) if np.isfinite(r.psnr_db) else "inf",
               "face_ssim": round(r.ssim, 4)}
        for name, m in r.per_recognizer.items():
            row[f"{name}_probes"] = m.probes
            for key, _ in METRIC_COLUMNS:
                row[f"{name}_{'tar_at_far_1e-3' if key == 'tar' else key}"] = round(getattr(m, key), 4)
        rows.append(row)
    return rows


def crossings(report: EvalReport, level: float = SELF_MATCH_LEVEL, metric: str = "self_match") -> list[dict]:
    """Per baseline family and recogniser: the PSNR where ``metric`` first drops below
    ``level`` (see :func:`psnr_crossing`)."""
    out = []
    for rec in report.recognizers:
        for fam in ("blur", "pixelate", "noise", "jpeg"):
            res = [r for r in report.results if r.method.family == fam]
            if not res:
                continue
            pts = [(r.psnr_db, getattr(r.per_recognizer[rec.name], metric)) for r in res]
            first, interp = psnr_crossing(pts, level)
            first_m = next((r.method.name for r in res if r.psnr_db == first), None) if first is not None else None
            out.append({"recognizer": rec.name, "family": fam, "first_below_psnr_db": first,
                        "first_below_method": first_m, "interpolated_psnr_db": interp,
                        "lowest_psnr_tried_db": min(p for p, _ in pts),
                        "rate_at_lowest": min(pts)[1]})
    return out


def markdown(report: EvalReport) -> str:
    recs = [r.name for r in report.recognizers]
    lines = [f"# livedeid eval: {report.dataset.name}", ""]
    if report.model_note:
        lines += [f"**Model under test:** {report.model_note}", ""]
    chance = 1.0 / report.identities
    lines += [
        f"- dataset: `{shown_path(report.dataset)}`: {report.identities} identities, {report.images} photos"
        + (f" (the first {report.per_identity} per identity)" if report.per_identity else "") + "; "
        f"{report.used} with a face-mesh region"
        + (f" (no mesh: {', '.join(report.no_region[:8])}{' ...' if len(report.no_region) > 8 else ''})"
           if report.no_region else ""),
        "- recognisers: " + "; ".join(
            f"{r.name} ({r.metric}, threshold {r.threshold}): finds {report.clean_detected[r.name]}/{report.used} "
            f"clean faces, {report.probes[r.name]} probes" for r in report.recognizers),
        f"- chance top-1 = 1/{report.identities} = {100 * chance:.1f} %",
        f"- run time {report.seconds:.0f} s" + (", sweep" if report.sweep else ""),
        "",
        "Region: MediaPipe face-mesh FACE_OVAL polygon of the clean photo (the polygon the product "
        "perturbs under). Filters change only pixels inside it; PSNR (pooled MSE) and SSIM "
        "(map averaged inside it) are measured there. Strengths scale with the face: blur sigma "
        "and pixel-block size are in px per 100 px of face-oval width; noise is given as PSNR (dB); "
        "jpeg as quality. Rates in %: det = processed face still detected, top-1 = closed-set "
        "identification against the other clean photos, self = processed photo matches its own "
        "clean photo at the recogniser's threshold, EER and TAR at FAR 1e-3 for processed-vs-clean "
        "pairs; a missed detection counts as not identified / not matched / rejected.",
        "",
    ]
    head = ["method", "PSNR dB", "SSIM"] + [f"{n} {lab}" for n in recs for _, lab in METRIC_COLUMNS]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report.results:
        name = f"**{r.method.name}**" if r.method.under_test else r.method.name
        cells = [name, _fmt(r.psnr_db, False), f"{r.ssim:.3f}"]
        for n in recs:
            m = r.per_recognizer[n]
            cells += [_fmt(getattr(m, k)) for k, _ in METRIC_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    m0 = report.results[0].per_recognizer
    lines += ["", "Pairs per method: " + "; ".join(f"{n}: {m.genuine_pairs} genuine, {m.impostor_pairs} impostor"
                                                  for n, m in m0.items()), ""]
    notes = [f"{r.method.name}: {'; '.join(r.method.notes)}" for r in report.results if r.method.notes]
    if notes:
        lines += ["Notes: " + " | ".join(notes), ""]
    cr = crossings(report)
    if cr:
        lines += [f"## Where self-match first drops below {100 * SELF_MATCH_LEVEL:.0f} %", "",
                  "| recogniser | family | first setting below | its PSNR dB | interpolated PSNR dB |",
                  "|---|---|---|---|---|"]
        for c in cr:
            if c["first_below_psnr_db"] is None:
                lines.append(f"| {c['recognizer']} | {c['family']} | never (still {100 * c['rate_at_lowest']:.1f} % "
                             f"at {c['lowest_psnr_tried_db']:.1f} dB) | - | - |")
            else:
                lines.append(f"| {c['recognizer']} | {c['family']} | {c['first_below_method']} | "
                             f"{c['first_below_psnr_db']:.1f} | {c['interpolated_psnr_db']:.1f} |")
        lines.append("")
    if report.pulse:
        lines += ["## Heart rate on pulse clips", "",
                  "| method | readable | MAE vs truth | RMSE vs truth | MAE vs clean | RMSE vs clean | "
                  "r vs truth | waveform r vs clean | HR per clip (bpm) |", "|" + "---|" * 9]
        for p in report.pulse:
            lines.append(f"| {p['method']} | {p['readable']}/{p['clips']} | {_fmt(p['mae_vs_truth'], False)} | "
                         f"{_fmt(p['rmse_vs_truth'], False)} | {_fmt(p['mae_vs_clean'], False)} | "
                         f"{_fmt(p['rmse_vs_clean'], False)} | {_fmt(p['pearson_vs_truth'], False)} | "
                         f"{_fmt(p['waveform_r_vs_clean'], False)} | {', '.join(f'{x:g}' for x in p['hr_bpm'])} |")
        lines.append("")
    return "\n".join(lines)


def plot(report: EvalReport, path: Path) -> None:
    """Self-match and top-1 against face PSNR (see :func:`plot_rows`)."""
    untrained = bool(report.model_note and "trained: false" in report.model_note)
    title = (f"{report.dataset.name}: privacy vs face PSNR ({report.identities} ids, {report.used} photos)"
             + ("  [model UNTRAINED]" if untrained else ""))
    plot_rows(csv_rows(report), [r.name for r in report.recognizers], report.identities, title, path)


def plot_rows(rows: list[dict], recognizers: list[str], identities: int, title: str, path: Path) -> None:
    """Self-match and top-1 against face PSNR from ``eval.csv`` rows (so a plot can be
    redrawn from the CSV alone): one line per baseline family per recogniser, methods
    under test as single markers, the clean rate and the 5 % / chance levels as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def num(x) -> float:
        return float("inf") if x in ("inf", float("inf")) else float(x)

    colours = {"blur": "tab:blue", "pixelate": "tab:orange", "noise": "tab:green", "jpeg": "tab:purple"}
    styles = ["-", "--", ":", "-."]
    markers = ["*", "P", "X", "D"]
    finite = [num(r["face_psnr_db"]) for r in rows if np.isfinite(num(r["face_psnr_db"]))]
    fig, axes = plt.subplots(1, 2, figsize=(13, 6.2), sharex=True)
    for ax, key, label in ((axes[0], "self_match", "self-match rate (own clean photo)"),
                           (axes[1], "top1", "closed-set top-1 identification")):
        for k, rec in enumerate(recognizers):
            ls = styles[k % len(styles)]
            for fam, col in colours.items():
                res = sorted((r for r in rows if r["family"] == fam), key=lambda r: -num(r["face_psnr_db"]))
                if res:
                    ax.plot([num(r["face_psnr_db"]) for r in res], [100 * float(r[f"{rec}_{key}"]) for r in res],
                            ls, color=col, marker="o", ms=3, label=f"{fam} ({rec})")
            tested = [r for r in rows if int(r["under_test"])]
            for j, r in enumerate(tested):
                ax.plot([num(r["face_psnr_db"])], [100 * float(r[f"{rec}_{key}"])], markers[j % len(markers)],
                        ms=13 - 4 * k, mfc="none" if k else "k", mec="k" if k == 0 else "tab:red", mew=1.5,
                        label=f"{r['method']} ({rec})")
            none = next((r for r in rows if r["family"] == "none"), None)
            if none is not None:
                ax.axhline(100 * float(none[f"{rec}_{key}"]), color="grey", ls=ls, lw=0.8, label=f"clean ({rec})")
        if key == "self_match":
            ax.axhline(100 * SELF_MATCH_LEVEL, color="red", lw=0.6, ls=":", label="5 %")
        else:
            ax.axhline(100.0 / identities, color="red", lw=0.6, ls=":", label="chance")
        ax.set_title(label)
        ax.set_xlabel("face-region PSNR (dB)")
        ax.set_ylabel("%")
        ax.set_ylim(-3, 103)
        if finite:
            ax.set_xlim(min(finite) - 1, max(finite) + 1)
        ax.invert_xaxis()  # stronger filters to the right
        ax.grid(alpha=0.3)
    # One legend for both panels, below them, so it hides no curve.
    handles, labels = axes[0].get_legend_handles_labels()
    h1, l1 = axes[1].get_legend_handles_labels()
    handles += [h for h, lab in zip(h1, l1) if lab == "chance"]
    labels += ["chance"] if "chance" in l1 else []
    fig.legend(handles, labels, loc="lower center", ncol=6, fontsize=8, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(report: EvalReport, out_dir: Path) -> None:
    """eval.md, eval.csv (+ pulse.csv) and eval.png, each written whole then renamed."""
    out_dir = Path(out_dir)

    def atomic(name: str, write: Callable[[Path], None]) -> None:
        final = out_dir / name
        tmp = out_dir / f".{name}.partial{final.suffix}"
        try:
            write(tmp)
            tmp.replace(final)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise UserError(f"cannot write {final}: {exc.strerror or exc}") from None

    def write_csv(rows: list[dict]):
        def w(path: Path):
            with open(path, "w", newline="") as f:
                wr = csv.DictWriter(f, fieldnames=list(rows[0]))
                wr.writeheader()
                wr.writerows(rows)
        return w

    atomic("eval.md", lambda p: p.write_text(markdown(report)))
    atomic("eval.csv", write_csv(csv_rows(report)))
    if report.pulse:
        atomic("pulse.csv", write_csv([{**r, **{k: " ".join(f"{x:g}" for x in r[k]) for k in ("hr_bpm", "clean_bpm")}}
                                       for r in report.pulse]))
    atomic("eval.png", lambda p: plot(report, p))
