"""Background refinement of a profile's cloak during a live call.

A cloak is optimised on enrolment images; a call brings new light, glasses, a pose the
enrolment lacked. While the pipeline runs, :class:`CloakRefiner` takes the wearer's clean
aligned crop from the frame path now and then (:meth:`CloakRefiner.feed`, a pipeline
listener: a non-blocking put into a small queue, a crop dropped when the queue is full),
and a worker *process* keeps the recent ones. Every ``check_every_s`` it measures the
current cloak on them with the differentiable recognisers (plain and through a half-size
JPEG view); when any crop is closer than ``trigger_margin`` to a threshold it continues
the optimisation from the current cloak on half of the recent crops, checks the result on
the other half, and sends it back only when it is better there. The frame path picks it
up between frames (:meth:`CloakRefiner.poll`, also non-blocking) and the processor wears
it from the next frame on.

Why a process, niced, one torch thread, with a duty cycle: the frame path must never
wait for it. A thread would share the interpreter lock with the frame path's Python; a
separate process at lower priority yields the cores to it, and after each round the
worker sleeps ``(1 / duty - 1)`` times as long as the round took, so it takes at most
``duty`` of one core on average. The profile's held-out verification (made on enrolment
images) is not changed by a refinement; the refiner's own figures are reported beside it.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue
import time
from dataclasses import dataclass

import numpy as np


@dataclass
class RefineSettings:
    sample_every_s: float = 0.5     # how often the frame path hands over the wearer's crop
    keep: int = 24                  # recent crops the worker holds (oldest dropped)
    min_crops: int = 6              # crops needed before the first check
    check_every_s: float = 2.0      # how often the worker measures the current cloak
    trigger_margin: float = 0.05    # refine when a recent crop is closer than threshold - this
    steps: int = 30                 # optimisation steps per refinement round
    duty: float = 0.5               # at most this share of one core on average
    nice: int = 10                  # the worker's extra niceness (POSIX)


def _worker(*args) -> None:
    """The worker process: the refinement loop; a failure ends it with one line reported
    back (the call goes on with the cloak it has)."""
    try:
        _refine_loop(*args)
    except Exception as exc:  # the frame path must not care why refinement stopped
        args[-2].put(("error", f"cloak refinement stopped: {type(exc).__name__}: {exc}"))


def _refine_loop(pattern: np.ndarray, budget: float, rms: float, grow: float, layout: np.ndarray | None,
                 recognizers: tuple[str, ...], settings: RefineSettings, crops_in, results_out, stop) -> None:
    """The refinement loop (module docstring)."""
    if hasattr(os, "nice"):
        os.nice(settings.nice)
    import torch

    from livedeid.cloak.optimise import CloakSettings, held_out_check, optimise_cloak, worn_on_crops
    from livedeid.recognizers.base import get_recognizer
    from livedeid.recognizers.heads import RecognizerHead

    torch.set_num_threads(1)
    # The profile's own region: the composite lays the cloak under it, so the refinement must too.
    # ... and its energy: a cloak enrolled stronger (`enrol --strength`) must not be refined down;
    # ... and its layout: a re-posed pattern only means something in the layout it was drawn in.
    cloak = CloakSettings(budget=budget, rms=rms, grow=grow, recognizers=recognizers, steps=settings.steps, threads=1,
                          check_every=settings.steps, mirror=False, stop_margin=settings.trigger_margin,
                          repose=layout is not None)
    heads = [RecognizerHead.from_recognizer(get_recognizer(n), crop_size=pattern.shape[-1]) for n in recognizers]
    recent: list[np.ndarray] = []
    rounds = swaps = 0
    next_check = time.monotonic() + settings.check_every_s
    while not stop.is_set():
        try:
            recent.append(crops_in.get(timeout=0.2))
            recent = recent[-settings.keep:]
        except queue.Empty:
            pass
        if time.monotonic() < next_check or len(recent) < settings.min_crops:
            continue
        t0 = time.monotonic()
        crops = torch.from_numpy(np.stack(recent))
        refs = _refs(heads, crops)
        with torch.no_grad():
            info, safe = held_out_check(heads, worn_on_crops(pattern, crops.numpy(), layout), crops, refs, cloak)
        status = {"crops": len(recent), "safe": safe, "match": info, "rounds": rounds, "swaps": swaps}
        if not safe:
            rounds += 1
            train, held = np.stack(recent[0::2]), np.stack(recent[1::2])
            result = optimise_cloak(train, cloak, held_out=held, init=pattern, layout=layout)
            held_t = torch.from_numpy(held)
            held_refs = _refs(heads, held_t)
            with torch.no_grad():
                before, _ = held_out_check(heads, worn_on_crops(pattern, held, layout), held_t, held_refs, cloak)
                after, _ = held_out_check(heads, worn_on_crops(result.pattern, held, layout), held_t, held_refs, cloak)
            if _badness(after) < _badness(before):
                pattern = result.pattern
                swaps += 1
                results_out.put(("pattern", pattern))
            status.update(rounds=rounds, swaps=swaps, before=before, after=after)
        results_out.put(("status", status))
        worked = time.monotonic() - t0
        next_check = time.monotonic() + max(settings.check_every_s, worked * (1.0 / settings.duty - 1.0))


def _refs(heads, crops):
    """Per head (centre, own clean embeddings) of clean ``crops``: the recent frames are the
    person's gallery now."""
    import torch

    from livedeid.cloak.optimise import centre_embedding

    out = {}
    with torch.no_grad():
        for head in heads:
            e = head(crops)
            out[head.name] = (centre_embedding(head, e), e)
    return out


def _badness(info: dict) -> tuple[float, float]:
    """(share of held-out crops still matching, summed over recognisers and views; their mean
    excess over the thresholds): a cloak is better when fewer match, or as many match by less."""
    return (sum(v["centre"] + v["own"] for rec in info.values() for v in rec.values()),
            sum(v["excess"] for rec in info.values() for v in rec.values()))


class CloakRefiner:
    """The frame path's side of the refinement (module docstring). ``feed`` is a pipeline
    listener; ``poll`` returns a newer pattern once (None otherwise); ``status`` is the
    worker's latest report. ``close`` stops the worker."""

    def __init__(self, profile, processor, settings: RefineSettings | None = None,
                 recognizers: tuple[str, ...] | None = None):
        self.settings = settings or RefineSettings()
        self.processor = processor
        self.status: dict | None = None
        self.error: str | None = None
        names = tuple(recognizers or [n for n in profile.recognizers] or ("dlib", "sface"))
        ctx = mp.get_context("spawn")  # no fork of a process holding MediaPipe/ORT threads
        self._in, self._out, self._stop = ctx.Queue(maxsize=4), ctx.Queue(), ctx.Event()
        self._last_sample = -1e9
        self._proc = ctx.Process(target=_worker, name="livedeid-cloak-refiner", daemon=True,
                                 args=(profile.pattern, profile.budget, profile.energy, profile.region_grow,
                                       profile.layout, names, self.settings,
                                       self._in, self._out, self._stop))
        self._proc.start()

    def __call__(self, frame, processor=None) -> None:
        """Pipeline listener: hand over the wearer's crop now and then, and swap in a newer
        pattern between frames."""
        self.feed(frame)
        pattern = self.poll()
        if pattern is not None:
            self.processor.swap_cloak(pattern)

    def feed(self, frame) -> None:
        if frame.cloak_track is None or frame.timestamp - self._last_sample < self.settings.sample_every_s:
            return
        face = next((f for f in frame.faces if f.track_id == frame.cloak_track), None)
        if face is None or face.crop is None:
            return
        self._last_sample = frame.timestamp
        try:
            self._in.put_nowait(np.ascontiguousarray(face.crop, dtype=np.float32))
        except queue.Full:
            pass  # the worker is busy: this crop is not needed, the frame path must not wait

    def poll(self) -> np.ndarray | None:
        newest = None
        while True:
            try:
                kind, value = self._out.get_nowait()
            except queue.Empty:
                return newest
            if kind == "pattern":
                newest = value
            elif kind == "error":
                self.error = value
            else:
                self.status = value

    def close(self) -> None:
        self._stop.set()
        self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.terminate()
        for q in (self._in, self._out):
            q.cancel_join_thread()
            q.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()



def refiner_for(processor, settings: RefineSettings | None = None, say=None) -> CloakRefiner | None:
    """The refiner for a live pipeline's processor: None without a profile, or when torch
    (the enrol extra) is not installed (then ``say`` is told so, once)."""
    import importlib.util

    if getattr(processor, "profile", None) is None:
        return None
    if importlib.util.find_spec("torch") is None:
        if say is not None:
            say("cloak refinement off: torch is not installed (pip install 'livedeid[enrol]')")
        return None
    return CloakRefiner(processor.profile, processor, settings)
