"""The real pipeline over a video file, every output frame kept beside its input: how the
torture set, the re-acquisition tests and the benchmarks watch the pipeline work.

* ``process``: :class:`~livedeid.io.sources.FileSource` -> ``build_processor(config)`` ->
  :class:`~livedeid.pipeline.runner.Pipeline`, every frame in order (``livedeid process``);
* ``live``: the same file played in real time by :class:`~livedeid.io.sources.LiveSimulation`,
  frames skipped when processing is late (``livedeid run --camera clip.mp4``);
* ``input``: no pipeline, the clean clip (the control).
"""
from __future__ import annotations

from pathlib import Path

from livedeid.core.settings import PipelineConfig
from livedeid.evaluation.leaks import OutputFrame
from livedeid.io.sinks import NullSink
from livedeid.io.sources import FileSource, LiveSimulation, Source
from livedeid.pipeline.factory import build_processor
from livedeid.pipeline.runner import Pipeline

MODES = ("process", "live")


class ClipPosition(Source):
    """A live simulation whose frames carry their position in the clip as ``index``, so
    each output frame meets its own ground truth. LiveSimulation stamps clip frame k with
    its due time t0 + k / fps and delivers frame 0 first; t0 is taken here, before any
    queue can drop that frame."""

    is_live = True

    def __init__(self, live: LiveSimulation):
        self.live = live
        self.fps, self.size, self.description = live.fps, live.size, live.description
        self._t0: float | None = None

    def read(self):
        frame = self.live.read()
        if frame is not None:
            if self._t0 is None:
                self._t0 = frame.timestamp
            frame.index = round((frame.timestamp - self._t0) * self.fps)
        return frame

    def close(self) -> None:
        self.live.close()


def run_clip(path: Path, mode: str, config: PipelineConfig | None = None) -> tuple[list[OutputFrame], dict]:
    """Every frame the pipeline finished on the video at ``path``, with what it was given,
    what it sent on and what it hid; ``mode`` is ``input`` (no pipeline: the clean clip),
    ``process`` or ``live`` (see the module docstring)."""
    if mode == "input":
        with FileSource(path) as source:
            return [OutputFrame(f.index, f.image, f.image) for f in source], {"engine": "none (clean clip)"}
    if mode == "live":
        source = ClipPosition(LiveSimulation(lambda: FileSource(path)))
    else:
        source = FileSource(path)
    processor = build_processor(config or PipelineConfig())
    frames: list[OutputFrame] = []

    def keep(frame, _processor):
        frames.append(OutputFrame(frame.index, frame.image, frame.output, len(frame.faces),
                                  frame.fail_closed_regions, list(frame.hidden_boxes)))

    result = Pipeline(source, processor, [NullSink()], [keep]).run()
    return frames, {"engine": result.engine, "dropped": result.stats["dropped"], "fps": result.stats["fps"],
                    "model_warning": processor.warning}
