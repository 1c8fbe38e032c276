"""Privacy meter: would a face recogniser still know the person in the output?

At enrolment the clean camera image (never sent anywhere) is embedded by each available
recogniser (dlib ResNet, SFace). Then, about every ``interval_s`` seconds, the newest
*output* frame is embedded and compared with that enrolment against the recogniser's own
threshold. This is a check of the pixels that leave the machine, not of the model's
claims: with the untrained placeholder model it will say "recognisable", and it should.

Runs on its own thread and only ever looks at the newest frame, so it never slows the
pipeline (dlib and ONNX Runtime release the GIL while they compute).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from livedeid.core.errors import UserError
from livedeid.panel.common import LatestValue
from livedeid.recognizers.base import RECOGNIZER_NAMES, get_recognizer

log = logging.getLogger(__name__)

LABELS = {"dlib": "dlib ResNet", "sface": "SFace (OpenCV)"}

# Verdicts (``RecognizerVerdict.status``)
UNAVAILABLE = "unavailable"
LOADING = "loading"
ENROLLING = "enrolling"
NO_FACE = "no face found"
RECOGNISABLE = "recognisable"
NOT_RECOGNISABLE = "not recognisable"
FAILED = "error"


@dataclass
class RecognizerVerdict:
    name: str
    status: str
    detail: str = ""
    score: float | None = None       # native units: dlib distance (lower = closer), SFace cosine
    threshold: float | None = None   # native units
    metric: str = ""

    @property
    def label(self) -> str:
        return LABELS.get(self.name, self.name)


@dataclass
class MeterReport:
    verdicts: dict[str, RecognizerVerdict] = field(default_factory=dict)
    enrolled: bool = False
    protected: bool = True            # the measured output was made with protection on
    measured_at: float = 0.0          # time.monotonic()


def _native(recognizer, score: float) -> float:
    # Recognizer.score is "higher = more alike" (negated distance for dlib); people read
    # each recogniser in its own units.
    return score if recognizer.metric == "cosine" else -score


def _explain(recognizer, native: float) -> str:
    # Shown only behind the meter's "Details": the recogniser's own number and threshold.
    if recognizer.metric == "cosine":
        return f"likeness {native:.2f}; the same person scores {recognizer.threshold:.3f} or more"
    return f"difference {native:.2f}; the same person scores {recognizer.threshold:.2f} or less"


class PrivacyMeter:
    def __init__(self, names: tuple[str, ...] = RECOGNIZER_NAMES, interval_s: float = 0.7,
                 loader: Callable = get_recognizer):
        self.names = tuple(names)
        self.interval_s = float(interval_s)
        self._loader = loader
        self.frames = LatestValue()    # (clean image, output image, protected)
        self.reports = LatestValue()   # MeterReport
        self.recognizers: dict = {}
        self.unavailable: dict[str, str] = {}
        self.loaded = False
        self.enrolment: dict[str, np.ndarray] = {}
        self.measurements = 0
        self._enrol_request = threading.Event()
        self._enrol_request.set()  # enrol from the first clean frame with a face
        self._forget = threading.Event()
        self._stop = threading.Event()
        self.thread: threading.Thread | None = None

    # -- control (any thread) ---------------------------------------------------------------
    def start(self) -> "PrivacyMeter":
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="livedeid-panel-meter", daemon=True)
            self.thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> bool:
        self._stop.set()
        if self.thread is not None and self.thread.is_alive():
            self.thread.join(timeout)
        return self.thread is None or not self.thread.is_alive()

    @property
    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def submit(self, image: np.ndarray, output: np.ndarray | None, protected: bool) -> None:
        """Hand over the newest frame (called on the pipeline thread; just a reference swap)."""
        if output is not None:
            self.frames.put((image, output, protected))

    def enrol(self) -> None:
        """Take a fresh enrolment from the next clean frame."""
        self._enrol_request.set()

    def forget(self) -> None:
        """A new source (maybe a new person): drop the enrolment and enrol again."""
        self._forget.set()
        self._enrol_request.set()
        self.frames.clear()

    # -- work (meter thread, or the caller when not started) ---------------------------------
    def load(self) -> None:
        for name in self.names:
            try:
                self.recognizers[name] = self._loader(name)
            except UserError as exc:
                self.unavailable[name] = str(exc)
            except Exception as exc:  # a broken install must not take the panel down
                self.unavailable[name] = f"{type(exc).__name__}: {exc}"
        self.loaded = True

    def enrol_image(self, clean_bgr: np.ndarray) -> dict[str, bool]:
        """Enrol the largest face of a clean image per recogniser; {name: found}."""
        found = {}
        for name, rec in self.recognizers.items():
            embedding = rec.embed_largest(clean_bgr)
            if embedding is not None:
                self.enrolment[name] = embedding
            found[name] = embedding is not None
        return found

    def evaluate(self, output_bgr: np.ndarray) -> dict[str, RecognizerVerdict]:
        """Verdict per recogniser on one output image against the enrolment."""
        verdicts = {}
        for name in self.names:
            rec = self.recognizers.get(name)
            if rec is None:
                why = self.unavailable.get(name, "not loaded")
                verdicts[name] = RecognizerVerdict(name, UNAVAILABLE if self.loaded else LOADING, why)
                continue
            ref = self.enrolment.get(name)
            if ref is None:
                verdicts[name] = RecognizerVerdict(name, ENROLLING, "waiting for a clear view of the face to enrol",
                                                   threshold=rec.threshold, metric=rec.metric)
                continue
            faces = rec.embed_faces(output_bgr)
            if not faces:
                verdicts[name] = RecognizerVerdict(name, NO_FACE, "the recogniser finds no face in the output",
                                                   threshold=rec.threshold, metric=rec.metric)
                continue
            # Any face in the picture that matches counts: the closest one decides.
            best = max(rec.score(ref, f.embedding) for f in faces)
            native = _native(rec, best)
            status = RECOGNISABLE if best >= rec.score_threshold else NOT_RECOGNISABLE
            verdicts[name] = RecognizerVerdict(name, status, _explain(rec, native), native, rec.threshold, rec.metric)
        return verdicts

    def _publish(self, verdicts: dict, protected: bool = True) -> None:
        self.reports.put(MeterReport(verdicts, bool(self.enrolment), protected, time.monotonic()))

    def _run(self) -> None:
        try:
            blank = np.zeros((8, 8, 3), np.uint8)  # nothing is embedded before enrolment
            self._publish(self.evaluate(blank))  # every recogniser "loading"
            self.load()
            self._publish(self.evaluate(blank))  # "unavailable" (with why) or "enrolling"
            if not self.recognizers:
                return  # nothing to measure with; the report says why
            next_t = 0.0
            while not self._stop.is_set():
                if self._stop.wait(max(0.0, next_t - time.monotonic())):
                    break
                item = self.frames.wait(0.25)
                if item is None:
                    continue
                started = time.monotonic()
                clean, output, protected = item
                if self._forget.is_set():
                    self._forget.clear()
                    self.enrolment.clear()
                if self._enrol_request.is_set():
                    self.enrolment.clear()
                    found = self.enrol_image(clean)
                    if all(found.values()):
                        self._enrol_request.clear()
                self._publish(self.evaluate(output), protected)
                self.measurements += 1
                # At most a third of one core: on a slow machine the meter measures less
                # often rather than taking CPU from the pipeline.
                busy = time.monotonic() - started
                next_t = started + max(self.interval_s, 3.0 * busy)
        except Exception as exc:
            log.exception("privacy meter failed")
            self._publish({n: RecognizerVerdict(n, FAILED, f"{type(exc).__name__}: {exc}") for n in self.names})
