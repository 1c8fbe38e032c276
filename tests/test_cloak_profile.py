"""The personal cloak's profile file and the cloak at run time: saved and loaded whole,
refused when tampered with, pickled, misshapen or over budget (one line, also from the
command line), and on the real pipeline the largest face wears the pattern while every
pixel outside its face oval stays bit-identical."""
from __future__ import annotations

import dataclasses
import pickle
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli

from livedeid.core.errors import UserError
from livedeid.core.records import Frame
from livedeid.core.settings import PipelineConfig
from livedeid.io.profile import DEFAULT_RMS, MAX_BUDGET, Profile, digest, load_profile, resolve_profile, save_profile
from livedeid.pipeline.factory import build_processor
from livedeid.protect.composite import oval_mask

BUDGET = 8 / 255


def _pattern(seed=0, budget=BUDGET, size=128):
    rng = np.random.default_rng(seed)
    return rng.uniform(-budget, budget, (3, size, size)).astype(np.float32)


def _profile(name="ada", protects=True, **kw):
    verification = {"protects": protects, "target": 0.05, "psnr_db": 34.0, "ssim": 0.97,
                    "recognizers": {"dlib": {"detection": 1.0, "gallery_match": 0.0 if protects else 0.5,
                                             "same_photo_match": 0.25},
                                    "sface": {"detection": 1.0, "gallery_match": 0.0 if protects else 0.75,
                                              "same_photo_match": 0.0}}}
    return Profile(name=name, pattern=kw.pop("pattern", _pattern()), budget=kw.pop("budget", BUDGET),
                   recognizers={"dlib": {"files": {"net.dat": "ab" * 32}, "packages": {"dlib": "19"}}},
                   verification=verification, settings={"steps": 5, "seed": 0}, **kw)


def _rewrite(path, change):
    """Rewrite a profile file with ``change(arrays)`` applied and a valid checksum: what a
    deliberate edit looks like (the checksum alone cannot catch it)."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files if k != "sha256"}
    change(arrays)
    arrays["sha256"] = np.array([digest(arrays)])
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def test_a_profile_round_trips_and_writes_no_face_unless_asked(tmp_path):
    saved = _profile()
    path = save_profile(saved, tmp_path / "ada.npz")
    loaded = load_profile(path)
    assert np.array_equal(loaded.pattern, saved.pattern) and loaded.pattern.dtype == np.float32
    assert (loaded.name, loaded.budget, loaded.crop_size) == ("ada", BUDGET, 128)
    assert loaded.verification == saved.verification and loaded.recognizers == saved.recognizers
    assert loaded.settings == {"steps": 5, "seed": 0} and loaded.created.endswith("+00:00")
    assert loaded.sha256 == saved.sha256 and len(loaded.sha256) == 64
    assert loaded.protects and loaded.warning() is None
    assert (path.stat().st_mode & 0o777) == 0o600, "a profile is personal: private to the user"
    with np.load(path, allow_pickle=False) as npz:
        assert sorted(npz.files) == ["meta", "pattern", "sha256"], "no face image or embedding by default"
    assert not list(tmp_path.glob(".*partial*")), "the temporary file is gone"

    crops = (np.arange(2 * 3 * 128 * 128) % 256).astype(np.uint8).reshape(2, 3, 128, 128)
    kept = load_profile(save_profile(_profile(enrolment={"crops": crops}), tmp_path / "kept.npz"))
    assert np.array_equal(kept.enrolment["crops"], crops)


def test_a_profile_keeps_the_energy_its_cloak_was_made_under(tmp_path):
    # What background refinement optimises under: a cloak enrolled stronger stays as strong.
    strong = dataclasses.replace(_profile(budget=16 / 255), settings={"rms": 11 / 255, "steps": 5})
    assert load_profile(save_profile(strong, tmp_path / "strong.npz")).energy == pytest.approx(11 / 255)
    for settings in ({}, {"rms": None}, {"rms": True}, {"rms": -1.0}, {"rms": float("nan")}):
        assert dataclasses.replace(strong, settings=settings).energy == pytest.approx(DEFAULT_RMS), settings
    assert dataclasses.replace(strong, budget=6 / 255).energy == pytest.approx(6 / 255), "never past the budget"


def test_a_profile_that_missed_its_target_says_so_with_the_numbers(tmp_path):
    weak = load_profile(save_profile(_profile(protects=False), tmp_path / "weak.npz"))
    assert not weak.protects
    assert "NOT PROTECTING" in weak.warning() and "dlib 50%" in weak.warning() and "sface 75%" in weak.warning()


def test_profiles_are_found_by_name_in_the_profile_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("LIVEDEID_PROFILE_DIR", str(tmp_path / "profiles"))
    save_profile(_profile("bob"), tmp_path / "profiles" / "bob.npz")
    assert resolve_profile("bob").name == "bob"
    assert resolve_profile(tmp_path / "profiles" / "bob.npz").name == "bob"
    with pytest.raises(UserError, match="no profile 'carol'.*enrol"):
        resolve_profile("carol")
    with pytest.raises(UserError, match="not found"):
        resolve_profile(tmp_path / "nowhere" / "x.npz")


@pytest.mark.parametrize("case, message", [
    ("flipped byte", "not a livedeid profile"),
    ("edited pattern", "fails its checksum"),
    ("pickled profile", "not a livedeid profile"),
    ("object array", "not a livedeid profile"),
    ("wrong shape", "shape"),
    ("over its budget", "exceeds its budget"),
    ("budget above the cap", "budget"),
    ("not finite", "non-finite"),
    ("float64 pattern", "float64"),
])
def test_bad_profiles_are_refused_with_one_line(tmp_path, case, message):
    path = save_profile(_profile(), tmp_path / "p.npz")
    if case == "flipped byte":  # corruption on disk: the zip's own CRC or our checksum
        data = bytearray(path.read_bytes())
        data[len(data) // 3] ^= 0xFF
        path.write_bytes(bytes(data))
    elif case == "edited pattern":
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        arrays["pattern"] = arrays["pattern"] * 0.5
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)
    elif case == "pickled profile":
        path.write_bytes(pickle.dumps(_profile()))
    elif case == "object array":  # np.savez pickles object arrays: refused unread
        _rewrite(path, lambda a: a.update(meta=np.array([{"format": "livedeid-profile"}], dtype=object)))
    elif case == "wrong shape":
        _rewrite(path, lambda a: a.update(pattern=_pattern(size=64)))
    elif case == "over its budget":
        _rewrite(path, lambda a: a.update(pattern=np.full((3, 128, 128), 0.2, np.float32)))
    elif case == "budget above the cap":
        meta = str(np.load(path)["meta"][0]).replace(f'"budget": {BUDGET}', '"budget": 0.5')
        _rewrite(path, lambda a: a.update(meta=np.array([meta]), pattern=np.full((3, 128, 128), 0.4, np.float32)))
    elif case == "not finite":
        _rewrite(path, lambda a: a["pattern"].__setitem__((0, 5, 5), np.nan))
    elif case == "float64 pattern":
        _rewrite(path, lambda a: a.update(pattern=a["pattern"].astype(np.float64)))
    with pytest.raises(UserError, match=message) as err:
        load_profile(path)
    assert "\n" not in str(err.value)


def test_save_refuses_a_pattern_beyond_the_cap(tmp_path):
    with pytest.raises(UserError, match="budget"):
        save_profile(_profile(pattern=_pattern(budget=0.2), budget=0.2), tmp_path / "p.npz")
    assert 0.2 > MAX_BUDGET and not (tmp_path / "p.npz").exists()


def _scene(face, i, size=(800, 450)):
    m = np.float32([[1.3, 0, 60 + 3 * i], [0, 1.3, -120 + i]])
    return cv2.warpAffine(face, m, size, borderValue=(40, 60, 50))


def test_the_largest_face_wears_the_cloak_and_nothing_outside_its_oval_changes(tmp_path, astronaut_bgr):
    profile = _profile(pattern=_pattern(seed=3))
    path = save_profile(profile, tmp_path / "ada.npz")
    proc = build_processor(PipelineConfig(engine="onnxruntime", profile=path))
    assert proc.profile.name == "ada" and proc.cloak_warning is None
    for i in range(4):
        frame = proc.process(Frame(_scene(astronaut_bgr, i), i, i / 30))
    proc.close()
    (face,) = frame.faces
    assert face.confidence >= 0.5 and frame.fail_closed_regions == 0
    # The face's protected crop is its crop plus exactly the pattern (clipped to [0, 1]).
    expected = np.clip(face.crop + profile.pattern, 0, 1)
    assert np.array_equal(face.protected, expected)
    box, mask = oval_mask(face.landmarks, frame.image.shape[:2])
    inside = np.zeros(frame.image.shape[:2], bool)
    inside[box[1]:box[3], box[0]:box[2]] = mask > 0
    diff = np.abs(frame.output.astype(int) - frame.image.astype(int)).max(axis=2)
    assert diff[~inside].max() == 0, "pixels outside the face oval must be bit-identical"
    assert diff[inside].mean() > 0.5 and diff.max() <= 9, "the cloak is there, within its 8/255 budget"


def test_a_grown_cloak_region_reaches_past_the_oval_and_no_further(tmp_path, astronaut_bgr):
    profile = _profile(pattern=_pattern(seed=7))
    profile.region_grow = 0.15
    path = save_profile(profile, tmp_path / "ada.npz")
    assert load_profile(path).region_grow == pytest.approx(0.15)
    proc = build_processor(PipelineConfig(engine="onnxruntime", profile=path))
    for i in range(3):
        frame = proc.process(Frame(_scene(astronaut_bgr, i), i, i / 30))
    proc.close()
    (face,) = frame.faces
    diff = np.abs(frame.output.astype(int) - frame.image.astype(int)).max(axis=2)

    def inside(grow):
        box, mask = oval_mask(face.landmarks, frame.image.shape[:2], grow=grow)
        out = np.zeros(frame.image.shape[:2], bool)
        out[box[1]:box[3], box[0]:box[2]] = mask > 0
        return out

    assert diff[~inside(0.15)].max() == 0, "nothing changes outside the cloak's region"
    assert (diff[inside(0.15) & ~inside(0.0)] > 0).mean() > 0.3, "the cloak reaches past the bare oval"


def test_a_profile_whose_region_reaches_too_far_is_refused(tmp_path):
    path = save_profile(_profile(), tmp_path / "ada.npz")

    def grow_far(arrays):
        import json
        meta = json.loads(str(arrays["meta"][0]))
        meta["region_grow"] = 2.0
        arrays["meta"] = np.array([json.dumps(meta)])

    _rewrite(path, grow_far)
    with pytest.raises(UserError, match="grows the face oval"):
        load_profile(path)


def test_a_second_smaller_face_gets_the_model_not_the_cloak(tmp_path, astronaut_bgr):
    path = save_profile(_profile(pattern=_pattern(seed=4)), tmp_path / "ada.npz")
    head = astronaut_bgr[0:400, 60:420]
    canvas = np.full((420, 800, 3), 60, np.uint8)
    canvas[10:410, 20:380] = head                                      # the user, near the camera
    canvas[10:370, 420:744] = cv2.resize(head[:, ::-1], (324, 360))    # someone a little further back
    proc = build_processor(PipelineConfig(engine="onnxruntime", profile=path))
    for i in range(3):
        frame = proc.process(Frame(canvas.copy(), i, i / 30))
    proc.close()
    faces = sorted(frame.faces, key=lambda f: f.bbox()[0])
    assert len(faces) == 2 and all(f.protected is not None for f in faces)
    near, far = faces
    assert np.array_equal(near.protected, np.clip(near.crop + proc.profile.pattern, 0, 1))
    assert not np.allclose(far.protected - far.crop, proc.profile.pattern, atol=1e-3), "the model, not the cloak"


@pytest.mark.parametrize("protects", [True, False])
def test_hide_unverified_hides_the_wearer_until_the_profile_verifies(tmp_path, astronaut_bgr, protects):
    path = save_profile(_profile(protects=protects, pattern=_pattern(seed=5)), tmp_path / "ada.npz")
    proc = build_processor(PipelineConfig(engine="onnxruntime", profile=path, hide_unverified=True))
    for i in range(4):
        frame = proc.process(Frame(_scene(astronaut_bgr, i), i, i / 30))
    proc.close()
    (face,) = frame.faces
    if protects:
        assert frame.fail_closed_regions == 0
        assert np.array_equal(face.protected, np.clip(face.crop + proc.profile.pattern, 0, 1))
    else:
        assert frame.fail_closed_regions == 1, "a cloak that missed its target must not be trusted"
        x0, y0, x1, y1 = np.maximum(face.bbox(), 0)
        change = np.abs(frame.output[y0:y1, x0:x1].astype(int) - frame.image[y0:y1, x0:x1].astype(int))
        assert change.mean() > 10, "the face is hidden by the fail-closed policy, not cloaked"


def test_hide_unverified_hides_faces_the_model_cannot_vouch_for(tmp_path, astronaut_bgr):
    """The shipped model's own held-out measurement says it does not protect, so with the
    option a face that is not the cloak's wearer is hidden; without it, shown protected."""
    path = save_profile(_profile(pattern=_pattern(seed=6)), tmp_path / "ada.npz")
    head = astronaut_bgr[0:400, 60:420]
    canvas = np.full((420, 800, 3), 60, np.uint8)
    canvas[10:410, 20:380] = head
    canvas[10:370, 420:744] = cv2.resize(head[:, ::-1], (324, 360))
    regions = {}
    for hide in (False, True):
        proc = build_processor(PipelineConfig(engine="onnxruntime", profile=path, hide_unverified=hide))
        assert proc.model_warning is not None
        for i in range(3):
            frame = proc.process(Frame(canvas.copy(), i, i / 30))
        proc.close()
        assert len(frame.faces) == 2
        regions[hide] = frame.fail_closed_regions
    assert regions == {False: 0, True: 1}


def test_the_patients_path_with_a_profile_imports_no_torch(tmp_path):
    path = save_profile(_profile(), tmp_path / "ada.npz")
    code = ("import sys\n"
            "from livedeid.core.settings import PipelineConfig\n"
            "from livedeid.pipeline.factory import build_processor\n"
            f"proc = build_processor(PipelineConfig(engine='onnxruntime', profile={str(path)!r}))\n"
            "assert proc.profile is not None\n"
            "proc.close()\n"
            "print(','.join(m for m in ('torch', 'dlib') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_a_profile_makes_the_processor_take_the_host_path(tmp_path):
    path = save_profile(_profile(), tmp_path / "ada.npz")
    with pytest.raises(ValueError, match="host"):
        build_processor(PipelineConfig(engine="onnxruntime", profile=path), path="device")


@pytest.mark.slow
def test_process_with_a_bad_profile_is_one_line_and_writes_nothing(tmp_path, astronaut_bgr):
    src = tmp_path / "in.mp4"
    _write_clip(src, [_scene(astronaut_bgr, i) for i in range(3)])
    bad = tmp_path / "bad.npz"
    bad.write_bytes(pickle.dumps({"pattern": np.zeros((3, 128, 128))}))
    rc, _, err = run_cli("process", src, tmp_path / "out.mp4", "--profile", bad)
    assert_one_line_error(rc, err, "not a livedeid profile")
    rc, _, err = run_cli("process", src, tmp_path / "out.mp4", "--profile", "nobody-enrolled-this")
    assert_one_line_error(rc, err, "no profile 'nobody-enrolled-this'")
    assert not (tmp_path / "out.mp4").exists()


def _write_clip(path, images):
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264rgb", rate=30, options={"qp": "0"})
        s.width, s.height, s.pix_fmt = images[0].shape[1], images[0].shape[0], "bgr24"
        for img in images:
            c.mux(s.encode(av.VideoFrame.from_ndarray(img, format="bgr24")))
        c.mux(s.encode(None))


@pytest.mark.slow
@pytest.mark.parametrize("protects", [True, False])
def test_process_with_a_profile_cloaks_the_face_and_flags_a_weak_one(tmp_path, astronaut_bgr, protects):
    images = [_scene(astronaut_bgr, i) for i in range(6)]
    src, out = tmp_path / "in.mkv", tmp_path / "out.mkv"
    _write_clip(src, images)
    path = save_profile(_profile(protects=protects), tmp_path / "ada.npz")
    rc, _, err = run_cli("process", src, out, "--profile", path, "--codec", "lossless", "--engine", "onnxruntime",
                         timeout=300)
    assert rc == 0, err
    assert "profile: ada" in err
    flagged = [ln for ln in err.splitlines() if "NOT PROTECTING" in ln]
    if protects:
        assert not flagged, err
    else:
        assert len(flagged) == 1 and "WARNING: profile 'ada' is NOT PROTECTING" in flagged[0], err
    import av

    with av.open(str(out)) as c:
        got = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]
    assert len(got) == len(images)
    from livedeid.tracking.still import still_landmarks

    for clean, done in zip(images, got):
        changed = np.argwhere(np.abs(done.astype(int) - clean.astype(int)).max(axis=2) > 0)
        lm = still_landmarks(clean)
        lo, hi = lm.min(axis=0) - 0.15 * np.ptp(lm, axis=0), lm.max(axis=0) + 0.15 * np.ptp(lm, axis=0)
        assert len(changed) > 1000, "the face was cloaked"
        assert (changed[:, 1] >= lo[0]).all() and (changed[:, 1] <= hi[0]).all()
        assert (changed[:, 0] >= lo[1]).all() and (changed[:, 0] <= hi[1]).all()


def test_a_settings_file_names_a_profile_by_file_beside_it_or_by_name(tmp_path):
    import json

    from livedeid.core.settings import load_pipeline_config

    save_profile(_profile(), tmp_path / "ada.npz")
    (tmp_path / "beside.json").write_text(json.dumps({"profile": "ada.npz"}))
    (tmp_path / "named.json").write_text(json.dumps({"profile": "ada"}))
    assert load_pipeline_config(tmp_path / "beside.json").profile == tmp_path / "ada.npz"
    assert str(load_pipeline_config(tmp_path / "named.json").profile) == "ada"
    (tmp_path / "bad.json").write_text(json.dumps({"profile": 3}))
    with pytest.raises(UserError, match="profile has the wrong type"):
        load_pipeline_config(tmp_path / "bad.json")
