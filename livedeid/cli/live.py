"""`livedeid demo`, `run` and `gui`: the pipeline on a camera (or the built-in clip)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from livedeid.cli.enrol import add_demo_enrol_options, demo_enrol, judge_demo
from livedeid.cli.options import (
    add_live_options,
    add_pipeline_options,
    pipeline_config,
    print_warnings,
    start_processor,
)
from livedeid.cli.output import check_output_path, print_stats, run_with_progress, write_json
from livedeid.cloak.refine import refiner_for
from livedeid.core.errors import UserError


# -- demo ------------------------------------------------------------------------------------
def add_demo_parser(sub) -> None:
    d = sub.add_parser("demo", help="camera-free demo: built-in pulse clip -> de-identified video + HR report",
                       description="Runs the full pipeline on a built-in synthetic clip (a real face photo "
                                   "shipped by scikit-image, animated, with a known pulse) and prints input, "
                                   "output and true heart rate and per-stage speed.")
    d.add_argument("--out", type=Path, default=Path("demo_deid.mp4"), help="output video (default demo_deid.mp4)")
    d.add_argument("--report", type=Path, default=None, help="write the HR/speed report as JSON")
    d.add_argument("--hr", type=float, default=72.0, help="true heart rate of the built-in clip (bpm)")
    d.add_argument("--seconds", type=float, default=20.0, help="clip length (default 20 s)")
    d.add_argument("--width", type=int, default=1280)
    d.add_argument("--height", type=int, default=720)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_pipeline_options(d)
    add_demo_enrol_options(d)
    d.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from livedeid.io.sinks import FileSink
    from livedeid.io.sources import SyntheticSource
    from livedeid.pipeline.runner import Pipeline, TraceRecorder
    from livedeid.rppg.spectrum import describe_report

    config = pipeline_config(args)
    check_output_path(args.out)
    if args.report:
        check_output_path(args.report)
    def make_source():
        return SyntheticSource(hr_bpm=args.hr, duration_s=args.seconds, fps=30.0, size=(args.width, args.height),
                               seed=args.seed)

    source = make_source()
    enrolment = None
    if args.enrol:
        if config.profile is not None:
            raise UserError("--enrol makes the demo's own profile; leave out --profile")
        config.profile = args.out.with_name(args.out.stem + "_profile.npz")
        enrolment = demo_enrol(args, make_source, config.profile)
    print(f"demo: built-in clip (scikit-image astronaut photo animated with head motion, light flicker, "
          f"sensor noise and a {args.hr:.0f} bpm pulse), {args.seconds:.0f} s at {args.width}x{args.height}",
          file=sys.stderr)
    proc = start_processor(config)
    sink = FileSink(args.out, *source.size, rate=source.rate)
    recorder = TraceRecorder()
    result = run_with_progress(Pipeline(source, proc, [sink], [recorder]), source.frame_count, args.quiet)
    hrs = recorder.heart_rates(config.hr_method)
    print(f"true HR:   {args.hr:.1f} bpm")
    print(f"input HR:  {describe_report(hrs['input'])}")
    print(f"output HR: {describe_report(hrs['output'])}")
    print_stats(result)
    print_warnings(proc, sys.stdout)
    print(f"wrote {args.out}")
    judged = judge_demo(args, make_source, enrolment) if enrolment is not None else None
    if args.report:
        write_json(args.report, {"cloak": judged,
            "output": str(args.out), "true_hr_bpm": args.hr, "input_hr": hrs["input"], "output_hr": hrs["output"],
            "engine": result.engine, "model_trained": proc.spec.trained, "stats": result.stats,
        })
        print(f"wrote {args.report}")
    return 0


# -- run -------------------------------------------------------------------------------------
def add_run_parser(sub) -> None:
    r = sub.add_parser("run", help="camera -> filter -> virtual camera (for Zoom/Teams/Meet)",
                       description="Live: reads a camera, protects every face and sends the result to a "
                                   "virtual camera that video-call apps can select.")
    r.add_argument("--camera", default="0", help="camera index, stream URL, video file (played live, looped) "
                                                 "or synthetic[:HR] (default 0)")
    add_live_options(r, "do not send to a virtual camera")
    r.add_argument("--preview", action="store_true", help="show the protected output in a window")
    r.add_argument("--record", type=Path, default=None, help="also record the protected output to a file")
    r.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    r.add_argument("--no-refine", action="store_true",
                   help="with --profile: do not keep refining the cloak on recent frames in the background "
                        "(a low-priority process, at most half a core; needs the enrol extra)")
    add_pipeline_options(r)
    r.set_defaults(func=cmd_run)


def cmd_run(args) -> int:
    import signal

    from livedeid.io.sources import open_source
    from livedeid.pipeline.runner import Pipeline

    config = pipeline_config(args)
    source = open_source(args.camera, width=args.width, height=args.height, fps=args.fps, live=True)
    sinks = []
    try:
        sinks = _run_sinks(args, source)
        proc = start_processor(config)
    except BaseException:
        for s in sinks:
            s.abort()
        source.close()
        raise
    pipeline = Pipeline(source, proc, sinks, [_preview_listener()] if args.preview else [])
    pipeline.listeners.append(_status_line(pipeline, proc))
    refiner = refiner_for(proc, say=lambda line: print(line, file=sys.stderr)) if not args.no_refine else None
    if refiner is not None:
        pipeline.listeners.append(refiner)
    if args.duration:
        import threading

        timer = threading.Timer(args.duration, pipeline.stop)
        timer.daemon = True
        timer.start()
    # Ctrl+C is the normal way to end a live run: stop cleanly so a recording is kept.
    previous = signal.signal(signal.SIGINT, lambda *_: pipeline.stop())
    print(f"running on {source.description}; Ctrl+C to stop", file=sys.stderr)
    try:
        result = pipeline.run()
    finally:
        signal.signal(signal.SIGINT, previous)
        if refiner is not None:
            refiner.close()
    print(file=sys.stderr)
    print_stats(result)
    if refiner is not None and refiner.status is not None:
        st = refiner.status
        print(f"cloak refinement: {st['rounds']} rounds, {st['swaps']} swapped in, on {st['crops']} recent frames")
    return 0


def _run_sinks(args, source) -> list:
    """The virtual camera and/or recording of `livedeid run`, opened in that order; on a
    failure the ones already open are aborted."""
    from livedeid.io.sinks import FileSink, VirtualCameraSink

    sinks = []
    try:
        if not args.no_virtual_camera:
            try:
                sinks.append(VirtualCameraSink(*source.size, fps=source.fps, backend=args.backend,
                                               device=args.device))
                print(f"sending to {sinks[-1].description}", file=sys.stderr)
            except UserError as exc:
                if args.backend or args.device:
                    raise  # asked for that camera by name: without it the run is pointless
                # The filter itself works without a virtual camera: run, and say plainly
                # that nothing reaches a video call (the preview or a recording still does).
                print(f"livedeid: warning: {exc}; running anyway, nothing is sent to a video call"
                      + ("" if args.preview or args.record else " (add --preview to watch)"), file=sys.stderr)
        if args.record:
            check_output_path(args.record)
            sinks.append(FileSink(args.record, *source.size, rate=source.fps))
    except BaseException:
        for s in sinks:
            s.abort()
        raise
    return sinks


def _status_line(pipeline, proc):
    """A listener printing fps, faces and heart rate on one stderr line, once a second;
    the protection status (:mod:`livedeid.pipeline.status`) on a line of its own now and
    whenever it changes (after holding 0.5 s, so a two-frame hide does not flicker)."""
    from livedeid.pipeline.status import StatusChanges, protection_status

    last = [time.monotonic()]
    changes = StatusChanges()
    colour = sys.stderr.isatty()
    print(changes.show(protection_status(proc.spec, proc.profile, protect=proc.config.protect)).line(colour),
          file=sys.stderr)

    def status(frame, processor):
        now = protection_status(processor.spec, processor.profile, protect=frame.protected,
                                hidden_regions=frame.fail_closed_regions, whole_picture_hidden=frame.no_face_yet)
        changed = changes.update(now, frame.timestamp)
        if changed is not None:
            print(f"\r\033[K{changed.line(colour)}" if colour else f"\n{changed.line()}", file=sys.stderr)
        if time.monotonic() - last[0] >= 1.0:
            last[0] = time.monotonic()
            r = processor.hr.reading
            hr = f"{r.bpm:.0f} bpm ({r.quality})" if r and r.bpm else "HR --"
            cam = "" if pipeline.capture_status == "ok" else f"  [{pipeline.capture_status}]"
            print(f"\r{pipeline.stats.fps:5.1f} fps  faces {len(frame.faces)}  {hr}{cam}   ", end="",
                  file=sys.stderr)

    return status


def _preview_listener():
    import cv2

    def show(frame, processor):
        cv2.imshow("livedeid (protected output)", frame.output)
        cv2.waitKey(1)

    return show


# -- gui -------------------------------------------------------------------------------------
def add_gui_parser(sub) -> None:
    g = sub.add_parser("gui", help="the window: protect and send (patients), heart-rate monitor (clinicians)",
                       description="Opens the livedeid panel: live protected video with a before/after view, "
                                   "heart rate, privacy meter and the virtual camera switch; or, in monitor "
                                   "mode, the heart rate of a face in a file, camera or screen region. "
                                   "`livedeid` with no command opens it too.")
    g.add_argument("--camera", default=None, help="camera index, video file or synthetic[:HR] "
                                                  "(default: the first camera found, else the synthetic face)")
    add_live_options(g, "start without sending to a virtual camera")
    g.add_argument("--monitor", default=None, metavar="SOURCE",
                   help="start in clinician monitor mode on a video file, camera index, synthetic[:HR] "
                        "or screen[:LEFT,TOP,WIDTH,HEIGHT]")
    g.add_argument("--theme", choices=("dark", "light"), default="dark")
    g.add_argument("--no-privacy-meter", action="store_true", help="do not run face recognisers on the output")
    add_pipeline_options(g)
    g.set_defaults(func=cmd_gui)


def cmd_gui(args: argparse.Namespace) -> int:
    import livedeid.panel as panel  # imports no Qt: the check comes first

    config = pipeline_config(args)
    panel.require_gui()
    from livedeid.inference.manifest import load_spec
    from livedeid.panel.workers import PanelSettings

    load_spec(config.manifest)  # a bad manifest is a one-line error here, not a banner later
    if config.profile is not None:  # so is a bad profile
        from livedeid.io.profile import resolve_profile

        resolve_profile(config.profile)
    settings = PanelSettings(config=config, source=args.camera, width=args.width, height=args.height,
                             fps=args.fps, virtual_camera=not args.no_virtual_camera, vcam_backend=args.backend,
                             vcam_device=args.device)
    return panel.run_panel(settings, mode="monitor" if args.monitor else "patient", monitor_source=args.monitor,
                           theme=args.theme, privacy_meter=not args.no_privacy_meter)
