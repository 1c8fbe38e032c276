"""`livedeid process` (a video file de-identified, frame-exact) and `monitor` (heart rate only)."""
from __future__ import annotations

import sys
from pathlib import Path

from livedeid.cli.options import add_pipeline_options, pipeline_config, start_processor
from livedeid.cli.output import check_output_path, print_stats, reading_json, run_with_progress, write_json
from livedeid.core.errors import UserError
from livedeid.core.settings import HR_METHODS


# -- process ---------------------------------------------------------------------------------
def add_process_parser(sub) -> None:
    pr = sub.add_parser("process", help="de-identify a video file, frame-exact (audio kept)",
                        description="File -> file: same frame count, frame rate and size; the audio track "
                                    "is copied. The output appears only when complete.")
    pr.add_argument("input", help="input video")
    pr.add_argument("output", type=Path, help="output video (.mp4, .mkv, .mov)")
    pr.add_argument("--codec", choices=("h264", "lossless", "ffv1"), default="h264",
                    help="h264 (CRF 17, default), lossless (x264 RGB QP 0) or ffv1 (use .mkv)")
    pr.add_argument("--no-audio", action="store_true", help="drop the audio track")
    pr.add_argument("--report", type=Path, default=None, help="write an HR report (JSON) of the output")
    pr.add_argument("--resume", action="store_true",
                    help="write the output in finished segments kept in a hidden folder beside it, so a run "
                         "stopped by a full disk, Ctrl+C or a crash continues where it stopped when the same "
                         "command is run again with --resume")
    pr.add_argument("--segment-seconds", type=float, default=5.0,
                    help="with --resume: length of one segment, the most work a stop can lose (default 5 s)")
    pr.add_argument("--two-pass", action="store_true",
                    help="a personal cloak for every person in the video: pass 1 tracks the whole file and "
                         "optimises a cloak per face track on its own frames (verified on frames held out), "
                         "pass 2 renders with each face wearing its track's cloak (needs the enrol extra; "
                         "minutes per person on a CPU)")
    pr.add_argument("--cloak-steps", type=int, default=None,
                    help="with --two-pass: optimisation steps per track (default: the optimiser's)")
    pr.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_pipeline_options(pr)
    pr.set_defaults(func=cmd_process)


def cmd_process(args) -> int:
    from livedeid.io.sources import FileSource
    from livedeid.pipeline.runner import Pipeline, TraceRecorder

    config = pipeline_config(args)
    if Path(args.output).resolve() == Path(args.input).resolve():
        raise UserError("output must differ from input")
    check_output_path(args.output)
    if args.report:
        check_output_path(args.report)
    cloaks = _two_pass_cloaks(args, config) if args.two_pass else None
    source = FileSource(args.input)
    proc = start_processor(config, path="host" if cloaks else "auto")
    if cloaks is not None:
        proc.assign_cloaks = cloaks
    try:
        sink = _process_sink(args, source, proc)
    except BaseException:
        source.close()
        raise
    recorder = TraceRecorder() if args.report else None
    pipeline = Pipeline(source, proc, [sink], [recorder] if recorder else [])
    done_before = sink.frames_done if args.resume else 0
    total = source.frame_count - done_before if source.frame_count else None
    try:
        result = run_with_progress(pipeline, total, args.quiet)
    except (UserError, KeyboardInterrupt) as exc:
        if args.resume and sink.frames_done:
            hint = f"{sink.frames_done} frames kept in {sink.work}; run the same command again to continue"
            if isinstance(exc, KeyboardInterrupt):
                print(f"livedeid: {hint}", file=sys.stderr)
                raise
            raise UserError(f"{exc} ({hint})") from None
        raise
    print_stats(result)
    if args.report:
        write_json(args.report, {"input": str(args.input), "output": str(args.output),
                                 "frames": result.frames_out + done_before, "resumed_after_frame": done_before,
                                 "clip_hr": recorder.heart_rates(config.hr_method),
                                 "live_hr": [reading_json(r) for r in result.hr_readings],
                                 "engine": result.engine, "stats": result.stats,
                                 "tracks": cloaks.summary if cloaks is not None else None})
    print(f"wrote {args.output} ({result.frames_out + done_before} frames)")
    return 0


def _two_pass_cloaks(args, config):
    """Pass 1 of ``--two-pass``: every face track's cloak, optimised on its own frames and
    verified on its held-out ones; returns the pass-2 rule (who wears which cloak) with a
    per-track ``summary`` for the report."""
    import importlib.util

    from tqdm import tqdm

    from livedeid.cli.enrol import make_profile, print_verification
    from livedeid.cloak.tracks import TrackCloaks, gather_tracks, track_summary
    from livedeid.io.profile import DEFAULT_BUDGET
    from livedeid.io.sources import FileSource

    if config.profile is not None or args.resume:
        raise UserError("--two-pass makes a cloak per person itself: leave out --profile and --resume")
    if args.cloak_steps is not None and not 1 <= args.cloak_steps <= 100_000:
        raise UserError("--cloak-steps must be 1..100000")
    if importlib.util.find_spec("torch") is None:
        raise UserError("--two-pass optimises cloaks and needs torch: pip install 'livedeid[enrol]'")
    with FileSource(args.input) as probe:
        total = probe.frame_count
    with tqdm(total=total, desc="pass 1: tracks", unit="frame", disable=args.quiet, file=sys.stderr) as bar:
        tracks = gather_tracks(args.input, progress=lambda i: bar.update(1))
    print(f"pass 1: {len(tracks.enrolments)} face track(s) with enough frames for a cloak", file=sys.stderr)
    profiles, summary = {}, []
    for track, enrolment in tracks.enrolments.items():
        profile = make_profile(f"track-{track}", enrolment, ("dlib", "sface"), budget=DEFAULT_BUDGET,
                               steps=args.cloak_steps, quiet=args.quiet)
        print(f"track {track}:", file=sys.stderr)
        print_verification(profile)
        profiles[track] = profile
        summary.append(track_summary(track, profile))
    cloaks = TrackCloaks(tracks, profiles)
    cloaks.summary = summary
    return cloaks


def _process_sink(args, source, proc):
    """The output file of `process`: written whole at the end, or, with --resume, in
    segments, skipping ``source`` past the frames an earlier run already finished."""
    from livedeid.io.sinks import FileSink, ResumableFileSink

    audio = None if args.no_audio or not source.has_audio else args.input
    if not args.resume:
        return FileSink(args.output, *source.size, rate=source.rate, codec=args.codec, audio_from=audio)
    if args.segment_seconds <= 0:
        raise UserError("--segment-seconds must be positive")
    stat = Path(args.input).stat()
    config = proc.config
    # A resumed run must continue with the same input and the settings that change pixels.
    fingerprint = {"input": str(Path(args.input).resolve()), "bytes": stat.st_size,
                   "mtime_ns": stat.st_mtime_ns, "model_sha256": proc.spec.onnx_sha256,
                   "fail_closed": config.fail_closed, "max_faces": config.max_faces,
                   "hr_overlay": config.hr_overlay,
                   "profile_sha256": proc.profile.sha256 if proc.profile is not None else None}
    sink = ResumableFileSink(args.output, *source.size, rate=source.rate, codec=args.codec,
                             audio_from=audio, fingerprint=fingerprint,
                             segment_frames=max(1, round(args.segment_seconds * source.fps)))
    if sink.frames_done:
        print(f"resuming after frame {sink.frames_done} ({len(sink.state['segments'])} finished "
              f"segments in {sink.work})", file=sys.stderr)
        source.skip(sink.frames_done)
    return sink


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
            "live_hr": [reading_json(r) for r in readings],
        })
    return 0
