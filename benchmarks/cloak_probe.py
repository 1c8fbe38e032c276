"""The personal cloak on unseen photos: enrol on half of a person's photos, verify on the
other half.

    python benchmarks/cloak_probe.py [--steps N] [--recipe NAME] [--loo] [--codec 1500,600]

For each celebrity with at least ``--min-photos`` photos (9 people in ../shared/data), the
first half of their photos (rounded up; natural name order) are the enrolment: their
aligned crops are what :func:`livedeid.cloak.optimise.optimise_cloak` sees. The other half
are probes the optimisation never saw; :func:`livedeid.cloak.verify.verify_cloak` cloaks
each through the run-time path (alignment, crop warp, composite under the face oval) and
judges it with the real recognisers (``--judges``, default dlib, SFace and faceres; a judge
outside the optimised ``--recognizers`` measures transfer) against the enrolment half,
clean (the attacker's gallery). The clean baseline is the same verification of a zero pattern. ``--loo`` adds
leave-one-out transfer: a cloak optimised against one recogniser alone, judged by the other.
``--codec 1500,600`` adds what a video call's codec does: see :func:`codec_verify`.

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


def codec_key(kind: str, kbps: float) -> str:
    """``"cloak_h264_1500"``: the row key of ``kind`` ("cloak" or "clean") after H.264 at ``kbps``."""
    return f"{kind}_h264_{int(kbps) if float(kbps).is_integer() else kbps}"


def parse_kbps(text: str) -> list[float]:
    """``"1500,600"`` -> [1500.0, 600.0]; argparse turns the ValueError into a usage error."""
    out = [float(t) for t in text.split(",") if t.strip()]
    if not out or any(not k > 0 for k in out):
        raise ValueError(text)
    return out


def codec_verify(pattern, probes, gallery, judges, kbps_list, grow: float = 0.0, frames: int = 15) -> dict:
    """The cloak after a video call's codec: ``{codec_key("cloak"|"clean", kbps): figures}``.

    Each probe is cloaked through the run-time path (:func:`~livedeid.cloak.verify.cloak_image`),
    then sent through :func:`~livedeid.evaluation.codec.h264_roundtrip` at each bitrate (a
    720p call frame, the photo letterboxed in it). "clean" is the zero pattern through the
    same path and codec, so the table separates what the codec alone does from what the
    cloak adds. Judged by :func:`~livedeid.cloak.verify.judge_outputs` against the clean
    gallery (the attacker's photos are not re-encoded). The reference of each pair (the
    clean probe: same-photo match, PSNR/SSIM, which probes count as found) is the clean
    photo *before* the codec: the attacker holding that photo is the threat, and PSNR is
    then the call's total damage to the face (codec + cloak). A probe's clean and cloaked
    versions share one seed (the same webcam motion and noise), seeds differ across probes."""
    import numpy as np

    from livedeid.cloak.verify import cloak_image, judge_outputs
    from livedeid.evaluation.codec import h264_roundtrip
    from livedeid.tracking.still import still_landmarks

    zero = np.zeros_like(pattern)
    cloaked = []  # (probe index, clean photo, cloaked, zero-pattern output, region)
    for i, img in enumerate(probes):
        lm = still_landmarks(img)
        out, region = cloak_image(img, pattern, landmarks=lm, grow=grow) if lm is not None else (None, None)
        if out is not None and region is not None:
            plain, _ = cloak_image(img, zero, landmarks=lm, grow=grow)
            cloaked.append((i, img, out, plain, region))
    result = {}
    for kbps in kbps_list:
        for kind, pick in (("clean", 3), ("cloak", 2)):
            pairs = [(c[1], h264_roundtrip(c[pick], kbps, frames=frames, seed=c[0]), c[4]) for c in cloaked]
            result[codec_key(kind, kbps)] = judge_outputs(pairs, gallery, judges, probes=len(probes))
    return result


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


def _label(key: str) -> str:
    """The method column of a row key: "cloak_h264_1500" -> "cloak h264 1500k"; others as they are."""
    kind, sep, kbps = key.partition("_h264_")
    return f"{kind} h264 {kbps}k" if sep else key


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
        for key in result.get("codec", {}).get("keys", []):
            row(p["person"], counts, _label(key), "", p[key])
    for key, v in result["pooled"].items():
        row("**pooled**", "", _label(key), "", v)
    lines += ["", "gallery = cloaked probe matches the centre of the clean enrolment photos' embeddings at the "
              "recogniser's threshold; same-photo = matches its own clean version; det = the recogniser still "
              "finds the face (match rates are over the faces found). 'only X' = optimised against X alone "
              "(leave-one-out transfer: read the other recogniser's columns)."]
    if "codec" in result:
        lines += ["", "h264 NNNk = the cloaked (or, for clean, zero-pattern) probe sent through a 720p H.264 call "
                  "clip at NNN kbit/s (livedeid.evaluation.codec) and judged against the clean gallery; same-photo "
                  "and PSNR/SSIM compare it with the clean photo before the codec (codec + cloak together). "
                  f"Codec settings: `{json.dumps({k: v for k, v in result['codec'].items() if k != 'keys'})}`"]
    return "\n".join(lines) + "\n"


# long: argument handling, the per-person loop and the report are one straight script
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--faces", default=str(ROOT.parent / "shared" / "data" / "faces" / "celebrities"))
    ap.add_argument("--min-photos", type=int, default=4)
    ap.add_argument("--people", type=int, default=0, help="only the first N qualifying people (0 = all)")
    ap.add_argument("--recipe", default="default", help="name of the result files")
    ap.add_argument("--steps", type=int, default=None, help="optimisation steps (default: the optimiser's)")
    ap.add_argument("--budget", type=float, default=12.0, help="L-inf budget in 8-bit levels (default: enrolment's, 12)")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--margin", type=float, default=None)
    ap.add_argument("--ssim-weight", type=float, default=None)
    ap.add_argument("--own-weight", type=float, default=None)
    ap.add_argument("--jpeg-share", type=float, default=None)
    ap.add_argument("--check-every", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--recognizers", default="dlib,sface", help="the ensemble the cloak is optimised against")
    ap.add_argument("--judges", default="dlib,sface,faceres",
                    help="the recognisers that verify it (one outside the ensemble measures transfer)")
    ap.add_argument("--grow", type=float, default=None, help="the cloak's region: the face oval scaled by 1 + this")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="any other CloakSettings field (JSON value), e.g. --set pulse_weight=1.0")
    ap.add_argument("--loo", action="store_true", help="also leave-one-out transfer (dlib alone, SFace alone)")
    ap.add_argument("--codec", type=parse_kbps, default=None, metavar="KBPS[,KBPS...]",
                    help="also verify after a 720p H.264 call at these bitrates (kbit/s), e.g. 1500,600")
    ap.add_argument("--codec-frames", type=int, default=15,
                    help="length of the H.264 clip; its last frame is judged (longer = nearer steady state)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cloak_probe"))
    args = ap.parse_args(argv)

    import dataclasses

    import numpy as np

    from livedeid.cloak.optimise import CloakSettings, optimise_cloak
    from livedeid.cloak.verify import verify_cloak
    from livedeid.evaluation.photos import identity_photos, read_image

    s = CloakSettings(budget=args.budget / 255.0, threads=args.threads,
                      recognizers=tuple(n for n in args.recognizers.split(",") if n))
    if args.steps is not None:
        s.steps = args.steps
    judges = [n for n in args.judges.split(",") if n]
    for item in args.set:
        key, _, value = item.partition("=")
        if not hasattr(s, key):
            ap.error(f"--set: CloakSettings has no field {key!r}")
        setattr(s, key, json.loads(value))
    if args.grow is not None:
        s.grow = args.grow
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
               "cloak": verify_cloak(res.pattern, probes, enrol, judges, grow=s.grow),
               "clean": verify_cloak(np.zeros_like(res.pattern), probes, enrol, judges, grow=s.grow)}
        if args.loo:
            for only in ("dlib", "sface"):
                t1 = time.perf_counter()
                r1 = optimise_cloak(crops, dataclasses.replace(s, recognizers=(only,)), landmarks=lms)
                row[f"loo_{only}_seconds"] = time.perf_counter() - t1
                row[f"loo_{only}"] = verify_cloak(r1.pattern, probes, enrol, judges, grow=s.grow)
        if args.codec:
            row.update(codec_verify(res.pattern, probes, enrol, judges, args.codec, grow=s.grow,
                                    frames=args.codec_frames))
            gh = {k: {n: round(v["gallery_match"], 2) for n, v in row[k]["recognizers"].items()}
                  for k in row if "_h264_" in k}
            print(f"  after H.264: gallery {gh}", flush=True)
        rows.append(row)
        g = {n: round(v["gallery_match"], 2) for n, v in row["cloak"]["recognizers"].items()}
        print(f"{person}: {row['seconds']:.0f} s, gallery {g}, PSNR {row['cloak']['psnr_db']:.1f}", flush=True)
    codec_keys = [codec_key(kind, k) for k in args.codec or [] for kind in ("clean", "cloak")]
    keys = ["clean", "cloak"] + (["loo_dlib", "loo_sface"] if args.loo else []) + codec_keys
    result = {"recipe": args.recipe, "command": "python benchmarks/cloak_probe.py " + " ".join(argv or sys.argv[1:]),
              "settings": dataclasses.asdict(s), "people": rows, "pooled": {k: pooled(rows, k) for k in keys}}
    if args.codec:
        result["codec"] = {"kbps": args.codec, "frames": args.codec_frames, "size": [1280, 720], "fps": 30,
                           "reference": "clean photo before the codec", "keys": codec_keys}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.recipe}.json").write_text(json.dumps(result, indent=1, default=float))
    (out / f"{args.recipe}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
