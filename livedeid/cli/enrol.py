"""`livedeid enrol`: one person's personal cloak, optimised on their photos or a video and
verified on images of them it never saw, saved as their profile (``livedeid.io.profile``).

torch is imported only inside the command (the optimisation needs gradients)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from livedeid.cloak.build import ENROL_SECONDS, ENROL_STEPS
from livedeid.core.errors import UserError
from livedeid.io.profile import DEFAULT_BUDGET, DEFAULT_RMS, MAX_BUDGET, STRONG_RMS

UNTIL_VERIFIED = f"until verified on the held-out faces, at most {ENROL_STEPS} steps and {ENROL_SECONDS:.0f} s"


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
                   help="a folder of photos of the person, a video file of them, a camera index (a guided "
                        "recording: look straight, turn left/right, up/down, speak) or synthetic (the built-in clip)")
    e.add_argument("--seconds", type=float, default=None,
                   help="how much of a video or camera to take in (default: 25 s from a camera, 60 s of a file)")
    e.add_argument("--out", type=Path, default=None, metavar="FILE",
                   help="profile file to write (default: NAME.npz in the user's profile folder)")
    e.add_argument("--steps", type=int, default=None, help=f"optimisation steps, run in full (default: {UNTIL_VERIFIED})")
    e.add_argument("--budget", type=float, default=DEFAULT_BUDGET * 255, metavar="LEVELS",
                   help=f"strongest change per pixel, in 1/255 levels (default {DEFAULT_BUDGET * 255:.0f}, "
                        f"at most {MAX_BUDGET * 255:.0f})")
    e.add_argument("--strength", type=float, default=DEFAULT_RMS * 255, metavar="LEVELS",
                   help=f"the cloak's energy, root mean square over the face in 1/255 levels (default "
                        f"{DEFAULT_RMS * 255:.0f}: about 32.5 dB face PSNR; {STRONG_RMS * 255:.0f}: about 30.5 dB, and on the celebrity "
                        "probe SFace matched 8 %% of unseen photos instead of 21 %%); at most --budget")
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
    if args.seconds is not None and not 1.0 <= args.seconds <= 600.0:
        raise UserError("--seconds must be 1..600")
    if args.steps is not None and not 1 <= args.steps <= 100_000:
        raise UserError("--steps must be 1..100000")
    if not 0 < args.budget <= MAX_BUDGET * 255 + 1e-9:
        raise UserError(f"--budget must be in (0, {MAX_BUDGET * 255:.0f}] levels of 1/255")
    if not 0 < args.strength <= args.budget + 1e-9:
        raise UserError(f"--strength must be in (0, {args.budget:g}] levels of 1/255 (at most --budget)")
    names = tuple(n.strip() for n in args.recognizers.split(",") if n.strip())
    if not names:
        raise UserError("--recognizers is empty")
    out = args.out if args.out is not None else default_path(args.name)
    if args.out is not None:
        check_output_path(out)
    return out, names


def cmd_enrol(args) -> int:
    from livedeid.io.profile import save_profile
    from livedeid.recognizers.base import get_recognizer

    out, names = _check_args(args)
    for name in names:
        get_recognizer(name)  # a missing recogniser is one line, now, before any recording
    enrolment = _gather(args)
    profile = make_profile(args.name, enrolment, names, budget=args.budget / 255.0, steps=args.steps,
                           seed=args.seed, quiet=args.quiet, keep_enrolment=args.keep_enrolment,
                           rms=args.strength / 255.0)
    path = save_profile(profile, out)
    print_verification(profile)
    print(f"wrote {path}")
    return 0


def make_profile(name: str, enrolment, names: tuple[str, ...], *, budget: float, steps: int | None = None,
                 seed: int = 0, quiet: bool = False, keep_enrolment: bool = False, rms: float | None = None):
    """:func:`livedeid.cloak.build.build_profile` with what it does said on stderr and a
    progress bar over the optimisation steps."""
    from tqdm import tqdm

    from livedeid.cloak.build import build_profile, default_settings

    print(f"enrol {name}: {enrolment.coverage()}", file=sys.stderr)
    total = default_settings(names, budget=budget, steps=steps, seed=seed).steps
    with tqdm(total=total, desc="cloak", unit="step", disable=quiet, file=sys.stderr, dynamic_ncols=True) as bar:
        def progress(entry: dict) -> None:
            if entry.get("last"):  # verified or out of time before the step limit: the bar ends full
                bar.total = int(entry["step"])
            bar.update(max(0, int(entry["step"]) - bar.n))
            match = {k: f"{v['plain']['centre']:.0%}" for k, v in entry.get("held_out_match", {}).items()}
            bar.set_postfix_str(f"held-out match {match}", refresh=False)

        profile = build_profile(name, enrolment, names, budget=budget, steps=steps, seed=seed,
                                keep_enrolment=keep_enrolment, progress=progress, rms=rms)
    run = profile.settings
    print(f"optimised {run['steps_run']} steps in {run['seconds']:.0f} s"
          f"{' (stopped early: the recognisers verified it on the held-out faces)' if run['stopped_early'] else ''}",
          file=sys.stderr)
    return profile


def _gather(args):
    """The enrolment material, with a progress bar (and, from a camera, what to do now)."""
    from tqdm import tqdm

    from livedeid.cloak.enrolment import gather

    bar = None

    def progress(p) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=round(p.seconds), desc="recording", unit="s", disable=args.quiet, file=sys.stderr,
                       dynamic_ncols=True, bar_format="{l_bar}{bar}| {n:.0f}/{total} s {postfix}")
        bar.update(max(0, int(p.elapsed_s) - bar.n))
        bar.set_postfix_str(f"{p.instruction + ' | ' if p.instruction else ''}faces {p.faces}, "
                            f"pose bins {p.bins}", refresh=False)

    try:
        return gather(args.source, max_seconds=args.seconds, progress=progress)
    finally:
        if bar is not None:
            bar.close()


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


# -- the demo's enrolment step (`livedeid demo --enrol`) --------------------------------------
def add_demo_enrol_options(d) -> None:
    d.add_argument("--enrol", action="store_true",
                   help="first enrol the clip's face on its first --enrol-seconds (a personal cloak, needs the "
                        "enrol extra: torch and the recognisers), run the demo with that profile and print the "
                        "recognisers' match on the later output frames before and after")
    d.add_argument("--enrol-seconds", type=float, default=5.0, help="seconds of the clip to enrol on (default 5)")
    d.add_argument("--enrol-steps", type=int, default=None,
                   help=f"optimisation steps of the demo's enrolment, run in full (default: {UNTIL_VERIFIED})")


def demo_enrol(args, make_source, profile_path: Path):
    """Enrol the demo clip's face on its first ``args.enrol_seconds`` and save the profile
    to ``profile_path``; returns the enrolment (its optimisation frames are the gallery the
    output is judged against)."""
    from livedeid.cloak.enrolment import from_stream
    from livedeid.io.profile import save_profile
    from livedeid.recognizers.base import get_recognizer

    if not 1.0 <= args.enrol_seconds < args.seconds:
        raise UserError(f"--enrol-seconds must be at least 1 and shorter than the clip ({args.seconds:.0f} s)")
    if args.enrol_steps is not None and not 1 <= args.enrol_steps <= 100_000:
        raise UserError("--enrol-steps must be 1..100000")
    names = ("dlib", "sface")
    for name in names:
        get_recognizer(name)  # not installed: one line naming what to install
    with make_source() as src:
        enrolment = from_stream(src, seconds=args.enrol_seconds)
    profile = make_profile("demo", enrolment, names, budget=DEFAULT_BUDGET, steps=args.enrol_steps, seed=args.seed,
                           quiet=args.quiet)
    save_profile(profile, profile_path)
    print_verification(profile)
    print(f"wrote {profile_path}")
    return enrolment


def judge_demo(args, make_source, enrolment, samples: int = 12) -> dict:
    """The recognisers on ``samples`` output frames after the enrolment seconds (read back
    from the encoded output, as the far end gets them) against the enrolment's clean frames
    (the same session) and against their own clean input frame; printed before -> after."""
    from livedeid.cloak.verify import judge_outputs
    from livedeid.evaluation.baselines import face_region
    from livedeid.io.sources import FileSource
    from livedeid.tracking.still import still_landmarks

    with make_source() as clean_src, FileSource(args.out) as out_src:
        first = round(args.enrol_seconds * clean_src.fps)
        wanted = set(np.linspace(first, clean_src.frame_count - 1, samples).round().astype(int).tolist())
        pairs = []
        for frame in out_src:
            if frame.index in wanted:
                clean = clean_src.frame_at(frame.index).image
                lm = still_landmarks(clean)
                if lm is not None:
                    pairs.append((clean, frame.image, face_region(lm, clean.shape[:2])))
    result = judge_outputs(pairs, [i.image for i in enrolment.optimise], probes=len(wanted))
    print(f"recognisers on {len(pairs)} output frames after the first {args.enrol_seconds:.0f} s (H.264 as written), "
          "against the enrolment frames (same session):")
    print(f"{'recogniser':<11} {'detected':>9} {'match clean -> protected':>25} {'same-frame match':>17}")
    for name, fig in sorted(result["recognizers"].items()):
        print(f"{name:<11} {_pct(fig['detection']):>9} "
              f"{_pct(fig['clean_gallery_match']) + ' -> ' + _pct(fig['gallery_match']):>25} "
              f"{_pct(fig['same_photo_match']):>17}")
    print(f"face PSNR {result['psnr_db']:.1f} dB, SSIM {result['ssim']:.3f}")
    return result
