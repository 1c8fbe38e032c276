"""`livedeid batch` on a real local Ray cluster (2 CPUs): a dataset root holding two UBFC-rPPG
subjects, one PURE session (PNG frames) and a corrupt video, built at run time from
../shared/data photos with a known synthetic pulse.

Every good video must equal a serial `livedeid process` of it, frame for frame and pixel
for pixel (FFV1 / PNG: lossless); the corrupt one is reported and the job exits 1; a second
run skips what finished; changed settings are refused; a worker killed mid-video is
retried and the result is still complete and correct.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from conftest import assert_one_line_error, data_path, run_cli

pytestmark = pytest.mark.data
ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'livedeid[batch]')")

GOOD = ("01-01/01-01", "subject1/vid.avi", "subject2/vid.avi")
CORRUPT = "subject3/vid.avi"


def _face(person: str) -> Path:
    folder = data_path("faces", "celebrities", person)
    return sorted(folder.glob("*.jpg"))[0]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from livedeid.batch.synthetic import pulse_clip, write_pure_session, write_ubfc_subject

    root = tmp_path_factory.mktemp("archive") / "data"
    write_ubfc_subject(root / "subject1", pulse_clip(_face("id01"), 72.0, seed=1))
    write_ubfc_subject(root / "subject2", pulse_clip(_face("id02"), 96.0, seed=2))
    write_pure_session(root, "01-01", pulse_clip(_face("id03"), 84.0, seed=3))
    corrupt = root / "subject3"
    corrupt.mkdir()
    whole = (root / "subject1" / "vid.avi").read_bytes()
    (corrupt / "vid.avi").write_bytes(whole[: len(whole) // 2])  # cut off mid-stream
    (corrupt / "ground_truth.txt").write_bytes((root / "subject1" / "ground_truth.txt").read_bytes())
    return root


def _batch(*args, timeout=300):
    return run_cli("batch", *args, "--codec", "ffv1", "-q", timeout=timeout)


@pytest.fixture(scope="module")
def first_run(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("batch") / "out"
    started = time.monotonic()
    rc, stdout, stderr = _batch(dataset, out, "--workers", "2")
    return out, rc, stdout, stderr, time.monotonic() - started


@pytest.fixture(scope="module")
def serial(dataset, tmp_path_factory) -> dict[str, Path]:
    """Each good video through `livedeid process`, one after another, same settings."""
    from livedeid.cli.main import main

    folder = tmp_path_factory.mktemp("serial")
    outputs = {}
    for key in GOOD:
        out = folder / key.replace("/", "_")
        out = out.with_suffix(".avi") if key.endswith(".avi") else out
        assert main(["process", str(dataset / key), str(out), "--codec", "ffv1", "-q"]) == 0
        outputs[key] = out
    return outputs


def _frames(path: Path) -> list[np.ndarray]:
    if path.is_dir():
        return [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted(path.glob("*.png"))]
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]


def _strict_json(path: Path) -> dict:
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_job_processes_the_good_videos_reports_the_corrupt_one_and_exits_1(dataset, first_run):
    out, rc, stdout, stderr, _ = first_run
    assert rc == 1, stderr
    assert "batch: 3 of 4 videos done" in stdout and "1 failed" in stdout, stdout
    failed = [ln for ln in stderr.splitlines() if ln.startswith("failed:")]
    assert len(failed) == 1 and CORRUPT in failed[0] and "truncated" in failed[0], stderr
    assert "Traceback" not in stderr
    # The mirror: outputs and ground truth where the inputs were, nothing of the corrupt one,
    # no temporary files anywhere.
    for truth in ("subject1/ground_truth.txt", "subject2/ground_truth.txt", "01-01/01-01.json"):
        assert (out / truth).read_bytes() == (dataset / truth).read_bytes()
    assert not (out / CORRUPT).parent.exists()  # no empty subject folder for a loader to trip on
    assert [p for p in out.rglob("*") if "partial" in p.name] == []
    assert sorted(p.name for p in (out / "01-01" / "01-01").iterdir()) == \
        sorted(p.name for p in (dataset / "01-01" / "01-01").iterdir())
    report = _strict_json(out / "livedeid_batch" / "reports" / f"{CORRUPT}.json")
    assert report["status"] == "failed" and "truncated" in report["error"]


@pytest.mark.parametrize("key", GOOD)
def test_every_good_video_equals_a_serial_process_of_it_pixel_for_pixel(key, dataset, first_run, serial):
    out = first_run[0]
    batch, alone, source = _frames(out / key), _frames(serial[key]), _frames(dataset / key)
    assert len(batch) == len(source) == len(alone) > 0
    assert all(np.array_equal(a, b) for a, b in zip(batch, alone))
    assert not all(np.array_equal(a, b) for a, b in zip(batch, source))  # the faces were changed
    report = _strict_json(out / "livedeid_batch" / "reports" / f"{key}.json")
    assert report["status"] == "done" and report["frames"] == len(source)
    assert report["method"] == "generic model" and report["fps"] == pytest.approx(20.0, abs=0.01)
    assert report["face_quality"]["psnr_db"] > 25 and report["hr"]["truth_bpm"] is not None


def test_avi_outputs_decode_with_increasing_timestamps_at_the_input_rate(dataset, first_run):
    out = first_run[0]
    for key in ("subject1/vid.avi", "subject2/vid.avi"):
        with av.open(str(out / key)) as c, av.open(str(dataset / key)) as src:
            stream = c.streams.video[0]
            times = [float(f.time) for f in c.decode(stream)]
            assert stream.average_rate == src.streams.video[0].average_rate
        assert np.all(np.diff(times) > 0), times[:10]
        assert np.allclose(np.diff(times), 1 / 20.0, atol=1e-6)


def test_heart_rate_error_against_ground_truth_is_the_same_before_and_after(first_run):
    out = first_run[0]
    rows = list(csv.DictReader((out / "livedeid_batch" / "summary.csv").open()))
    assert sorted(r["video"] for r in rows) == sorted((*GOOD, CORRUPT))
    done = [r for r in rows if r["status"] == "done"]
    err_in = np.mean([float(r["abs_error_input"]) for r in done])
    err_out = np.mean([float(r["abs_error_output"]) for r in done])
    assert abs(err_in - err_out) <= 1.0, (err_in, err_out)
    assert err_in < 5.0  # the pulse is measurable at all on these 3 s clips
    summary = (out / "livedeid_batch" / "summary.md").read_text()
    assert f"MAE input {err_in:.2f} bpm, output {err_out:.2f} bpm" in summary
    assert (out / "livedeid_batch" / "hr_error.png").stat().st_size > 1000


def test_a_second_run_skips_every_finished_video_and_other_settings_are_refused(dataset, first_run):
    out = first_run[0]
    before = {key: (out / key).stat().st_mtime_ns for key in GOOD}
    rc, stdout, stderr = _batch(dataset, out, "--workers", "2")
    assert rc == 1 and "(3 already finished)" in stdout, stdout + stderr
    assert {key: (out / key).stat().st_mtime_ns for key in GOOD} == before
    rc, _, stderr = run_cli("batch", dataset, out, "--codec", "h264", "-q")
    assert_one_line_error(rc, stderr, "holds a batch run with other settings (codec: ffv1 -> h264)")


def _worker_pid(task_name: str = "livedeid-video") -> int | None:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(f"ray::{task_name}".encode()):
                    return int(entry.name)
            except OSError:
                continue
    return None


def _kill_mid_video(proc: subprocess.Popen, out_folder: Path, deadline_s: float = 120.0) -> int:
    """SIGKILL the Ray worker running the video once its output is being written."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end and proc.poll() is None:
        writing = [p for p in out_folder.glob(".vid.*.partial.avi")] if out_folder.is_dir() else []
        pid = _worker_pid()
        if pid is not None and writing and writing[0].stat().st_size > 0:
            os.kill(pid, signal.SIGKILL)
            return pid
        time.sleep(0.05)
    raise AssertionError("the worker never started writing the video")


@pytest.mark.slow
def test_a_worker_killed_mid_video_is_retried_and_the_output_is_complete(dataset, serial, tmp_path):
    shutil.copytree(dataset / "subject1", tmp_path / "archive" / "subject1")
    manifest = tmp_path / "archive" / "list.csv"
    manifest.write_text("path,subject,ground_truth\nsubject1/vid.avi,s1,subject1/ground_truth.txt\n")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "livedeid", "batch", str(manifest), str(out), "--workers", "1",
                             "--codec", "ffv1", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = _kill_mid_video(proc, out / "subject1")
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert not Path(f"/proc/{killed}").exists()
    assert "batch: 1 of 1 videos done" in stdout
    produced, alone = _frames(out / "subject1" / "vid.avi"), _frames(serial["subject1/vid.avi"])
    assert len(produced) == len(alone) and all(np.array_equal(a, b) for a, b in zip(produced, alone))
    assert [p for p in out.rglob("*") if "partial" in p.name] == []


@pytest.mark.slow
def test_a_video_that_kills_its_worker_every_time_is_marked_failed(dataset, tmp_path):
    shutil.copytree(dataset / "subject2", tmp_path / "archive" / "subject2")
    manifest = tmp_path / "archive" / "list.csv"
    manifest.write_text("path\nsubject2/vid.avi\n")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "livedeid", "batch", str(manifest), str(out), "--workers", "1",
                             "--retries", "0", "--codec", "ffv1", "-q"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _kill_mid_video(proc, out / "subject2")
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "1 failed" in stdout, stdout + stderr
    assert "worker died on every one of 1 attempts" in stderr
    assert not (out / "subject2" / "vid.avi").exists()


def test_bad_inputs_are_one_line_errors_and_leave_nothing(tmp_path):
    out = tmp_path / "out"
    rc, _, err = run_cli("batch", tmp_path / "missing", out)
    assert_one_line_error(rc, err, "input not found")
    empty = tmp_path / "list.csv"
    empty.write_text("path,subject\n")
    rc, _, err = run_cli("batch", empty, out)
    assert_one_line_error(rc, err, "lists no videos")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "notes.txt").write_text("no videos here")
    rc, _, err = run_cli("batch", photos, out)
    assert_one_line_error(rc, err, "no videos in")
    assert not out.exists()


def test_without_ray_batch_says_what_to_install(tmp_path):
    # A `ray` package that cannot be imported stands for an install without the extra.
    fake = tmp_path / "no_ray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "livedeid", "batch", tmp_path, tmp_path / "out"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert_one_line_error(proc.returncode, proc.stderr, "batch needs Ray: pip install 'livedeid[batch]'")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_two_pass_reports_each_tracks_verified_self_match_and_plots_it(dataset, tmp_path):
    pytest.importorskip("torch")
    shutil.copytree(dataset / "subject1", tmp_path / "archive" / "subject1")
    out = tmp_path / "out"
    rc, stdout, stderr = run_cli("batch", tmp_path / "archive", out, "--workers", "1", "--two-pass",
                                 "--cloak-steps", "2", "--codec", "ffv1", "-q", timeout=900)
    assert rc == 0, stdout + stderr
    report = _strict_json(out / "livedeid_batch" / "reports" / "subject1" / "vid.avi.json")
    assert report["method"] == "two-pass per-track cloak"
    assert len(report["tracks"]) == 1 and set(report["tracks"][0]["recognizers"]) == {"dlib", "sface"}
    row = next(csv.DictReader((out / "livedeid_batch" / "summary.csv").open()))
    assert row["self_match_dlib"] != "" and row["self_match_sface"] != ""
    assert (out / "livedeid_batch" / "self_match.png").stat().st_size > 1000
    assert len(_frames(out / "subject1" / "vid.avi")) == 60


def test_the_walk_finds_each_layout_and_mirrors_it(tmp_path):
    from livedeid.batch.inputs import discover

    root = tmp_path / "in"
    for rel in ("talks/2024/a.mp4", "talks/b.MKV", "subject7/vid.avi", ".hidden/c.mp4", "talks/.d.partial.mp4",
                "02-03/02-03/Image1000.png", "notes/readme.txt", "frames_only/Image5.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    (root / "subject7" / "ground_truth.txt").write_text("1 2 3\n")
    (root / "02-03" / "02-03.json").write_text("{}")
    items = {i.key: i for i in discover(root, tmp_path / "out")}
    assert sorted(items) == ["02-03/02-03", "subject7/vid.avi", "talks/2024/a.mp4", "talks/b.MKV"]
    assert (items["02-03/02-03"].kind, items["02-03/02-03"].layout) == ("frames", "pure")
    assert items["02-03/02-03"].truth_output == tmp_path / "out" / "02-03" / "02-03.json"
    assert items["subject7/vid.avi"].layout == "ubfc" and items["subject7/vid.avi"].subject == "subject7"
    assert items["talks/2024/a.mp4"].output == tmp_path / "out" / "talks" / "2024" / "a.mp4"
    assert items["talks/b.MKV"].layout == "folder" and items["talks/b.MKV"].truth is None


def test_manifest_and_output_placement_errors(tmp_path):
    from livedeid.batch.inputs import discover
    from livedeid.core.errors import UserError

    (tmp_path / "v.mp4").write_bytes(b"x")
    bad = tmp_path / "list.csv"
    bad.write_text("file\nv.mp4\n")
    with pytest.raises(UserError, match="'path' column"):
        discover(bad, tmp_path / "out")
    bad.write_text("path\nv.mp4\nmissing.mp4\n")
    with pytest.raises(UserError, match="line 3: video not found"):
        discover(bad, tmp_path / "out")
    with pytest.raises(UserError, match="OUTPUT must lie outside INPUT"):
        discover(tmp_path, tmp_path / "out")


def test_a_touched_but_unchanged_video_keeps_its_result_without_processing(dataset, tmp_path):
    from livedeid.batch.inputs import discover
    from livedeid.batch.resume import content_sha256
    from livedeid.batch.video import process_item

    archive = tmp_path / "in"
    shutil.copytree(dataset / "subject1", archive / "subject1")
    item = discover(archive, tmp_path / "out")[0]
    item.output.parent.mkdir(parents=True)
    item.output.write_bytes(b"an earlier result")
    previous = {"key": item.key, "status": "done", "settings_hash": "s", "input_sha256": content_sha256(item),
                "input_stat": [], "frames": 60}
    os.utime(item.input)  # touched: the stat changes, the content does not
    report = process_item(item, {}, "s", previous)  # settings {} would fail if it processed anything
    assert report["reused"] and report["frames"] == 60 and report["input_stat"] != []
    data = item.input.read_bytes()
    item.input.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # the content changes
    report = process_item(item, {}, "s", previous)
    assert report["status"] == "failed" and "reused" not in report


def test_ground_truth_files_of_both_datasets_give_their_heart_rate(dataset):
    from livedeid.batch.truth import read_truth, truth_bpm

    frames = np.arange(60) / 20.0
    for path, bpm in (("subject1/ground_truth.txt", 72.0), ("subject2/ground_truth.txt", 96.0),
                      ("01-01/01-01.json", 84.0)):
        t, wave = read_truth(dataset / path, frames)
        assert len(t) == 60 and t[0] == 0.0
        assert truth_bpm(t, wave, frames[-1]) == pytest.approx(bpm, abs=1.0)
