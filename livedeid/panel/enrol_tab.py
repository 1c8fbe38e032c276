"""The enrolment tab: make one person's personal cloak in the window, as ``livedeid enrol``
does on the command line.

Name and source (a camera from the window's camera list, a video file, a photo folder or
the built-in clip), then a guided recording (the frame in the video view, the current
instruction in large type, seconds and pose coverage), the optimisation (steps, the
latest held-out match per recogniser) and the verification with the real recognisers
(table, PSNR/SSIM, verdict). The profile can be saved and handed to the patient's tab.
The work runs on an :class:`~livedeid.panel.workers.EnrolWorker`; this tab only polls it
on the window's timer. The video view and heart-rate panel belong to the window.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from livedeid.core.errors import UserError
from livedeid.io.profile import DEFAULT_RMS, STRONG_RMS, check_name, default_path, save_profile
from livedeid.panel.common import FaceView
from livedeid.panel.enrol_result import VerificationBox, pct
from livedeid.panel.video import Pane
from livedeid.panel.widgets import VIDEO_FILES, fill_source_combo, icon, select_data
from livedeid.panel.workers import EnrolRequest, EnrolWorker

if TYPE_CHECKING:
    from livedeid.panel.main_window import MainWindow
    from livedeid.panel.patient_tab import PatientTab

log = logging.getLogger(__name__)

CLIP = "synthetic"
PICK_FILE, PICK_FOLDER = "__file__", "__folder__"
# The built-in clip is one photo moved about: a few seconds show all it has (as `demo --enrol`).
CLIP_SECONDS = 5.0
ERROR_STYLE = "color: #f85149;"  # readable on both themes


def one_line(text: str) -> str:
    lines = str(text).strip().splitlines()
    return lines[0] if lines else "unknown error"


# The cloak's strength, as `livedeid enrol --strength` (levels of 1/255, root mean square):
# label -> energy. The stronger one measured SFace 21 -> 8 % on the celebrity probe at
# about 2 dB less face PSNR (docs/decisions.md).
STRENGTHS = {"standard (face PSNR about 32.5 dB)": DEFAULT_RMS, "strong (about 30.5 dB, more visible)": STRONG_RMS}


class EnrolTab(QWidget):
    """Enrolment controls and the worker they start. ``seconds`` (recording length; None:
    25 s from a camera, 60 s of a file, :data:`CLIP_SECONDS` of the clip), ``steps``
    (None: the optimiser's default) and ``live_clip`` (play the built-in clip or a file at
    camera pace, guided, as a rehearsal of a camera enrolment) may be set before Start."""

    def __init__(self, host: MainWindow, patient_tab: PatientTab):
        super().__init__()
        self.host = host
        self.patient_tab = patient_tab
        self.seconds: float | None = None
        self.steps: int | None = None
        self.live_clip = False
        self.worker: EnrolWorker | None = None
        self.profile = None             # the last enrolment's Profile
        self.saved_path: Path | None = None
        self.cameras: list = []
        self.source = CLIP
        self._chosen = False            # the user picked a source: camera probes do not change it
        self.shown_instruction = ""
        self._phase = ""
        lay = QVBoxLayout(self)
        lay.addWidget(self._build_start_box())
        lay.addWidget(self._build_recording_box())
        lay.addWidget(self._build_optimise_box())
        self.result = VerificationBox()
        self.result.save_button.clicked.connect(self.save)
        self.result.use_button.clicked.connect(self.use_in_patient_tab)
        lay.addWidget(self.result)
        self.status = QLabel("Enter a name, choose where the faces come from and press Start.")
        self.status.setObjectName("enrolStatus")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        lay.addStretch(1)
        self._populate_sources()
        self._set_running(False)
        self._clear_result()

    # ==================================================================================
    # building
    # ==================================================================================
    def _build_start_box(self) -> QGroupBox:
        box = QGroupBox("Enrol a person")
        form = QFormLayout(box)
        self.name_edit = QLineEdit()
        self.name_edit.setObjectName("enrolName")
        self.name_edit.setPlaceholderText("e.g. alice")
        self.source_combo = QComboBox()
        self.source_combo.setObjectName("enrolSource")
        # Long file names must not widen the tab's narrow column.
        self.source_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.source_combo.setMinimumContentsLength(14)
        self.source_combo.activated.connect(self._on_source_chosen)
        self.strength_combo = QComboBox()
        self.strength_combo.setObjectName("enrolStrength")
        self.strength_combo.addItems(list(STRENGTHS))
        self.start_button = QPushButton(icon("record"), "Start")
        self.start_button.setObjectName("enrolStart")
        self.start_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setObjectName("enrolCancel")
        self.cancel_button.clicked.connect(self.cancel)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.cancel_button)
        note = QLabel("From a camera: 25 s, guided. Then the cloak is optimised until the recognisers no longer "
                      "match images it never saw (at most about 2 minutes on a CPU). Leaving this tab cancels "
                      "the enrolment.")
        note.setObjectName("meterNote")
        note.setWordWrap(True)
        form.addRow("Name", self.name_edit)
        form.addRow("Faces from", self.source_combo)
        form.addRow("Cloak", self.strength_combo)
        form.addRow(buttons)
        form.addRow(note)
        return box

    def _build_recording_box(self) -> QGroupBox:
        box = QGroupBox("Recording")
        lay = QVBoxLayout(box)
        self.instruction = QLabel("-")
        self.instruction.setObjectName("enrolInstruction")
        self.instruction.setWordWrap(True)
        # The person reads this from a distance while moving their head.
        self.instruction.setStyleSheet("font-size: 17pt; font-weight: bold;")
        self.record_bar = QProgressBar()
        self.coverage = QLabel("faces 0, pose bins 0")
        self.coverage.setWordWrap(True)
        for w in (self.instruction, self.record_bar, self.coverage):
            lay.addWidget(w)
        return box

    def _build_optimise_box(self) -> QGroupBox:
        box = QGroupBox("Optimisation")
        lay = QVBoxLayout(box)
        self.optimise_bar = QProgressBar()
        self.match_label = QLabel("held-out match: -")
        self.match_label.setWordWrap(True)
        lay.addWidget(self.optimise_bar)
        lay.addWidget(self.match_label)
        return box

    # ==================================================================================
    # switching tabs, cameras, sources
    # ==================================================================================
    def activate(self) -> None:
        self.host.hr_panel.title.setText("Heart rate")
        self.host.hr_panel.reset("not measured")
        if self.worker is None:
            self.host.video.set_placeholder("Enrolment: the recording is shown here.")

    def deactivate(self) -> None:
        """The window switched away: the patient's pipeline may want the camera back."""
        self.stop(timeout=2.0)

    def stop(self, timeout: float = 5.0) -> None:
        if self.worker is not None and not self.worker.stop(timeout=timeout):
            log.info("enrolment still finishing its optimisation step; it ends at the next check")

    def cameras_found(self, cameras: list) -> None:
        # Virtual cameras are left out: one of them may be our own protected output.
        self.cameras = [c for c in cameras if not c.virtual]
        if not self._chosen and self.cameras:
            self.source = str(self.cameras[0].index)
        self._populate_sources()

    def _populate_sources(self) -> None:
        kind = "photo folder" if Path(self.source).is_dir() else "video file"
        fill_source_combo(self.source_combo, self.cameras, ("Built-in clip (synthetic face)", CLIP), self.source,
                          f"{kind}: {Path(self.source).name}",
                          [("Video file...", PICK_FILE), ("Photo folder...", PICK_FOLDER)])

    def _on_source_chosen(self, index: int) -> None:
        spec = self.source_combo.itemData(index)
        if spec == PICK_FILE:
            spec, _ = QFileDialog.getOpenFileName(self, "A video of the person", "", VIDEO_FILES)
        elif spec == PICK_FOLDER:
            spec = QFileDialog.getExistingDirectory(self, "A folder of photos of the person")
        if spec:
            self.set_source(spec)
        else:
            select_data(self.source_combo, self.source)

    def set_source(self, spec: str) -> None:
        self.source, self._chosen = spec, True
        self._populate_sources()

    # ==================================================================================
    # running
    # ==================================================================================
    def start(self) -> None:
        """Start an enrolment; a bad name or a running one is refused in one line."""
        if self.worker is not None:
            return
        name = self.name_edit.text().strip()
        try:
            check_name(name)
        except UserError as exc:
            self.say(str(exc), error=True)
            return
        seconds = self.seconds if self.seconds is not None or self.source != CLIP else CLIP_SECONDS
        request = EnrolRequest(name=name, source=self.source, seconds=seconds, steps=self.steps,
                               live=self.live_clip, rms=STRENGTHS[self.strength_combo.currentText()])
        self._clear_result()
        self.instruction.setText("getting ready...")
        self.record_bar.setRange(0, 1)
        self.record_bar.setValue(0)
        self.coverage.setText("faces 0, pose bins 0")
        self.optimise_bar.setRange(0, 1)
        self.optimise_bar.setValue(0)
        self.optimise_bar.setFormat("waiting for the recording")
        self.match_label.setText("held-out match: -")
        self.shown_instruction, self._phase = "", ""
        self.say("Loading the face tracker and the recognisers...")
        self.worker = EnrolWorker(request).start()
        self._set_running(True)

    def cancel(self) -> None:
        """Ask the worker to stop; :meth:`draw` reports when it has."""
        if self.worker is None:
            return
        self.worker.stop(timeout=0.0)  # never block the window; draw() sees the thread end
        self.cancel_button.setEnabled(False)
        self.say("Cancelling..." + (" the optimisation stops at its next check."
                                    if self.worker.phase in ("optimising", "verifying") else ""))

    def _set_running(self, running: bool) -> None:
        self.start_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.name_edit.setEnabled(not running)
        self.source_combo.setEnabled(not running)

    def say(self, text: str, error: bool = False) -> None:
        """The tab's one status line (errors in red, never a dialog)."""
        self.status.setText(one_line(text) if error else text)
        self.status.setStyleSheet(ERROR_STYLE if error else "")
        self.status.setProperty("error", error)

    # ==================================================================================
    # drawing (GUI thread, the window's timer)
    # ==================================================================================
    def draw(self) -> None:
        worker = self.worker
        if worker is None:
            return
        progress = worker.recording.take()
        if progress is not None:
            self._show_recording(progress)
        entry = worker.checks.take()
        if entry is not None:
            self._show_check(entry, worker.total_steps)
        if worker.alive:
            self._show_phase(worker)
            return
        self.worker = None
        self._set_running(False)
        if worker.state == "ended":
            self.coverage.setText(worker.coverage)
            self.show_result(worker.profile)
        elif worker.state == "failed":
            self.say(f"Enrolment failed: {worker.error or 'unknown error'}", error=True)
        else:
            self.say("Enrolment cancelled; nothing was saved.")

    def _show_recording(self, p) -> None:
        self.shown_instruction = p.instruction
        self.instruction.setText(p.instruction or "reading the file (no instructions)")
        self.record_bar.setRange(0, max(1, round(p.seconds * 10)))
        self.record_bar.setValue(min(round(p.elapsed_s * 10), self.record_bar.maximum()))
        self.record_bar.setFormat(f"{p.elapsed_s:.1f} / {p.seconds:.0f} s")
        self.coverage.setText(f"faces {p.faces}, pose bins {p.bins}")
        faces = []
        if p.landmarks is not None:
            lm = np.asarray(p.landmarks, np.float32)
            (x0, y0), (x1, y1) = lm.min(axis=0), lm.max(axis=0)
            faces = [FaceView((int(x0), int(y0), int(x1), int(y1)), lm, False, 1.0)]
        caption = f"ENROLMENT - {p.instruction}" if p.instruction else "ENROLMENT - reading the file"
        self.host.video.show_panes([Pane(p.image, caption + " (never sent)", "camera")], faces)

    def _show_check(self, entry: dict, total: int) -> None:
        step = int(entry.get("step", 0))
        self.optimise_bar.setRange(0, max(1, total))
        self.optimise_bar.setValue(min(step, max(1, total)))
        self.optimise_bar.setFormat(f"step {step} / {total}")
        match = ", ".join(f"{name} {pct(fig.get('plain', {}).get('centre'))}"
                          for name, fig in sorted(entry.get("held_out_match", {}).items()))
        self.match_label.setText(f"held-out match (step {step}, target ≤ 5%): {match or '-'}")

    def _show_phase(self, worker: EnrolWorker) -> None:
        if worker.phase == self._phase or not self.cancel_button.isEnabled():
            return  # unchanged, or a cancel request is what the status line says now
        self._phase = worker.phase
        if worker.phase == "recording":
            self.say("Recording: follow the instruction above." if worker.request.source.isdigit()
                     or worker.request.live else "Reading the faces...")
        elif worker.phase == "optimising":
            self.instruction.setText("faces gathered")
            self.coverage.setText(worker.coverage)
            self.optimise_bar.setRange(0, max(1, worker.total_steps))
            self.optimise_bar.setFormat(f"loading the recognisers... 0 / {worker.total_steps}")
            self.say("Optimising the cloak against the recognisers...")
        elif worker.phase == "verifying":
            self.optimise_bar.setFormat("verifying with the real recognisers...")
            self.say("Checking the cloak with the real recognisers on the held-out images...")

    # ==================================================================================
    # the result
    # ==================================================================================
    def _clear_result(self) -> None:
        self.profile, self.saved_path = None, None
        self.result.clear()

    def show_result(self, profile) -> None:
        """The verification figures, as ``livedeid enrol`` prints them, and the verdict."""
        self.profile, self.saved_path = profile, None
        self.result.show_profile(profile)
        run = profile.settings
        steps = int(run.get("steps_run", 0))
        # An enrolment that verifies early ends long before the step limit: the bar ends full.
        self.optimise_bar.setRange(0, max(1, steps))
        self.optimise_bar.setValue(steps)
        self.optimise_bar.setFormat(f"{steps} steps, done")
        early = " (stopped early: verified on the held-out faces)" if run.get("stopped_early") else ""
        self.say(f"Done: {steps} steps in {run.get('seconds', 0):.0f} s{early}. Save the profile "
                 "or use it in the patient tab.")

    def save(self) -> Path | None:
        """Write the profile to the user's profile folder (one line on failure)."""
        if self.profile is None:
            return None
        path = default_path(self.profile.name)
        replacing = path.exists()
        try:
            save_profile(self.profile, path)
        except UserError as exc:
            self.say(str(exc), error=True)
            return None
        self.saved_path = path
        self.say(f"Saved {self.profile.name}'s profile to {path}" + (" (replacing the earlier one)." if replacing
                                                                     else "."))
        return path

    def use_in_patient_tab(self) -> None:
        """Save (if not yet) and have the patient's pipeline wear this cloak."""
        path = self.saved_path or self.save()
        if path is None:
            return
        running = self.patient_tab.set_profile(path)
        when = ("takes effect when its pipeline next starts (it is running now)" if running else
                "takes effect when its camera starts (switching to the Protect tab starts it)")
        flag = "" if self.profile.protects else " It is NOT verified to protect and will be flagged in red."
        self.say(f"The Protect tab will use {self.profile.name}'s cloak: it {when}.{flag}")

    def update_stats(self) -> None:
        host = self.host
        host.stat_fps.setText("-- fps")
        host.stat_latency.setText("enrolment: nothing is sent")
        host.stat_dropped.setText("")
        host.stat_engine.setText("")
