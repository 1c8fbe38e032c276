"""Background refinement of the cloak on a real pipeline: the frame path hands the
wearer's crops to a worker process without ever waiting, the worker refines a cloak that
no longer protects and the processor wears the refined one from the next frame on, within
the profile's budget. (Its effect on frame latency is a benchmark:
benchmarks/refine_latency.py.)"""
from __future__ import annotations

import time

import numpy as np
import pytest

from livedeid.cloak.refine import CloakRefiner, RefineSettings
from livedeid.core.records import Frame
from livedeid.core.settings import PipelineConfig
from livedeid.io.profile import Profile, save_profile
from livedeid.io.synthetic import SyntheticPulseSource
from livedeid.pipeline.factory import build_processor
from livedeid.protect.cloak import worn_pattern

pytest.importorskip("torch")
BUDGET = 8 / 255


def _clip_layout(clip) -> np.ndarray:
    """The clip's first face in crop pixels: a layout for a re-posed profile."""
    from livedeid.tracking.mesh import aligned_landmarks
    from livedeid.tracking.still import still_landmarks

    lm = still_landmarks(clip.frame(0).image)
    return aligned_landmarks(lm, 128)


@pytest.mark.slow
@pytest.mark.timeout(420)
@pytest.mark.parametrize("reposed", [False, True], ids=["aligned", "reposed"])
def test_a_weak_cloak_is_refined_and_swapped_in_between_frames(tmp_path, reposed):
    # A zero cloak protects nobody: the worker's first check must call for a refinement.
    clip = SyntheticPulseSource(duration_s=60.0, fps=30.0, size=(640, 360), seed=4)
    layout = _clip_layout(clip) if reposed else None
    path = save_profile(Profile(name="ada", pattern=np.zeros((3, 128, 128), np.float32), budget=BUDGET,
                                recognizers={"sface": {}}, layout=layout), tmp_path / "ada.npz")
    proc = build_processor(PipelineConfig(engine="onnxruntime", profile=path))
    settings = RefineSettings(sample_every_s=0.0, min_crops=4, keep=8, check_every_s=0.2, steps=10, duty=1.0)
    frames = [proc.process(clip.frame(i)) for i in range(0, 240, 30)]  # 8 s of a call, one frame a second
    assert all(f.cloak_track is not None for f in frames)
    with CloakRefiner(proc.profile, proc, settings) as refiner:
        deadline = time.monotonic() + 300  # the worker's start (torch, the recognisers) is most of it
        i = 0
        while time.monotonic() < deadline and not (refiner.status or {}).get("swaps") and refiner.error is None:
            t0 = time.perf_counter()
            refiner(frames[i % len(frames)])
            assert time.perf_counter() - t0 < 0.5, "the listener must not wait for the worker"
            i += 1
            time.sleep(0.05)
    assert refiner.error is None
    assert refiner.status is not None and refiner.status["swaps"] >= 1, refiner.status
    pattern = proc.profile.pattern
    assert np.abs(pattern).max() > 0 and np.abs(pattern).max() <= BUDGET + 1e-6
    frame = proc.process(clip.frame(241))
    wearer = next(f for f in frame.faces if f.track_id == frame.cloak_track)
    assert np.array_equal(proc.profile.layout, layout) if reposed else proc.profile.layout is None
    worn = worn_pattern(wearer, pattern, layout)  # the layout it was refined in
    assert np.array_equal(wearer.protected, np.clip(wearer.crop + worn, 0, 1)), "worn from the next frame"
    assert any("refined" in e for e in proc.events)
    proc.close()


def test_feeding_never_blocks_when_the_worker_is_busy(tmp_path):
    path = save_profile(Profile(name="ada", pattern=np.zeros((3, 128, 128), np.float32), budget=BUDGET,
                                recognizers={"sface": {}}), tmp_path / "ada.npz")
    proc = build_processor(PipelineConfig(engine="onnxruntime", profile=path))
    clip = SyntheticPulseSource(duration_s=2.0, fps=30.0, size=(640, 360), seed=5)
    frame = proc.process(clip.frame(0))
    frame = proc.process(clip.frame(1))
    assert frame.cloak_track is not None
    # 50 crops at once into a queue of 4: whatever the worker has not taken yet is dropped,
    # and the frame path goes on (the worker never checks: it waits for 1000 crops).
    with CloakRefiner(proc.profile, proc, RefineSettings(sample_every_s=0.0, min_crops=1000)) as refiner:
        t0 = time.perf_counter()
        for k in range(50):
            refiner.feed(Frame(frame.image, 2 + k, frame.timestamp + k, faces=frame.faces,
                               cloak_track=frame.cloak_track))
        assert time.perf_counter() - t0 < 2.0
        assert refiner.poll() is None
    proc.close()
