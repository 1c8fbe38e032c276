"""The panel's honesty (issue 17), offscreen: one protection status in words and colour
for each state, the protection-off question saying only what is measured, controls that
cannot work disabled with the reason beside them, the Monitor tab's saved readings,
developer numbers hidden until asked for, and no label cut off at the minimum size.

One window (synthetic face, no privacy meter, a virtual-camera backend that has no device)
is shared by the tests in order; the last one closes it.
"""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

pytest.importorskip("PySide6", reason="the gui extra is not installed")
pytest.importorskip("pyqtgraph", reason="the gui extra is not installed")

import pyvirtualcam  # noqa: E402
from PySide6.QtCore import QRect, Qt, QTimer  # noqa: E402
from PySide6.QtGui import QColor  # noqa: E402
from PySide6.QtWidgets import QApplication, QLabel, QMessageBox, QPushButton  # noqa: E402

from livedeid.core.settings import PipelineConfig  # noqa: E402
from livedeid.inference.manifest import load_spec  # noqa: E402
from livedeid.io.profile import DEFAULT_BUDGET, Profile, save_profile  # noqa: E402
from livedeid.panel.main_window import MainWindow  # noqa: E402
from livedeid.panel.workers import PanelSettings  # noqa: E402
from livedeid.pipeline import status as st  # noqa: E402

NO_DEVICE_BACKEND = "livedeid-status-no-device"


class NoDeviceBackend:
    def __init__(self, **kw):
        raise RuntimeError("no v4l2 loopback device found")


def profile(protects: bool, dlib: float = 0.0, sface: float = 0.0) -> Profile:
    recs = {"dlib": {"gallery_match": dlib, "detection": 1.0}, "sface": {"gallery_match": sface, "detection": 1.0}}
    return Profile(name="ada", pattern=np.zeros((3, 128, 128), np.float32), budget=DEFAULT_BUDGET,
                   created="2025-05-03T10:11:12+00:00",
                   verification={"recognizers": recs, "protects": protects, "target": 0.05, "probes": 12})


@pytest.fixture(scope="module")
def window(qapp):
    pyvirtualcam.register_backend(NO_DEVICE_BACKEND, NoDeviceBackend)
    settings = PanelSettings(config=PipelineConfig(engine="onnxruntime"), source="synthetic:72", width=640,
                             height=360, fps=15.0, virtual_camera=True, vcam_backend=NO_DEVICE_BACKEND)
    w = MainWindow(settings, probe=False, privacy_meter=False)
    w.show()
    yield w
    w.close()


def rendered(widget, x: int, y: int) -> QColor:
    return widget.grab().toImage().pixelColor(x, y)


def close_to(a: QColor, b: QColor, tol: int = 12) -> bool:
    return all(abs(u - v) <= tol for u, v in zip(a.getRgb()[:3], b.getRgb()[:3]))


def test_the_running_window_shows_the_shipped_models_measured_state(window, qtbot):
    tab = window.patient_tab
    qtbot.waitUntil(lambda: tab.worker is not None and tab.worker.state == "running"
                    and tab.status_box.status is not None and tab.status_box.status.state == st.PARTLY, timeout=90000)
    spec = tab.worker.processor.spec
    assert tab.status_box.status == st.protection_status(spec, None)
    assert tab.status_box.badge.text() == "Partly protected"
    # No recogniser names or numbers in what a patient reads first; they are behind Details.
    assert "dlib" not in tab.status_box.summary.text().lower()
    assert not tab.status_box.details.label.isVisible()
    tab.status_box.details.button.click()
    assert tab.status_box.details.label.isVisible() and "dlib" in tab.status_box.details.label.text()
    tab.status_box.details.button.click()
    # The model's jargon is not a banner any more: the status box says it in plain words.
    assert not window.warn_banner.isVisible() or "MODEL_CARD" not in window.warn_banner.text()


@pytest.mark.parametrize("state", st.STATES)
def test_status_text_and_colour_for_each_state(window, state):
    tab, spec = window.patient_tab, load_spec()
    made = {
        st.PROTECTED: st.protection_status(spec, profile(True)),
        st.PARTLY: st.protection_status(spec, None),
        st.NOT_PROTECTED: st.protection_status(spec, None, protect=False),
        st.HIDDEN: st.protection_status(spec, profile(True), hidden_regions=1),
    }[state]
    assert made.state == state
    tab.show_status(made)
    box = tab.status_box
    assert box.badge.text().lower() == state and box.summary.text() == made.summary
    assert box.details.label.text() == made.details
    badge = rendered(box.badge, box.badge.width() - 4, box.badge.height() // 2)
    assert close_to(badge, QColor(st.COLOURS[state])), (state, badge.name())
    button = rendered(tab.protect_button, tab.protect_button.width() // 2, 4)
    assert close_to(button, QColor(st.COLOURS[state])), (state, button.name())
    green = badge.green() > badge.red() + 40 and badge.green() > badge.blue() + 40
    assert green == (state == st.PROTECTED)
    if state == st.PROTECTED:
        assert "3 May 2025" in box.summary.text()


def _answer_protection_off(window, qtbot) -> str:
    """Click the switch, read the question's explanation, keep protection on."""
    seen = []

    def answer():
        dialog = QApplication.activeModalWidget()
        if not isinstance(dialog, QMessageBox):
            QTimer.singleShot(50, answer)
            return
        seen.append(dialog.informativeText())
        dialog.findChild(QPushButton, "keepProtection").click()

    QTimer.singleShot(100, answer)
    window.patient_tab.protect_button.click()
    assert seen and window.patient_tab.protect_button.isChecked()
    return seen[0]


def test_the_protection_off_question_says_only_what_is_measured(window, qtbot, tmp_path):
    tab = window.patient_tab
    qtbot.waitUntil(lambda: tab.worker is not None and tab.worker.processor is not None, timeout=90000)
    text = _answer_protection_off(window, qtbot)
    measured = st.measured_status(tab.worker.processor.spec, None)
    assert measured.state == st.PARTLY
    assert "only partly protected" in text and measured.summary in text
    assert "will be able to identify" not in text and "can identify" not in text

    # With a verified cloak worn, turning it off does lose a measured protection: it says so.
    tab.set_profile(save_profile(profile(True), tmp_path / "ada.npz"))
    tab.restart_pipeline()
    qtbot.waitUntil(lambda: tab.worker.processor is not None and tab.worker.processor.profile is not None,
                    timeout=90000)
    text = _answer_protection_off(window, qtbot)
    assert "can identify your real face" in text and "partly" not in text
    qtbot.waitUntil(lambda: tab.status_box.status.state in (st.PROTECTED, st.HIDDEN), timeout=30000)
    tab.set_profile(None)
    tab.restart_pipeline()


def test_protection_off_is_not_protected_at_once(window, qtbot):
    tab = window.patient_tab
    tab.set_protection(False)
    assert tab.status_box.status.state == st.NOT_PROTECTED and "receives nothing" in tab.status_box.summary.text()
    assert tab.protect_button.text() == "Protection filter OFF"
    tab.set_protection(False, send_unprotected=True)
    assert "being sent to the video call" in tab.status_box.summary.text()
    tab.set_protection(True)
    assert tab.status_box.status.state != st.NOT_PROTECTED


def test_controls_that_cannot_work_are_disabled_with_the_reason(window, qtbot):
    outputs = window.patient_tab.outputs
    # No virtual camera device: "Send to video call" unticked, disabled, reason and set-up beside it.
    qtbot.waitUntil(lambda: not outputs.vcam_check.isEnabled(), timeout=20000)
    assert not outputs.vcam_check.isChecked() and outputs.vcam_setup.isVisible()
    assert outputs.vcam_status.text().startswith("Not sending to a video call: there is no virtual camera")
    # Monitor tab: no camera -> "Watch camera" disabled, "no camera found" beside it.
    monitor = window.monitor_tab
    monitor.cameras_found([])
    assert not monitor.camera_button.isEnabled() and not monitor.camera_combo.isEnabled()
    assert monitor.camera_reason.text() == "no camera found" and not monitor.camera_reason.isHidden()
    assert not monitor.save_button.isEnabled() and monitor.save_reason.text() == "no readings yet"
    # A failed camera offers the next steps as buttons, not a terminal command.
    window.show_error("The camera pipeline stopped: camera 3 is not available (see `livedeid doctor` for the "
                      "cameras found)", (("Choose another camera", lambda: None), ("Try again", lambda: None)))
    assert "`" not in window.error_banner.text() and "doctor" not in window.error_banner.text()
    assert [b.text() for b in window.error_actions if not b.isHidden()] == ["Choose another camera", "Try again"]
    window.hide_error()


def test_developer_numbers_are_hidden_until_asked_for(window, qtbot):
    stats = (window.stat_fps, window.stat_latency, window.stat_dropped, window.stat_engine)
    assert not window.dev_details.isChecked() and all(w.isHidden() for w in stats)
    window.dev_details.setChecked(True)
    qtbot.waitUntil(lambda: "p95" in window.stat_latency.text(), timeout=5000)
    assert all(w.isVisible() for w in stats)
    window.dev_details.setChecked(False)
    assert all(w.isHidden() for w in stats)


def _cut_labels(window) -> list[str]:
    cut = []
    for label in window.findChildren(QLabel):
        text = label.text()
        if not label.isVisible() or not text or label.textFormat() == 1 or "<" in text:
            continue
        room = label.contentsRect()
        fm = label.fontMetrics()
        if label.wordWrap():
            needed = fm.boundingRect(QRect(0, 0, room.width(), 10000), Qt.TextFlag.TextWordWrap, text).height()
            if needed > room.height() + 1:
                cut.append(f"{label.objectName() or 'label'}: {text!r} needs more height "
                           f"({needed} > {room.height()} px at {room.width()} wide)")
        elif max(fm.horizontalAdvance(line) for line in text.splitlines()) > room.width() + 1:
            cut.append(f"{label.objectName() or 'label'}: {text!r} ({fm.horizontalAdvance(text)} > {room.width()} px)")
    return cut


@pytest.mark.parametrize("mode", ["patient", "monitor"])
def test_no_label_is_cut_off_at_the_minimum_size(window, qtbot, mode):
    window.set_mode(mode)
    window.resize(window.minimumSize())
    qtbot.wait(300)
    assert window.width() <= window.minimumSize().width() + 1
    assert not _cut_labels(window), "\n".join(_cut_labels(window))
    window.set_mode("patient")


def test_monitor_saves_its_readings_as_csv_and_json(window, qtbot, tmp_path):
    from livedeid.io.synthetic import write_clip

    clip = tmp_path / "pulse.mp4"
    write_clip(clip, crf=0, hr_bpm=66.0, duration_s=9.0, size=(320, 180), seed=3)
    monitor = window.monitor_tab
    monitor.start("file", str(clip), realtime=False)
    qtbot.waitUntil(lambda: monitor.worker.state in ("ended", "failed"), timeout=90000)
    assert monitor.worker.state == "ended", monitor.worker.error
    qtbot.waitUntil(monitor.save_button.isEnabled, timeout=20000)
    readings = monitor.measured.readings
    assert readings
    rows_csv = list(csv.DictReader(open(monitor.save(tmp_path / "hr.csv"), newline="")))
    data = json.loads((monitor.save(tmp_path / "hr.json")).read_text(),
                      parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
    assert len(rows_csv) == len(data["readings"]) == len(readings)
    assert data["source"] == monitor.measured.description and data["method"] == "pos"
    for r, row, item in zip(readings, rows_csv, data["readings"]):
        assert item["time_utc"] == row["time_utc"] and item["time_utc"].endswith("+00:00")
        assert float(row["stream_s"]) == pytest.approx(r.timestamp, abs=1e-3)
        assert item["quality"] == row["quality"] == r.quality
        if r.bpm is None:  # no reading: empty, null - never a number
            assert row["bpm"] == "" and item["bpm"] is None
        else:
            assert float(row["bpm"]) == pytest.approx(r.bpm, abs=0.05) == item["bpm"]
    assert "Saved" in monitor.save_reason.text()
    assert monitor.save(tmp_path / "hr.txt") is None and "csv or .json" in monitor.save_reason.text()
    window.set_mode("patient")

