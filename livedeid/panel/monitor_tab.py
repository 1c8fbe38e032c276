"""The clinician's tab: the heart rate of a face in a video file, a camera or a region of
the screen (the patient's tile in a video call). Nothing is de-identified or sent.

The work runs on a :class:`~livedeid.panel.workers.MonitorWorker`; the video view and
heart-rate panel belong to the window that hosts the tab.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from livedeid.core.errors import UserError
from livedeid.core.settings import PipelineConfig
from livedeid.io.sources import CameraSource, FileSource, open_source
from livedeid.panel.readings import reading_rows, save_readings
from livedeid.panel.screen import ScreenSource, screen_monitors
from livedeid.panel.video import Pane
from livedeid.panel.widgets import SYNTHETIC_SPEC, VIDEO_FILES, icon, source_label
from livedeid.panel.workers import MonitorWorker

if TYPE_CHECKING:
    from livedeid.panel.main_window import MainWindow

log = logging.getLogger(__name__)


class ScreenRegionDialog(QDialog):
    def __init__(self, monitors: list[dict], parent=None):
        super().__init__(parent)
        self.setWindowTitle("Screen region to watch")
        primary = monitors[1] if len(monitors) > 1 else monitors[0]
        everything = monitors[0]
        form = QFormLayout(self)
        self.spins = {}
        for key, value, lo, hi in (
            ("left", primary["left"], everything["left"], everything["left"] + everything["width"] - 64),
            ("top", primary["top"], everything["top"], everything["top"] + everything["height"] - 64),
            ("width", primary["width"], 64, everything["width"]),
            ("height", primary["height"], 64, everything["height"]),
        ):
            spin = QSpinBox()
            spin.setRange(int(lo), int(hi))
            spin.setValue(int(value))
            form.addRow(key, spin)
            self.spins[key] = spin
        form.addRow(QLabel("Tip: put the patient's video tile in this rectangle."))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def region(self) -> tuple[int, int, int, int]:
        return tuple(self.spins[k].value() for k in ("left", "top", "width", "height"))


class MonitorTab(QWidget):
    """What to watch, and the monitor worker watching it. ``config`` gives the heart-rate
    method and window (the same settings as the patient's pipeline)."""

    def __init__(self, host: MainWindow, config: PipelineConfig):
        super().__init__()
        self.host = host
        self.config = config
        self.worker: MonitorWorker | None = None
        self.measured: MonitorWorker | None = None  # the last watch, kept after Stop for saving its readings
        self._last_start: tuple | None = None
        lay = QVBoxLayout(self)
        intro = QLabel("Watch someone's heart rate: open a recording, use a camera, or point at the "
                       "part of your screen that shows the patient's video. Nothing is de-identified "
                       "or sent anywhere in this mode.")
        intro.setWordWrap(True)
        lay.addWidget(intro)
        lay.addWidget(self._build_watch_box())
        lay.addWidget(self._build_save_box())
        self.status = QLabel("Nothing watched yet.")
        self.status.setObjectName("monitorStatus")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        lay.addStretch(1)

    def _build_watch_box(self) -> QGroupBox:
        box = QGroupBox("Watch")
        g = QVBoxLayout(box)
        self.file_button = QPushButton(icon("file"), "Open a video file...")
        self.file_button.clicked.connect(self._on_file)
        cam_row = QHBoxLayout()
        self.camera_combo = QComboBox()
        self.camera_button = QPushButton(icon("camera"), "Watch camera")
        self.camera_button.clicked.connect(self._on_camera)
        self.camera_button.setEnabled(False)
        self.camera_combo.setEnabled(False)
        cam_row.addWidget(self.camera_combo, 1)
        cam_row.addWidget(self.camera_button)
        self.camera_reason = QLabel("looking for cameras...")
        self.camera_reason.setObjectName("reason")
        self.camera_reason.setWordWrap(True)
        self.screen_button = QPushButton(icon("screen"), "Screen region...")
        self.screen_button.clicked.connect(self._on_screen)
        self.synthetic_button = QPushButton("Synthetic test face (72 bpm)")
        self.synthetic_button.clicked.connect(lambda: self.start("synthetic", SYNTHETIC_SPEC))
        self.realtime_check = QCheckBox("Play files in real time")
        self.realtime_check.setChecked(True)
        self.stop_button = QPushButton("Stop")
        self.stop_button.clicked.connect(self.stop)
        g.addWidget(self.file_button)
        g.addLayout(cam_row)
        g.addWidget(self.camera_reason)
        g.addWidget(self.screen_button)
        g.addWidget(self.synthetic_button)
        g.addWidget(self.realtime_check)
        g.addWidget(self.stop_button)
        return box

    def _build_save_box(self) -> QGroupBox:
        box = QGroupBox("Readings")
        g = QVBoxLayout(box)
        self.save_button = QPushButton("Save readings...")
        self.save_button.setObjectName("saveReadings")
        self.save_button.setToolTip("Every reading with its time, as CSV (spreadsheets) or JSON")
        self.save_button.clicked.connect(self._on_save)
        self.save_button.setEnabled(False)
        self.save_reason = QLabel("no readings yet")
        self.save_reason.setObjectName("reason")
        self.save_reason.setWordWrap(True)
        g.addWidget(self.save_button)
        g.addWidget(self.save_reason)
        return box

    # -- saving -------------------------------------------------------------------------
    def _on_save(self) -> None:
        default = Path.home() / time.strftime("heart-rate-%Y%m%d-%H%M%S.csv")
        path, _ = QFileDialog.getSaveFileName(self, "Save the heart-rate readings", str(default),
                                              "CSV (*.csv);;JSON (*.json)")
        if path:
            self.save(path)

    def save(self, path: str | Path) -> Path | None:
        """Write the last watch's readings to ``path`` (.csv or .json); None on a failure,
        which the tab then says."""
        m = self.measured
        if m is None or not m.readings:
            return None
        n = min(len(m.readings), len(m.reading_times))  # the worker may be appending right now
        about = {"source": m.description, "method": self.config.hr_method, "window_s": self.config.hr_window_s}
        try:
            saved = save_readings(path, reading_rows(m.readings[:n], m.reading_times[:n]), about)
        except UserError as exc:
            self.save_reason.setText(f"Not saved: {exc}")
            return None
        self.save_reason.setText(f"Saved {n} readings to {saved}")
        return saved

    # -- switching tabs -------------------------------------------------------------------
    def activate(self) -> None:
        self.host.hr_panel.title.setText("Heart rate (monitor)")
        self.host.hr_panel.reset("choose what to watch")
        self.host.video.set_placeholder("Choose a video file, a camera or a screen region to watch.")

    def deactivate(self) -> None:
        self.stop()

    def cameras_found(self, cameras: list) -> None:
        self.camera_combo.clear()
        for c in cameras:
            self.camera_combo.addItem(c.label, c.index)
        self.camera_button.setEnabled(bool(cameras))
        self.camera_combo.setEnabled(bool(cameras))
        self.camera_reason.setText("" if cameras else "no camera found")
        self.camera_reason.setVisible(not cameras)

    # -- what to watch --------------------------------------------------------------------
    def _on_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Video to measure", "", VIDEO_FILES)
        if path:
            self.start("file", path)

    def _on_camera(self) -> None:
        index = self.camera_combo.currentData()
        if index is not None:
            self.start("camera", int(index))

    def _on_screen(self) -> None:
        try:
            monitors = screen_monitors()
        except UserError as exc:
            self.host.show_error(str(exc))
            return
        dialog = ScreenRegionDialog(monitors, self)
        if dialog.exec() == QDialog.DialogCode.Accepted:
            self.start("screen", dialog.region())

    def start_spec(self, spec: str) -> None:
        """CLI form: camera index, synthetic[:HR], screen[:L,T,W,H] or a file path."""
        if spec.isdigit():
            self.start("camera", int(spec))
        elif spec.startswith("synthetic"):
            self.start("synthetic", spec)
        elif spec == "screen" or spec.startswith("screen:"):
            region = tuple(int(v) for v in spec.split(":", 1)[1].split(",")) if ":" in spec else None
            self.start("screen", region)
        else:
            self.start("file", spec)

    def start(self, kind: str, value=None, realtime: bool | None = None) -> None:
        """Watch a 'file' (path), 'camera' (index), 'screen' (region or None) or
        'synthetic' (spec) and show its heart rate."""
        if kind == "file":
            make, label = (lambda: FileSource(value)), f"video file {Path(value).name}"
        elif kind == "camera":
            make, label = (lambda: CameraSource(int(value))), f"camera {value}"
        elif kind == "screen":
            make, label = (lambda: ScreenSource(value, fps=15.0)), "screen region"
        elif kind == "synthetic":
            make = lambda: open_source(value or SYNTHETIC_SPEC, width=640, height=360, live=True)  # noqa: E731
            label = source_label(value or SYNTHETIC_SPEC)
        else:
            raise ValueError(f"unknown monitor source kind {kind!r}")
        self._last_start = (kind, value)
        self.save_button.setEnabled(False)
        self.save_reason.setText("no readings yet")
        self.host.set_mode("monitor")
        self.stop()
        self.host.hide_error()
        if realtime is not None:
            self.realtime_check.setChecked(realtime)
        self.host.hr_panel.reset("measuring...")
        self.host.video.set_placeholder(f"opening {label}...")
        self.status.setText(f"Opening {label}...")
        self.worker = self.measured = MonitorWorker(make, realtime=self.realtime_check.isChecked(),
                                                    hr_method=self.config.hr_method,
                                                    window_s=self.config.hr_window_s).start()

    def restart(self) -> None:
        """Watch the last source again (the next step after it failed)."""
        if self._last_start is not None:
            self.start(*self._last_start)

    def stop(self) -> None:
        worker, self.worker = self.worker, None
        if worker is not None and not worker.stop(timeout=10.0):
            log.error("monitor thread did not stop within 10 s")

    # -- drawing (GUI thread, the window's timer) -----------------------------------------
    def draw(self) -> None:
        m = self.worker
        if self.measured is not None and self.measured.readings and not self.save_button.isEnabled():
            self.save_button.setEnabled(True)
            self.save_reason.setText("")
        if m is None:
            return
        snap = m.latest.take()
        if snap is not None:
            self.host.video.show_panes([Pane(snap.image, "MONITOR - not de-identified", "monitor")], snap.faces)
            self.host.hr_panel.set_reading(snap.reading)
        if m.state == "failed":
            if m.error != self.host.shown_error:
                self.host.show_error(f"Monitor stopped: {m.error}",
                                     (("Open a video file", self._on_file), ("Try again", self.restart)))
                self.host.shown_error = m.error
                self.host.video.set_placeholder(f"Monitor stopped: {m.error}")
            self.status.setText(f"Stopped: {m.error}")
        elif m.state == "ended":
            last = next((r for r in reversed(m.readings) if r.bpm is not None), None)
            tail = f"; last reading {last.bpm:.0f} bpm ({last.quality})" if last else "; no reliable reading"
            self.status.setText(f"End of {m.description} ({m.frames} frames){tail}.")
        else:
            self.status.setText(f"Watching {m.description or '...'} · {m.fps:.1f} fps · {m.frames} frames")

    def update_stats(self) -> None:
        host = self.host
        host.stat_fps.setText(f"{self.worker.fps:.1f} fps" if self.worker else "-- fps")
        host.stat_latency.setText("monitor mode: no de-identification")
        host.stat_dropped.setText("")
        host.stat_engine.setText("")
