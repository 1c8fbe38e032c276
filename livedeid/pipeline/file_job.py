"""One recorded video through the pipeline, frame-exact: what ``livedeid process`` does
and what every task of ``livedeid batch`` does, written once.

:func:`process_file` opens the input (a video file, or a folder of PNG frames), builds the
processor, picks the output (a video file written whole at the end, in resumable segments,
or a PNG frame folder under the input's frame names), runs the threaded pipeline and
returns the run with its report (the dictionary ``process --report`` writes). Callers add
what only they need: a progress bar, printing, their own listeners, a report file.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from livedeid.core.errors import UserError
from livedeid.core.settings import PipelineConfig
from livedeid.io.frames import FrameFolderSink, open_video
from livedeid.io.sinks import FileSink, ResumableFileSink, container_format
from livedeid.pipeline.factory import build_processor
from livedeid.pipeline.runner import Pipeline, RunResult, TraceRecorder


@dataclass
class FileJob:
    """Where a video comes from and goes to, and how the output is encoded."""

    input: Path
    output: Path
    codec: str = "h264"           # a livedeid.io.sinks.CODECS key (video outputs; frame folders are PNG)
    audio: bool = True            # copy the input's audio track, if any
    resume: bool = False          # write finished segments a rerun continues from
    segment_seconds: float = 5.0

    def check(self) -> None:
        """UserError for a job that cannot work, before any decoding."""
        self.input, self.output = Path(self.input), Path(self.output)
        if self.output.resolve() == self.input.resolve():
            raise UserError("output must differ from input")
        if self.input.is_dir():
            if container_format(self.output) is not None:
                raise UserError(f"{self.input} is a folder of frames: its output is a folder of frames too, "
                                f"not {self.output.suffix}")
            if self.resume:
                raise UserError("--resume writes video segments: it is for video files, not frame folders")
        elif self.output.is_dir():
            raise UserError(f"output path is a folder: {self.output}")


@dataclass
class FileRun:
    result: RunResult
    report: dict                  # what `process --report` writes
    recorder: TraceRecorder | None
    frames: int                   # frames in the output, counting those of a resumed run


def process_file(config: PipelineConfig, job: FileJob, *, cloaks=None,
                 start: Callable = build_processor, listeners: list | None = None, record_hr: bool = False,
                 run: Callable[[Pipeline, int | None], RunResult] | None = None,
                 say: Callable[[str], None] = lambda line: None) -> FileRun:
    """De-identify ``job.input`` into ``job.output`` (module docstring).

    ``cloaks``: who wears which cloak (``--two-pass``, :class:`livedeid.cloak.tracks.TrackCloaks`),
    which needs the host frame path. ``start(config, path=...)`` builds the processor
    (the CLI's also says which engine). ``run(pipeline, total_frames)`` runs it (default:
    ``pipeline.run()``; the CLI's draws a progress bar). ``record_hr`` keeps the skin
    colours of input and output for the whole-clip heart rates. ``say`` gets lines meant
    for the person running it (resuming, what a stopped resumable run kept).
    """
    job.check()
    source = open_video(job.input)
    try:
        proc = start(config, path="host" if cloaks else "auto")
        if cloaks is not None:
            proc.assign_cloaks = cloaks
        sink = _open_sink(job, source, proc, say)
    except BaseException:
        source.close()
        raise
    recorder = TraceRecorder() if record_hr else None
    pipeline = Pipeline(source, proc, [sink], [recorder] if recorder else [])
    pipeline.listeners += list(listeners or [])
    done_before = sink.frames_done if job.resume else 0
    total = source.frame_count - done_before if source.frame_count else None
    try:
        result = run(pipeline, total) if run is not None else pipeline.run()
    except (UserError, KeyboardInterrupt) as exc:
        if job.resume and sink.frames_done:
            hint = f"{sink.frames_done} frames kept in {sink.work}; run the same command again to continue"
            if isinstance(exc, KeyboardInterrupt):
                say(f"livedeid: {hint}")
                raise
            raise UserError(f"{exc} ({hint})") from None
        raise
    frames = result.frames_out + done_before
    report = {"input": str(job.input), "output": str(job.output), "frames": frames,
              "resumed_after_frame": done_before,
              "clip_hr": recorder.heart_rates(config.hr_method) if recorder else None,
              "live_hr": [r.report() for r in result.hr_readings],
              "engine": result.engine, "stats": result.stats,
              "tracks": getattr(cloaks, "summary", None) if cloaks is not None else None}
    return FileRun(result, report, recorder, frames)


def _open_sink(job: FileJob, source, proc, say):
    """The output: a frame folder for a frame folder; else the video file written whole at
    the end, or, with ``job.resume``, in segments, skipping ``source`` past the frames an
    earlier run already finished."""
    if job.input.is_dir():
        return FrameFolderSink(job.output, source.names)
    audio = job.input if job.audio and source.has_audio else None
    if not job.resume:
        return FileSink(job.output, *source.size, rate=source.rate, codec=job.codec, audio_from=audio)
    if job.segment_seconds <= 0:
        raise UserError("--segment-seconds must be positive")
    stat = job.input.stat()
    config = proc.config
    # A resumed run must continue with the same input and the settings that change pixels.
    fingerprint = {"input": str(job.input.resolve()), "bytes": stat.st_size,
                   "mtime_ns": stat.st_mtime_ns, "model_sha256": proc.spec.onnx_sha256,
                   "fail_closed": config.fail_closed, "max_faces": config.max_faces,
                   "hr_overlay": config.hr_overlay,
                   "profile_sha256": proc.profile.sha256 if proc.profile is not None else None}
    sink = ResumableFileSink(job.output, *source.size, rate=source.rate, codec=job.codec,
                             audio_from=audio, fingerprint=fingerprint,
                             segment_frames=max(1, round(job.segment_seconds * source.fps)))
    if sink.frames_done:
        say(f"resuming after frame {sink.frames_done} ({len(sink.state['segments'])} finished "
            f"segments in {sink.work})")
        source.skip(sink.frames_done)
    return sink
