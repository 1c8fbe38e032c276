"""Recover as fast as we hide: a face that appears after a cut, a camera switch or a jump
is protected (not hidden) within 10 frames, and a lost face's hidden region is released
once the detectors find nobody under it (livedeid.tracking.release)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import data_path

from livedeid.core.face_regions import FACE_OVAL, polygon_points
from livedeid.core.records import FaceTrack
from livedeid.evaluation.clip_run import run_clip
from livedeid.evaluation.leaks import protection_summary
from livedeid.evaluation.torture import FaceTruth, FrameTruth
from livedeid.tracking.release import LostFaceRelease

BOUND = 10  # frames from a face's appearance to its protection, at 30 fps


# -- the rule ---------------------------------------------------------------------------
def test_a_clear_region_is_released_after_its_clear_frames():
    rule = LostFaceRelease(clear_frames=3)
    lost = {7: (100, 100, 200, 200)}
    assert rule.update(lost, [], [], {7}) == []
    assert rule.update(lost, [], [], {7}) == []
    assert rule.update(lost, [], [], {7}) == [7]  # it was last seen leaving the picture


def test_an_unheld_face_under_the_region_keeps_it_hidden():
    rule = LostFaceRelease(clear_frames=2)
    lost = {7: (100, 100, 200, 200)}
    face_there = [(130, 130, 170, 170)]
    assert rule.update(lost, [], [], {7}) == []
    assert rule.update(lost, face_there, [], {7}) == []  # the count starts again
    assert rule.update(lost, [], [], {7}) == []
    assert rule.update(lost, [], [], {7}) == [7]
    # A face there for good: never released.
    rule = LostFaceRelease(clear_frames=2)
    assert all(rule.update(lost, face_there, [], {7}) == [] for _ in range(50))


def test_a_face_lost_where_it_sat_keeps_its_region_hidden():
    # Turned to a profile no detector finds: nobody else is there and it did not leave.
    rule = LostFaceRelease(clear_frames=2)
    lost = {7: (100, 100, 200, 200)}
    assert all(rule.update(lost, [], [(400, 100, 500, 200)]) == [] for _ in range(50))


def test_a_face_a_live_track_holds_does_not_keep_the_region():
    # After a cut the next person sits where the last one was: their face is tracked (and
    # protected), so it is no reason to keep the stale region blurred over them.
    rule = LostFaceRelease(clear_frames=2)
    lost = {7: (100, 100, 200, 200)}
    new_face = (120, 110, 190, 190)
    assert rule.update(lost, [new_face], [new_face]) == []
    assert rule.update(lost, [new_face], [new_face]) == [7]


def test_clear_frames_must_be_positive():
    with pytest.raises(ValueError):
        LostFaceRelease(clear_frames=0)


# -- the tracker follows a jump without lag ---------------------------------------------
def test_a_jump_resets_the_smoothing_so_the_protection_does_not_trail_the_face():
    from livedeid.tracking.mesh import FaceTracker

    rng = np.random.default_rng(0)
    face = rng.uniform(0, 100, (478, 2)).astype(np.float32) + 200
    with FaceTracker() as tracker:
        for k in range(10):
            tracker._associate([face + rng.normal(0, 0.3, face.shape).astype(np.float32)], k / 30)
        jumped = face + np.float32([60, 20])  # another face where the last one was, 40 % away
        tracker._associate([jumped], 10 / 30)
        (track,) = tracker._tracks
        assert np.abs(track.landmarks - jumped).max() < 1e-3
        # Small motion is still smoothed.
        tracker._associate([jumped + 0.5], 11 / 30)
        assert 0 < np.abs(track.landmarks - (jumped + 0.5)).max() < 0.5


def test_a_face_lost_while_walking_is_hidden_where_it_went():
    """A face walking out of the picture is lost before it is gone (a half face at the
    edge is what no detector finds): its hidden region stretches along its last motion
    for as long as it is lost, up to 1.5 face sizes, and never backwards."""
    from livedeid.protect.fail_closed import hidden_box
    from livedeid.tracking.mesh import FaceTracker

    rng = np.random.default_rng(0)
    face = rng.uniform(0, 80, (478, 2)).astype(np.float32) + np.float32([300, 200])
    with FaceTracker() as tracker:
        for k in range(6):  # 12 px a frame to the right: 360 px/s
            tracker._associate([face + np.float32([12 * k, 0])], k / 30)
        tracker._last_t = 5 / 30
        (walking,) = [tracker._to_face_track(t) for t in tracker._tracks]
        assert walking.velocity[0] == pytest.approx(360, rel=0.1) and abs(walking.velocity[1]) < 1
        for k in (6, 7, 8, 9):
            tracker._associate([], k / 30)
        tracker._last_t = 9 / 30
        (lost,) = [tracker._to_face_track(t) for t in tracker._tracks]
    assert lost.is_lost and lost.lost_s == pytest.approx(4 / 30)
    still = FaceTrack(lost.track_id, lost.landmarks, lost.to_crop, lost.from_crop, 0.0, lost.lost_frames,
                      lost_s=lost.lost_s)
    moved, kept = hidden_box(lost, (720, 1280)), hidden_box(still, (720, 1280))
    assert moved[0] == kept[0] and moved[1:] == (kept[1], moved[2], kept[3])
    assert moved[2] - kept[2] == pytest.approx(360 * 4 / 30, abs=2)  # 48 px further right
    far = FaceTrack(lost.track_id, lost.landmarks, lost.to_crop, lost.from_crop, 0.0, 60,
                    velocity=lost.velocity, lost_s=2.0)
    size = max(np.ptp(lost.landmarks[:, 0]), np.ptp(lost.landmarks[:, 1]))
    assert hidden_box(far, (720, 1280))[2] - hidden_box(
        FaceTrack(far.track_id, far.landmarks, far.to_crop, far.from_crop, 0.0, 60, lost_s=2.0), (720, 1280))[2] \
        == pytest.approx(1.5 * size, abs=2)


# -- real videos through the real pipeline ----------------------------------------------
def _letterboxed(photo, size=(640, 480)) -> np.ndarray:
    im = cv2.imread(str(photo))
    s = min(size[0] / im.shape[1], size[1] / im.shape[0])
    im = cv2.resize(im, (int(im.shape[1] * s), int(im.shape[0] * s)), interpolation=cv2.INTER_AREA)
    canvas = np.zeros((size[1], size[0], 3), np.uint8)
    y, x = (size[1] - im.shape[0]) // 2, (size[0] - im.shape[1]) // 2
    canvas[y:y + im.shape[0], x:x + im.shape[1]] = im
    return canvas


@pytest.fixture(scope="module")
def three_photo_cuts(tmp_path_factory):
    """The trial of the issue: three still photos of different people, 30 frames each,
    letterboxed to 640x480, as a lossless video; and each frame's ground truth."""
    from livedeid.io.sinks import FileSink
    from livedeid.tracking.still import still_landmarks

    root = data_path("faces", "celebrities")
    people = ["id01", "id05", "id10"]
    frames, truth = [], []
    for person in people:
        image = _letterboxed(sorted((root / person).glob("*.jpg"))[0])
        oval = polygon_points(still_landmarks(image), FACE_OVAL)
        (x0, y0), (x1, y1) = np.floor(oval.min(axis=0)).astype(int), np.ceil(oval.max(axis=0)).astype(int)
        for _ in range(30):
            truth.append(FrameTruth(len(frames), len(frames) / 30, len(frames) / 30,
                                    [FaceTruth(person, (int(x0), int(y0), int(x1), int(y1)), 1.0)]))
            frames.append(image)
    path = tmp_path_factory.mktemp("cuts") / "three_photos.mkv"
    writer = FileSink(path, 640, 480, 30, codec="lossless")
    for im in frames:
        writer.send(im)
    writer.close()
    return path, truth


@pytest.mark.slow
@pytest.mark.data
def test_every_face_after_a_cut_is_protected_within_10_frames(three_photo_cuts):
    path, truth = three_photo_cuts
    frames, _ = run_clip(path, "process")
    summary = protection_summary(frames, truth)
    reacq = summary["reacquisition"]
    assert [e["index"] for e in reacq["events"]] == [0, 30, 60]
    assert reacq["never"] == 0 and reacq["max"] <= BOUND, reacq
    assert summary["raw"] == 0, summary["raw_faces"]
    # Protected and never hidden again after the bound: the stale region was released.
    from livedeid.evaluation.leaks import face_state

    for f in frames:
        if f.index % 30 >= BOUND:
            assert face_state(f, truth[f.index].faces[0]) == "protected", f.index


@pytest.mark.slow
@pytest.mark.data
def test_torture_cuts_clip_through_process_raw_0_and_reacquired(tmp_path):
    from livedeid.evaluation.torture import SCENARIOS_BY_NAME, make_clip, pick_people

    faces = data_path("faces")
    sc = SCENARIOS_BY_NAME["cuts"]
    people = pick_people(faces, sc.faces, np.random.default_rng(0))
    clip = make_clip(sc, people, tmp_path, seed=1)
    frames, _ = run_clip(clip.path, "process")
    summary = protection_summary(frames, clip.frames)
    assert summary["raw"] == 0, summary["raw_faces"]
    assert summary["reacquisition"]["never"] == 0
    assert summary["reacquisition"]["max"] <= BOUND, summary["reacquisition"]


def test_a_detection_is_held_only_where_the_track_box_agrees_with_it():
    from livedeid.tracking.safety_net import held

    track = (143, 97, 316, 258)  # the mesh, trailing a fast sweep (torture motion_blur, frame 22)
    face = (220, 91, 376, 246)   # where the detector sees the face: its centre is inside the track's box
    assert not held(face, [track])
    assert held((147, 95, 312, 250), [track])
