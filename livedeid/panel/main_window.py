"""The livedeid window: hosts the patient's tab (:mod:`.patient_tab`), the clinician's
monitor tab (:mod:`.monitor_tab`) and the enrolment tab (:mod:`.enrol_tab`, a personal
cloak) beside one video view, heart-rate panel and status bar.

Everything slow lives on worker threads (:mod:`livedeid.panel.workers`,
:mod:`livedeid.panel.meter`); the window only builds widgets and, on a ~30 Hz timer, has
the active tab draw the newest frame and numbers its thread has published. Frames the
timer does not get to are dropped, never queued.
"""
from __future__ import annotations

import logging
import threading
import time

from PySide6.QtCore import QObject, QSize, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QPushButton,
    QSplitter,
    QStatusBar,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from livedeid.io.cameras import probe_cameras
from livedeid.io.sources import open_source
from livedeid.panel.enrol_tab import EnrolTab
from livedeid.panel.meter import PrivacyMeter
from livedeid.panel.monitor_tab import MonitorTab
from livedeid.panel.patient_tab import PatientTab
from livedeid.panel.plots import HeartRatePanel
from livedeid.panel.video import VideoView
from livedeid.panel.widgets import SYNTHETIC_SPEC, icon, plain_error, scrolling, stylesheet
from livedeid.panel.workers import PanelSettings

log = logging.getLogger(__name__)

FRAME_INTERVAL_MS = 33   # ~30 Hz redraw; the pipeline itself never waits for it
STATS_INTERVAL_S = 0.5
MODES = ("patient", "monitor", "enrol")  # in tab order
ENROL_COLUMN = 470  # px: the enrolment's figures need a wider tab column than the controls


class _Bridge(QObject):
    """Carries results of helper threads (camera probing) to the GUI thread."""

    cameras_found = Signal(list)


class MainWindow(QMainWindow):
    """``settings.source`` None = use the first camera found, else the synthetic face."""

    def __init__(self, settings: PanelSettings | None = None, *, mode: str = "patient",
                 monitor_source: str | None = None, theme: str = "dark", probe: bool = True,
                 privacy_meter: bool = True, opener=open_source, meter: PrivacyMeter | None = None):
        super().__init__()
        self.setWindowTitle("livedeid - privacy filter and heart rate")
        self.setWindowIcon(icon("livedeid"))
        self.settings = settings or PanelSettings(source=None)
        self.meter = meter if meter is not None else (PrivacyMeter() if privacy_meter else None)
        self.mode = "patient"
        self.theme = theme
        self.cameras: list = []
        self.closing = False
        self.shown_error: str | None = None
        self._stats_t = 0.0
        self._bridge = _Bridge()
        self._bridge.cameras_found.connect(self._on_cameras)
        self._probe_thread: threading.Thread | None = None
        self._narrow_column: int | None = None  # the tab column's width before the Enrol tab widened it

        self.patient_tab = PatientTab(self, self.settings, self.meter, opener)
        self.monitor_tab = MonitorTab(self, self.settings.config)
        self.enrol_tab = EnrolTab(self, self.patient_tab)
        self._build()
        self.set_theme(theme)

        self.redraw_timer = QTimer(self)
        self.redraw_timer.setInterval(FRAME_INTERVAL_MS)
        self.redraw_timer.timeout.connect(self._tick)
        self.redraw_timer.start()

        if self.meter is not None:
            self.meter.start()
        if probe:
            self.probe_cameras()
        self._start(mode, monitor_source, probe)

    def _start(self, mode: str, monitor_source: str | None, probe: bool) -> None:
        if mode == "monitor":
            self.set_mode("monitor")
            if monitor_source:
                self.monitor_tab.start_spec(monitor_source)
        elif self.settings.source is not None:
            self.patient_tab.restart_pipeline()
        elif not probe:
            self.settings.source = SYNTHETIC_SPEC
            self.patient_tab.restart_pipeline()
        else:
            self.video.set_placeholder("looking for cameras...")

    # ==================================================================================
    # building
    # ==================================================================================
    def _build(self) -> None:
        central = QWidget()
        outer = QVBoxLayout(central)
        outer.setContentsMargins(8, 8, 8, 4)
        outer.setSpacing(6)
        self.danger_banner = self._banner("dangerBanner")
        self.warn_banner = self._banner("warnBanner")
        self.error_banner = self._banner("errorBanner")
        for b in (self.danger_banner, self.warn_banner):
            outer.addWidget(b)
        outer.addWidget(self._build_error_bar())

        split = self.split = QSplitter(Qt.Orientation.Horizontal)
        split.setChildrenCollapsible(False)
        outer.addWidget(split, 1)
        self.tabs = QTabWidget()
        self.tabs.setObjectName("modeTabs")
        self.tabs.addTab(scrolling(self.patient_tab), icon("shield"), "Protect")
        self.tabs.addTab(scrolling(self.monitor_tab), icon("heart"), "Monitor")
        self.tabs.addTab(scrolling(self.enrol_tab), icon("record"), "Enrol")
        self.tabs.setTabToolTip(0, "Patient: protect your face and send it to the video call")
        self.tabs.setTabToolTip(1, "Clinician: heart rate of the face in a file, camera or screen region")
        self.tabs.setTabToolTip(2, "Make a personal cloak for one person (a guided recording, then minutes "
                                   "of optimisation)")
        self.tabs.currentChanged.connect(lambda i: self.set_mode(MODES[i]))
        self.tabs.setMinimumWidth(340)
        split.addWidget(self.tabs)
        split.addWidget(self._build_video_column())
        split.addWidget(self._build_right_column())
        split.setStretchFactor(0, 0)
        split.setStretchFactor(1, 1)
        split.setStretchFactor(2, 0)
        split.setSizes([340, 760, 400])
        self.setCentralWidget(central)
        self.setStatusBar(self._build_status_bar())
        self.resize(1500, 860)

    @staticmethod
    def _banner(name: str) -> QLabel:
        banner = QLabel()
        banner.setObjectName(name)
        banner.setWordWrap(True)
        banner.hide()
        return banner

    def _build_error_bar(self) -> QWidget:
        """The error banner with up to two buttons for what to do next."""
        self.error_bar = QWidget()
        row = QHBoxLayout(self.error_bar)
        row.setContentsMargins(0, 0, 0, 0)
        self.error_banner.show()  # shown and hidden with its bar
        row.addWidget(self.error_banner, 1)
        self.error_actions = [QPushButton() for _ in range(2)]
        self._error_slots: list = [None, None]
        for i, button in enumerate(self.error_actions):
            button.setObjectName(f"errorAction{i}")
            button.hide()
            row.addWidget(button)
        self.error_bar.hide()
        return self.error_bar

    def _build_video_column(self) -> QWidget:
        middle = QWidget()
        mid = QVBoxLayout(middle)
        mid.setContentsMargins(0, 0, 0, 0)
        toggles = QHBoxLayout()
        self.side_by_side = QCheckBox("Before | after, side by side")
        self.side_by_side.setObjectName("sideBySide")
        self.box_toggle = QCheckBox("Face box")
        self.mesh_toggle = QCheckBox("Face mesh")
        self.box_toggle.toggled.connect(self._on_overlay)
        self.mesh_toggle.toggled.connect(self._on_overlay)
        self.theme_button = QPushButton(icon("theme"), "Light theme")
        self.theme_button.setObjectName("themeButton")
        self.theme_button.clicked.connect(lambda: self.set_theme("light" if self.theme == "dark" else "dark"))
        for w in (self.side_by_side, self.box_toggle, self.mesh_toggle):
            toggles.addWidget(w)
        toggles.addStretch(1)
        toggles.addWidget(self.theme_button)
        mid.addLayout(toggles)
        self.video = VideoView()
        mid.addWidget(self.video, 1)
        return middle

    def _build_right_column(self) -> QWidget:
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(0, 0, 0, 0)
        self.hr_panel = HeartRatePanel("Heart rate (measured on the protected output)")
        rl.addWidget(self.hr_panel, 3)
        rl.addWidget(self.patient_tab.meter_box, 0)
        right.setMinimumWidth(360)
        return right

    def _build_status_bar(self) -> QStatusBar:
        """Speed, latency, drops and engine: for developers, so hidden until asked for."""
        bar = QStatusBar()
        bar.setObjectName("statsBar")
        self.stat_fps = QLabel("-- fps")
        self.stat_latency = QLabel("latency --")
        self.stat_dropped = QLabel("dropped 0")
        self.stat_engine = QLabel("engine --")
        for w in (self.stat_fps, self.stat_latency, self.stat_dropped, self.stat_engine):
            w.setObjectName("stat")
            w.hide()
            bar.addWidget(w)
        bar.addWidget(QLabel(), 1)
        self.dev_details = QCheckBox("Developer details")
        self.dev_details.setObjectName("devDetails")
        self.dev_details.setToolTip("Frame rate, per-stage timings, dropped frames and the inference engine")
        self.dev_details.toggled.connect(self._on_dev_details)
        bar.addPermanentWidget(self.dev_details)
        return bar

    def _on_dev_details(self, on: bool) -> None:
        for w in (self.stat_fps, self.stat_latency, self.stat_dropped, self.stat_engine):
            w.setVisible(on)

    def _on_overlay(self) -> None:
        self.video.show_box = self.box_toggle.isChecked()
        self.video.show_mesh = self.mesh_toggle.isChecked()
        self.video.update()

    def set_theme(self, theme: str) -> None:
        if theme not in ("dark", "light"):
            raise ValueError("theme must be dark or light")
        self.theme = theme
        dark = theme == "dark"
        self.setStyleSheet(stylesheet(theme))
        self.video.set_theme(dark)
        self.hr_panel.set_theme(dark)
        self.theme_button.setText("Light theme" if dark else "Dark theme")

    # ==================================================================================
    # modes and cameras
    # ==================================================================================
    def _tab(self, mode: str):
        return {"patient": self.patient_tab, "monitor": self.monitor_tab, "enrol": self.enrol_tab}[mode]

    def set_mode(self, mode: str) -> None:
        """'patient' (protect and send), 'monitor' (heart rate only) or 'enrol' (a
        personal cloak); each tab frees the camera when another takes over."""
        if mode == self.mode:
            return
        previous, self.mode = self.mode, mode
        if self.tabs.currentIndex() != MODES.index(mode):
            self.tabs.blockSignals(True)
            self.tabs.setCurrentIndex(MODES.index(mode))
            self.tabs.blockSignals(False)
        self.hide_error()
        self._tab(previous).deactivate()
        self.side_by_side.setEnabled(mode == "patient")
        self._fit_tab_column(mode)
        self._tab(mode).activate()

    def _fit_tab_column(self, mode: str) -> None:
        """Widen the tab column for the Enrol tab (taken from the video), and give the
        width back when leaving it."""
        sizes = self.split.sizes()
        if mode == "enrol" and sizes[0] < ENROL_COLUMN:
            self._narrow_column, grow = sizes[0], ENROL_COLUMN - sizes[0]
            self.split.setSizes([ENROL_COLUMN, max(0, sizes[1] - grow), sizes[2]])
        elif mode != "enrol" and self._narrow_column is not None:
            give = sizes[0] - self._narrow_column
            self.split.setSizes([self._narrow_column, sizes[1] + max(0, give), sizes[2]])
            self._narrow_column = None

    def probe_cameras(self) -> None:
        """Find cameras on a helper thread (opening one can take a second)."""
        if self._probe_thread is not None and self._probe_thread.is_alive():
            return
        busy = self.patient_tab.camera_in_use()
        self.patient_tab.refresh_button.setEnabled(False)

        def run():
            try:
                found = probe_cameras(4, skip=() if busy is None else (busy,))
            except Exception as exc:  # no OpenCV backend at all: just no cameras
                log.warning("camera probe failed: %s", exc)
                found = []
            if not self.closing:
                self._bridge.cameras_found.emit(found)

        self._probe_thread = threading.Thread(target=run, name="livedeid-panel-probe", daemon=True)
        self._probe_thread.start()

    def _on_cameras(self, found: list) -> None:
        if self.closing:
            return
        # The camera our pipeline holds was skipped by the probe: keep it in the list.
        keep = [c for c in self.cameras if str(c.index) == str(self.settings.source)]
        known = {c.index for c in found}
        self.cameras = sorted(found + [c for c in keep if c.index not in known], key=lambda c: c.index)
        self.monitor_tab.cameras_found(self.cameras)
        self.patient_tab.cameras_found(self.cameras)
        self.enrol_tab.cameras_found(self.cameras)

    # ==================================================================================
    # drawing (GUI thread, timer)
    # ==================================================================================
    def _tick(self) -> None:
        if self.closing:
            return
        tab = self._tab(self.mode)
        tab.draw()
        self.patient_tab.draw_meter()
        now = time.monotonic()
        if now - self._stats_t >= STATS_INTERVAL_S:
            self._stats_t = now
            tab.update_stats()
            self.patient_tab.outputs.update_status()

    # ==================================================================================
    # messages, shutdown
    # ==================================================================================
    def show_error(self, text: str, actions: tuple = ()) -> None:
        """One line of what went wrong (terminal commands taken out: a patient has none)
        and up to two (label, callable) buttons for what to do next."""
        self.shown_error = text
        self.error_banner.setText(plain_error(text))
        for i, (button, action) in enumerate(zip(self.error_actions, (*actions, None, None))):
            if self._error_slots[i] is not None:
                button.clicked.disconnect(self._error_slots[i])
            self._error_slots[i] = action[1] if action is not None else None
            button.setVisible(action is not None)
            if action is not None:
                button.setText(action[0])
                button.clicked.connect(action[1])
        self.error_bar.show()

    def hide_error(self) -> None:
        self.shown_error = None
        self.error_bar.hide()

    def shutdown(self) -> None:
        """Stop every thread and release camera, virtual camera and recording."""
        if self.closing:
            return
        self.closing = True
        self.redraw_timer.stop()
        self.patient_tab.stop_worker()
        self.monitor_tab.stop()
        self.enrol_tab.stop()
        if self.meter is not None:
            self.meter.stop()
        if self._probe_thread is not None:
            self._probe_thread.join(timeout=5.0)

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt)
        self.shutdown()
        super().closeEvent(event)

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt)
        return QSize(1500, 860)
