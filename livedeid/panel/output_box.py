"""The patient's "Output" box: the virtual-camera switch, the heart-rate overlay and the
recording, with a status line for each. Without a virtual camera device the switch is
off and disabled, with the reason, one plain sentence on setting one up, a button that
copies the setup command (or download link) and one that checks again."""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtWidgets import (
    QApplication,
    QCheckBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from livedeid.core.errors import UserError
from livedeid.io.sinks import VirtualCameraSink, virtual_camera_setup
from livedeid.panel.widgets import icon, repolish

if TYPE_CHECKING:
    from livedeid.panel.patient_tab import PatientTab


class OutputBox(QGroupBox):
    """Where the protected video goes. Switches act on the tab's running worker at once
    (no restart) and are kept in the tab's settings for the next one."""

    def __init__(self, tab: PatientTab):
        super().__init__("Output")
        self.tab = tab
        self.settings = tab.settings
        lay = QVBoxLayout(self)
        self.vcam_check = QCheckBox("Send to video call (virtual camera)")
        self.vcam_check.setObjectName("vcamCheck")
        self.vcam_check.setChecked(self.settings.virtual_camera)
        self.vcam_check.toggled.connect(self._on_vcam)
        self.vcam_status = QLabel("")
        self.vcam_status.setObjectName("vcamStatus")
        self.vcam_status.setWordWrap(True)
        self.vcam_missing: str | None = None  # why there is no virtual camera (None: not known missing)
        self.vcam_setup = self._build_vcam_setup()
        self.overlay_check = QCheckBox("Burn heart rate into the video")
        self.overlay_check.setChecked(self.settings.config.hr_overlay)
        self.overlay_check.toggled.connect(self._on_hr_overlay)
        self.record_button = QPushButton(icon("record"), "Record to file...")
        self.record_button.setObjectName("recordButton")
        self.record_button.setCheckable(True)
        self.record_button.clicked.connect(self._on_record_clicked)
        self.record_status = QLabel("")
        self.record_status.setWordWrap(True)
        for w in (self.vcam_check, self.vcam_status, self.vcam_setup, self.overlay_check, self.record_button,
                  self.record_status):
            lay.addWidget(w)

    def _build_vcam_setup(self) -> QWidget:
        sentence, self.setup_text = virtual_camera_setup()
        box = QWidget()
        box.setObjectName("vcamSetup")
        lay = QVBoxLayout(box)
        lay.setContentsMargins(0, 0, 0, 0)
        self.vcam_hint = QLabel(sentence)
        self.vcam_hint.setObjectName("reason")
        self.vcam_hint.setWordWrap(True)
        row = QHBoxLayout()
        command = self.setup_text.startswith("sudo ")
        self.copy_button = QPushButton("Copy setup command" if command else "Copy download link")
        self.copy_button.setObjectName("copySetup")
        self.copy_button.setToolTip(self.setup_text)
        self.copy_button.clicked.connect(self.copy_setup)
        self.check_again_button = QPushButton("Check again")
        self.check_again_button.setObjectName("checkVcamAgain")
        self.check_again_button.clicked.connect(self.check_again)
        row.addWidget(self.copy_button)
        row.addWidget(self.check_again_button)
        row.addStretch(1)
        lay.addWidget(self.vcam_hint)
        lay.addLayout(row)
        box.hide()
        return box

    # -- virtual camera set-up ------------------------------------------------------------
    def copy_setup(self) -> None:
        QApplication.clipboard().setText(self.setup_text)
        self.copy_button.setText("Copied")

    def mark_missing(self, why: str) -> None:
        """No virtual camera device: untick and disable the switch and say how to set one up."""
        self.vcam_missing = why.split("; fix:")[0]
        self.vcam_check.setChecked(False)  # also tells the worker: nothing is being sent
        self.vcam_check.setEnabled(False)
        self.vcam_check.setToolTip(self.vcam_missing)
        self.vcam_setup.show()
        self.update_status()

    def check_again(self) -> None:
        """Look for the virtual camera again (after the patient set one up)."""
        self.vcam_missing = None
        self.vcam_check.setEnabled(True)
        self.vcam_check.setToolTip("")
        self.vcam_setup.hide()
        hub = self.tab.worker.hub if self.tab.worker is not None else None
        if hub is None:  # no pipeline to try it with: open and close one here
            try:
                VirtualCameraSink(640, 480, 30, backend=self.settings.vcam_backend,
                                  device=self.settings.vcam_device).close()
            except UserError as exc:
                self.mark_missing(str(exc))
                return
        self.vcam_check.setChecked(True)  # the running pipeline opens it; update_status sees how it went
        self.update_status()

    # -- switches -------------------------------------------------------------------------
    def _on_vcam(self, on: bool) -> None:
        self.settings.virtual_camera = on
        if self.tab.worker is not None:
            self.tab.worker.set_virtual_camera(on)
        self.update_status()

    def _on_hr_overlay(self, on: bool) -> None:
        self.settings.config.hr_overlay = on
        if self.tab.worker is not None:
            self.tab.worker.set_hr_overlay(on)

    # -- recording ------------------------------------------------------------------------
    def _on_record_clicked(self, checked: bool) -> None:
        if not checked:
            self.stop_recording()
            return
        default = Path.home() / time.strftime("livedeid-%Y%m%d-%H%M%S.mp4")
        path, _ = QFileDialog.getSaveFileName(self, "Record the protected video to", str(default),
                                              "MP4 video (*.mp4);;Matroska (*.mkv)")
        if not path:
            self.record_button.setChecked(False)
            return
        self.start_recording(path)

    def start_recording(self, path: str | Path) -> bool:
        try:
            if self.tab.worker is None:
                raise UserError("the camera is not running")
            self.tab.worker.start_recording(path)
        except UserError as exc:
            self.record_button.setChecked(False)
            self.record_status.setText(f"Cannot record: {exc}")
            return False
        self.record_button.setChecked(True)
        self.record_button.setText("Stop recording")
        self.record_status.setText(f"Recording the protected output to {path}")
        return True

    def stop_recording(self) -> Path | None:
        path = None
        if self.tab.worker is not None:
            try:
                path = self.tab.worker.stop_recording()
            except UserError as exc:
                self.record_status.setText(f"Recording failed: {exc}")
        self.record_button.setChecked(False)
        self.record_button.setText("Record to file...")
        if path is not None:
            self.record_status.setText(f"Recording saved: {path}")
        return path

    def recording_ended(self, path: Path) -> None:
        """The worker stopped (restart, tab switch, closing) and finalised ``path``."""
        self.record_button.setChecked(False)
        self.record_status.setText(f"Recording saved: {path}")

    # -- status ---------------------------------------------------------------------------
    def update_status(self) -> None:
        """Virtual camera and recording status lines, from the running worker's outputs."""
        hub = self.tab.worker.hub if self.tab.worker is not None else None
        if self.settings.virtual_camera and hub is not None and hub.camera is None and hub.camera_error:
            self.mark_missing(hub.camera_error)  # calls back here once the switch is off
            return
        text, trouble = self._vcam_text(hub)
        self.vcam_status.setText(text)
        self.vcam_status.setProperty("error", trouble)
        repolish(self.vcam_status)
        if hub is not None and hub.record_error:
            self.record_status.setText(hub.record_error)
            self.record_button.setChecked(False)
            self.record_button.setText("Record to file...")
            hub.record_error = None
        elif hub is not None and hub.recorder is not None:
            self.record_status.setText(f"Recording to {hub.recorder.path} · {hub.recorder.frames_written} frames")

    def _vcam_text(self, hub) -> tuple[str, bool]:
        """The virtual camera's state in words, and whether it is a problem to fix."""
        if self.vcam_missing is not None:
            return "Not sending to a video call: there is no virtual camera on this computer yet.", True
        if not self.settings.virtual_camera:
            return "Not sending to a video call.", False
        if hub is None:
            return "Virtual camera: waiting for the camera...", False
        if hub.camera is not None:
            text = f"Sending to {hub.camera.description} · {hub.sent} frames"
            if not self.settings.config.protect and not self.settings.send_unprotected:
                text += " · PAUSED while protection is off"
            return text, False
        if hub.camera_error:
            return f"Virtual camera not available: {hub.camera_error.split('; fix:')[0]}", True
        return "Virtual camera: opening...", False
