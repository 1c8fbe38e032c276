"""Faults and bad input, through the command line as users run it: each case ends with one
line ``livedeid: error: ...``, exit status 2, nothing partial in the output folder, and a
timeout so none can hang. ``process --resume`` continues a run killed mid-way."""
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import ROOT, assert_one_line_error, data_path, run_cli, video_info, write_video


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _avi_with_rate(path: Path, scale: int, rate: int) -> None:
    """A real MJPEG AVI whose header then declares frame rate ``rate/scale`` (0 or 0/0):
    what broken capture software writes. FFmpeg substitutes 25 fps and only logs it."""
    write_video(path, n=5, codec="mjpeg", pix_fmt="yuvj420p")
    raw = bytearray(path.read_bytes())
    strh = raw.find(b"strh")
    struct.pack_into("<II", raw, strh + 8 + 20, scale, rate)   # AVIStreamHeader dwScale, dwRate
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("scale, rate", [(1, 0), (0, 0)], ids=["fps-0", "fps-nan"])
def test_invalid_frame_rate_metadata_is_refused(tmp_path, scale, rate):
    src = tmp_path / "broken.avi"
    _avi_with_rate(src, scale, rate)
    rc, _, err = run_cli("process", src, tmp_path / "out.mp4", "-q")
    assert_one_line_error(rc, err, f"declares an invalid frame rate ({scale}/{rate})")
    assert _listing(tmp_path) == ["broken.avi"]


@pytest.mark.slow
def test_8k_video_is_processed_frame_exact(tmp_path):
    src = tmp_path / "8k.mp4"
    write_video(src, n=3, size=(7680, 4320))
    rc, _, err = run_cli("process", src, tmp_path / "out.mp4", "-q", timeout=180)
    assert rc == 0, err
    assert video_info(tmp_path / "out.mp4")[:3] == video_info(src)[:3]


@pytest.mark.parametrize("size, message", [((1, 1), "too small (1x1)"), ((8200, 16), "too large (8200x16")])
def test_frames_too_small_or_too_large_are_refused(tmp_path, size, message):
    src = tmp_path / "odd.mkv"
    write_video(src, n=2, size=size, codec="ffv1", pix_fmt="bgr0")
    rc, _, err = run_cli("process", src, tmp_path / "out.mkv")
    assert_one_line_error(rc, err, message)
    assert _listing(tmp_path) == ["odd.mkv"]


# -- model files ---------------------------------------------------------------------------
def _model_copy(tmp_path: Path) -> tuple[Path, dict]:
    folder = tmp_path / "model"
    folder.mkdir()
    manifest = json.loads((ROOT / "engines" / "deid.json").read_text())
    for key in ("onnx", "weights"):
        shutil.copy(ROOT / "engines" / manifest[key], folder / manifest[key])
    # Without its evaluation and FP16 file: these tests change the weights or the ONNX,
    # which the shipped evaluation (measured on the shipped weights) would refuse first.
    for key in ("onnx_fp16", "onnx_fp16_sha256", "evaluation", "evaluation_sha256", "held_out_self_match"):
        manifest.pop(key, None)
    return folder / "deid.json", manifest


def _bit_rot(onnx: Path, manifest: dict) -> None:
    onnx.write_bytes(onnx.read_bytes()[:-16] + bytes(16))  # the manifest's hash no longer matches


def _truncate_and_rehash(onnx: Path, manifest: dict) -> None:
    onnx.write_bytes(onnx.read_bytes()[:5000])  # broken, but the manifest re-hashed to match
    manifest["onnx_sha256"] = hashlib.sha256(onnx.read_bytes()).hexdigest()


@pytest.mark.parametrize("corrupt, message", [(_bit_rot, "does not match its manifest hash"),
                                              (_truncate_and_rehash, "cannot load ONNX model")])
def test_corrupted_or_hash_mismatched_weights_are_refused(tmp_path, corrupt, message):
    manifest_path, manifest = _model_copy(tmp_path)
    corrupt(manifest_path.parent / manifest["onnx"], manifest)
    manifest_path.write_text(json.dumps(manifest))
    write_video(tmp_path / "in.mp4")
    rc, _, err = run_cli("process", tmp_path / "in.mp4", tmp_path / "out.mp4", "--model", manifest_path)
    assert_one_line_error(rc, err, message)
    assert "out.mp4" not in _listing(tmp_path)


def test_pickle_payload_weights_are_refused_by_the_cli(tmp_path):
    pytest.importorskip("torch", reason="torch not installed (train extra): the torch engine is absent")
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    manifest_path, manifest = _model_copy(tmp_path)
    (manifest_path.parent / manifest["weights"]).write_bytes(pickle.dumps({"x": Payload()}))
    # A manifest that matches the payload: the hash check passes, the loader must refuse it.
    manifest["weights_sha256"] = hashlib.sha256((manifest_path.parent / manifest["weights"]).read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(manifest))
    write_video(tmp_path / "in.mp4")
    rc, _, err = run_cli("process", tmp_path / "in.mp4", tmp_path / "out.mp4", "--model", manifest_path,
                         "--engine", "torch")
    assert_one_line_error(rc, err, "cannot load weights")
    assert not (tmp_path / "pwned").exists()
    assert "out.mp4" not in _listing(tmp_path)


# -- pipeline config files -------------------------------------------------------------------
@pytest.mark.parametrize("name, text, message", [
    ("unknown.json", '{"fail_closed": "mask", "colour": "blue"}', "unknown setting(s) colour"),
    ("range.json", '{"max_faces": 9}', "max faces must be between 1 and 4"),
    ("range.toml", "min_confidence = 1.5\n", "min confidence must be within [0, 1]"),
    ("type.json", '{"hr_window_s": "ten"}', "hr_window_s has the wrong type"),
    ("broken.json", '{"engine": ', "is not valid JSON"),
])
def test_bad_config_file_is_one_clear_error(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    write_video(tmp_path / "in.mp4")
    rc, _, err = run_cli("process", tmp_path / "in.mp4", tmp_path / "out.mp4", "--config", tmp_path / name)
    assert_one_line_error(rc, err, message)
    assert "out.mp4" not in _listing(tmp_path)


def test_config_file_sets_options_and_command_line_wins(tmp_path):
    from livedeid.cli.main import build_parser
    from livedeid.cli.options import pipeline_config

    (tmp_path / "c.toml").write_text('fail_closed = "mask"\nmax_faces = 2\nhr_window_s = 8.0\n')
    args = build_parser().parse_args(["process", "in.mp4", "out.mp4", "--config", str(tmp_path / "c.toml"),
                                      "--max-faces", "3"])
    c = pipeline_config(args)
    assert (c.fail_closed, c.max_faces, c.hr_window_s, c.engine) == ("mask", 3, 8.0, "auto")


# -- process --resume ------------------------------------------------------------------------
def _decoded(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]


@pytest.mark.slow
@pytest.mark.data
def test_resume_continues_a_killed_run(tmp_path):
    clip = data_path("videos", "hamilton_clip.mp4")
    out = tmp_path / "out.mkv"
    work = tmp_path / ".out.mkv.resume"
    cmd = [sys.executable, "-m", "livedeid", "process", str(clip), str(out), "--codec", "ffv1", "--resume",
           "--segment-seconds", "1", "-q"]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(work.glob("part*.mkv"))) < 3 and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)  # a crash: no clean-up code runs
    first.wait(timeout=10)
    assert not out.exists()
    kept = json.loads((work / "state.json").read_text())["segments"]
    assert len(kept) >= 3

    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    done = sum(s["frames"] for s in kept)
    assert f"resuming after frame {done}" in proc.stderr
    assert not work.exists()  # joined and cleaned up
    # Same frames, rate, size and audio as an uninterrupted run; the kept segments are
    # exactly what that run writes for those frames.
    whole = tmp_path / "whole.mkv"
    rc, _, err = run_cli("process", clip, whole, "--codec", "ffv1", "-q", timeout=180)
    assert rc == 0, err
    assert video_info(out) == video_info(whole)
    assert video_info(out)[0] == video_info(clip)[0]
    resumed, reference = _decoded(out), _decoded(whole)
    assert all(np.array_equal(a, b) for a, b in zip(resumed[:done], reference[:done]))


@pytest.mark.slow
def test_resume_refuses_state_from_other_settings(tmp_path):
    src = tmp_path / "in.mp4"
    write_video(src, n=12, size=(64, 48))
    out = tmp_path / "out.mp4"
    work = tmp_path / ".out.mp4.resume"
    work.mkdir()
    (work / "state.json").write_text(json.dumps({"version": 1, "fingerprint": {"input": "another.mp4"},
                                                 "size": [64, 48], "rate": "30", "codec": "h264",
                                                 "segment_frames": 150, "segments": []}))
    rc, _, err = run_cli("process", src, out, "--resume")
    assert_one_line_error(rc, err, "holds a run with another input or other settings")
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.data
def test_interrupted_resumable_run_says_how_to_continue(tmp_path):
    """Ctrl+C during a --resume run: finished segments stay, the unfinished one goes, and
    the message says how to continue; the same command then completes the output."""
    clip = data_path("videos", "hamilton_clip.mp4")
    out = tmp_path / "out.mp4"
    work = tmp_path / ".out.mp4.resume"
    cmd = [sys.executable, "-m", "livedeid", "process", str(clip), str(out), "--resume", "--segment-seconds",
           "1", "-q"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(list(work.glob("part*.mp4"))) < 2 and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.1)
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=30)
    assert first.returncode == 130, err
    assert "run the same command again to continue" in err
    assert not out.exists()
    assert not list(work.glob(".*partial*"))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert video_info(out)[0] == video_info(clip)[0]
