"""The personal cloak on unseen photos: enrol on half of a person's photos, verify on the
other half.

    python benchmarks/cloak_probe.py [--steps 60] [--recipe NAME] [--loo]

For each celebrity with at least ``--min-photos`` photos (9 people in ../shared/data), the
first half of their photos (rounded up; natural name order) are the enrolment: their
aligned crops are what :func:`livedeid.cloak.optimise.optimise_cloak` sees. The other half
are probes the optimisation never saw; :func:`livedeid.cloak.verify.verify_cloak` cloaks
each through the run-time path (alignment, crop warp, composite under the face oval) and
judges it with the real dlib and SFace against the enrolment half, clean (the attacker's
gallery). The clean baseline is the same verification of a zero pattern. ``--loo`` adds
leave-one-out transfer: a cloak optimised against one recogniser alone, judged by the other.

Writes ``benchmarks/results/cloak_probe/<recipe>.md`` and ``.json``: per person and pooled
(over probes), gallery match (vs the centre of the clean gallery) and same-photo match per
recogniser, detection, face PSNR/SSIM, seconds of optimisation.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def enrolment_crops(images, crop_size: int = 128):
    """(crops (N, 3, S, S), landmarks in crop pixels) of the photos where the mesh finds a face."""
    import numpy as np

    from livedeid.core.geometry import apply_affine
    from livedeid.protect.windows import extract_crop
    from livedeid.tracking.mesh import alignment
    from livedeid.tracking.still import still_landmarks

    crops, lms = [], []
    for img in images:
        lm = still_landmarks(img)
        if lm is None:
            continue
        to_crop, _, _ = alignment(lm, crop_size)
        crops.append(extract_crop(img, to_crop, crop_size))
        lms.append(apply_affine(to_crop, lm))
    return np.stack(crops), lms


def pooled(rows: list[dict], key: str) -> dict:
    """Probe-weighted pooling of the per-person verification ``rows[i][key]``."""
    import numpy as np

    out = {}
    for name in rows[0][key]["recognizers"]:
        found = [r[key]["recognizers"][name]["probes"] for r in rows]
        det = [r[key]["recognizers"][name]["detection"] for r in rows]
        hit = [f * d if f else 0.0 for f, d in zip(found, det)]
        agg = {"probes": int(sum(found)), "detection": sum(hit) / max(sum(found), 1)}
        for m in ("gallery_match", "gallery_any_match", "same_photo_match"):
            vals = [r[key]["recognizers"][name][m] for r in rows]
            agg[m] = sum(v * h for v, h in zip(vals, hit) if h) / max(sum(hit), 1e-9)
        clean = [r[key]["recognizers"][name]["clean_gallery_match"] for r in rows]
        agg["clean_gallery_match"] = sum(v * f for v, f in zip(clean, found) if f) / max(sum(found), 1)
        out[name] = agg
    mses = [(255.0 ** 2) / 10 ** (r[key]["psnr_db"] / 10) * r[key]["cloaked"] for r in rows
            if np.isfinite(r[key]["psnr_db"])]
    n = sum(r[key]["cloaked"] for r in rows if np.isfinite(r[key]["psnr_db"]))
    psnr = float(10 * np.log10(255.0 ** 2 / (sum(mses) / n))) if mses and sum(mses) > 0 else float("inf")
    ssim = float(np.average([r[key]["ssim"] for r in rows], weights=[r[key]["cloaked"] for r in rows]))
    return {"recognizers": out, "psnr_db": psnr, "ssim": ssim}


def _pct(x) -> str:
    return "-" if x is None or x != x else f"{100 * x:.0f} %"


def markdown(result: dict) -> str:
    names = list(result["pooled"]["cloak"]["recognizers"])
    head = ["person", "enrol/probe", "method", "s"] + [f"{n} {m}" for n in names for m in ("gallery", "same-photo", "det")]
    lines = [f"# Cloak probe: {result['recipe']}", "", f"`{result['command']}`", "",
             f"Settings: `{json.dumps(result['settings'])}`", "",
             "| " + " | ".join(head + ["PSNR dB", "SSIM"]) + " |", "|" + "---|" * (len(head) + 2)]

    def row(label, counts, method, secs, v):
        cells = [label, counts, method, secs]
        for n in names:
            r = v["recognizers"][n]
            cells += [_pct(r["gallery_match"]), _pct(r["same_photo_match"]), _pct(r["detection"])]
        cells += [f"{v['psnr_db']:.1f}", f"{v['ssim']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")

    for p in result["people"]:
        counts = f"{p['enrol']}/{p['probes']}"
        row(p["person"], counts, "clean", "", p["clean"])
        row(p["person"], counts, "cloak", f"{p['seconds']:.0f}", p["cloak"])
        for key in ("loo_dlib", "loo_sface"):
            if key in p:
                row(p["person"], counts, key.replace("loo_", "only "), f"{p[key + '_seconds']:.0f}", p[key])
    for key, v in result["pooled"].items():
        row("**pooled**", "", key, "", v)
    lines += ["", "gallery = cloaked probe matches the centre of the clean enrolment photos' embeddings at the "
              "recogniser's threshold; same-photo = matches its own clean version; det = the recogniser still "
              "finds the face (match rates are over the faces found). 'only X' = optimised against X alone "
              "(leave-one-out transfer: read the other recogniser's columns)."]
    return "\n".join(lines) + "\n"


# long: argument handling, the per-person loop and the report are one straight script
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--faces", default=str(ROOT.parent / "shared" / "data" / "faces" / "celebrities"))
    ap.add_argument("--min-photos", type=int, default=4)
    ap.add_argument("--people", type=int, default=0, help="only the first N qualifying people (0 = all)")
    ap.add_argument("--recipe", default="default", help="name of the result files")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--budget", type=float, default=8.0, help="L-inf budget in 8-bit levels")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--margin", type=float, default=None)
    ap.add_argument("--ssim-weight", type=float, default=None)
    ap.add_argument("--own-weight", type=float, default=None)
    ap.add_argument("--jpeg-share", type=float, default=None)
    ap.add_argument("--check-every", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--loo", action="store_true", help="also leave-one-out transfer (dlib alone, SFace alone)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cloak_probe"))
    args = ap.parse_args(argv)

    import dataclasses

    import numpy as np

    from livedeid.cloak.optimise import CloakSettings, optimise_cloak
    from livedeid.cloak.verify import verify_cloak
    from livedeid.evaluation.photos import identity_photos, read_image

    s = CloakSettings(steps=args.steps, budget=args.budget / 255.0, threads=args.threads)
    for field, value in (("lr", args.lr), ("batch", args.batch), ("margin", args.margin),
                         ("ssim_weight", args.ssim_weight), ("check_every", args.check_every),
                         ("own_weight", args.own_weight)):
        if value is not None:
            setattr(s, field, value)
    if args.jpeg_share is not None:
        s.eot.jpeg_share = args.jpeg_share
    by_person: dict[str, list] = {}
    for sample in identity_photos(Path(args.faces)):
        by_person.setdefault(sample.identity, []).append(sample.path)
    people = [(k, v) for k, v in sorted(by_person.items()) if len(v) >= args.min_photos]
    if args.people:
        people = people[:args.people]
    def show(entry):
        match = {n: v["plain"]["centre"] for n, v in entry["held_out_match"].items()}
        print(f"  step {entry['step']}: {entry['seconds']:.0f} s, loss {entry['loss']:.3f}, enrolment match {match}",
              flush=True)

    rows = []
    for person, paths in people:
        images = [read_image(p) for p in paths]
        k = (len(images) + 1) // 2
        enrol, probes = images[:k], images[k:]
        crops, lms = enrolment_crops(enrol)
        t0 = time.perf_counter()
        res = optimise_cloak(crops, s, landmarks=lms, progress=show)
        row = {"person": person, "enrol": k, "probes": len(probes), "seconds": time.perf_counter() - t0,
               "stopped_early": res.stopped_early, "history": res.history,
               "pattern_max": float(np.abs(res.pattern).max() * 255),
               "cloak": verify_cloak(res.pattern, probes, enrol, grow=s.grow),
               "clean": verify_cloak(np.zeros_like(res.pattern), probes, enrol, grow=s.grow)}
        if args.loo:
            for only in ("dlib", "sface"):
                t1 = time.perf_counter()
                r1 = optimise_cloak(crops, dataclasses.replace(s, recognizers=(only,)), landmarks=lms)
                row[f"loo_{only}_seconds"] = time.perf_counter() - t1
                row[f"loo_{only}"] = verify_cloak(r1.pattern, probes, enrol, grow=s.grow)
        rows.append(row)
        g = {n: round(v["gallery_match"], 2) for n, v in row["cloak"]["recognizers"].items()}
        print(f"{person}: {row['seconds']:.0f} s, gallery {g}, PSNR {row['cloak']['psnr_db']:.1f}", flush=True)
    keys = ["clean", "cloak"] + (["loo_dlib", "loo_sface"] if args.loo else [])
    result = {"recipe": args.recipe, "command": "python benchmarks/cloak_probe.py " + " ".join(argv or sys.argv[1:]),
              "settings": dataclasses.asdict(s), "people": rows, "pooled": {k: pooled(rows, k) for k in keys}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.recipe}.json").write_text(json.dumps(result, indent=1, default=float))
    (out / f"{args.recipe}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
