"""The panel's enrolment tab, offscreen, with the real tracker, optimiser and recognisers on
the built-in clip.

One window (opened on the monitor tab, so no patient pipeline holds anything, then
switched to the Enrol tab) is shared by the tests in order: a bad name is refused, a
guided live recording shows its instructions and is cancelled, a short enrolment ends
with the verification figures (and the README's picture), and its profile is handed to
the patient's tab, whose pipeline then wears it. Profiles go to a temporary folder
(``LIVEDEID_PROFILE_DIR``). The recording length and step count are set on the tab so
that an enrolment takes about a minute here instead of many.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("PySide6", reason="the gui extra is not installed")
pytest.importorskip("pyqtgraph", reason="the gui extra is not installed")
pytest.importorskip("torch", reason="the enrol extra is not installed")

from livedeid.cloak.enrolment import GUIDE  # noqa: E402
from livedeid.core.settings import PipelineConfig  # noqa: E402
from livedeid.io.profile import default_path, load_profile  # noqa: E402
from livedeid.panel.enrol_result import verdict_text  # noqa: E402
from livedeid.panel.main_window import MainWindow  # noqa: E402
from livedeid.panel.workers import PanelSettings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECORD_SECONDS = 2.0
STEPS = 4


@pytest.fixture(scope="module")
def window(qapp, tmp_path_factory):
    patch = pytest.MonkeyPatch()
    patch.setenv("LIVEDEID_PROFILE_DIR", str(tmp_path_factory.mktemp("profiles")))
    settings = PanelSettings(config=PipelineConfig(engine="onnxruntime"), source="synthetic:72", width=640,
                             height=360, fps=15.0, virtual_camera=False)
    win = MainWindow(settings, mode="monitor", probe=False, privacy_meter=False)
    win.show()
    win.set_mode("enrol")
    yield win
    win.close()
    patch.undo()


def _wait_done(qtbot, tab, timeout_ms: int) -> None:
    qtbot.waitUntil(lambda: tab.worker is None, timeout=timeout_ms)


def test_a_bad_name_is_refused_in_one_line(window):
    tab = window.enrol_tab
    assert window.tabs.tabText(window.tabs.currentIndex()) == "Enrol" and window.patient_tab.worker is None
    for name in ("../evil", ""):
        tab.name_edit.setText(name)
        tab.start_button.click()
        text = tab.status.text()
        assert tab.worker is None and tab.status.property("error") is True
        assert "profile name" in text and "\n" not in text
    assert tab.start_button.isEnabled() and not tab.cancel_button.isEnabled()


@pytest.mark.slow
def test_a_live_recording_shows_the_guide_and_cancel_stops_it(window, qtbot):
    tab = window.enrol_tab
    tab.live_clip, tab.seconds, tab.steps = True, 6.0, STEPS  # six instructions, one a second
    tab.name_edit.setText("rehearsal")
    shown = window.video.frames_shown
    tab.start_button.click()
    worker = tab.worker
    assert worker is not None and not tab.start_button.isEnabled() and not tab.name_edit.isEnabled()
    seen = set()

    def two_instructions() -> bool:
        if tab.shown_instruction:
            seen.add(tab.instruction.text())
        return len(seen) >= 2

    qtbot.waitUntil(two_instructions, timeout=120000)
    assert seen <= {text for _, text in GUIDE}, seen
    assert window.video.frames_shown > shown and window.video.panes[0].caption.startswith("ENROLMENT - ")
    assert tab.coverage.text().startswith("faces ") and "pose bins" in tab.coverage.text()
    assert tab.record_bar.maximum() == 60 and 0 < tab.record_bar.value() < 60

    tab.cancel_button.click()
    assert tab.status.text().startswith("Cancelling")
    _wait_done(qtbot, tab, 30000)
    assert not worker.alive and worker.state == "stopped" and worker.profile is None
    assert tab.status.text() == "Enrolment cancelled; nothing was saved."
    assert tab.start_button.isEnabled() and not tab.result.save_button.isEnabled()
    assert not default_path("rehearsal").exists()


@pytest.mark.slow
@pytest.mark.timeout(400)  # CPU-bound: a loaded 2-core runner is several times slower than an idle one
def test_the_clip_enrols_and_shows_the_verification(window, qtbot, artifacts):
    tab = window.enrol_tab
    tab.live_clip, tab.seconds, tab.steps = False, RECORD_SECONDS, STEPS
    tab.name_edit.setText("clip")
    tab.strength_combo.setCurrentIndex(1)  # the stronger cloak: what the patient picks is what is optimised
    tab.start_button.click()
    assert tab.worker is not None
    _wait_done(qtbot, tab, 240000)
    assert tab.status.property("error") is not True, tab.status.text()
    profile = tab.profile
    assert profile is not None and profile.name == "clip" and profile.settings["steps"] == STEPS
    assert profile.settings["rms"] == pytest.approx(11 / 255)

    # The recording and optimisation ran to their ends.
    assert tab.record_bar.value() > 0 and "faces from" in tab.coverage.text()
    assert tab.optimise_bar.value() == tab.optimise_bar.maximum() == STEPS
    assert "held-out match (step 4" in tab.match_label.text()
    # The table is the profile's figures, the verdict its own, in its colour.
    box = tab.result
    recs = profile.verification["recognizers"]
    assert sorted(recs) == ["dlib", "sface"] and box.table.rowCount() == 2
    for name, fig in recs.items():
        assert box.row(name) == [name, f"{fig['detection']:.0%}",
                                     f"{fig['clean_gallery_match']:.0%} → {fig['gallery_match']:.0%}",
                                     f"{fig['same_photo_match']:.0%}"]
    assert box.verdict.isVisible() and box.verdict.text() == verdict_text(profile)
    assert box.verdict.text().startswith("PROTECTS" if profile.protects else "NOT PROTECTING (target ≤ 5%)")
    assert box.verdict.property("tone") == ("good" if profile.protects else "bad")
    assert box.quality.text().startswith("face PSNR ") and "SSIM" in box.quality.text()
    assert box.save_button.isEnabled() and box.use_button.isEnabled()

    qtbot.wait(100)  # let the tab lay out its figures
    window.tabs.currentWidget().verticalScrollBar().setValue(0)  # the picture: name down to the verdict
    qtbot.wait(50)
    shot = window.grab()
    assert shot.save(str(artifacts / "gui_enrol.png"))
    if os.environ.get("LIVEDEID_UPDATE_SCREENSHOT"):  # refresh the README's picture on request
        assert shot.save(str(ROOT / "docs" / "enrol_screenshot.png"))


@pytest.mark.slow
def test_the_profile_is_saved_and_worn_by_the_patients_pipeline(window, qtbot):
    tab = window.enrol_tab
    if tab.profile is None:
        pytest.skip("the enrolment test did not produce a profile")
    tab.result.use_button.click()  # saves first: the pipeline loads profiles from files
    path = default_path("clip")
    assert tab.saved_path == path and path.is_file()
    assert load_profile(path).protects == tab.profile.protects
    patient = window.patient_tab
    assert patient.settings.config.profile == path and patient.profile_label.text() == "clip"
    assert "Protect tab will use clip's cloak" in tab.status.text()
    assert ("NOT verified" in tab.status.text()) == (not tab.profile.protects)

    window.set_mode("patient")
    qtbot.waitUntil(lambda: patient.worker is not None and patient.worker.state == "running", timeout=120000)
    assert patient.worker.processor.profile.name == "clip"
    window.set_mode("enrol")
    assert patient.worker is None
