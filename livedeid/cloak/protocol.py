"""The personal cloak's evaluation protocol on identity-labelled photos (``livedeid eval
--cloak``, ``benchmarks/cloak_probe.py``): for each person with at least ``min_photos``
photos, enrol on the first half (natural name order; their aligned crops are what
:func:`livedeid.cloak.optimise.optimise_cloak` sees), and verify on the other half, which
the optimisation never saw: each probe is cloaked through the run-time path (alignment,
crop warp, composite under the grown face oval) and judged by the real recognisers
(``judges``; one outside the optimised ensemble measures transfer) against the enrolment
half, clean (the attacker's gallery). The clean baseline is the same verification of a
zero pattern. Optional: leave-one-out transfer (for each recogniser of the ensemble, a
cloak optimised against the others only, judged by all: the left-out one then stands
for a recogniser the cloak has never seen) and the probes after a 720p H.264 call
(:func:`livedeid.evaluation.codec.h264_roundtrip`).

Per person and pooled over probes: gallery match (vs the centre of the clean gallery)
and same-photo match per recogniser, detection, face PSNR/SSIM, seconds of optimisation.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from livedeid.core import strict_json
from livedeid.core.errors import UserError


def enrolment_crops(images, crop_size: int = 128):
    """(crops (N, 3, S, S), landmarks in crop pixels) of the photos where the mesh finds a face."""
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


def codec_verify(pattern, probes, gallery, judges, kbps_list, grow: float = 0.0, frames: int = 15,
                 layout=None) -> dict:
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
    from livedeid.cloak.verify import cloak_image, judge_outputs
    from livedeid.evaluation.codec import h264_roundtrip
    from livedeid.tracking.still import still_landmarks

    zero = np.zeros_like(pattern)
    cloaked = []  # (probe index, clean photo, cloaked, zero-pattern output, region)
    for i, img in enumerate(probes):
        lm = still_landmarks(img)
        out, region = cloak_image(img, pattern, landmarks=lm, grow=grow, layout=layout) if lm is not None else (None, None)
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
    out = {}
    for name in rows[0][key]["recognizers"]:
        found = [r[key]["recognizers"][name]["probes"] for r in rows]
        det = [r[key]["recognizers"][name]["detection"] for r in rows]
        hit = [f * d if f else 0.0 for f, d in zip(found, det)]
        agg = {"probes": int(sum(found)), "detection": sum(hit) / max(sum(found), 1)}
        for m in ("gallery_match", "gallery_any_match", "same_photo_match", "top1"):
            if not all(m in r[key]["recognizers"][name] for r in rows):
                continue  # top-1 only where every identity's centre was given
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


def loo_keys(ensemble) -> dict[str, tuple[str, ...]]:
    """Leave-one-out runs of an ensemble: row key -> the recognisers optimised against
    ("loo_no_sface" -> ("dlib",) for dlib + SFace). None for an ensemble of one."""
    ensemble = tuple(ensemble)
    if len(ensemble) < 2:
        return {}
    return {f"loo_no_{name}": tuple(n for n in ensemble if n != name) for name in ensemble}


def _label(key: str) -> str:
    """The method column of a row key: "cloak_h264_1500" -> "cloak h264 1500k",
    "loo_no_sface" -> "without sface"; others as they are."""
    kind, sep, kbps = key.partition("_h264_")
    if sep:
        return f"{kind} h264 {kbps}k"
    return "without " + key[len("loo_no_"):] if key.startswith("loo_no_") else key


def _pct(x) -> str:
    return "-" if x is None or x != x else f"{100 * x:.0f} %"


def markdown(result: dict) -> str:
    names = list(result["pooled"]["cloak"]["recognizers"])
    head = ["person", "enrol/probe", "method", "s"] + [f"{n} {m}" for n in names
                                                       for m in ("gallery", "same-photo", "top-1", "det")]
    lines = [f"# Cloak probe: {result.get('recipe', 'cloak')}", "", f"`{result.get('command', '')}`", "",
             f"Settings: `{json.dumps(result['settings'])}`", "",
             "| " + " | ".join(head + ["PSNR dB", "SSIM"]) + " |", "|" + "---|" * (len(head) + 2)]

    def row(label, counts, method, secs, v):
        cells = [label, counts, method, secs]
        for n in names:
            r = v["recognizers"][n]
            cells += [_pct(r["gallery_match"]), _pct(r["same_photo_match"]), _pct(r.get("top1")), _pct(r["detection"])]
        cells += [f"{v['psnr_db']:.1f}", f"{v['ssim']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")

    for p in result["people"]:
        counts = f"{p['enrol']}/{p['probes']}"
        row(p["person"], counts, "clean", "", p["clean"])
        row(p["person"], counts, "cloak", f"{p['seconds']:.0f}", p["cloak"])
        for key in loo_keys(result["settings"]["recognizers"]):
            if key in p:
                row(p["person"], counts, _label(key), f"{p[key + '_seconds']:.0f}", p[key])
        for key in result.get("codec", {}).get("keys", []):
            row(p["person"], counts, _label(key), "", p[key])
    for key, v in result["pooled"].items():
        row("**pooled**", "", _label(key), "", v)
    lines += ["", "gallery = cloaked probe matches the centre of the clean enrolment photos' embeddings at the "
              "recogniser's threshold; same-photo = matches its own clean version; top-1 = the person's own centre "
              "scores best among every identity's (chance: one over the identities; '-' where not measured); "
              "det = the recogniser still "
              "finds the face (match rates are over the faces found). 'without X' = optimised against the "
              "ensemble without X (leave-one-out transfer: read X's columns)."]
    if "codec" in result:
        lines += ["", "h264 NNNk = the cloaked (or, for clean, zero-pattern) probe sent through a 720p H.264 call "
                  "clip at NNN kbit/s (livedeid.evaluation.codec) and judged against the clean gallery; same-photo "
                  "and PSNR/SSIM compare it with the clean photo before the codec (codec + cloak together). "
                  f"Codec settings: `{json.dumps({k: v for k, v in result['codec'].items() if k != 'keys'})}`"]
    return "\n".join(lines) + "\n"


def add_protocol_options(ap, faces_default: Path) -> None:
    """The options every benchmark of this protocol takes (an ``argparse`` parser):
    --faces, --min-photos, --people, --only (``args.only`` comes back as a tuple of
    identities) and --recipe (the result files' name)."""
    ap.add_argument("--faces", default=str(faces_default))
    ap.add_argument("--min-photos", type=int, default=4)
    ap.add_argument("--people", type=int, default=0, help="only the first N qualifying people (0 = all)")
    ap.add_argument("--only", default=(), type=lambda text: tuple(n for n in text.split(",") if n),
                    help="only these identities, comma-separated (quick ablations)")
    ap.add_argument("--recipe", default="default", help="name of the result files")


def choose_people(faces: Path, min_photos: int, only: tuple[str, ...], people: int) -> tuple[dict, list]:
    """(every identity -> its photo paths, the (identity, paths) measured): identities with
    at least ``min_photos`` photos, only those named in ``only`` when given, the first
    ``people`` of them (0 = all)."""
    from livedeid.evaluation.photos import identity_photos

    by_person: dict[str, list] = {}
    for sample in identity_photos(Path(faces)):
        by_person.setdefault(sample.identity, []).append(sample.path)
    chosen = [(k, v) for k, v in sorted(by_person.items()) if len(v) >= min_photos]
    unknown = sorted(set(only) - {k for k, _ in chosen})
    if unknown:
        raise UserError(f"no identity with {min_photos} or more photos named {', '.join(unknown)} in {faces}")
    chosen = [(k, v) for k, v in chosen if not only or k in only][:people or None]
    if not chosen:
        raise UserError(f"no identity in {faces} has {min_photos} or more photos")
    return by_person, chosen


def identity_centres(by_person: dict, judges) -> dict:
    """Per judge, every identity's gallery centre from all its photos (closed-set top-1)."""
    from livedeid.cloak.verify import identity_centre
    from livedeid.evaluation.photos import read_image
    from livedeid.recognizers.base import get_recognizer

    recs = {n: get_recognizer(n) for n in judges}
    return {n: {ident: identity_centre(rec, [read_image(p) for p in paths]) for ident, paths in by_person.items()}
            for n, rec in recs.items()}


def others_of(centres: dict, person: str) -> dict:
    """Per judge, the gallery centres of everyone but ``person``."""
    return {n: [c for ident, c in per.items() if ident != person and c is not None] for n, per in centres.items()}


def split_photos(paths) -> tuple[list, list]:
    """(enrolment half, probe half) of a person's photos: the first half (rounded up) enrols."""
    from livedeid.evaluation.photos import read_image

    images = [read_image(p) for p in paths]
    k = (len(images) + 1) // 2
    return images[:k], images[k:]


# long: the per-person loop (optimise, verify, the optional transfer and codec runs) reads best whole
def run_protocol(faces: Path, settings, judges: list[str], *, min_photos: int = 4, people: int = 0,
                 only: tuple[str, ...] = (), loo: bool = False, codec: list[float] | None = None, codec_frames: int = 15,
                 oracle_population: bool = False, say=print) -> dict:
    """The protocol of the module docstring on ``faces`` (identity folders of photos) with
    the optimiser's ``settings`` (:class:`~livedeid.cloak.optimise.CloakSettings`); the
    result: ``settings``, per-person ``people`` rows and ``pooled`` figures per method.
    ``oracle_population``: the person-specific term's population is the other identities'
    enrolment halves, who are also the top-1 gallery: an optimistic bound, not a product
    setting (a product would ship a population of its own)."""
    from livedeid.cloak.optimise import optimise_cloak
    from livedeid.cloak.verify import verify_cloak

    s = settings
    by_person, chosen = choose_people(Path(faces), min_photos, only, people)

    # Closed-set top-1: the attacker's gallery holds every identity. The person under test is
    # represented by their enrolment half (inside verify), everyone else by all their photos.
    say(f"gallery centres of {len(by_person)} identities for top-1 ...")
    centres = identity_centres(by_person, judges)

    def show(entry):
        match = {n: v["plain"]["centre"] for n, v in entry["held_out_match"].items()}
        say(f"  step {entry['step']}: {entry['seconds']:.0f} s, loss {entry['loss']:.3f}, enrolment match {match}")

    halves = {}
    if oracle_population:
        say("population crops (the other identities' enrolment halves) ...")
        halves = {ident: enrolment_crops(split_photos(paths)[0]) for ident, paths in by_person.items()}
    rows = []
    for person, paths in chosen:
        enrol, probes = split_photos(paths)
        k = len(enrol)
        crops, lms = halves[person] if person in halves else enrolment_crops(enrol)
        population = (np.concatenate([c for ident, (c, _) in halves.items() if ident != person and len(c)])
                      if oracle_population else None)
        t0 = time.perf_counter()
        res = optimise_cloak(crops, s, landmarks=lms, progress=show, population=population)
        row = {"person": person, "enrol": k, "probes": len(probes), "seconds": time.perf_counter() - t0,
               "stopped_early": res.stopped_early, "history": res.history,
               "pattern_max": float(np.abs(res.pattern).max() * 255),
               "cloak": verify_cloak(res.pattern, probes, enrol, judges, grow=s.grow, others=others_of(centres, person),
                                     layout=res.layout),
               "clean": verify_cloak(np.zeros_like(res.pattern), probes, enrol, judges, grow=s.grow,
                                     others=others_of(centres, person))}
        if loo:
            for key, ensemble in loo_keys(s.recognizers).items():
                t1 = time.perf_counter()
                r1 = optimise_cloak(crops, dataclasses.replace(s, recognizers=ensemble), landmarks=lms,
                                    population=population)
                row[f"{key}_seconds"] = time.perf_counter() - t1
                row[key] = verify_cloak(r1.pattern, probes, enrol, judges, grow=s.grow, others=others_of(centres, person),
                                        layout=r1.layout)
        if codec:
            row.update(codec_verify(res.pattern, probes, enrol, judges, codec, grow=s.grow, frames=codec_frames,
                                    layout=res.layout))
            gh = {k: {n: round(v["gallery_match"], 2) for n, v in row[k]["recognizers"].items()}
                  for k in row if "_h264_" in k}
            say(f"  after H.264: gallery {gh}")
        rows.append(row)
        g = {n: round(v["gallery_match"], 2) for n, v in row["cloak"]["recognizers"].items()}
        say(f"{person}: {row['seconds']:.0f} s, gallery {g}, PSNR {row['cloak']['psnr_db']:.1f}")
    codec_keys = [codec_key(kind, k) for k in codec or [] for kind in ("clean", "cloak")]
    keys = ["clean", "cloak"] + (list(loo_keys(s.recognizers)) if loo else []) + codec_keys
    result = {"settings": dataclasses.asdict(s), "judges": list(judges), "people": rows,
              "pooled": {k: pooled(rows, k) for k in keys}}
    if codec:
        result["codec"] = {"kbps": list(codec), "frames": codec_frames, "size": [1280, 720], "fps": 30,
                           "reference": "clean photo before the codec", "keys": codec_keys}
    return result


def write_result(result: dict, out: Path, name: str) -> Path:
    """``out/name.json`` and ``out/name.md``; returns the markdown's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(strict_json.dumps(result, indent=1, default=float))
    (out / f"{name}.md").write_text(markdown(result))
    return out / f"{name}.md"
