"""The re-posed cloak (livedeid.core.reposing, protect.cloak, the optimiser's ``repose``):
a pattern drawn in a face layout lands on the same points of the face whatever its pose,
the frame path and the optimiser move it alike, a profile carries its layout (and refuses
a broken one in one line), and on the real pipeline nothing outside the cloak's region changes."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from test_cloak_profile import _pattern, _profile, _rewrite, _scene

from livedeid.core.errors import UserError
from livedeid.core.geometry import apply_affine
from livedeid.core.records import FaceTrack, Frame
from livedeid.core.reposing import ANCHORS, Reposer, anchor_points
from livedeid.core.settings import PipelineConfig
from livedeid.io.profile import load_profile, save_profile
from livedeid.pipeline.factory import build_processor
from livedeid.protect.cloak import cloak_face, worn_pattern
from livedeid.protect.composite import oval_mask
from livedeid.protect.windows import extract_crop
from livedeid.tracking.mesh import alignment
from livedeid.tracking.still import still_landmarks


def _smooth_pattern(size=128, seed=0):
    """A low-frequency pattern, so that sampling it between pixels changes little."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(-1, 1, (8, 8, 3)).astype(np.float32)
    return (cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC) * (8 / 255)).transpose(2, 0, 1).copy()


def _face(image_bgr, size=128):
    lm = still_landmarks(image_bgr)
    assert lm is not None
    to_crop, from_crop, _ = alignment(lm, size)
    return FaceTrack(track_id=0, landmarks=lm.astype(np.float32), to_crop=to_crop, from_crop=from_crop,
                     confidence=1.0, crop=extract_crop(image_bgr, to_crop, size))


def _turned(image_bgr):
    """The photo with the face's right half squeezed: the crop's similarity fit cannot undo it."""
    h, w = image_bgr.shape[:2]
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    dst = np.float32([[0, 0], [w * 0.7, h * 0.15], [w * 0.7, h * 0.85], [0, h]])
    return cv2.warpPerspective(image_bgr, cv2.getPerspectiveTransform(src, dst), (w, h), borderValue=(40, 60, 50))


def test_the_spline_map_is_exact_at_the_anchors_and_the_identity_for_the_layout_itself():
    rng = np.random.default_rng(1)
    layout = rng.uniform(25, 100, (len(ANCHORS), 2))
    reposer = Reposer(layout, 128)
    xs, ys = np.meshgrid(np.arange(128), np.arange(128))
    same = reposer.map(layout)
    assert np.abs(same[..., 0] - xs).max() < 1e-3 and np.abs(same[..., 1] - ys).max() < 1e-3
    # a face whose anchors sit 4 px right and 2 px up of the layout's: every pixel looks 4 px left, 2 px down
    moved = reposer.map(layout + np.array([4.0, -2.0]))
    assert np.allclose(moved[..., 0], xs - 4.0, atol=1e-3) and np.allclose(moved[..., 1], ys + 2.0, atol=1e-3)
    # a smooth non-rigid change: the map sends each anchor's pixel back to the layout's anchor
    warped = layout + 5.0 * np.sin((layout - 64.0) / 30.0)
    m = reposer.map(warped)
    at = np.rint(warped).astype(int)
    back = m[at[:, 1], at[:, 0]] + (warped - at)   # first order: the map's slope is about one
    assert np.abs(back - layout).mean() < 0.3


def test_a_reposed_pattern_sits_on_the_same_points_of_a_turned_face(astronaut_bgr):
    front = _face(astronaut_bgr)
    layout = apply_affine(front.to_crop, front.landmarks).astype(np.float32)
    pattern = _smooth_pattern()
    # the face the layout was taken from wears the pattern as it is
    assert np.abs(worn_pattern(front, pattern, layout) - pattern)[:, 20:108, 20:108].max() < 2e-3
    turned = _face(_turned(astronaut_bgr))
    here = anchor_points(apply_affine(turned.to_crop, turned.landmarks))
    there = anchor_points(layout)
    assert np.abs(here - there).max() > 3.0, "the squeeze must move some anchors against the aligned crop"
    worn = worn_pattern(turned, pattern, layout)
    inside = np.all((here > 2) & (here < 125), axis=1)

    def value(p, pts):
        return np.stack([cv2.remap(np.ascontiguousarray(c), pts[:, :1].astype(np.float32), pts[:, 1:].astype(np.float32),
                                   cv2.INTER_LINEAR)[:, 0] for c in p])

    on_face = np.abs(value(worn, here[inside]) - value(pattern, there[inside])).mean()
    unmoved = np.abs(value(pattern, here[inside]) - value(pattern, there[inside])).mean()
    assert on_face < 0.25 * unmoved, (on_face, unmoved)


def test_the_frame_path_and_the_optimiser_repose_alike(astronaut_bgr):
    torch = pytest.importorskip("torch")
    from livedeid.cloak.optimise import face_layout, worn_on_crops

    front, turned = _face(astronaut_bgr), _face(_turned(astronaut_bgr))
    layout = face_layout(front.crop[None])
    assert layout.shape == (478, 2) and layout.dtype == np.float32
    pattern = _smooth_pattern(seed=2)
    on_host = worn_pattern(turned, pattern, layout)
    with torch.no_grad():
        in_torch = worn_on_crops(pattern, turned.crop[None], layout,
                                 landmarks=[apply_affine(turned.to_crop, turned.landmarks)])[0].numpy()
        own_mesh = worn_on_crops(pattern, turned.crop[None], layout)[0].numpy()
    # the same mesh: the same pattern (cv2.remap and grid_sample sample alike)
    assert np.abs(on_host - in_torch)[:, 4:124, 4:124].max() < 0.02 * np.abs(pattern).max()
    # the mesh found again on the crop differs by under a pixel: so does the pattern's place
    assert np.abs(on_host - own_mesh)[:, 16:112, 16:112].mean() < 0.25 * np.abs(pattern).mean()


def test_a_profile_keeps_its_layout_and_refuses_a_broken_one(tmp_path):
    layout = np.random.default_rng(0).uniform(20, 110, (478, 2)).astype(np.float32)
    path = save_profile(_profile(layout=layout), tmp_path / "ada.npz")
    assert np.array_equal(load_profile(path).layout, layout)
    assert load_profile(save_profile(_profile(), tmp_path / "plain.npz")).layout is None
    for broken, message in ((layout[:400], "layout"), (np.full((478, 2), np.nan, np.float32), "not finite"),
                            (layout * 100, "outside the crop"), (layout.astype(np.float64), "float64")):
        _rewrite(path, lambda a, b=broken: a.update(layout=b))
        with pytest.raises(UserError, match=message) as err:
            load_profile(path)
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="layout"):
        save_profile(_profile(layout=layout[:10]), tmp_path / "bad.npz")
    assert not (tmp_path / "bad.npz").exists()


def test_the_wearer_of_a_reposed_profile_wears_it_reposed_and_nothing_outside_its_region_changes(tmp_path, astronaut_bgr):
    front = _face(astronaut_bgr)
    layout = apply_affine(front.to_crop, front.landmarks).astype(np.float32)
    profile = _profile(pattern=_pattern(seed=5), layout=layout)
    profile.region_grow = 0.25
    proc = build_processor(PipelineConfig(engine="onnxruntime", profile=save_profile(profile, tmp_path / "ada.npz")))
    for i in range(4):
        frame = proc.process(Frame(_scene(astronaut_bgr, i), i, i / 30))
    proc.close()
    (face,) = frame.faces
    expected = FaceTrack(track_id=0, landmarks=face.landmarks, to_crop=face.to_crop, from_crop=face.from_crop,
                         confidence=1.0, crop=face.crop)
    cloak_face(expected, profile.pattern, profile.region_grow, layout)
    assert np.array_equal(face.protected, expected.protected)
    assert not np.array_equal(face.protected, np.clip(face.crop + profile.pattern, 0, 1)), "re-posed, not as stored"
    box, mask = oval_mask(face.landmarks, frame.image.shape[:2], grow=0.25)
    inside = np.zeros(frame.image.shape[:2], bool)
    inside[box[1]:box[3], box[0]:box[2]] = mask > 0
    diff = np.abs(frame.output.astype(int) - frame.image.astype(int)).max(axis=2)
    assert diff[~inside].max() == 0, "pixels outside the cloak's region must be bit-identical"
    assert diff[inside].mean() > 0.5 and diff.max() <= 9


def test_a_reposed_optimisation_returns_its_layout_and_stays_within_its_limits(astronaut_bgr):
    pytest.importorskip("torch")
    from livedeid.cloak.optimise import CloakSettings, optimise_cloak

    crop = _face(astronaut_bgr).crop
    crops = np.stack([crop, crop[:, :, ::-1].copy()])
    s = CloakSettings(steps=3, check_every=3, batch=2, repose=True)
    res = optimise_cloak(crops, s)
    assert res.layout.shape == (478, 2) and res.pattern.shape == (3, 128, 128)
    assert np.abs(res.pattern).max() <= s.budget + 1e-6 and np.abs(res.pattern).max() > 0
    again = optimise_cloak(crops, CloakSettings(steps=3, check_every=3, batch=2, repose=True), layout=res.layout,
                           init=res.pattern)
    assert np.array_equal(again.layout, res.layout), "a refinement keeps the layout it is given"
