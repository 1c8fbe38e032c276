"""The personal cloak's second form on the cloak probe's protocol: the generic model
fine-tuned on each person's enrolment crops (:mod:`livedeid.cloak.finetune`), measured
through the real run-time path, beside the generic model as shipped.

    python benchmarks/cloak_finetune.py [--only id06,id07] [--steps N] [--lr X] [--recipe NAME] [--out DIR]

Protocol (:mod:`livedeid.cloak.protocol`): every person with ``--min-photos`` photos or
more enrols on the first half of their photos (natural name order) and is probed on the
other half. Each probe runs through the frame processor with the model as its engine
(:class:`~livedeid.evaluation.baselines.ModelMethod`: the photo as a window of identical
frames, tracking, crop warp, the model, the composite under the face oval, fail-closed)
and is judged by :func:`~livedeid.cloak.verify.judge_outputs`, the figures of
``verify_cloak``'s table: gallery match (against the centre of the clean enrolment
photos), same-photo match, closed-set top-1 among every identity's centre, detection, and
face PSNR/SSIM on the face oval (the model's region; the static cloak's is the oval grown
by its ``grow``).

Rows per person: ``clean`` (the unprotected probes), ``generic`` (the shipped weights at
their own bound), ``generic NN/255`` (the same weights with the residual bound raised to the
fine-tuning budget, i.e. where fine-tuning starts; only when the two bounds differ) and
``finetuned``. Writes ``benchmarks/results/cloak_finetune/<recipe>.md`` and ``.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from livedeid.core import strict_json  # noqa: E402

LABELS = {"clean": "clean", "generic": "generic", "generic_budget": "generic {budget}/255", "finetuned": "finetuned"}


def judge_model(module, spec, probes: list, regions: list, gallery: list, judges: list, others: dict | None,
                name: str) -> dict:
    """``judge_outputs``' figures of ``module`` as the pipeline's engine on the probes
    (``regions[i]``: probe i's face oval, None where the mesh finds no face: not counted as
    protected), plus how many photos the processor hid (fail-closed) or did not track."""
    from livedeid.cloak.verify import judge_outputs
    from livedeid.evaluation.baselines import ModelMethod
    from livedeid.training.heldout import ModuleEngine

    method = ModelMethod(spec=spec, engine=ModuleEngine(spec, module), name=name)
    pairs = [(img, method.apply(img, r, i), r) for i, (img, r) in enumerate(zip(probes, regions)) if r is not None]
    figures = judge_outputs(pairs, gallery, judges, probes=len(probes), others=others)
    return {**figures, "fail_closed_images": method.fail_closed_images, "untracked_images": method.untracked_images}


def _pct(x) -> str:
    return "-" if x is None or x != x else f"{100 * x:.0f} %"


def markdown(result: dict) -> str:
    """The cloak probe's table (``benchmarks/results/cloak_probe/*.md``) with this benchmark's rows."""
    names = result["judges"]
    budget = f"{result['settings']['budget'] * 255:g}"
    head = ["person", "enrol/probe", "method", "s"] + [f"{n} {m}" for n in names
                                                       for m in ("gallery", "same-photo", "top-1", "det")]
    lines = [f"# Cloak fine-tune: {result['recipe']}", "", f"`{result['command']}`", "",
             f"Settings: `{json.dumps(result['settings'])}`", "",
             "| " + " | ".join(head + ["PSNR dB", "SSIM", "hidden"]) + " |", "|" + "---|" * (len(head) + 3)]

    def row(label, counts, key, secs, v):
        cells = [label, counts, LABELS[key].format(budget=budget), secs]
        for n in names:
            r = v["recognizers"][n]
            cells += [_pct(r["gallery_match"]), _pct(r["same_photo_match"]), _pct(r.get("top1")), _pct(r["detection"])]
        psnr = v["psnr_db"]
        cells += ["inf" if psnr is None or psnr == float("inf") else f"{psnr:.1f}", f"{v['ssim']:.3f}",
                  str(v.get("fail_closed_images", ""))]
        lines.append("| " + " | ".join(cells) + " |")

    for p in result["people"]:
        for key in result["keys"]:
            row(p["person"], f"{p['enrol']}/{p['probes']}", key, f"{p['seconds']:.0f}" if key == "finetuned" else "",
                p[key])
    for key, v in result["pooled"].items():
        row("**pooled**", "", key, "", v)
    lines += ["", "gallery = the protected probe matches the centre of the clean enrolment photos' embeddings at "
              "the recogniser's threshold; same-photo = matches its own clean version; top-1 = the person's own "
              "centre scores best among every identity's ('-': not measured); det = the recogniser still finds "
              "the face (match rates are over the faces found); s = seconds of fine-tuning; hidden = probes the "
              "pipeline hid (fail-closed). Every protected probe went through the frame processor with the model "
              "as its engine (a photo = a window of identical frames); PSNR/SSIM on the face oval, the model's "
              "region (the static cloak's tables measure the oval grown by its `grow`)."]
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    from livedeid.cloak.protocol import add_protocol_options

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_protocol_options(ap, ROOT.parent / "shared" / "data" / "faces" / "celebrities")
    ap.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default: FinetuneSettings')")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--budget", type=float, default=12.0, help="L-inf bound of the residual, 8-bit levels")
    ap.add_argument("--margin", type=float, default=None)
    ap.add_argument("--own-weight", type=float, default=None)
    ap.add_argument("--ssim-weight", type=float, default=None)
    ap.add_argument("--check-every", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--recognizers", default="dlib,sface", help="the ensemble the model is fine-tuned against")
    ap.add_argument("--judges", default="dlib,sface,faceres", help="the recognisers that judge the probes")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="any other FinetuneSettings field (JSON value), e.g. --set frame_noise=0")
    ap.add_argument("--eot", action="append", default=[], metavar="FIELD=VALUE",
                    help="any EotSettings field (JSON value), e.g. --eot jpeg_share=0")
    ap.add_argument("--no-top1", action="store_true",
                    help="skip closed-set top-1 (saves embedding every identity's photos; quick runs)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cloak_finetune"))
    return ap


def settings_from(args, ap):
    from livedeid.cloak.finetune import FinetuneSettings

    s = FinetuneSettings(budget=args.budget / 255.0, threads=args.threads, seed=args.seed,
                         recognizers=tuple(n for n in args.recognizers.split(",") if n))
    for attr in ("steps", "lr", "batch", "margin", "own_weight", "ssim_weight", "check_every"):
        if getattr(args, attr) is not None:
            setattr(s, attr, getattr(args, attr))
    for target, items, flag in ((s, args.set, "--set"), (s.eot, args.eot, "--eot")):
        for item in items:
            key, _, value = item.partition("=")
            if not hasattr(target, key) or key == "eot":
                ap.error(f"{flag}: {type(target).__name__} has no settable field {key!r}")
            value = json.loads(value)
            setattr(target, key, tuple(value) if isinstance(value, list) else value)
    return s


# long: the per-person loop (split, fine-tune, four judged rows, progress) reads best whole
def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    s = settings_from(args, ap)
    judges = [n for n in args.judges.split(",") if n]
    say = lambda t: print(t, flush=True)  # noqa: E731

    import torch

    from livedeid.cloak.finetune import BudgetedModel, finetune_autoencoder
    from livedeid.cloak.protocol import (
        choose_people,
        enrolment_crops,
        identity_centres,
        others_of,
        pooled,
        split_photos,
    )
    from livedeid.cloak.verify import judge_outputs
    from livedeid.evaluation.baselines import find_region
    from livedeid.inference.manifest import load_spec, verified_file
    from livedeid.nets.autoencoder import load_weights

    torch.set_num_threads(max(1, args.threads))
    spec = load_spec()
    weights = verified_file(spec, "weights")
    generic = load_weights(weights, spec.window, spec.max_perturbation)
    raised = abs(s.budget - spec.max_perturbation) > 1e-9
    run_spec = dataclasses.replace(spec, max_perturbation=s.budget)
    start = load_weights(weights, spec.window, s.budget)  # the generic weights, residual bound = the budget
    keys = ["clean", "generic"] + (["generic_budget"] if raised else []) + ["finetuned"]
    by_person, chosen = choose_people(Path(args.faces), args.min_photos, args.only, args.people)
    centres = {}
    if not args.no_top1:
        say(f"gallery centres of {len(by_person)} identities for top-1 ...")
        centres = identity_centres(by_person, judges)

    def show(entry):
        match = {n: v["plain"]["centre"] for n, v in entry["enrol_match"].items()}
        say(f"  step {entry['step']}: {entry['seconds']:.0f} s, loss {entry['loss']:.3f}, enrolment match {match}")

    rows = []
    for person, paths in chosen:
        enrol, probes = split_photos(paths)
        k = len(enrol)
        others = others_of(centres, person) or None
        regions = [find_region(img) for img in probes]
        crops, lms = enrolment_crops(enrol, spec.crop_size)
        say(f"{person}: {len(crops)} enrolment crops, {len(probes)} probes; fine-tuning {s.steps} steps ...")
        res = finetune_autoencoder(start, crops, lms, s, progress=show)
        row = {"person": person, "enrol": k, "probes": len(probes), "enrol_crops": len(crops),
               "seconds": res.seconds, "setup_seconds": res.setup_seconds, "history": res.history,
               "clean": judge_outputs([(img, img, r) for img, r in zip(probes, regions) if r is not None],
                                      enrol, judges, probes=len(probes), others=others)}
        per_step = (res.seconds - res.setup_seconds) / s.steps
        say(f"  fine-tuning took {res.seconds:.1f} s ({res.setup_seconds:.1f} s loading the heads, "
            f"{per_step:.2f} s/step with the checks); judging ...")
        models = {"generic": (spec, generic), "generic_budget": (run_spec, BudgetedModel(start, s.budget)),
                  "finetuned": (run_spec, res.module)}
        for key in keys[1:]:
            row[key] = judge_model(models[key][1], models[key][0], probes, regions, enrol, judges, others, key)
        rows.append(row)
        g = {key: {n: round(row[key]["recognizers"][n]["gallery_match"], 2) for n in judges} for key in keys[1:]}
        say(f"{person}: fine-tuned in {res.seconds:.0f} s; gallery match {g}; "
            f"PSNR finetuned {row['finetuned']['psnr_db']:.1f} dB")
    result = {"recipe": args.recipe, "command": "python benchmarks/cloak_finetune.py " + " ".join(
        argv if argv is not None else sys.argv[1:]), "settings": dataclasses.asdict(s), "judges": judges,
              "model": {"weights_sha256": spec.weights_sha256, "window": spec.window, "crop_size": spec.crop_size,
                        "shipped_max_perturbation": spec.max_perturbation},
              "keys": keys, "people": rows, "pooled": {key: pooled(rows, key) for key in keys}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.recipe}.json").write_text(strict_json.dumps(result, indent=1, default=float))
    (out / f"{args.recipe}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
