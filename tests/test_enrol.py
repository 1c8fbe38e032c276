"""`livedeid enrol` and its enrolment material: faces gathered from photos or a video with
a pose estimate, split into optimisation and held-out sets; bad input is one line; on real
celebrity photos the command writes a profile that loads, with its verification figures."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import assert_one_line_error, data_path, run_cli

from livedeid.cloak.enrolment import GUIDE, _BinReservoir, from_stream, from_video, gather, guide_at, pose_estimate
from livedeid.core.errors import UserError
from livedeid.io.profile import DEFAULT_BUDGET, load_profile, resolve_profile
from livedeid.protect.windows import extract_crop
from livedeid.tracking.mesh import alignment
from livedeid.tracking.still import still_landmarks


@pytest.mark.parametrize("args, message", [
    (["bob", "--from", "7"], "camera 7 is not available"),
    (["bob", "--from", "synthetic", "--seconds", "0"], "--seconds"),
    (["bob", "--from", "nowhere/at/all"], "enrolment source not found"),
    (["../bob", "--from", "."], "profile name"),
    (["bob", "--from", ".", "--budget", "40"], "--budget"),
    (["bob", "--from", ".", "--steps", "0"], "--steps"),
    (["bob", "--from", ".", "--strength", "0"], "--strength"),
    (["bob", "--from", ".", "--budget", "10", "--strength", "12"], "at most --budget"),
    (["bob", "--from", ".", "--recognizers", "eigenfaces"], "unknown recogniser"),
])
def test_bad_enrol_input_is_one_line(args, message):
    rc, _, err = run_cli("enrol", *args)
    assert_one_line_error(rc, err, message)


def test_one_photo_is_not_enough_to_enrol_and_verify(tmp_path, astronaut_bgr):
    cv2.imwrite(str(tmp_path / "me.jpg"), astronaut_bgr)
    (tmp_path / "notes.txt").write_text("not a photo")
    with pytest.raises(UserError, match="at least 2 usable faces"):
        gather(tmp_path)


def test_pose_estimate_follows_mirroring_and_rotation(astronaut_bgr):
    lm = still_landmarks(astronaut_bgr)
    yaw, pitch, roll = pose_estimate(lm)
    m_yaw, m_pitch, m_roll = pose_estimate(still_landmarks(np.ascontiguousarray(astronaut_bgr[:, ::-1])))
    assert m_yaw == pytest.approx(-yaw, abs=3) and m_roll == pytest.approx(-roll, abs=2)
    assert m_pitch == pytest.approx(pitch, abs=3)
    h, w = astronaut_bgr.shape[:2]
    turned = cv2.warpAffine(astronaut_bgr, cv2.getRotationMatrix2D((w / 2, h / 2), -15, 1.0), (w, h))
    assert pose_estimate(still_landmarks(turned))[2] == pytest.approx(roll + 15, abs=2)
    assert abs(yaw) < 30 and abs(pitch) < 30, "the astronaut looks roughly at the camera"


@pytest.mark.slow
def test_a_video_gives_varied_frames_with_the_pipelines_crops(tmp_path):
    import av

    from livedeid.io.synthetic import SyntheticPulseSource

    clip = tmp_path / "me.mp4"
    src = SyntheticPulseSource(duration_s=3.0, fps=15.0, size=(640, 360), seed=1)
    with av.open(str(clip), "w") as c:
        s = c.add_stream("libx264rgb", rate=15, options={"qp": "0"})
        s.width, s.height, s.pix_fmt = 640, 360, "bgr24"
        for frame in src:
            c.mux(s.encode(av.VideoFrame.from_ndarray(frame.image, format="bgr24")))
        c.mux(s.encode(None))
    enrolment = from_video(clip, max_items=9)
    items = enrolment.optimise + enrolment.held_out
    assert enrolment.examined == 45 and 2 <= len(items) <= 9
    assert len(enrolment.held_out) == max(1, len(items) // 3)
    assert len({i.source for i in items}) == len(items), "no frame twice"
    for item in items:
        assert item.image.shape == (360, 640, 3) and item.crop.shape == (3, 128, 128)
        same = extract_crop(item.image, alignment(item.landmarks, 128)[0], 128)
        assert np.array_equal(item.crop, same), "the crop is the one the pipeline makes"
    assert enrolment.crops().dtype == np.float32 and enrolment.crops(held_out=True).shape[0] == len(enrolment.held_out)


@pytest.mark.data
@pytest.mark.slow
def test_enrol_on_photos_writes_a_verified_profile_that_loads(tmp_path, monkeypatch):
    photos = sorted(data_path("faces", "celebrities", "id01").glob("*.jpg"))[:6]
    folder = tmp_path / "ada_photos"
    folder.mkdir()
    for p in photos:  # links, not copies: the data stays where it is
        (folder / p.name).symlink_to(p)
    monkeypatch.setenv("LIVEDEID_PROFILE_DIR", str(tmp_path / "profiles"))
    rc, out, err = run_cli("enrol", "ada", "--from", folder, "--steps", "5", "--seed", "1", "--strength", "10",
                           timeout=900)
    assert rc == 0, err
    assert "3 to optimise on, 3 held out" in err
    assert "held-out check: 3 ada images" in out
    assert ("PROTECTS" in out) != ("NOT PROTECTING" in out), out
    profile = resolve_profile("ada")
    assert profile.name == "ada" and profile.budget == pytest.approx(DEFAULT_BUDGET)
    assert np.abs(profile.pattern).max() <= DEFAULT_BUDGET + 1e-6 and np.abs(profile.pattern).max() > 0
    assert profile.region_grow == pytest.approx(0.25), "the cloak's region is recorded with it"
    v = profile.verification
    assert set(v["recognizers"]) == {"dlib", "sface"}
    for name, fig in v["recognizers"].items():
        assert fig["clean_gallery_match"] > 0.5, "a clean held-out photo of id01 matches the gallery"
        assert 0 <= fig["gallery_match"] <= 1 and 0 <= fig["same_photo_match"] <= 1 and 0 <= fig["detection"] <= 1
        assert f"{name:<11}" in out
    assert v["held_out_images"] == 3 and v["gallery_images"] == 3 and v["psnr_db"] > 25
    assert profile.protects == bool(v["protects"]) and (profile.warning() is None) == profile.protects
    assert profile.settings["steps"] == 5 and profile.settings["seed"] == 1
    assert profile.settings["rms"] == pytest.approx(10 / 255), "the chosen strength is what was optimised"
    assert all(len(h) == 64 for rec in profile.recognizers.values() for h in rec["files"].values())
    assert profile.enrolment == {}, "no face image without --keep-enrolment"
    assert load_profile(tmp_path / "profiles" / "ada.npz").sha256 == profile.sha256


def test_the_guide_walks_through_every_instruction_in_order():
    said = [guide_at(t, seconds=12.0) for t in np.arange(0.0, 12.0, 0.25)]
    order = [text for i, text in enumerate(said) if i == 0 or text != said[i - 1]]
    assert order == [text for _, text in GUIDE]


def test_a_bin_keeps_frames_spread_over_time_in_bounded_memory():
    bin_ = _BinReservoir(cap=8)
    for i in range(1000):
        bin_.offer(i, None, None)
    kept = [i for i, _, _ in bin_.items]
    assert len(kept) <= 8 and kept[0] == 0
    gaps = np.diff(kept)
    assert kept[-1] > 500 and gaps.min() == gaps.max(), "evenly spread over the whole recording"


@pytest.mark.slow
def test_a_live_source_is_guided_and_gives_a_held_out_split():
    from livedeid.io.sources import LiveSimulation, SyntheticSource

    updates = []
    src = LiveSimulation(lambda: SyntheticSource(duration_s=10.0, fps=15.0, size=(640, 360), seed=2))
    with src:
        enrolment = from_stream(src, seconds=3.0, max_items=6, progress=updates.append)
    assert enrolment.kind == "camera frames" and enrolment.examined >= 10
    assert updates and all(u.instruction for u in updates) and updates[-1].elapsed_s < 3.0
    assert updates[-1].faces > 0 and updates[-1].bins >= 1
    items = enrolment.optimise + enrolment.held_out
    assert 2 <= len(items) <= 6 and enrolment.held_out


@pytest.mark.slow
def test_demo_enrols_on_its_first_seconds_and_prints_the_match_before_and_after(tmp_path):
    import json

    out, report = tmp_path / "demo.mp4", tmp_path / "demo.json"
    rc, stdout, err = run_cli("demo", "--seconds", "4", "--width", "640", "--height", "360", "--enrol",
                              "--enrol-seconds", "2", "--enrol-steps", "3", "--out", out, "--report", report, "-q",
                              timeout=600)
    assert rc == 0, err
    assert (tmp_path / "demo_profile.npz").is_file() and out.is_file()
    assert "held-out check:" in stdout and "against the enrolment frames (same session)" in stdout
    cloak = json.loads(report.read_text())["cloak"]
    assert set(cloak["recognizers"]) == {"dlib", "sface"} and cloak["cloaked"] >= 1
    for fig in cloak["recognizers"].values():
        assert fig["clean_gallery_match"] == 1.0, "the clean clip matches its own enrolment"
        assert 0.0 <= fig["gallery_match"] <= 1.0 and fig["detection"] > 0


def test_demo_enrol_options_are_checked_before_any_work(tmp_path):
    rc, _, err = run_cli("demo", "--seconds", "4", "--enrol", "--enrol-seconds", "9", "--out", tmp_path / "d.mp4")
    assert_one_line_error(rc, err, "--enrol-seconds")
    assert not (tmp_path / "d.mp4").exists()


@pytest.mark.slow
def test_process_two_pass_gives_each_person_their_own_cloak(tmp_path, astronaut_bgr):
    import json

    import av

    head = astronaut_bgr[0:400, 60:420]
    frames = []
    for i in range(16):
        canvas = np.full((420, 800, 3), 60, np.uint8)
        canvas[10:410, 20 + i:380 + i] = head
        canvas[10:370, 420 - i:744 - i] = cv2.resize(head[:, ::-1], (324, 360))
        frames.append(canvas)
    src, out, report = tmp_path / "two.mkv", tmp_path / "out.mkv", tmp_path / "report.json"
    with av.open(str(src), "w") as c:
        s = c.add_stream("libx264rgb", rate=15, options={"qp": "0"})
        s.width, s.height, s.pix_fmt = 800, 420, "bgr24"
        for img in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(img, format="bgr24")))
        c.mux(s.encode(None))
    rc, stdout, err = run_cli("process", src, out, "--two-pass", "--cloak-steps", "2", "--codec", "lossless",
                              "--engine", "onnxruntime", "--report", report, "-q", timeout=900)
    assert rc == 0, err
    assert "pass 1: 2 face track(s)" in err and stdout.count("held-out check:") == 2
    tracks = json.loads(report.read_text())["tracks"]
    assert len(tracks) == 2
    for t in tracks:
        assert set(t["recognizers"]) == {"dlib", "sface"} and t["held_out_frames"] >= 1
        assert 0 < t["pattern_max"] <= DEFAULT_BUDGET + 1e-6
    with av.open(str(out)) as c:
        got = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]
    assert len(got) == len(frames)
    changed = np.abs(got[-1].astype(int) - frames[-1].astype(int)).max(axis=2) > 0
    assert changed[:, :400].sum() > 1000 and changed[:, 400:].sum() > 1000, "both people are cloaked"


def test_two_pass_refuses_a_profile_before_any_work(tmp_path, astronaut_bgr):
    clip = tmp_path / "in.png"
    cv2.imwrite(str(clip), astronaut_bgr)
    rc, _, err = run_cli("process", clip, tmp_path / "out.mp4", "--two-pass", "--profile", "someone")
    assert_one_line_error(rc, err, "--two-pass makes a cloak per person")
    assert not (tmp_path / "out.mp4").exists()


@pytest.mark.data
@pytest.mark.slow
def test_eval_cloak_runs_the_protocol_on_held_out_photos(tmp_path):
    import json

    faces = data_path("faces", "celebrities")
    rc, stdout, err = run_cli("eval", faces, "--cloak", "--people", "1", "--min-photos", "8", "--cloak-steps", "2",
                              "--recognizers", "dlib,sface", "--out", tmp_path, "-q", timeout=600)
    assert rc == 0, err
    result = json.loads((tmp_path / "cloak.json").read_text())
    (person,) = result["people"]
    assert (person["enrol"], person["probes"]) == (4, 4), "enrol on the first half, probe the other"
    for key in ("clean", "cloak"):
        for fig in result["pooled"][key]["recognizers"].values():
            assert 0.0 <= fig["gallery_match"] <= 1.0 and fig["detection"] > 0
    assert all(f["gallery_match"] == 1.0 for f in result["pooled"]["clean"]["recognizers"].values())
    for fig in result["pooled"]["clean"]["recognizers"].values():
        assert fig["top1"] >= 0.75, "clean probes are identified among the 13 identities"
    assert "cloak" in stdout and (tmp_path / "cloak.md").is_file()


def test_eval_cloak_bad_options_are_one_line(tmp_path):
    rc, _, err = run_cli("eval", tmp_path, "--cloak", "--codec", "fast")
    assert_one_line_error(rc, err, "--codec")
