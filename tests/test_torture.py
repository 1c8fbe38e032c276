"""Torture clips really show their condition, and the leak metric can fail.

Clips are rendered from the real celebrity photos in ../shared/data (shortened to 1 s),
written as video files and read back with the pipeline's own FileSource; the recogniser
is the real SFace. Everything skips with a message where the data are missing.
"""
from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest
from conftest import data_path

from livedeid.core.errors import UserError
from livedeid.evaluation.leaks import OutputFrame, core_box, protection_summary, recognizer_leaks, reference_embeddings
from livedeid.evaluation.torture import FPS, SCENARIOS, SCENARIOS_BY_NAME, make_clip, make_torture_set, pick_people
from livedeid.io.sources import FileSource

pytestmark = pytest.mark.data  # every test draws faces from ../shared/data


@pytest.fixture(scope="module")
def faces_root():
    return data_path("faces", "celebrities").parent


@pytest.fixture(scope="module")
def clips(faces_root, tmp_path_factory):
    made = make_torture_set(faces_root, tmp_path_factory.mktemp("torture"), seconds=1.0)
    return {c.scenario.name: c for c in made}


def decoded(clip):
    with FileSource(clip.path) as src:
        return list(src)


def luma(image):
    return float(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).mean())


def centres(clip):
    return np.array([[(f.faces[0].box[0] + f.faces[0].box[2]) / 2, (f.faces[0].box[1] + f.faces[0].box[3]) / 2]
                     for f in clip.frames])


def widths(clip):
    return np.array([f.box[2] - f.box[0] for row in clip.frames for f in row.visible_faces()])


@pytest.mark.slow
def test_every_scenario_is_made_and_reads_back_exactly(clips):
    assert set(clips) == {s.name for s in SCENARIOS}
    for clip in clips.values():
        frames = decoded(clip)
        assert len(frames) == len(clip.frames) == round(FPS)
        assert frames[0].image.shape == (clip.size[1], clip.size[0], 3)
        # The pipeline sees the timestamps the ground truth was made with.
        assert np.allclose([f.timestamp for f in frames], [t.timestamp for t in clip.frames], atol=1e-4)


@pytest.mark.slow
def test_fast_turns_foreshorten_the_face_quickly(clips):
    w = widths(clips["fast_turns"])
    assert w.max() / w.min() > 1.5                  # cos(60 deg) at the extremes of a turn
    assert np.abs(np.diff(w)).max() >= 5            # within one frame


@pytest.mark.slow
def test_jumps_move_the_head_over_100_px_between_two_frames(clips):
    assert np.linalg.norm(np.diff(centres(clips["jumps"]), axis=0), axis=1).max() > 100


@pytest.mark.slow
def test_motion_blur_is_fast_and_smears_the_face(clips, tmp_path):
    clip = clips["motion_blur"]
    assert np.linalg.norm(np.diff(centres(clip), axis=0), axis=1).max() > 25
    # The same scene with a closed shutter: identical but for the blur.
    sharp = make_clip(replace(clip.scenario, exposure=1), list(clip.photos.items()), tmp_path, seed=clip.seed)
    blurred_frames, sharp_frames = decoded(clip), decoded(sharp)
    ratios = []
    for row, b, s in zip(clip.frames, blurred_frames, sharp_frames):
        x0, y0, x1, y1 = row.faces[0].in_frame(clip.size)
        sharpness = [cv2.Laplacian(cv2.cvtColor(f.image[y0:y1, x0:x1], cv2.COLOR_BGR2GRAY), cv2.CV_32F).var()
                     for f in (b, s)]
        ratios.append(sharpness[0] / sharpness[1])
    assert np.median(ratios) < 0.6


@pytest.mark.slow
def test_hand_covers_about_half_the_face_then_leaves(clips):
    occluded = [row.faces[0].occluded for row in clips["hand_occlusion"].frames]
    assert 0.35 <= max(occluded) <= 0.7
    assert min(occluded) == 0.0


@pytest.mark.slow
def test_enter_leave_has_empty_frames_and_frames_with_the_face(clips):
    counts = {len(row.visible_faces()) for row in clips["enter_leave"].frames}
    assert {0, 1} <= counts


@pytest.mark.slow
def test_multi_face_shows_several_different_people_at_once(clips):
    clip = clips["multi_face"]
    assert len(clip.photos) >= 2
    assert max(len({f.identity for f in row.visible_faces()}) for row in clip.frames) >= 2


@pytest.mark.slow
def test_dark_and_overexposed_light(clips):
    assert np.mean([luma(f.image) for f in decoded(clips["dark"])]) < 40
    bright = decoded(clips["overexposed"])
    assert np.mean([luma(f.image) for f in bright]) > 190
    assert np.mean([(f.image == 255).any(axis=2).mean() for f in bright]) > 0.3  # clipped highlights


@pytest.mark.slow
def test_near_profile_squashes_the_face(clips):
    boxes = np.array([f.box for row in clips["near_profile"].frames for f in row.visible_faces()])
    aspect = (boxes[:, 2] - boxes[:, 0]) / (boxes[:, 3] - boxes[:, 1])
    assert aspect.max() < 0.6  # a frontal face oval is about 0.8 as wide as tall


@pytest.mark.slow
def test_tiny_faces_are_under_40_px_wide(clips):
    w = widths(clips["tiny"])
    assert len(w) == len(clips["tiny"].frames) and w.max() < 40


@pytest.mark.slow
def test_dropped_frames_skip_repeat_and_jitter(clips):
    clip = clips["dropped_frames_jitter"]
    frames = decoded(clip)
    gaps = np.diff([f.timestamp for f in frames]) * FPS
    assert gaps.max() >= 1.8                         # frames missed
    assert np.std(gaps) > 0.1                        # not a steady clock
    scene = np.array([row.scene_time for row in clip.frames])
    repeats = np.flatnonzero(np.diff(scene) == 0) + 1
    assert len(repeats) > 0
    # A re-delivered buffer is the same picture under a new timestamp.
    assert all(np.array_equal(frames[k].image, frames[k - 1].image) for k in repeats)


def test_generation_is_deterministic(faces_root, tmp_path):
    sc = replace(SCENARIOS_BY_NAME["jumps"], seconds=0.3)
    people = pick_people(faces_root, 1, np.random.default_rng(5))
    a = make_clip(sc, people, tmp_path / "a", seed=9)
    b = make_clip(sc, people, tmp_path / "b", seed=9)
    assert a.frames == b.frames
    assert all(np.array_equal(x.image, y.image) for x, y in zip(decoded(a), decoded(b)))


def test_people_can_be_restricted_to_those_a_model_never_saw(faces_root):
    held_out = ["celebrities/id03", "celebrities/id08", "celebrities/id11"]
    for seed in range(5):
        chosen = pick_people(faces_root, 3, np.random.default_rng(seed), only=held_out)
        assert sorted(identity for identity, _ in chosen) == held_out
    with pytest.raises(UserError, match="need photos of 3 different people"):
        pick_people(faces_root, 3, np.random.default_rng(0), only=held_out[:2])


def test_unknown_scenario_is_refused(faces_root, tmp_path):
    with pytest.raises(UserError, match="unknown scenario"):
        make_torture_set(faces_root, tmp_path, ["no_such_thing"])


# -- the leak metric -------------------------------------------------------------------

@pytest.fixture(scope="module")
def sface():
    from livedeid.recognizers.base import get_recognizer

    try:
        return get_recognizer("sface")
    except UserError as exc:
        pytest.skip(str(exc))


@pytest.mark.slow
def test_clean_clip_leaks_and_another_person_does_not(clips, sface, faces_root):
    clip = clips["fast_turns"]
    frames = [OutputFrame(f.index, f.image, f.image) for f in decoded(clip)[::5]]
    own = recognizer_leaks(sface, frames, reference_embeddings(sface, clip.photos))
    assert own["detected"] == len(frames)
    assert own["leaked"] == len(frames)  # an unprotected face is recognised
    others = [p for p in pick_people(faces_root, 3, np.random.default_rng(1)) if p[0] not in clip.photos][:1]
    stranger = recognizer_leaks(sface, frames, reference_embeddings(sface, dict(others)))
    assert stranger["detected"] == len(frames) and stranger["leaked"] == 0
    assert stranger["best_score"] < sface.score_threshold < own["best_score"]


@pytest.mark.slow
def test_raw_counts_untouched_faces_only(clips):
    clip = clips["enter_leave"]
    images = [f.image for f in decoded(clip)]
    with_face = sum(1 for row in clip.frames if row.visible_faces())

    untouched = protection_summary([OutputFrame(k, im, im) for k, im in enumerate(images)], clip.frames)
    assert untouched["raw"] == with_face and untouched["psnr_frame_db"] == np.inf

    masked = [OutputFrame(k, im, np.full_like(im, 128), tracked=1, hidden=1) for k, im in enumerate(images)]
    summary = protection_summary(masked, clip.frames)
    assert summary["raw"] == 0 and summary["hidden"] == len(images)
    assert summary["psnr_face_db"] < 20

    # Changing only the rim of the face box leaves the core (eyes, nose, mouth) raw.
    rim = []
    for k, (im, row) in enumerate(zip(images, clip.frames)):
        out = im.copy()
        for face in row.visible_faces():
            x0, y0, x1, y1 = face.in_frame(clip.size)
            cx0, cy0, cx1, cy1 = core_box(face, clip.size)
            out[y0:y1, x0:x1] = 0
            out[cy0:cy1, cx0:cx1] = im[cy0:cy1, cx0:cx1]
        rim.append(OutputFrame(k, im, out))
    assert protection_summary(rim, clip.frames)["raw"] == with_face
