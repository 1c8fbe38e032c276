"""Tracking, alignment and the sliding window on real MediaPipe and a real face photo."""
import cv2
import numpy as np

from livedeid.core.face_regions import FACE_OVAL, polygon_points
from livedeid.core.geometry import crop_template, five_points, similarity_fit
from livedeid.core.records import FaceTrack
from livedeid.protect.windows import FaceWindows, extract_crop
from livedeid.tracking.mesh import FaceTracker, OneEuroFilter, alignment


def _place(face: np.ndarray, size=(800, 450), shift=(0, 0), angle=0.0, scale=1.3) -> np.ndarray:
    """Put the face photo into a larger frame with a known similarity motion."""
    w, h = size
    m = cv2.getRotationMatrix2D((face.shape[1] / 2, face.shape[0] / 2), angle, scale)
    m[:, 2] += np.array([w / 2 - face.shape[1] / 2 + shift[0], h / 2 - face.shape[0] / 2 + shift[1]])
    return cv2.warpAffine(face, m, (w, h), borderValue=(40, 60, 50))


def test_similarity_transform_recovers_known_motion():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    true = cv2.getRotationMatrix2D((10, 20), 17.0, 1.3)
    dst = src @ true[:, :2].T + true[:, 2]
    est = similarity_fit(src, dst)
    assert np.allclose(est, true, atol=1e-4)


def test_alignment_inverse_is_exact_and_template_fits(astronaut_bgr):
    with FaceTracker(static_images=True) as tracker:
        faces = tracker.detect(astronaut_bgr)
    assert len(faces) == 1 and faces[0].shape == (478, 2)
    to_crop, from_crop, err = alignment(faces[0], 128)
    round_trip = np.vstack([from_crop, [0, 0, 1]]) @ np.vstack([to_crop, [0, 0, 1]])
    assert np.allclose(round_trip, np.eye(3), atol=1e-9)
    assert err < 0.2  # frontal photo fits the five-point template
    mapped = five_points(faces[0]) @ to_crop[:, :2].T + to_crop[:, 2]
    assert np.abs(mapped - crop_template(128)).max() < 0.25 * 128 / 4
    # the whole face oval lands inside the crop
    oval = polygon_points(faces[0], FACE_OVAL) @ to_crop[:, :2].T + to_crop[:, 2]
    assert oval.min() >= 0 and oval.max() <= 128


def test_tracker_keeps_identity_through_motion_and_marks_lost(astronaut_bgr):
    with FaceTracker() as tracker:
        ids, centres = [], []
        for i in range(12):
            frame = _place(astronaut_bgr, shift=(8 * i, 3 * i))
            faces = tracker.update(frame, i / 30)
            assert len(faces) == 1 and faces[0].lost_frames == 0
            ids.append(faces[0].track_id)
            centres.append(faces[0].landmarks.mean(axis=0))
        assert len(set(ids)) == 1
        moved = np.array(centres) - centres[0]
        # the face moves (8, 3) px/frame: the smoothed track follows within two frames of lag
        assert np.all(np.abs(moved - np.outer(np.arange(12), [8, 3])) < 16)
        empty = np.full((450, 800, 3), 50, np.uint8)
        lost = tracker.update(empty, 12 / 30)
        assert len(lost) == 1 and lost[0].lost_frames == 1 and lost[0].confidence == 0.0
        # it comes back elsewhere: the lost track is taken over, no stale second track
        back = tracker.update(_place(astronaut_bgr, shift=(-150, 0)), 13 / 30)
        assert [f.track_id for f in back] == [ids[0]] and back[0].lost_frames == 0


def test_one_euro_filter_removes_jitter_but_follows_motion():
    rng = np.random.default_rng(1)
    f = OneEuroFilter()
    still = [f(np.array([[100.0, 100.0]]) + rng.normal(0, 1.0, (1, 2)), t / 30, scale=100) for t in range(60)]
    assert np.std(np.array(still)[30:, 0, 0]) < 0.6  # raw jitter std is 1.0
    f2 = OneEuroFilter()
    for t in range(30):
        y = f2(np.array([[100.0 + 20 * t, 0.0]]), t / 30, scale=100)
    assert abs(y[0, 0] - (100 + 20 * 29)) < 25  # fast motion lags by about one frame, not many


def test_window_is_causal_ring_buffer(astronaut_bgr):
    to_crop = np.array([[0.3, 0, 0], [0, 0.3, 0]])
    face = FaceTrack(0, np.zeros((478, 2), np.float32), to_crop, cv2.invertAffineTransform(to_crop), 1.0)
    win = FaceWindows(window=4, crop_size=32)
    frames = [np.full_like(astronaut_bgr, v) for v in (10, 20, 30, 40, 50)]
    w0 = win.push(frames[0], face)
    assert w0.shape == (4, 3, 32, 32) and np.allclose(w0, 10 / 255)  # warm-up repeats the first crop
    for fr in frames[1:]:
        w = win.push(fr, face)
    assert np.allclose(w[:, 0, 0, 0], np.array([20, 30, 40, 50]) / 255)  # oldest first, newest last
    win.reset(0)
    assert np.allclose(win.push(frames[0], face), 10 / 255)


def test_extract_crop_layout(astronaut_bgr):
    to_crop = np.array([[0.25, 0, 0], [0, 0.25, 0]])
    crop = extract_crop(astronaut_bgr, to_crop, 128)
    assert crop.shape == (3, 128, 128) and crop.dtype == np.float32
    ref = cv2.resize(astronaut_bgr, (128, 128), interpolation=cv2.INTER_LINEAR)
    assert np.abs(crop[0] * 255 - ref[:, :, 2]).mean() < 12  # channel 0 is red


def test_a_lone_face_is_followed_without_searching_and_a_newcomer_is_still_found(two_heads):
    """Told that nobody else is in view (search=False), the tracker follows a lone face on
    the one-face graph; the mesh's own detector, asked on one frame in SPOT_EVERY, still
    finds a second face that nobody reported, within SPOT_EVERY + 1 frames."""
    from livedeid.tracking.mesh import SPOT_EVERY

    with FaceTracker() as tracker:
        for i in range(3):
            assert len(tracker.update(two_heads(False), i / 30, search=False)) == 1
        assert tracker.graph_switches == 1  # onto the lone face's graph
        found_after = None
        for i in range(3, 3 + SPOT_EVERY + 2):
            faces = tracker.update(two_heads(True), i / 30, search=False)
            if len([f for f in faces if not f.is_lost]) == 2:
                found_after = i - 3
                break
        assert found_after is not None and found_after <= SPOT_EVERY
        assert tracker.graph_switches == 2  # back on the full graph


def test_a_reported_newcomer_is_tracked_on_the_next_frame(two_heads):
    with FaceTracker() as tracker:
        for i in range(3):
            tracker.update(two_heads(False), i / 30, search=False)
        # the caller's detector saw a face no track holds: the full graph takes over at once
        faces = tracker.update(two_heads(True), 3 / 30, search=True)
        assert len([f for f in faces if not f.is_lost]) == 2
        # and keeps looking while a face besides the first one is tracked
        for i in range(4, 8):
            faces = tracker.update(two_heads(True), i / 30, search=False)
            assert len([f for f in faces if not f.is_lost]) == 2


def test_searching_keeps_the_full_graph(two_heads):
    with FaceTracker() as tracker:
        for i in range(5):
            tracker.update(two_heads(False), i / 30)
        assert tracker.graph_switches == 0


def test_a_lone_face_that_jumps_is_found_on_the_same_frame(astronaut_bgr):
    """The lone face's graph detects only on the frame after it loses its face; the full
    graph looks on the frame itself, so a cut or a jump costs no lost (hidden) frame."""
    with FaceTracker() as tracker:
        for i in range(3):
            tracker.update(_place(astronaut_bgr, shift=(-150, 0)), i / 30, search=False)
        assert tracker.graph_switches == 1
        before = tracker.update(_place(astronaut_bgr, shift=(-150, 0)), 3 / 30, search=False)[0]
        faces = tracker.update(_place(astronaut_bgr, shift=(150, 0)), 4 / 30, search=False)
        live = [f for f in faces if not f.is_lost]
        # a jump this far is a new track (the old one is lost, hidden where it was)
        assert len(live) == 1
        assert live[0].landmarks[:, 0].mean() - before.landmarks[:, 0].mean() > 200
