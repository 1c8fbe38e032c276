"""`livedeid process` (a video file de-identified, frame-exact) and `monitor` (heart rate only)."""
from __future__ import annotations

import sys
from pathlib import Path

from livedeid.cli.enrol import UNTIL_VERIFIED
from livedeid.cli.options import add_pipeline_options, pipeline_config, start_processor
from livedeid.cli.output import check_output_path, print_stats, run_with_progress, write_json
from livedeid.core.errors import UserError
from livedeid.core.settings import HR_METHODS


# -- process ---------------------------------------------------------------------------------
def add_process_parser(sub) -> None:
    pr = sub.add_parser("process", help="de-identify a video file, frame-exact (audio kept)",
                        description="File -> file: same frame count, frame rate and size; the audio track "
                                    "is copied. A folder of PNG frames named by capture time (Image<ns>.png, "
                                    "as in PURE) becomes a folder of PNG frames under the same names. The "
                                    "output appears only when complete.")
    pr.add_argument("input", help="input video, or a folder of PNG frames")
    pr.add_argument("output", type=Path, help="output video (.mp4, .mkv, .mov, .avi), or folder for frames")
    add_file_output_options(pr)
    pr.add_argument("--report", type=Path, default=None, help="write an HR report (JSON) of the output")
    pr.add_argument("--resume", action="store_true",
                    help="write the output in finished segments kept in a hidden folder beside it, so a run "
                         "stopped by a full disk, Ctrl+C or a crash continues where it stopped when the same "
                         "command is run again with --resume")
    pr.add_argument("--segment-seconds", type=float, default=5.0,
                    help="with --resume: length of one segment, the most work a stop can lose (default 5 s)")
    pr.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_pipeline_options(pr)
    pr.set_defaults(func=cmd_process)


def add_file_output_options(p) -> None:
    """Encoding and the two-pass cloak: options `process` and `batch` share."""
    p.add_argument("--codec", choices=("h264", "lossless", "ffv1"), default="h264",
                   help="h264 (CRF 17, default), lossless (x264 RGB QP 0) or ffv1 (use .mkv or .avi); "
                        "AVI outputs get no B-frames so they decode with correct timestamps")
    p.add_argument("--no-audio", action="store_true", help="drop the audio track")
    p.add_argument("--two-pass", action="store_true",
                   help="a personal cloak for every person in the video: pass 1 tracks the whole file and "
                        "optimises a cloak per face track on its own frames (verified on frames held out), "
                        "pass 2 renders with each face wearing its track's cloak (needs the enrol extra; "
                        "minutes per person on a CPU)")
    p.add_argument("--cloak-steps", type=int, default=None,
                   help=f"with --two-pass: optimisation steps per track, run in full (default: {UNTIL_VERIFIED})")


def cmd_process(args) -> int:
    from livedeid.pipeline.file_job import FileJob, process_file

    config = pipeline_config(args)
    job = FileJob(Path(args.input), args.output, codec=args.codec, audio=not args.no_audio, resume=args.resume,
                  segment_seconds=args.segment_seconds)
    job.check()
    if not job.input.is_dir():  # a frame folder's output folder is replaced whole when complete
        check_output_path(args.output)
    if args.report:
        check_output_path(args.report)
    cloaks = _two_pass_cloaks(args, config) if args.two_pass else None
    run = process_file(config, job, cloaks=cloaks, start=start_processor, record_hr=bool(args.report),
                       run=lambda pipeline, total: run_with_progress(pipeline, total, args.quiet),
                       say=lambda line: print(line, file=sys.stderr))
    print_stats(run.result)
    if args.report:
        write_json(args.report, run.report)
    print(f"wrote {args.output} ({run.frames} frames)")
    return 0


def _two_pass_cloaks(args, config):
    """Pass 1 of ``--two-pass``: every face track's cloak, optimised on its own frames and
    verified on its held-out ones, said on stderr as it goes; returns the pass-2 rule
    (who wears which cloak) with a per-track ``summary`` for the report."""
    from tqdm import tqdm

    from livedeid.cli.enrol import make_profile, print_verification
    from livedeid.cloak.tracks import check_two_pass, cloak_tracks
    from livedeid.io.frames import open_video
    from livedeid.io.profile import DEFAULT_BUDGET

    if config.profile is not None or args.resume:
        raise UserError("--two-pass makes a cloak per person itself: leave out --profile and --resume")
    check_two_pass(args.cloak_steps)
    with open_video(args.input) as probe:
        total = probe.frame_count

    def build(name, enrolment):
        profile = make_profile(name, enrolment, ("dlib", "sface"), budget=DEFAULT_BUDGET, steps=args.cloak_steps,
                               quiet=args.quiet)
        print(f"{name.replace('-', ' ')}:", file=sys.stderr)
        print_verification(profile)
        return profile

    with tqdm(total=total, desc="pass 1: tracks", unit="frame", disable=args.quiet, file=sys.stderr) as bar:
        return cloak_tracks(args.input, build, progress=lambda i: bar.update(1),
                            say=lambda line: (bar.close(), print(line, file=sys.stderr)))


# -- monitor ---------------------------------------------------------------------------------
def add_monitor_parser(sub) -> None:
    m = sub.add_parser("monitor", help="heart rate only, from a video file or camera (clinician's side)",
                       description="Tracks the face in SOURCE and prints the live rPPG heart rate "
                                   "with its quality, then the whole-clip heart rate.")
    m.add_argument("source", help="video file, camera index, or synthetic[:HR]")
    m.add_argument("--hr-method", choices=HR_METHODS, default="pos")
    m.add_argument("--window", type=float, default=10.0, help="analysis window in seconds (default 10)")
    m.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    m.add_argument("--json", type=Path, default=None, help="write readings as JSON")
    m.add_argument("-q", "--quiet", action="store_true", help="only the clip result")
    m.set_defaults(func=cmd_monitor)


def cmd_monitor(args) -> int:
    from livedeid.io.sources import open_source
    from livedeid.rppg.monitor import clip_hr, monitor_frames
    from livedeid.rppg.streaming import StreamingHR
    from livedeid.tracking.mesh import FaceTracker

    if args.json:
        check_output_path(args.json)
    readings, seen = [], []

    def shown(steps):
        """Print each new live reading; stop after --seconds."""
        for step in steps:
            seen.append(step.timestamp)
            if step.new_reading:
                readings.append(step.reading)
                if not args.quiet:
                    r = step.reading
                    bpm = f"{r.bpm:6.1f} bpm" if r.bpm is not None else "  -- no reading"
                    print(f"t={r.timestamp:7.2f}s  {bpm}  SNR {r.snr_db:5.1f} dB  {r.quality}")
            yield step
            if args.seconds and step.timestamp - seen[0] >= args.seconds:
                return

    source = open_source(args.source, live=False)
    with source, FaceTracker(max_faces=1) as tracker:
        steps = monitor_frames(source, tracker, StreamingHR(method=args.hr_method, window_s=args.window))
        try:
            clip, _ = clip_hr(shown(steps), args.hr_method)
        except ValueError:
            raise UserError(f"no face found in {args.source}" if seen else f"no frames in {args.source}") from None
    print(f"clip HR: {clip.describe()} over {len(seen)} frames")
    if args.json:
        write_json(args.json, {
            "source": args.source, "frames": len(seen), "method": args.hr_method,
            "clip_hr": clip.report(),
            "live_hr": [r.report() for r in readings],
        })
    return 0
