"""What a clinician reads: one heart-rate estimator behind `monitor` and `process
--report`, no number from a poor window, strict JSON, and no native library log lines."""
from __future__ import annotations

import json
import re

import pytest
from conftest import run_cli

from livedeid.cli.quiet import is_native_log


def strict_load(path):
    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


def no_native_logs(err: str) -> None:
    bad = [part for part in re.split(r"[\r\n]", err) if part.startswith(("W0000", "I0000", "[ WARN", "INFO: Created"))]
    assert not bad, bad[:3]


@pytest.fixture(scope="module")
def pulse_clip(tmp_path_factory):
    """A 12 s clip of the built-in face with a 78 bpm pulse, head motion and noise."""
    from livedeid.io.synthetic import write_clip

    path = tmp_path_factory.mktemp("pulse") / "pulse.mp4"
    write_clip(path, hr_bpm=78.0, duration_s=12.0, fps=30.0, size=(640, 360), motion=1.0, flicker=0.01,
               noise_std=2.0, pulse_amplitude=0.01, seed=3)
    return path


@pytest.mark.slow
def test_monitor_and_process_agree_and_write_strict_json(pulse_clip, tmp_path):
    mon, rep = tmp_path / "monitor.json", tmp_path / "process.json"
    rc, out, err = run_cli("monitor", pulse_clip, "--json", mon, timeout=300)
    assert rc == 0, err
    no_native_logs(err)
    rc, _, err = run_cli("process", pulse_clip, tmp_path / "out.mp4", "--report", rep, "-q", timeout=300)
    assert rc == 0, err
    no_native_logs(err)
    monitor_hr, process_hr = strict_load(mon)["clip_hr"], strict_load(rep)["clip_hr"]["input"]
    assert monitor_hr["bpm"] is not None and process_hr["bpm"] is not None
    assert abs(monitor_hr["bpm"] - 78.0) <= 1.5
    assert abs(monitor_hr["bpm"] - process_hr["bpm"]) <= 1.0, (monitor_hr, process_hr)
    assert f"{monitor_hr['bpm']:.1f} bpm" in out


def test_a_poor_window_gives_no_number_and_null_in_json(tmp_path):
    """Two seconds hold too few beats to grade 'fair': no number, and `null` in the JSON
    (never NaN or -Infinity, which strict parsers refuse)."""
    report = tmp_path / "short.json"
    rc, out, err = run_cli("monitor", "synthetic", "--seconds", "2", "--json", report)
    assert rc == 0, err
    data = strict_load(report)
    assert data["clip_hr"]["bpm"] is None and data["clip_hr"]["quality"] == "poor"
    assert all(r["bpm"] is None or r["quality"] != "poor" for r in data["live_hr"])
    assert "clip HR: no reading" in out and "bpm" not in out.split("clip HR:")[1]
    no_native_logs(err)


@pytest.mark.slow
def test_run_is_quiet_without_verbose_and_not_with_it(tmp_path):
    rc, _, err = run_cli("run", "--camera", "synthetic", "--no-virtual-camera", "--duration", "2",
                         "--width", "320", "--height", "240", timeout=120)
    assert rc == 0, err
    no_native_logs(err)
    rc, _, err = run_cli("-v", "run", "--camera", "synthetic", "--no-virtual-camera", "--duration", "2",
                         "--width", "320", "--height", "240", timeout=120)
    # The status line is redrawn with \r: a log line may follow it on the same terminal line.
    assert rc == 0 and any(is_native_log(part.encode()) for part in re.split(r"[\r\n]", err))


def test_native_log_lines_are_recognised_and_ours_are_not():
    assert is_native_log(b"W0000 00:00:1796234721.880000   32763 inference_feedback_manager.cc:114] Feedback")
    assert is_native_log(b"I1202 17:35:01.123456 12 gl_context.cc:344] GL version")
    assert is_native_log(b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.")
    assert is_native_log(b"[ WARN:0@0.012] global cap_v4l.cpp:997 open VIDEOIO(V4L2:/dev/video0): can't open")
    assert not is_native_log(b"livedeid: error: cannot read video a.mp4: not a video file, or the file is damaged")
    assert not is_native_log(b"Warning: the model protects only partly")
    assert not is_native_log(b" 45%|####5     | 45/100 [00:03<00:04, 12.1frame/s]")


def test_reports_never_hold_nan_or_infinity():
    from livedeid.core import strict_json

    text = strict_json.dumps({"a": float("nan"), "b": [float("-inf"), 1.5], "c": {"d": float("inf")}})
    assert json.loads(text) == {"a": None, "b": [None, 1.5], "c": {"d": None}}
