"""`livedeid eval`, `train`, `export` and `bench`: the developer's commands (torch, data sets,
recognisers), imported only by the command that runs."""
from __future__ import annotations

import sys
from pathlib import Path

from livedeid.core.errors import UserError


# -- eval ----------------------------------------------------------------------------------
def add_eval_parser(sub) -> None:
    ev = sub.add_parser(
        "eval", help="privacy vs utility: face recognisers against the model and baseline filters",
        description="Runs every method (no filter, blur, pixelate, Gaussian noise, JPEG, the product's model, "
                    "folders of anonymised photos) on a folder of identity-labelled photos "
                    "(DATASET/<identity>/*.jpg) and measures face-region PSNR/SSIM and, per face recogniser, "
                    "detection, closed-set top-1, self-match, EER and TAR at FAR 1e-3. Writes eval.md, "
                    "eval.csv and eval.png into --out.")
    ev.add_argument("dataset", type=Path, help="folder of identity sub-folders with face photos")
    ev.add_argument("--out", type=Path, default=Path("eval_out"), help="output folder (default eval_out)")
    ev.add_argument("--sweep", action="store_true",
                    help="also run each baseline family at several strengths (for the PSNR plot)")
    ev.add_argument("--methods", default=None, metavar="LIST",
                    help="comma-separated baselines (default none,blur:2,blur:8,pixelate:8,noise,jpeg:10); "
                         "blur:SIGMA and pixelate:BLOCK per 100 px of face width, noise[:PSNR_dB], jpeg:QUALITY")
    ev.add_argument("--method-dir", type=Path, action="append", metavar="DIR",
                    help="already-anonymised photos with the dataset's layout (repeatable)")
    ev.add_argument("--no-model", action="store_true", help="do not run the product's model")
    ev.add_argument("--model", type=Path, default=None, metavar="MANIFEST",
                    help="model manifest JSON (default: the shipped engines/deid.json)")
    ev.add_argument("--recognizers", default=None, metavar="LIST",
                    help="comma-separated recognisers: dlib,sface (default: every installed one)")
    ev.add_argument("--noise-psnr", type=float, default=None,
                    help="PSNR (dB) of the plain 'noise' baseline (default: the model's, else 32)")
    ev.add_argument("--clips", type=Path, default=None, metavar="DIR",
                    help="pulse videos + truth.json (file -> true HR in bpm) for the heart-rate check")
    ev.add_argument("--synthetic-clips", type=int, default=None, metavar="N",
                    help="heart-rate check on N generated pulse clips (55..110 bpm)")
    ev.add_argument("--per-identity", type=int, default=None, metavar="N",
                    help="use only the first N photos of each identity (natural name order)")
    ev.add_argument("--clip-seconds", type=float, default=12.0, help="length of generated clips (default 12 s)")
    ev.add_argument("--cloak", action="store_true",
                    help="the personal-cloak protocol instead: per person with --min-photos photos, enrol on the "
                         "first half, cloak the other half through the run-time path and judge it against the "
                         "clean first half (gallery match, same-photo match, detection, PSNR/SSIM); writes "
                         "cloak.md and cloak.json (needs the enrol extra; minutes per person)")
    ev.add_argument("--min-photos", type=int, default=4, help="with --cloak: people with at least this many photos")
    ev.add_argument("--people", type=int, default=0, help="with --cloak: only the first N such people (0 = all)")
    ev.add_argument("--cloak-steps", type=int, default=None, help="with --cloak: optimisation steps per person")
    ev.add_argument("--loo", action="store_true",
                    help="with --cloak: also leave-one-out transfer (for each recogniser of the ensemble, "
                         "a cloak optimised without it, judged by it)")
    ev.add_argument("--codec", default=None, metavar="KBPS[,KBPS...]",
                    help="with --cloak: also judge after a 720p H.264 call at these bitrates, e.g. 1500,600")
    ev.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(func=cmd_eval)


def cmd_eval_cloak(args) -> int:
    """`eval --cloak`: :func:`livedeid.cloak.protocol.run_protocol` with the optimiser's defaults."""
    import importlib.util

    from livedeid.cloak.protocol import parse_kbps, run_protocol, write_result

    if importlib.util.find_spec("torch") is None:
        raise UserError("eval --cloak optimises cloaks and needs torch: pip install 'livedeid[enrol]'")
    if not args.dataset.is_dir():
        raise UserError(f"dataset folder not found: {args.dataset}")
    if args.cloak_steps is not None and not 1 <= args.cloak_steps <= 100_000:
        raise UserError("--cloak-steps must be 1..100000")
    try:
        codec = parse_kbps(args.codec) if args.codec else None
    except ValueError:
        raise UserError(f"--codec must be positive bitrates in kbit/s, e.g. 1500,600 (got {args.codec!r})") from None
    from livedeid.cloak.optimise import CloakSettings

    settings = CloakSettings()
    if args.cloak_steps is not None:
        settings.steps = args.cloak_steps
    judges = args.recognizers.split(",") if args.recognizers else ["dlib", "sface", "faceres"]
    result = run_protocol(args.dataset, settings, judges, min_photos=args.min_photos, people=args.people,
                          loo=args.loo, codec=codec, say=(lambda t: None) if args.quiet else print)
    result = {"recipe": "eval --cloak", "command": "livedeid eval --cloak " + str(args.dataset), **result}
    md = write_result(result, args.out, "cloak")
    for key, v in result["pooled"].items():
        figs = "  ".join(f"{n}: gallery {100 * r['gallery_match']:5.1f} same {100 * r['same_photo_match']:5.1f} "
                         f"det {100 * r['detection']:5.1f}" for n, r in v["recognizers"].items())
        print(f"{key:<18} PSNR {v['psnr_db']:6.2f} dB  SSIM {v['ssim']:.3f}  {figs}")
    print(f"wrote {md} and {md.with_suffix('.json')}")
    return 0


def cmd_eval(args) -> int:
    if args.cloak:
        return cmd_eval_cloak(args)
    from livedeid.evaluation.pulse import synthetic_clips, video_clips
    from livedeid.evaluation.runs import run_eval

    if args.clips and args.synthetic_clips:
        raise UserError("use either --clips or --synthetic-clips, not both")
    if args.synthetic_clips is not None and not 1 <= args.synthetic_clips <= 20:
        raise UserError("--synthetic-clips must be 1..20")
    methods = [m for m in args.methods.split(",") if m.strip()] if args.methods else None
    if args.methods is not None and not methods:
        raise UserError("--methods is empty")
    clips = None
    if args.clips:
        clips = video_clips(args.clips)
    elif args.synthetic_clips:
        clips = synthetic_clips(args.synthetic_clips, seconds=args.clip_seconds)
    kwargs = {"methods": methods} if methods else {}
    report = run_eval(args.dataset, args.out, sweep=args.sweep, model=not args.no_model, manifest=args.model,
                      method_dirs=args.method_dir or (), recognizers=args.recognizers.split(",") if args.recognizers else None,
                      noise_psnr=args.noise_psnr, clips=clips, per_identity=args.per_identity, quiet=args.quiet,
                      **kwargs)
    print(f"{report.dataset}: {report.identities} identities, {report.used}/{report.images} photos with a face region, "
          f"{report.seconds:.0f} s")
    if report.model_note:
        print(f"model: {report.model_note}")
    for r in report.results:
        per = "  ".join(f"{n}: det {100 * m.detection:5.1f} top-1 {100 * m.top1:5.1f} self {100 * m.self_match:5.1f} "
                        f"EER {100 * m.eer:5.1f}" for n, m in r.per_recognizer.items())
        print(f"{r.method.name:<14} PSNR {r.psnr_db:6.2f} dB  SSIM {r.ssim:.3f}  {per}")
    print(f"wrote {args.out / 'eval.md'}, {args.out / 'eval.csv'}, {args.out / 'eval.png'}")
    return 0


# -- train ---------------------------------------------------------------------------------
def add_train_parser(sub) -> None:
    tr = sub.add_parser("train", help="train the de-identification model (needs torch and ../shared/data)",
                        description="Trains the autoencoder (reconstruct + de-identify against dlib/SFace + "
                                    "keep the rPPG pulse) on clips made from identity-split face photos, "
                                    "with resumable checkpoints and a CSV log; evaluates on held-out people "
                                    "and, with --export, writes engines/deid.* when it de-identifies. With "
                                    "teacher=WEIGHTS and loss.distil it also learns that model's residual "
                                    "(distillation; configs/train_distil_cpu.json).")
    tr.add_argument("--config", type=Path, default=None, help="JSON settings (e.g. configs/train_default.json)")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a setting (dotted keys, JSON values), repeatable")
    tr.add_argument("--export", action="store_true", help="export to engines/ if it beats the untrained model")
    tr.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    tr.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from livedeid.training.config import load_config
    from livedeid.training.heldout import format_report
    from livedeid.training.loop import train

    cfg = load_config(args.config, args.set)
    if args.export:
        cfg["export"] = True
    result = train(cfg, progress=not args.quiet)
    print(f"weights: {result['weights']} ({result['steps']} steps, {result['train_seconds']:.0f} s)")
    if "eval" in result:
        print(format_report(result["eval"]))
    return 0


# -- export --------------------------------------------------------------------------------
def add_export_parser(sub) -> None:
    e = sub.add_parser("export", help="write the model's ONNX (+FP16, +TensorRT plan) and manifest into engines/")
    e.add_argument("--weights", type=Path, default=None, help="torch state dict (default: seeded untrained model)")
    e.add_argument("--trained", action="store_true", help="mark the weights as trained in the manifest")
    e.add_argument("--out-dir", type=Path, default=None, help="default: the package's engines/")
    e.add_argument("--name", default="deid")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--fp16", action="store_true", help="also write the FP16 ONNX for TensorRT")
    e.add_argument("--tensorrt", action="store_true", help="also build the TensorRT plan (needs TensorRT + GPU)")
    e.add_argument("--notes", default="", help="free text stored in the manifest")
    e.add_argument("--eval", type=Path, default=None, metavar="EVAL_JSON",
                   help="the weights' `livedeid train` evaluation (eval.json), which must have measured these "
                        "very weights (its weights_sha256): copied beside them as <name>.eval.json, its held-out "
                        "self-match per recogniser goes into the manifest, and users are warned while it is "
                        "above 5%%; without it a trained model is reported as never measured")
    e.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from livedeid.training.export import export_model

    for line in export_model(weights=args.weights, out_dir=args.out_dir, name=args.name, seed=args.seed,
                             trained=args.trained, fp16=args.fp16, tensorrt=args.tensorrt, notes=args.notes,
                             evaluation=args.eval):
        print(line)
    return 0


# -- bench ---------------------------------------------------------------------------------
def add_bench_parser(sub) -> None:
    b = sub.add_parser("bench", help="speed of every available engine: per-stage p50/p95, fps, engine-only, offline",
                       description="Per-stage p50/p95 latency and end-to-end fps at 640x480, 1280x720 and "
                                   "1920x1080 with 1 and 4 real faces for every engine available here, engine-only "
                                   "latency, and offline `process` throughput at 720p, each against torch eager "
                                   "FP32 measured in the same run.")
    b.add_argument("--out", type=Path, default=None, metavar="DIR", help="write bench.md and bench.json here")
    b.add_argument("--quick", action="store_true", help="small CI-sized run (640x480, 1 face, few frames)")
    b.add_argument("--engines", default=None,
                   help="comma-separated subset, e.g. torch-cuda-fp16-graphs,tensorrt-fp16 (the baseline always runs)")
    b.add_argument("--resolutions", default=None, help="e.g. 640x480,1280x720 (default: 480p, 720p, 1080p)")
    b.add_argument("--faces", default=None, help="face counts, e.g. 1,4 (default 1,4)")
    b.add_argument("--frames", type=int, default=None, help="timed frames per configuration (default 60, quick 6)")
    b.add_argument("--no-offline", action="store_true", help="skip the offline 720p `process` measurement")
    b.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from livedeid.evaluation.bench import parse_sizes, run_bench, to_markdown

    sizes = parse_sizes(args.resolutions) if args.resolutions else None
    try:
        faces = tuple(int(v) for v in args.faces.split(",")) if args.faces else None
    except ValueError:
        raise UserError(f"--faces takes counts like 1,4 (got {args.faces!r})") from None
    if faces and not all(1 <= n <= 4 for n in faces):
        raise UserError("--faces takes counts between 1 and 4")
    if args.frames is not None and args.frames < 1:
        raise UserError("--frames must be at least 1")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out must be a folder: {args.out}")
    engines = args.engines.split(",") if args.engines else None
    result = run_bench(args.out, quick=args.quick, engines=engines, resolutions=sizes, face_counts=faces,
                       frames=args.frames, offline=not args.no_offline, log=lambda m: print(m, file=sys.stderr))
    print(to_markdown(result))
    if args.out is not None:
        print(f"wrote {args.out / 'bench.md'} and {args.out / 'bench.json'}", file=sys.stderr)
    return 0
