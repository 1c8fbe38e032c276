"""The patient's tab: protect the face and send it to the video call.

Its controls (camera, protection, outputs), the privacy meter box, and the protection
pipeline behind them (:class:`~livedeid.panel.workers.PipelineWorker`). The video view,
heart-rate panel, banners and status bar belong to the window that hosts the tab.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtGui import QIcon
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QLabel,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from livedeid.core.errors import UserError
from livedeid.core.settings import ENGINE_NAMES, FAIL_CLOSED_POLICIES
from livedeid.inference.manifest import load_spec
from livedeid.io.profile import resolve_profile
from livedeid.panel.meter import RECOGNISABLE, PrivacyMeter
from livedeid.panel.meter_box import PrivacyMeterBox
from livedeid.panel.output_box import OutputBox
from livedeid.panel.status_box import ProtectionStatusBox, protection_off_text, state_style
from livedeid.panel.video import Pane
from livedeid.panel.widgets import (
    SYNTHETIC_SPEC,
    VIDEO_FILES,
    fill_source_combo,
    icon,
    plain_error,
    repolish,
    select_data,
    source_label,
)
from livedeid.panel.workers import PanelSettings, PipelineWorker, SourceOpener
from livedeid.pipeline import status as status_mod

if TYPE_CHECKING:
    from livedeid.panel.main_window import MainWindow

log = logging.getLogger(__name__)

RESOLUTIONS = ((640, 360), (640, 480), (960, 540), (1280, 720), (1920, 1080))
FRAME_RATES = (15, 24, 30, 60)
PICK_FILE = "__file__"
POLICY_TEXT = {"blur": "blur the face", "mask": "grey mask", "hold": "hold last safe frame"}
LATENCY_STAGES = ("track", "window", "engine", "composite", "rppg")


class PatientTab(QWidget):
    """Protect-and-send controls and the pipeline worker they steer.

    ``settings.source`` None = wait for the window's camera probe (:meth:`cameras_found`)."""

    def __init__(self, host: MainWindow, settings: PanelSettings, meter: PrivacyMeter | None,
                 opener: SourceOpener):
        super().__init__()
        self.host = host
        self.settings = settings
        self.meter = meter
        self.opener = opener
        self.worker: PipelineWorker | None = None
        self.cameras: list = []
        self._stats_frames = (0, time.monotonic())
        self._fps = 0.0
        self.status_changes = status_mod.StatusChanges()
        self.recognised_now: tuple[str, ...] = ()  # recognisers the live check matched on protected video
        self._measured = self._load_measured()
        lay = QVBoxLayout(self)
        lay.addWidget(self._build_camera_box())
        lay.addWidget(self._build_protection_box())
        self.outputs = OutputBox(self)
        lay.addWidget(self.outputs)
        lay.addStretch(1)
        self.meter_box = self._build_meter_box()
        self._populate_sources()  # the synthetic face and files until the window's probe answers

    # ==================================================================================
    # building
    # ==================================================================================
    def _build_camera_box(self) -> QGroupBox:
        box = QGroupBox("Camera")
        form = QFormLayout(box)
        self.source_combo = QComboBox()
        self.source_combo.setObjectName("sourceCombo")
        self.source_combo.activated.connect(self._on_source_chosen)
        self.refresh_button = QPushButton("Look for cameras again")
        self.refresh_button.clicked.connect(self.host.probe_cameras)
        self.resolution_combo = QComboBox()
        for w, h in RESOLUTIONS:
            self.resolution_combo.addItem(f"{w} x {h}", f"{w}x{h}")
        size = f"{self.settings.width}x{self.settings.height}"
        select_data(self.resolution_combo, size, add=True, label=size.replace("x", " x "))
        self.resolution_combo.activated.connect(self._on_resolution)
        self.fps_combo = QComboBox()
        for f in FRAME_RATES:
            self.fps_combo.addItem(f"{f} fps", float(f))
        select_data(self.fps_combo, float(self.settings.fps), add=True, label=f"{self.settings.fps:g} fps")
        self.fps_combo.activated.connect(self._on_fps)
        form.addRow("Source", self.source_combo)
        form.addRow("", self.refresh_button)
        form.addRow("Resolution", self.resolution_combo)
        form.addRow("Frame rate", self.fps_combo)
        return box

    def _build_protection_box(self) -> QGroupBox:
        config = self.settings.config
        box = QGroupBox("Protection")
        form = QFormLayout(box)
        # The button is the switch; how much the switch protects is the status below it
        # (and the button wears the status's colour, so the two never disagree).
        self.protect_button = QPushButton(icon("shield"), "Protection filter ON")
        self.protect_button.setObjectName("protectButton")
        self.protect_button.setCheckable(True)
        self.protect_button.setChecked(config.protect)
        self.protect_button.setMinimumHeight(44)
        self.protect_button.clicked.connect(self._on_protect_clicked)
        self.status_box = ProtectionStatusBox()
        self.engine_combo = QComboBox()
        for name in ENGINE_NAMES:
            self.engine_combo.addItem(name, name)
        select_data(self.engine_combo, config.engine)
        self.engine_combo.activated.connect(lambda i: self.set_engine(self.engine_combo.itemData(i)))
        self.policy_combo = QComboBox()
        for name in FAIL_CLOSED_POLICIES:
            self.policy_combo.addItem(POLICY_TEXT.get(name, name), name)
        select_data(self.policy_combo, config.fail_closed)
        self.policy_combo.activated.connect(lambda i: self.set_policy(self.policy_combo.itemData(i)))
        self.profile_label = QLabel()
        self.profile_label.setObjectName("profileLabel")
        self.profile_label.setWordWrap(True)
        self._show_profile()
        form.addRow(self.protect_button)
        form.addRow(self.status_box)
        form.addRow("Engine", self.engine_combo)
        form.addRow("If a face is lost", self.policy_combo)
        form.addRow("Personal cloak", self.profile_label)
        return box

    def _show_profile(self) -> None:
        profile = self.settings.config.profile
        self.profile_label.setText("none (the Enrol tab makes one)" if profile is None else Path(profile).stem)
        self.profile_label.setToolTip("" if profile is None else str(profile))

    def set_profile(self, profile: str | Path | None) -> bool:
        """Have the pipeline put this enrolled person's cloak on the largest face (a profile
        file or name; None: no cloak). A running pipeline works on its own copy of the
        settings, so the profile applies from its next start: True when one is running."""
        self.settings.config.profile = None if profile is None else Path(profile)
        self._show_profile()
        self._measured = self._load_measured()
        self.show_status(self.status_changes.show(self.protection_status()))
        return self.worker is not None and self.worker.alive

    def _build_meter_box(self) -> PrivacyMeterBox:
        from livedeid.recognizers.base import RECOGNIZER_NAMES

        box = PrivacyMeterBox(self.meter.names if self.meter is not None else RECOGNIZER_NAMES)
        box.enrol_button.clicked.connect(self._on_enrol)
        if self.meter is None:
            box.summary.setText("The live privacy check is switched off.")
            box.summary.setProperty("tone", "off")
            box.note.hide()
            box.enrol_button.setEnabled(False)
            box.enrol_button.setToolTip("the live privacy check is switched off")
        return box

    # ==================================================================================
    # switching tabs
    # ==================================================================================
    def activate(self) -> None:
        """The window switched to this tab: show the meter and run the pipeline again."""
        self.meter_box.setVisible(True)
        self.host.hr_panel.title.setText("Heart rate (measured on the protected output)")
        self.set_protection(self.settings.config.protect, self.settings.send_unprotected)
        if self.settings.source is None:
            self.settings.source = SYNTHETIC_SPEC
        self.restart_pipeline()

    def deactivate(self) -> None:
        """The window switched away: free the camera (the monitor may want it)."""
        self.stop_worker()
        self.meter_box.hide()
        self.host.warn_banner.hide()  # the model's warning is about protection, not used there
        self.host.danger_banner.hide()

    # ==================================================================================
    # cameras and sources
    # ==================================================================================
    def camera_in_use(self) -> int | None:
        """The camera our pipeline holds (probing it would steal it), if any."""
        if self.worker is not None and self.worker.alive and str(self.settings.source).isdigit():
            return int(self.settings.source)
        return None

    def cameras_found(self, cameras: list) -> None:
        """The window's camera probe finished. Without a chosen source, take the first
        real camera, else the synthetic face (and say so)."""
        self.refresh_button.setEnabled(True)
        self.cameras = cameras
        self._populate_sources()
        if self.settings.source is None and self.host.mode == "patient":
            real = [c for c in cameras if not c.virtual]
            if real:
                self.settings.source = str(real[0].index)
            else:
                self.settings.source = SYNTHETIC_SPEC
                self.host.show_error("No camera found: showing the built-in synthetic face instead. "
                                     "Plug in a webcam, then look again.",
                                     (("Look for cameras again", self.host.probe_cameras),))
            select_data(self.source_combo, self.settings.source)
            self.restart_pipeline()

    def choose_another_source(self) -> None:
        """The next step after a camera failed: look for cameras and open the chooser."""
        self.host.probe_cameras()
        self.source_combo.setFocus()
        self.source_combo.showPopup()

    def _populate_sources(self) -> None:
        current = self.settings.source
        fill_source_combo(self.source_combo, self.cameras, (source_label(SYNTHETIC_SPEC), SYNTHETIC_SPEC), current,
                          source_label(current) if current is not None else "", [("Video file...", PICK_FILE)])

    def _on_source_chosen(self, index: int) -> None:
        spec = self.source_combo.itemData(index)
        if spec == PICK_FILE:
            path, _ = QFileDialog.getOpenFileName(self, "Play a video file as the camera", "", VIDEO_FILES)
            if not path:
                select_data(self.source_combo, self.settings.source)
                return
            spec = path
        self.set_source(spec)

    def set_source(self, spec: str) -> None:
        """Switch the patient pipeline to another camera / file / synthetic source."""
        if spec == self.settings.source and self.worker is not None and self.worker.alive:
            return
        self.settings.source = spec
        self._populate_sources()
        if self.meter is not None:
            self.meter.forget()  # maybe someone else in front of this camera
        self.restart_pipeline()

    def _on_resolution(self, index: int) -> None:
        w, h = (int(v) for v in self.resolution_combo.itemData(index).split("x"))
        if (w, h) != (self.settings.width, self.settings.height):
            self.settings.width, self.settings.height = w, h
            self.restart_pipeline()

    def _on_fps(self, index: int) -> None:
        fps = self.fps_combo.itemData(index)
        if fps != self.settings.fps:
            self.settings.fps = fps
            self.restart_pipeline()

    def set_engine(self, name: str) -> None:
        if name != self.settings.config.engine:
            self.settings.config.engine = name
            select_data(self.engine_combo, name)
            self.restart_pipeline()

    def set_policy(self, name: str) -> None:
        if name != self.settings.config.fail_closed:
            self.settings.config.fail_closed = name
            select_data(self.policy_combo, name)
            self.restart_pipeline()

    # ==================================================================================
    # the pipeline
    # ==================================================================================
    def restart_pipeline(self) -> None:
        """Stop the running pipeline (releasing camera and virtual camera) and start a new
        one with the current settings."""
        self.stop_worker()
        host = self.host
        if host.closing or host.mode != "patient" or self.settings.source is None:
            return
        host.hide_error()
        host.hr_panel.reset("starting...")
        host.video.set_placeholder(f"starting {source_label(self.settings.source)}...")
        self._stats_frames = (0, time.monotonic())
        self.worker = PipelineWorker(self.settings, meter=self.meter, opener=self.opener).start()

    def stop_worker(self) -> None:
        worker, self.worker = self.worker, None
        if worker is None:
            return
        recording = worker.hub.recording if worker.hub is not None else None
        if not worker.stop(timeout=15.0):
            log.error("pipeline thread did not stop within 15 s")
        if recording is not None:
            self.outputs.recording_ended(recording)

    # ==================================================================================
    # protection
    # ==================================================================================
    def _on_protect_clicked(self, checked: bool) -> None:
        if checked:
            self.set_protection(True)
            return
        choice = self.confirm_protection_off()
        if choice == "keep":
            self.protect_button.setChecked(True)
            return
        self.set_protection(False, send_unprotected=(choice == "send"))

    def confirm_protection_off(self) -> str:
        """Ask before switching protection off: 'keep', 'preview' (off, the call gets
        nothing) or 'send' (off, the real face goes to the call)."""
        box = QMessageBox(self)
        box.setObjectName("protectionOffDialog")
        box.setIcon(QMessageBox.Icon.Warning)
        box.setWindowTitle("Turn protection off?")
        box.setText("<b>Turning protection off shows your real face.</b>")
        box.setInformativeText(protection_off_text(self.measured_status()))
        keep = box.addButton("Keep protection ON", QMessageBox.ButtonRole.RejectRole)
        keep.setObjectName("keepProtection")
        preview = box.addButton("Off, preview only", QMessageBox.ButtonRole.AcceptRole)
        preview.setObjectName("offPreviewOnly")
        send = box.addButton("Off, and send my real face to the call", QMessageBox.ButtonRole.DestructiveRole)
        send.setObjectName("offAndSend")
        box.setDefaultButton(keep)
        box.setEscapeButton(keep)
        box.exec()
        clicked = box.clickedButton()
        return "send" if clicked is send else "preview" if clicked is preview else "keep"

    def set_protection(self, protect: bool, send_unprotected: bool = False) -> None:
        send_unprotected = send_unprotected and not protect
        self.settings.config.protect, self.settings.send_unprotected = protect, send_unprotected
        if self.worker is not None:
            self.worker.set_protection(protect, send_unprotected)
        self.protect_button.setChecked(protect)
        self.protect_button.setText("Protection filter ON" if protect else "Protection filter OFF")
        self.protect_button.setIcon(icon("shield") if protect else QIcon())
        self.protect_button.setToolTip("" if protect else "Click to turn protection back on")
        self.protect_button.setProperty("off", not protect)
        repolish(self.protect_button)
        self.show_status(self.status_changes.show(self.protection_status()))
        banner = self.host.danger_banner
        if protect:
            banner.hide()
        else:
            banner.setText(
                "PROTECTION IS OFF - your REAL, UNPROTECTED FACE is being sent to the video call."
                if send_unprotected else
                "PROTECTION IS OFF - this preview shows your real face. The video call receives "
                "nothing until you turn protection back on.")
            banner.show()

    # -- the one status (livedeid.pipeline.status) --------------------------------------
    def _load_measured(self):
        """(model spec, profile) whose measurements the status reports: what the next
        pipeline will load. None when they cannot be read (the pipeline then fails and says why)."""
        config = self.settings.config
        try:
            return load_spec(config.manifest), (resolve_profile(config.profile) if config.profile else None)
        except UserError as exc:
            log.warning("protection status: %s", exc)
            return None

    def _spec_and_profile(self):
        processor = self.worker.processor if self.worker is not None else None
        if processor is not None:  # what is running now
            return processor.spec, processor.profile
        return self._measured if self._measured is not None else (None, None)

    def measured_status(self) -> status_mod.ProtectionStatus | None:
        """What protection on gives here, from the measurements (no live state)."""
        spec, profile = self._spec_and_profile()
        return None if spec is None else status_mod.measured_status(spec, profile, self.recognised_now)

    def protection_status(self, snap=None) -> status_mod.ProtectionStatus | None:
        """The status now: the switches, the measurements, and from the newest frame
        (``snap``) whether a face is being hidden."""
        spec, profile = self._spec_and_profile()
        if spec is None:
            return None
        return status_mod.protection_status(
            spec, profile, protect=self.settings.config.protect, sending_unprotected=self.settings.send_unprotected,
            hidden_regions=snap.fail_closed_regions if snap is not None and snap.protected else 0,
            whole_picture_hidden=bool(snap is not None and snap.protected and snap.no_face_yet),
            recognised_now=self.recognised_now)

    def show_status(self, status: status_mod.ProtectionStatus | None) -> None:
        if status is None:
            return
        self.status_box.show_status(status)
        self.protect_button.setStyleSheet(state_style(status, "#protectButton"))

    def _on_enrol(self) -> None:
        if self.meter is not None:
            self.meter.enrol()
            self.meter_box.note.setText("Taking a new reference picture from the next camera frame...")

    # ==================================================================================
    # drawing (GUI thread, the window's timer)
    # ==================================================================================
    def draw(self) -> None:
        """Show the newest frame the pipeline published, if any; report a failure."""
        worker = self.worker
        if worker is None:
            return
        snap = worker.latest.take()
        if snap is not None:
            side_by_side = self.host.side_by_side.isChecked()
            if snap.protected:
                after = Pane(snap.output, "AFTER - filtered output" if side_by_side else "Filtered output",
                             "protected")
            else:
                after = Pane(snap.output, "UNPROTECTED - your real face", "unprotected")
            panes = [Pane(snap.image, "BEFORE - camera (never sent)", "camera"), after] if side_by_side else [after]
            self.host.video.show_panes(panes, snap.faces)
            self.host.hr_panel.set_reading(snap.reading)
            if snap.protected == self.settings.config.protect:  # not a frame from before the switch
                changed = self.status_changes.update(self.protection_status(snap), time.monotonic())
                self.show_status(changed)
        if worker.state == "failed":
            text = f"The camera pipeline stopped: {worker.error or 'unknown error'}"
            if text != self.host.shown_error:
                self.host.show_error(text, (("Choose another camera", self.choose_another_source),
                                            ("Try again", self.restart_pipeline)))
                self.host.video.set_placeholder(plain_error(text))

    def draw_meter(self) -> None:
        if self.meter is not None:
            report = self.meter.reports.take()
            if report is not None:
                self.meter_box.show_report(report)
                self.recognised_now = tuple(sorted(
                    n for n, v in report.verdicts.items() if v.status == RECOGNISABLE)) if report.protected else ()

    def update_stats(self) -> None:
        """The status bar's speed, latency and engine; the model's warning banner."""
        host, w = self.host, self.worker
        if w is None or w.pipeline is None or w.processor is None:
            host.stat_fps.setText("-- fps")
            return
        stats = w.pipeline.stats
        frames, t = stats.frames, time.monotonic()
        f0, t0 = self._stats_frames
        if t > t0:
            self._fps = (frames - f0) / (t - t0)
        self._stats_frames = (frames, t)
        host.stat_fps.setText(f"{self._fps:.1f} fps")
        pct = stats.percentiles()
        parts = [f"{s} {pct[s][0]:.1f}" for s in LATENCY_STAGES if s in pct]
        total = pct.get("total")
        latency = " · ".join(parts)
        if total:
            latency += f" · total {total[0]:.1f} ms (p95 {total[1]:.1f})"
        host.stat_latency.setText(f"latency p50: {latency}" if parts else "latency --")
        host.stat_dropped.setText(f"dropped {stats.dropped} · hidden face-frames {stats.hidden_faces}")
        proc = w.processor
        host.stat_engine.setText(f"engine: {proc.engine.describe()}")
        host.stat_engine.setToolTip(f"{proc.engine_reason}\n" + "\n".join(f"skipped {s}" for s in proc.engine_skipped))
        # The model's and the cloak's measured protection is the status box's to say (in
        # plain words, numbers behind Details); the banner only tells what just happened.
        if proc.events:
            host.warn_banner.setText(proc.events[-1])
            host.warn_banner.show()
        else:
            host.warn_banner.hide()
