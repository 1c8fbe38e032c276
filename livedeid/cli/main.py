"""Command line: ``livedeid demo | run | process | monitor | doctor | gui | eval | train | export | bench``.

User errors (bad path, no camera, bad config, missing device) print one line
``livedeid: error: ...`` and exit with status 2; nothing partial is left behind.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

# MediaPipe/TFLite print C++ log lines on start-up; users only need ours.
os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from typing import TYPE_CHECKING  # noqa: E402

from livedeid import __version__  # noqa: E402
from livedeid.core.errors import UserError  # noqa: E402

if TYPE_CHECKING:
    from livedeid.core.settings import PipelineConfig

log = logging.getLogger("livedeid")


# -- shared options ------------------------------------------------------------------------
def _add_pipeline_options(p: argparse.ArgumentParser) -> None:
    from livedeid.core.settings import ENGINE_NAMES, FAIL_CLOSED_POLICIES

    # Defaults are None so that a value given on the command line can be told apart from
    # one to take from --config (or, failing that, from PipelineConfig's defaults).
    p.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help="pipeline settings as JSON or TOML (keys as PipelineConfig: engine, model, fail_closed, "
                        "max_faces, min_confidence, hr_method, hr_window_s, hr_overlay, detect_long_side, "
                        "safety_net, startup_guard); "
                        "options given here win")
    p.add_argument("--engine", choices=ENGINE_NAMES, default=None,
                   help="inference backend (default: auto = TensorRT > torch CUDA > ONNX Runtime)")
    p.add_argument("--model", type=Path, default=None, metavar="MANIFEST",
                   help="model manifest JSON (default: the shipped engines/deid.json)")
    p.add_argument("--fail-closed", choices=FAIL_CLOSED_POLICIES, default=None,
                   help="what to show for a face that is lost or uncertain (default: blur)")
    p.add_argument("--max-faces", type=int, default=None, help="faces tracked and protected, 1..4 (default 4)")
    p.add_argument("--hr-method", choices=("pos", "chrom", "green"), default=None,
                   help="rPPG method for the heart rate (default: pos)")
    p.add_argument("--hr-overlay", action="store_true", default=None, help="burn the live heart rate into the output")


def _add_live_options(p: argparse.ArgumentParser, no_virtual_camera_help: str) -> None:
    """Camera size/rate and virtual-camera options shared by `run` and `gui`."""
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--no-virtual-camera", action="store_true", help=no_virtual_camera_help)
    p.add_argument("--backend", default=None, help="pyvirtualcam backend (default: the OS's)")
    p.add_argument("--device", default=None, help="virtual camera device, e.g. /dev/video10")


_CLI_CONFIG_FIELDS = {"engine": "engine", "model": "manifest", "fail_closed": "fail_closed",
                      "max_faces": "max_faces", "hr_method": "hr_method", "hr_overlay": "hr_overlay"}


def _resolve_pipeline_options(args) -> None:
    """Fill the pipeline options: command line > --config file > PipelineConfig defaults.
    Afterwards every command reads plain values from ``args`` and ``_config(args)``."""
    from livedeid.core.settings import PipelineConfig, load_pipeline_config

    config = load_pipeline_config(args.config) if args.config else PipelineConfig()
    for arg, field_name in _CLI_CONFIG_FIELDS.items():
        if getattr(args, arg) is None:
            setattr(args, arg, getattr(config, field_name))
        else:
            setattr(config, field_name, getattr(args, arg))
    config.validate()
    args.pipeline_config = config


def _config(args) -> "PipelineConfig":
    return args.pipeline_config


def _processor(args):
    from livedeid.pipeline.processor import build_processor

    proc = build_processor(_config(args))
    print(f"engine: {proc.engine.describe()} [{proc.engine_reason}]", file=sys.stderr)
    for why in proc.engine_skipped:
        print(f"  skipped {why}", file=sys.stderr)
    if proc.warning:
        print(f"WARNING: {proc.warning}", file=sys.stderr)
    return proc


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    try:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None


def _check_output_path(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"output folder does not exist: {parent}")
    if not os.access(parent, os.W_OK):
        raise UserError(f"output folder is not writable: {parent}")
    if path.is_dir():
        raise UserError(f"output path is a folder: {path}")


# -- commands ----------------------------------------------------------------------------
def cmd_demo(args) -> int:
    from livedeid.io.sinks import FileSink
    from livedeid.io.sources import SyntheticSource
    from livedeid.pipeline.processor import Pipeline, TraceRecorder

    _check_output_path(args.out)
    if args.report:
        _check_output_path(args.report)
    source = SyntheticSource(hr_bpm=args.hr, duration_s=args.seconds, fps=30.0, size=(args.width, args.height),
                             seed=args.seed)
    print(f"demo: built-in clip (scikit-image astronaut photo animated with head motion, light flicker, "
          f"sensor noise and a {args.hr:.0f} bpm pulse), {args.seconds:.0f} s at {args.width}x{args.height}",
          file=sys.stderr)
    proc = _processor(args)
    sink = FileSink(args.out, *source.size, rate=source.rate)
    recorder = TraceRecorder()
    result = _run_with_progress(Pipeline(source, proc, [sink], [recorder]), source.frame_count, args.quiet)
    hrs = recorder.heart_rates(args.hr_method)
    report = {
        "output": str(args.out), "true_hr_bpm": args.hr, "input_hr": hrs["input"], "output_hr": hrs["output"],
        "engine": result.engine, "model_trained": proc.spec.trained, "stats": result.stats,
    }
    fmt = lambda r: f"{r['bpm']:.1f} bpm (SNR {r['snr_db']:.1f} dB, {r['quality']})" if r else "no reading"  # noqa: E731
    print(f"true HR:   {args.hr:.1f} bpm")
    print(f"input HR:  {fmt(hrs['input'])}")
    print(f"output HR: {fmt(hrs['output'])}")
    _print_stats(result)
    if proc.warning:
        print(f"WARNING: {proc.warning}")
    print(f"wrote {args.out}")
    if args.report:
        _write_json(args.report, report)
        print(f"wrote {args.report}")
    return 0


def cmd_process(args) -> int:
    from livedeid.io.sinks import FileSink, ResumableFileSink
    from livedeid.io.sources import FileSource
    from livedeid.pipeline.processor import Pipeline, TraceRecorder

    if Path(args.output).resolve() == Path(args.input).resolve():
        raise UserError("output must differ from input")
    _check_output_path(args.output)
    if args.report:
        _check_output_path(args.report)
    source = FileSource(args.input)
    proc = _processor(args)
    audio = None if args.no_audio or not source.has_audio else args.input
    try:
        if args.resume:
            if args.segment_seconds <= 0:
                raise UserError("--segment-seconds must be positive")
            stat = Path(args.input).stat()
            config = _config(args)
            fingerprint = {"input": str(Path(args.input).resolve()), "bytes": stat.st_size,
                           "mtime_ns": stat.st_mtime_ns, "model_sha256": proc.spec.onnx_sha256,
                           "fail_closed": config.fail_closed, "max_faces": config.max_faces,
                           "hr_overlay": config.hr_overlay}
            sink = ResumableFileSink(args.output, *source.size, rate=source.rate, codec=args.codec,
                                     audio_from=audio, fingerprint=fingerprint,
                                     segment_frames=max(1, round(args.segment_seconds * source.fps)))
            if sink.frames_done:
                print(f"resuming after frame {sink.frames_done} ({len(sink.state['segments'])} finished "
                      f"segments in {sink.work})", file=sys.stderr)
                source.skip(sink.frames_done)
        else:
            sink = FileSink(args.output, *source.size, rate=source.rate, codec=args.codec, audio_from=audio)
    except BaseException:
        source.close()
        raise
    recorder = TraceRecorder() if args.report else None
    pipeline = Pipeline(source, proc, [sink], [recorder] if recorder else [])
    done_before = sink.frames_done if args.resume else 0
    total = source.frame_count - done_before if source.frame_count else None
    try:
        result = _run_with_progress(pipeline, total, args.quiet)
    except (UserError, KeyboardInterrupt) as exc:
        if args.resume and sink.frames_done:
            hint = f"{sink.frames_done} frames kept in {sink.work}; run the same command again to continue"
            if isinstance(exc, KeyboardInterrupt):
                print(f"livedeid: {hint}", file=sys.stderr)
                raise
            raise UserError(f"{exc} ({hint})") from None
        raise
    _print_stats(result)
    if args.report:
        readings = [{"t": round(r.timestamp, 3), "bpm": None if r.bpm is None else round(r.bpm, 2),
                     "snr_db": round(r.snr_db, 2), "quality": r.quality} for r in result.hr_readings]
        hrs = recorder.heart_rates(args.hr_method)
        _write_json(args.report, {"input": str(args.input), "output": str(args.output),
                                  "frames": result.frames_out + done_before, "resumed_after_frame": done_before,
                                  "clip_hr": hrs, "live_hr": readings,
                                  "engine": result.engine, "stats": result.stats})
    print(f"wrote {args.output} ({result.frames_out + done_before} frames)")
    return 0


def cmd_run(args) -> int:
    from livedeid.io.sinks import FileSink, VirtualCameraSink
    from livedeid.io.sources import open_source
    from livedeid.pipeline.processor import Pipeline

    source = open_source(args.camera, width=args.width, height=args.height, fps=args.fps, live=True)
    sinks = []
    try:
        if not args.no_virtual_camera:
            sinks.append(VirtualCameraSink(*source.size, fps=source.fps, backend=args.backend, device=args.device))
            print(f"sending to {sinks[-1].description}", file=sys.stderr)
        if args.record:
            _check_output_path(args.record)
            sinks.append(FileSink(args.record, *source.size, rate=source.fps))
        proc = _processor(args)
    except BaseException:
        for s in sinks:
            s.abort()
        source.close()
        raise
    listeners = []
    if args.preview:
        listeners.append(_preview_listener())
    pipeline = Pipeline(source, proc, sinks, listeners)
    last = [time.monotonic()]

    def status(frame, processor):
        if time.monotonic() - last[0] >= 1.0:
            last[0] = time.monotonic()
            r = processor.hr.reading
            hr = f"{r.bpm:.0f} bpm ({r.quality})" if r and r.bpm else "HR --"
            cam = "" if pipeline.capture_status == "ok" else f"  [{pipeline.capture_status}]"
            print(f"\r{pipeline.stats.fps:5.1f} fps  faces {len(frame.faces)}  {hr}{cam}   ", end="",
                  file=sys.stderr)

    pipeline.listeners.append(status)
    if args.duration:
        import threading

        timer = threading.Timer(args.duration, pipeline.stop)
        timer.daemon = True
        timer.start()
    # Ctrl+C is the normal way to end a live run: stop cleanly so a recording is kept.
    import signal

    previous = signal.signal(signal.SIGINT, lambda *_: pipeline.stop())
    print(f"running on {source.description}; Ctrl+C to stop", file=sys.stderr)
    try:
        result = pipeline.run()
    finally:
        signal.signal(signal.SIGINT, previous)
    print(file=sys.stderr)
    _print_stats(result)
    return 0


def _preview_listener():
    import cv2

    def show(frame, processor):
        cv2.imshow("livedeid (protected output)", frame.output)
        cv2.waitKey(1)

    return show


def cmd_monitor(args) -> int:
    import numpy as np

    from livedeid.io.sources import open_source
    from livedeid.rppg.hr import StreamingHR, mean_skin_rgb, trace_to_hr
    from livedeid.tracking.mesh import FaceTracker

    source = open_source(args.source, live=False)
    hr = StreamingHR(method=args.hr_method, window_s=args.window)
    ts, rgbs, readings = [], [], []
    last_t = None
    with source, FaceTracker(max_faces=1) as tracker:
        for frame in source:
            faces = [f for f in tracker.update(frame.image, frame.timestamp) if not f.is_lost]
            rgb = mean_skin_rgb(frame.image, faces[0].landmarks) if faces else None
            reading = hr.push(frame.timestamp, rgb)
            ts.append(frame.timestamp)
            rgbs.append(rgb if rgb is not None else np.full(3, np.nan))
            if reading is not None and reading.timestamp != last_t:
                last_t = reading.timestamp
                readings.append(reading)
                if not args.quiet:
                    shown = f"{reading.bpm:6.1f} bpm" if reading.bpm is not None else "  -- no reading"
                    print(f"t={reading.timestamp:7.2f}s  {shown}  SNR {reading.snr_db:5.1f} dB  {reading.quality}")
            if args.seconds and frame.timestamp - ts[0] >= args.seconds:
                break
    if not ts:
        raise UserError(f"no frames in {args.source}")
    try:
        clip, _ = trace_to_hr(np.array(ts), np.array(rgbs), args.hr_method)
    except ValueError:
        raise UserError(f"no face found in {args.source}") from None
    print(f"clip HR: {clip.bpm:.1f} bpm (SNR {clip.snr_db:.1f} dB, {clip.quality}) over {len(ts)} frames")
    if args.json:
        _check_output_path(args.json)
        _write_json(args.json, {
            "source": args.source, "frames": len(ts), "method": args.hr_method,
            "clip_hr": {"bpm": round(clip.bpm, 2), "snr_db": round(clip.snr_db, 2), "quality": clip.quality},
            "live_hr": [{"t": round(r.timestamp, 3), "bpm": None if r.bpm is None else round(r.bpm, 2),
                         "snr_db": round(r.snr_db, 2), "quality": r.quality} for r in readings],
        })
    return 0


def cmd_doctor(args) -> int:
    from livedeid.cli.doctor import run_checks

    checks = run_checks(probe_cameras=not args.no_cameras, virtual_camera_backend=args.backend)
    width = max(len(c.name) for c in checks)
    for c in checks:
        mark = {"ok": "ok  ", "missing": "MISS", "warn": "warn"}[c.status]
        print(f"[{mark}] {c.name:<{width}}  {c.detail}")
        if c.status != "ok" and c.fix:
            print(f"       {'':<{width}}  fix: {c.fix}")
    essential_missing = [c for c in checks if c.essential and c.status == "missing"]
    return 1 if essential_missing else 0


def cmd_export(args) -> int:
    from livedeid.nets.export import export_model, held_out_self_match

    matches = held_out_self_match(args.eval) if args.eval else None
    for line in export_model(weights=args.weights, out_dir=args.out_dir, name=args.name, seed=args.seed,
                             trained=args.trained, fp16=args.fp16, tensorrt=args.tensorrt, notes=args.notes,
                             held_out_self_match=matches):
        print(line)
    return 0


def cmd_train(args) -> int:
    from livedeid.training.loop import format_report, load_config, train

    cfg = load_config(args.config, args.set)
    if args.export:
        cfg["export"] = True
    result = train(cfg, progress=not args.quiet)
    print(f"weights: {result['weights']} ({result['steps']} steps, {result['train_seconds']:.0f} s)")
    if "eval" in result:
        print(format_report(result["eval"]))
    return 0


def cmd_eval(args) -> int:
    from livedeid.evaluation.runs import run_eval, synthetic_clips, video_clips

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


def cmd_gui(args) -> int:
    from livedeid.panel import require_gui, run_panel  # imports no Qt: the check comes first

    require_gui()
    from livedeid.inference.manifest import load_spec
    from livedeid.panel.workers import PatientSettings

    config = _config(args)
    load_spec(args.model)  # a bad manifest is a one-line error here, not a banner later
    settings = PatientSettings(
        source=args.camera, width=args.width, height=args.height, fps=args.fps, engine=config.engine,
        fail_closed=config.fail_closed, manifest=config.manifest, max_faces=config.max_faces,
        hr_method=config.hr_method, hr_overlay=config.hr_overlay, min_confidence=config.min_confidence,
        hr_window_s=config.hr_window_s, detect_long_side=config.detect_long_side,
        virtual_camera=not args.no_virtual_camera, vcam_backend=args.backend, vcam_device=args.device)
    return run_panel(settings, mode="monitor" if args.monitor else "patient", monitor_source=args.monitor,
                     theme=args.theme, privacy_meter=not args.no_privacy_meter)


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


def _run_with_progress(pipeline, total: int | None, quiet: bool):
    from tqdm import tqdm

    bar = tqdm(total=total, unit="frame", disable=quiet, file=sys.stderr, dynamic_ncols=True)
    pipeline.listeners.append(lambda frame, proc: bar.update(1))
    try:
        return pipeline.run()
    finally:
        bar.close()


def _print_stats(result) -> None:
    s = result.stats
    print(f"engine: {result.engine}")
    print(f"frames: {result.frames_out} out of {result.frames_in} in, dropped {s['dropped']}, "
          f"{s['fps']:.1f} fps end to end, {s['hidden_face_frames']} face-frames hidden (fail-closed)")
    print(f"{'stage':<10} {'p50 ms':>8} {'p95 ms':>8} {'fps@p50':>8}")
    for stage, v in s["latency_ms"].items():
        fps = 1000.0 / v["p50"] if v["p50"] > 0 else float("inf")
        print(f"{stage:<10} {v['p50']:8.2f} {v['p95']:8.2f} {fps:8.0f}")
    for e in result.events:
        print(f"event: {e}")


# -- parser ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="livedeid", description=(
        "Real-time face de-identification that keeps the pulse: protected video for face "
        "recognition machines, live heart rate for the clinician."))
    p.add_argument("--version", action="version", version=f"livedeid {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log details")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

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
    _add_pipeline_options(d)
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("run", help="camera -> filter -> virtual camera (for Zoom/Teams/Meet)",
                       description="Live: reads a camera, protects every face and sends the result to a "
                                   "virtual camera that video-call apps can select.")
    r.add_argument("--camera", default="0", help="camera index, stream URL, video file (played live, looped) "
                                                 "or synthetic[:HR] (default 0)")
    _add_live_options(r, "do not send to a virtual camera")
    r.add_argument("--preview", action="store_true", help="show the protected output in a window")
    r.add_argument("--record", type=Path, default=None, help="also record the protected output to a file")
    r.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    _add_pipeline_options(r)
    r.set_defaults(func=cmd_run)

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
    pr.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_pipeline_options(pr)
    pr.set_defaults(func=cmd_process)

    m = sub.add_parser("monitor", help="heart rate only, from a video file or camera (clinician's side)",
                       description="Tracks the face in SOURCE and prints the live rPPG heart rate "
                                   "with its quality, then the whole-clip heart rate.")
    m.add_argument("source", help="video file, camera index, or synthetic[:HR]")
    m.add_argument("--hr-method", choices=("pos", "chrom", "green"), default="pos")
    m.add_argument("--window", type=float, default=10.0, help="analysis window in seconds (default 10)")
    m.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    m.add_argument("--json", type=Path, default=None, help="write readings as JSON")
    m.add_argument("-q", "--quiet", action="store_true", help="only the clip result")
    m.set_defaults(func=cmd_monitor)

    dr = sub.add_parser("doctor", help="what is available here (cameras, virtual camera, engines, models)")
    dr.add_argument("--no-cameras", action="store_true", help="skip probing cameras")
    dr.add_argument("--backend", default=None, help="pyvirtualcam backend to check")
    dr.set_defaults(func=cmd_doctor)

    g = sub.add_parser("gui", help="the window: protect and send (patients), heart-rate monitor (clinicians)",
                       description="Opens the livedeid panel: live protected video with a before/after view, "
                                   "heart rate, privacy meter and the virtual camera switch; or, in monitor "
                                   "mode, the heart rate of a face in a file, camera or screen region. "
                                   "`livedeid` with no command opens it too.")
    g.add_argument("--camera", default=None, help="camera index, video file or synthetic[:HR] "
                                                  "(default: the first camera found, else the synthetic face)")
    _add_live_options(g, "start without sending to a virtual camera")
    g.add_argument("--monitor", default=None, metavar="SOURCE",
                   help="start in clinician monitor mode on a video file, camera index, synthetic[:HR] "
                        "or screen[:LEFT,TOP,WIDTH,HEIGHT]")
    g.add_argument("--theme", choices=("dark", "light"), default="dark")
    g.add_argument("--no-privacy-meter", action="store_true", help="do not run face recognisers on the output")
    _add_pipeline_options(g)
    g.set_defaults(func=cmd_gui)

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
    ev.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(func=cmd_eval)

    tr = sub.add_parser("train", help="train the de-identification model (needs torch and ../shared/data)",
                        description="Trains the autoencoder (reconstruct + de-identify against dlib/SFace + "
                                    "keep the rPPG pulse) on clips made from identity-split face photos, "
                                    "with resumable checkpoints and a CSV log; evaluates on held-out people "
                                    "and, with --export, writes engines/deid.* when it de-identifies.")
    tr.add_argument("--config", type=Path, default=None, help="JSON settings (e.g. configs/train_default.json)")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a setting (dotted keys, JSON values), repeatable")
    tr.add_argument("--export", action="store_true", help="export to engines/ if it beats the untrained model")
    tr.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    tr.set_defaults(func=cmd_train)

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
                   help="the weights' `livedeid train` evaluation (eval.json): its held-out self-match per "
                        "recogniser goes into the manifest, and users are warned while it is above 5%%")
    e.set_defaults(func=cmd_export)

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
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="livedeid: %(levelname)s: %(message)s")
    if not args.command:  # no command: open the window, the everyday entry point
        args = parser.parse_args([*(["--verbose"] if args.verbose else []), "gui"])
    try:
        if hasattr(args, "fail_closed"):
            _resolve_pipeline_options(args)
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"livedeid: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("livedeid: interrupted", file=sys.stderr)
        return 130
