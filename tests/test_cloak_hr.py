"""The personal cloak keeps the pulse: heart rate read from cloaked synthetic-pulse clips
of real faces (head motion, flicker, noise) moves by at most 1 bpm from the clean clip's.

The cloak is a constant offset per face-aligned pixel, so in a face-locked skin region it
adds a constant, nothing in the heart-rate band; what could leak in is the pattern
sliding under the skin region as the head moves and the mesh jitters. The pattern here is
the worst case for that: a sign pattern at the full budget (what MI-FGSM converges to).
"""
from __future__ import annotations

import numpy as np
import pytest
from conftest import data_path

from livedeid.core.records import Frame
from livedeid.core.settings import PipelineConfig
from livedeid.io.profile import DEFAULT_BUDGET, Profile, save_profile
from livedeid.io.synthetic import SyntheticPulseSource
from livedeid.pipeline.factory import build_processor
from livedeid.rppg.monitor import hr_from_video

pytestmark = [pytest.mark.slow, pytest.mark.data]


def _sign_profile(path):
    rng = np.random.default_rng(0)
    pattern = (DEFAULT_BUDGET * rng.choice([-1.0, 1.0], (3, 128, 128))).astype(np.float32)
    profile = Profile(name="pulse", pattern=pattern, budget=DEFAULT_BUDGET, recognizers={},
                      verification={"protects": True}, settings={}, region_grow=0.25)
    return save_profile(profile, path)


def _hr(frames) -> float:
    from livedeid.tracking.mesh import FaceTracker

    with FaceTracker(max_faces=1) as tracker:
        result, trace = hr_from_video(iter(frames), tracker, "pos")
    assert trace.face_fraction > 0.95
    return result.bpm


def test_heart_rate_moves_by_at_most_1_bpm_under_the_cloak(tmp_path):
    root = data_path("faces", "celebrities")
    profile = _sign_profile(tmp_path / "pulse.npz")
    changes = []
    for k, (person, bpm) in enumerate((("id02", 62.0), ("id04", 88.0), ("id07", 115.0))):
        photo = sorted((root / person).glob("*.jpg"))[0]
        src = SyntheticPulseSource(photo, hr_bpm=bpm, duration_s=12.0, fps=30.0, size=(640, 360), motion=1.0,
                                   flicker=0.01, noise_std=2.0, pulse_amplitude=0.005, seed=200 + k)
        clean = list(src)
        processor = build_processor(PipelineConfig(profile=profile, safety_net=False))
        try:
            cloaked = []
            for f in clean:
                done = processor.process(Frame(f.image.copy(), f.index, f.timestamp))
                assert done.cloak_track is not None  # the face wore the cloak
                cloaked.append(Frame(done.output, f.index, f.timestamp))
        finally:
            processor.close()
        hr_in, hr_out = _hr(clean), _hr(cloaked)
        print(f"{person}: true {bpm:.1f}, clean {hr_in:.2f}, cloaked {hr_out:.2f} bpm")
        changes.append(abs(hr_out - hr_in))
        assert abs(hr_in - src.mean_true_hr) <= 1.5
    assert max(changes) <= 1.0, changes
