"""The livedeid window: patient's protection panel and clinician's monitor.

Everything slow lives on worker threads (:mod:`livedeid.panel.workers`,
:mod:`livedeid.panel.meter`); this module only builds widgets and, on a ~30 Hz timer,
draws the newest frame and numbers those threads have published. Frames the timer does
not get to are dropped, never queued.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from PySide6.QtCore import QObject, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QSplitter,
    QStatusBar,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from livedeid.assets import ui_dir
from livedeid.core.errors import UserError
from livedeid.core.settings import ENGINE_NAMES, FAIL_CLOSED_POLICIES
from livedeid.io.sinks import virtual_camera_hint
from livedeid.io.sources import CameraSource, FileSource, open_source
from livedeid.panel import meter as meter_mod
from livedeid.panel.meter import MeterReport, PrivacyMeter
from livedeid.panel.plots import HeartRatePanel, _repolish
from livedeid.panel.video import Pane, VideoView
from livedeid.panel.workers import (
    MonitorWorker,
    PatientSettings,
    PipelineWorker,
    ScreenSource,
    probe_cameras,
    screen_monitors,
)

log = logging.getLogger(__name__)

UI_DIR = ui_dir()
RESOLUTIONS = ((640, 360), (640, 480), (960, 540), (1280, 720), (1920, 1080))
FRAME_RATES = (15, 24, 30, 60)
SYNTHETIC_SPEC = "synthetic:72"
PICK_FILE = "__file__"
FRAME_INTERVAL_MS = 33   # ~30 Hz redraw; the pipeline itself never waits for it
STATS_INTERVAL_S = 0.5


def icon(name: str) -> QIcon:
    path = UI_DIR / "icons" / f"{name}.svg"
    return QIcon(str(path)) if path.is_file() else QIcon()


def stylesheet(theme: str) -> str:
    path = UI_DIR / f"style_{theme}.qss"
    try:
        text = path.read_text()
    except OSError:
        log.warning("stylesheet %s not found; using Qt's default look", path)
        return ""
    # Qt resolves url() against the working directory, not the stylesheet's folder.
    return text.replace("@ICONS@", (UI_DIR / "icons").as_posix())


class _Bridge(QObject):
    """Carries results of helper threads (camera probing) to the GUI thread."""

    cameras_found = Signal(list)


def _source_label(spec: str) -> str:
    if spec.isdigit():
        return f"camera {spec}"
    if spec.startswith("synthetic"):
        hr = spec.split(":", 1)[1] if ":" in spec else "72"
        return f"synthetic face, {hr} bpm"
    return f"video file: {Path(spec).name}"


class PrivacyMeterBox(QGroupBox):
    """One row per recogniser: verdict in words and colour, and the number behind it."""

    TONE = {
        meter_mod.NOT_RECOGNISABLE: "good",
        meter_mod.RECOGNISABLE: "bad",
        meter_mod.NO_FACE: "neutral",
        meter_mod.ENROLLING: "neutral",
        meter_mod.LOADING: "neutral",
        meter_mod.UNAVAILABLE: "off",
        meter_mod.FAILED: "off",
    }

    def __init__(self, names, parent=None):
        super().__init__("Privacy meter", parent)
        self.setObjectName("meterBox")
        grid = QGridLayout(self)
        self.rows: dict[str, tuple[QLabel, QLabel, QLabel]] = {}
        for r, name in enumerate(names):
            title = QLabel(meter_mod.LABELS.get(name, name))
            title.setObjectName("meterName")
            verdict = QLabel("loading...")
            verdict.setObjectName("verdict")
            verdict.setProperty("tone", "neutral")
            detail = QLabel("")
            detail.setObjectName("meterDetail")
            detail.setWordWrap(True)
            grid.addWidget(title, 2 * r, 0)
            grid.addWidget(verdict, 2 * r, 1)
            grid.addWidget(detail, 2 * r + 1, 0, 1, 2)
            self.rows[name] = (title, verdict, detail)
        self.note = QLabel("Checks the video that leaves this computer against your face as each "
                           "recogniser saw it at enrolment (kept in memory only).")
        self.note.setObjectName("meterNote")
        self.note.setWordWrap(True)
        self.enrol_button = QPushButton("Enrol my face again")
        self.enrol_button.setObjectName("enrolButton")
        grid.addWidget(self.note, 2 * len(names), 0, 1, 2)
        grid.addWidget(self.enrol_button, 2 * len(names) + 1, 0, 1, 2)
        grid.setColumnStretch(1, 1)
        self.last_report: MeterReport | None = None

    def verdict_text(self, name: str) -> str:
        return self.rows[name][1].text()

    def show_report(self, report: MeterReport) -> None:
        self.last_report = report
        for name, v in report.verdicts.items():
            if name not in self.rows:
                continue
            _, verdict, detail = self.rows[name]
            text = v.status.upper() if v.status in (meter_mod.RECOGNISABLE, meter_mod.NOT_RECOGNISABLE) else v.status
            verdict.setText(text)
            verdict.setProperty("tone", self.TONE.get(v.status, "neutral"))
            _repolish(verdict)
            extra = "" if report.protected else "  [protection is OFF]"
            detail.setText(v.detail + extra)


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


class MainWindow(QMainWindow):
    """``settings.source`` None = use the first camera found, else the synthetic face."""

    def __init__(self, settings: PatientSettings | None = None, *, mode: str = "patient",
                 monitor_source: str | None = None, theme: str = "dark", probe: bool = True,
                 privacy_meter: bool = True, opener=open_source, meter: PrivacyMeter | None = None):
        super().__init__()
        self.setWindowTitle("livedeid - privacy filter and heart rate")
        self.setWindowIcon(icon("livedeid"))
        self.settings = settings or PatientSettings(source=None)
        self._opener = opener
        self.worker: PipelineWorker | None = None
        self.monitor: MonitorWorker | None = None
        self.meter = meter if meter is not None else (PrivacyMeter() if privacy_meter else None)
        self.mode = "patient"
        self.theme = theme
        self.cameras = []
        self.recording_path: Path | None = None
        self._closing = False
        self._shown_error: str | None = None
        self._stats_t = 0.0
        self._stats_frames = (0, time.monotonic())
        self._fps = 0.0
        self._bridge = _Bridge()
        self._bridge.cameras_found.connect(self._on_cameras)
        self._probe_thread: threading.Thread | None = None

        self._build()
        self.set_theme(theme)
        self._populate_sources([])

        self._timer = QTimer(self)
        self._timer.setInterval(FRAME_INTERVAL_MS)
        self._timer.timeout.connect(self._tick)
        self._timer.start()

        if self.meter is not None:
            self.meter.start()
        if probe:
            self.probe_cameras()
        if mode == "monitor":
            self.tabs.setCurrentIndex(1)  # -> set_mode("monitor")
            if monitor_source:
                self.start_monitor_spec(monitor_source)
        elif self.settings.source is not None:
            self.restart_pipeline()
        elif not probe:
            self.settings.source = SYNTHETIC_SPEC
            self.restart_pipeline()
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

        self.danger_banner = QLabel()
        self.danger_banner.setObjectName("dangerBanner")
        self.danger_banner.setWordWrap(True)
        self.danger_banner.hide()
        self.warn_banner = QLabel()
        self.warn_banner.setObjectName("warnBanner")
        self.warn_banner.setWordWrap(True)
        self.warn_banner.hide()
        self.error_banner = QLabel()
        self.error_banner.setObjectName("errorBanner")
        self.error_banner.setWordWrap(True)
        self.error_banner.hide()
        for b in (self.danger_banner, self.warn_banner, self.error_banner):
            outer.addWidget(b)

        split = QSplitter(Qt.Orientation.Horizontal)
        split.setChildrenCollapsible(False)
        outer.addWidget(split, 1)

        # -- left: controls -------------------------------------------------------------
        self.tabs = QTabWidget()
        self.tabs.setObjectName("modeTabs")
        self.tabs.addTab(self._build_patient_tab(), icon("shield"), "Protect")
        self.tabs.addTab(self._build_monitor_tab(), icon("heart"), "Monitor")
        self.tabs.setTabToolTip(0, "Patient: protect your face and send it to the video call")
        self.tabs.setTabToolTip(1, "Clinician: heart rate of the face in a file, camera or screen region")
        self.tabs.currentChanged.connect(lambda i: self.set_mode("patient" if i == 0 else "monitor"))
        self.tabs.setMinimumWidth(340)
        split.addWidget(self.tabs)

        # -- middle: video ----------------------------------------------------------------
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
        split.addWidget(middle)

        # -- right: heart rate + privacy meter ------------------------------------------------
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(0, 0, 0, 0)
        self.hr_panel = HeartRatePanel("Heart rate (measured on the protected output)")
        rl.addWidget(self.hr_panel, 3)
        names = self.meter.names if self.meter is not None else meter_mod.RECOGNIZER_NAMES
        self.meter_box = PrivacyMeterBox(names)
        self.meter_box.enrol_button.clicked.connect(self._on_enrol)
        if self.meter is None:
            self.meter_box.note.setText("Privacy meter switched off.")
            self.meter_box.enrol_button.setEnabled(False)
        rl.addWidget(self.meter_box, 0)
        right.setMinimumWidth(360)
        split.addWidget(right)
        split.setStretchFactor(0, 0)
        split.setStretchFactor(1, 1)
        split.setStretchFactor(2, 0)
        split.setSizes([340, 760, 400])

        self.setCentralWidget(central)

        # -- bottom: stats ---------------------------------------------------------------------
        bar = QStatusBar()
        bar.setObjectName("statsBar")
        self.stat_fps = QLabel("-- fps")
        self.stat_latency = QLabel("latency --")
        self.stat_dropped = QLabel("dropped 0")
        self.stat_engine = QLabel("engine --")
        for w in (self.stat_fps, self.stat_latency, self.stat_dropped, self.stat_engine):
            w.setObjectName("stat")
            bar.addWidget(w)
        bar.addWidget(QLabel(), 1)
        self.setStatusBar(bar)
        self.resize(1500, 860)

    def _build_patient_tab(self) -> QWidget:
        tab = QWidget()
        lay = QVBoxLayout(tab)

        cam = QGroupBox("Camera")
        form = QFormLayout(cam)
        self.source_combo = QComboBox()
        self.source_combo.setObjectName("sourceCombo")
        self.source_combo.activated.connect(self._on_source_chosen)
        self.refresh_button = QPushButton("Look for cameras again")
        self.refresh_button.clicked.connect(self.probe_cameras)
        self.resolution_combo = QComboBox()
        for w, h in RESOLUTIONS:
            self.resolution_combo.addItem(f"{w} x {h}", f"{w}x{h}")
        size = f"{self.settings.width}x{self.settings.height}"
        self._select_data(self.resolution_combo, size, add=True, label=size.replace("x", " x "))
        self.resolution_combo.activated.connect(self._on_resolution)
        self.fps_combo = QComboBox()
        for f in FRAME_RATES:
            self.fps_combo.addItem(f"{f} fps", float(f))
        self._select_data(self.fps_combo, float(self.settings.fps), add=True, label=f"{self.settings.fps:g} fps")
        self.fps_combo.activated.connect(self._on_fps)
        form.addRow("Source", self.source_combo)
        form.addRow("", self.refresh_button)
        form.addRow("Resolution", self.resolution_combo)
        form.addRow("Frame rate", self.fps_combo)
        lay.addWidget(cam)

        prot = QGroupBox("Protection")
        pform = QFormLayout(prot)
        self.protect_button = QPushButton(icon("shield"), "Protection ON")
        self.protect_button.setObjectName("protectButton")
        self.protect_button.setCheckable(True)
        self.protect_button.setChecked(self.settings.protect)
        self.protect_button.setMinimumHeight(44)
        self.protect_button.clicked.connect(self._on_protect_clicked)
        self.engine_combo = QComboBox()
        for name in ENGINE_NAMES:
            self.engine_combo.addItem(name, name)
        self._select_data(self.engine_combo, self.settings.engine)
        self.engine_combo.activated.connect(self._on_engine)
        self.policy_combo = QComboBox()
        policy_text = {"blur": "blur the face", "mask": "grey mask", "hold": "hold last safe frame"}
        for name in FAIL_CLOSED_POLICIES:
            self.policy_combo.addItem(policy_text.get(name, name), name)
        self._select_data(self.policy_combo, self.settings.fail_closed)
        self.policy_combo.activated.connect(self._on_policy)
        pform.addRow(self.protect_button)
        pform.addRow("Engine", self.engine_combo)
        pform.addRow("If a face is lost", self.policy_combo)
        lay.addWidget(prot)

        outs = QGroupBox("Output")
        oform = QVBoxLayout(outs)
        self.vcam_check = QCheckBox("Send to video call (virtual camera)")
        self.vcam_check.setObjectName("vcamCheck")
        self.vcam_check.setChecked(self.settings.virtual_camera)
        self.vcam_check.toggled.connect(self._on_vcam)
        self.vcam_status = QLabel("")
        self.vcam_status.setObjectName("vcamStatus")
        self.vcam_status.setWordWrap(True)
        self.vcam_hint = QLabel(f"Set-up: {virtual_camera_hint()}")
        self.vcam_hint.setObjectName("hint")
        self.vcam_hint.setWordWrap(True)
        self.vcam_hint.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.vcam_hint.hide()
        self.overlay_check = QCheckBox("Burn heart rate into the video")
        self.overlay_check.setChecked(self.settings.hr_overlay)
        self.overlay_check.toggled.connect(self._on_hr_overlay)
        self.record_button = QPushButton(icon("record"), "Record to file...")
        self.record_button.setObjectName("recordButton")
        self.record_button.setCheckable(True)
        self.record_button.clicked.connect(self._on_record_clicked)
        self.record_status = QLabel("")
        self.record_status.setWordWrap(True)
        for w in (self.vcam_check, self.vcam_status, self.vcam_hint, self.overlay_check, self.record_button,
                  self.record_status):
            oform.addWidget(w)
        lay.addWidget(outs)
        lay.addStretch(1)
        return self._scroll(tab)

    def _build_monitor_tab(self) -> QWidget:
        tab = QWidget()
        lay = QVBoxLayout(tab)
        intro = QLabel("Watch someone's heart rate: open a recording, use a camera, or point at the "
                       "part of your screen that shows the patient's video. Nothing is de-identified "
                       "or sent anywhere in this mode.")
        intro.setWordWrap(True)
        lay.addWidget(intro)
        box = QGroupBox("Watch")
        g = QVBoxLayout(box)
        self.mon_file_button = QPushButton(icon("file"), "Open a video file...")
        self.mon_file_button.clicked.connect(self._on_monitor_file)
        cam_row = QHBoxLayout()
        self.mon_camera_combo = QComboBox()
        self.mon_camera_button = QPushButton(icon("camera"), "Watch camera")
        self.mon_camera_button.clicked.connect(self._on_monitor_camera)
        cam_row.addWidget(self.mon_camera_combo, 1)
        cam_row.addWidget(self.mon_camera_button)
        self.mon_screen_button = QPushButton(icon("screen"), "Screen region...")
        self.mon_screen_button.clicked.connect(self._on_monitor_screen)
        self.mon_synth_button = QPushButton("Synthetic test face (72 bpm)")
        self.mon_synth_button.clicked.connect(lambda: self.start_monitor("synthetic", SYNTHETIC_SPEC))
        self.mon_realtime = QCheckBox("Play files in real time")
        self.mon_realtime.setChecked(True)
        self.mon_stop_button = QPushButton("Stop")
        self.mon_stop_button.clicked.connect(self.stop_monitor)
        self.mon_status = QLabel("Nothing watched yet.")
        self.mon_status.setObjectName("monitorStatus")
        self.mon_status.setWordWrap(True)
        g.addWidget(self.mon_file_button)
        g.addLayout(cam_row)
        g.addWidget(self.mon_screen_button)
        g.addWidget(self.mon_synth_button)
        g.addWidget(self.mon_realtime)
        g.addWidget(self.mon_stop_button)
        lay.addWidget(box)
        lay.addWidget(self.mon_status)
        lay.addStretch(1)
        return self._scroll(tab)

    @staticmethod
    def _scroll(widget: QWidget) -> QScrollArea:
        area = QScrollArea()
        area.setWidgetResizable(True)
        area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        area.setFrameShape(QFrame.Shape.NoFrame)
        area.setWidget(widget)
        return area

    @staticmethod
    def _select_data(combo: QComboBox, data, add: bool = False, label: str | None = None) -> None:
        i = combo.findData(data)
        if i < 0 and add:
            combo.addItem(label or str(data), data)
            i = combo.count() - 1
        if i >= 0:
            combo.setCurrentIndex(i)

    # ==================================================================================
    # theme
    # ==================================================================================
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
    # patient mode
    # ==================================================================================
    def probe_cameras(self) -> None:
        """Find cameras on a helper thread (opening one can take a second)."""
        if self._probe_thread is not None and self._probe_thread.is_alive():
            return
        busy = set()
        if self.worker is not None and self.worker.alive and str(self.settings.source).isdigit():
            busy.add(int(self.settings.source))  # ours: probing it would steal it from the pipeline
        self.refresh_button.setEnabled(False)

        def run():
            try:
                found = probe_cameras(4, skip=busy)
            except Exception as exc:  # no OpenCV backend at all: just no cameras
                log.warning("camera probe failed: %s", exc)
                found = []
            if not self._closing:
                self._bridge.cameras_found.emit(found)

        self._probe_thread = threading.Thread(target=run, name="livedeid-panel-probe", daemon=True)
        self._probe_thread.start()

    def _on_cameras(self, found: list) -> None:
        if self._closing:
            return
        self.refresh_button.setEnabled(True)
        keep = [c for c in self.cameras if str(c.index) == str(self.settings.source)]
        known = {c.index for c in found}
        self.cameras = sorted(found + [c for c in keep if c.index not in known], key=lambda c: c.index)
        self._populate_sources(self.cameras)
        self.mon_camera_combo.clear()
        for c in self.cameras:
            self.mon_camera_combo.addItem(c.label, c.index)
        self.mon_camera_button.setEnabled(bool(self.cameras))
        if self.settings.source is None and self.mode == "patient":
            real = [c for c in self.cameras if not c.virtual]
            if real:
                self.settings.source = str(real[0].index)
            else:
                self.settings.source = SYNTHETIC_SPEC
                self.show_error("No camera found: showing the built-in synthetic face instead. "
                                "Plug in a webcam and press 'Look for cameras again'.")
            self._select_data(self.source_combo, self.settings.source)
            self.restart_pipeline()

    def _populate_sources(self, cameras: list) -> None:
        combo = self.source_combo
        combo.blockSignals(True)
        combo.clear()
        for c in cameras:
            combo.addItem(icon("camera"), c.label, str(c.index))
        combo.addItem(_source_label(SYNTHETIC_SPEC), SYNTHETIC_SPEC)
        current = self.settings.source
        if current is not None and combo.findData(current) < 0:
            combo.addItem(_source_label(current), current)
        combo.addItem(icon("file"), "Video file...", PICK_FILE)
        if current is not None:
            self._select_data(combo, current)
        combo.blockSignals(False)
        self.mon_camera_button.setEnabled(bool(cameras))

    def _on_source_chosen(self, index: int) -> None:
        spec = self.source_combo.itemData(index)
        if spec == PICK_FILE:
            path, _ = QFileDialog.getOpenFileName(self, "Play a video file as the camera", "",
                                                  "Videos (*.mp4 *.mkv *.mov *.avi *.webm);;All files (*)")
            if not path:
                self._select_data(self.source_combo, self.settings.source)
                return
            spec = path
        self.set_source(spec)

    def set_source(self, spec: str) -> None:
        """Switch the patient pipeline to another camera / file / synthetic source."""
        if spec == self.settings.source and self.worker is not None and self.worker.alive:
            return
        self.settings.source = spec
        self._populate_sources(self.cameras)
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

    def _on_engine(self, index: int) -> None:
        self.set_engine(self.engine_combo.itemData(index))

    def set_engine(self, name: str) -> None:
        if name != self.settings.engine:
            self.settings.engine = name
            self._select_data(self.engine_combo, name)
            self.restart_pipeline()

    def _on_policy(self, index: int) -> None:
        self.set_policy(self.policy_combo.itemData(index))

    def set_policy(self, name: str) -> None:
        if name != self.settings.fail_closed:
            self.settings.fail_closed = name
            self._select_data(self.policy_combo, name)
            self.restart_pipeline()

    def restart_pipeline(self) -> None:
        """Stop the running pipeline (releasing camera and virtual camera) and start a new
        one with the current settings."""
        self._stop_worker()
        if self._closing or self.mode != "patient" or self.settings.source is None:
            return
        self.hide_error()
        self.hr_panel.reset("starting...")
        self.video.set_placeholder(f"starting {_source_label(self.settings.source)}...")
        self._stats_frames = (0, time.monotonic())
        self.worker = PipelineWorker(self.settings, meter=self.meter, opener=self._opener).start()

    def _stop_worker(self) -> None:
        worker, self.worker = self.worker, None
        if worker is None:
            return
        recording = worker.hub.recording if worker.hub is not None else None
        if not worker.stop(timeout=15.0):
            log.error("pipeline thread did not stop within 15 s")
        if recording is not None:
            self.record_button.setChecked(False)
            self.record_status.setText(f"Recording saved: {recording}")
            self.recording_path = None

    # -- protection ----------------------------------------------------------------------
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
        box.setInformativeText(
            "Face-recognition systems will be able to identify you in anything that receives "
            "this video. Choose 'Off, preview only' to look at the unprotected picture here "
            "while the video call receives nothing.")
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
        self.settings.protect, self.settings.send_unprotected = protect, send_unprotected
        if self.worker is not None:
            self.worker.set_protection(protect, send_unprotected)
        self.protect_button.setChecked(protect)
        self.protect_button.setText("Protection ON" if protect else "Protection OFF")
        self.protect_button.setIcon(icon("shield") if protect else QIcon())
        self.protect_button.setToolTip("" if protect else "Click to turn protection back on")
        self.protect_button.setProperty("off", not protect)
        _repolish(self.protect_button)
        if protect:
            self.danger_banner.hide()
        else:
            self.danger_banner.setText(
                "PROTECTION IS OFF - your REAL, UNPROTECTED FACE is being sent to the video call."
                if send_unprotected else
                "PROTECTION IS OFF - this preview shows your real face. The video call receives "
                "nothing until you turn protection back on.")
            self.danger_banner.show()

    # -- outputs ----------------------------------------------------------------------------
    def _on_vcam(self, on: bool) -> None:
        self.settings.virtual_camera = on
        if self.worker is not None:
            self.worker.set_virtual_camera(on)
        self._update_outputs()

    def _on_hr_overlay(self, on: bool) -> None:
        self.settings.hr_overlay = on
        if self.worker is not None:
            self.worker.set_hr_overlay(on)

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
            if self.worker is None:
                raise UserError("the camera is not running")
            self.worker.start_recording(path)
        except UserError as exc:
            self.record_button.setChecked(False)
            self.record_status.setText(f"Cannot record: {exc}")
            return False
        self.recording_path = Path(path)
        self.record_button.setChecked(True)
        self.record_button.setText("Stop recording")
        self.record_status.setText(f"Recording the protected output to {path}")
        return True

    def stop_recording(self) -> Path | None:
        path = None
        if self.worker is not None:
            try:
                path = self.worker.stop_recording()
            except UserError as exc:
                self.record_status.setText(f"Recording failed: {exc}")
        self.record_button.setChecked(False)
        self.record_button.setText("Record to file...")
        if path is not None:
            self.record_status.setText(f"Recording saved: {path}")
        self.recording_path = None
        return path

    def _on_overlay(self) -> None:
        self.video.show_box = self.box_toggle.isChecked()
        self.video.show_mesh = self.mesh_toggle.isChecked()
        self.video.update()

    def _on_enrol(self) -> None:
        if self.meter is not None:
            self.meter.enrol()
            self.meter_box.note.setText("Enrolling from the next camera frame...")

    # ==================================================================================
    # monitor mode
    # ==================================================================================
    def set_mode(self, mode: str) -> None:
        if mode == self.mode:
            return
        self.mode = mode
        if self.tabs.currentIndex() != (0 if mode == "patient" else 1):
            self.tabs.blockSignals(True)
            self.tabs.setCurrentIndex(0 if mode == "patient" else 1)
            self.tabs.blockSignals(False)
        self.hide_error()
        if mode == "monitor":
            self._stop_worker()  # frees the camera for the monitor
            self.meter_box.hide()
            self.warn_banner.hide()  # the model's warning is about protection, not used here
            self.side_by_side.setEnabled(False)
            self.hr_panel.title.setText("Heart rate (monitor)")
            self.hr_panel.reset("choose what to watch")
            self.video.set_placeholder("Choose a video file, a camera or a screen region to watch.")
            self.danger_banner.hide()
        else:
            self.stop_monitor()
            self.meter_box.setVisible(True)
            self.side_by_side.setEnabled(True)
            self.hr_panel.title.setText("Heart rate (measured on the protected output)")
            self.set_protection(self.settings.protect, self.settings.send_unprotected)
            if self.settings.source is None:
                self.settings.source = SYNTHETIC_SPEC
            self.restart_pipeline()

    def _on_monitor_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Video to measure", "",
                                              "Videos (*.mp4 *.mkv *.mov *.avi *.webm);;All files (*)")
        if path:
            self.start_monitor("file", path)

    def _on_monitor_camera(self) -> None:
        index = self.mon_camera_combo.currentData()
        if index is not None:
            self.start_monitor("camera", int(index))

    def _on_monitor_screen(self) -> None:
        try:
            monitors = screen_monitors()
        except UserError as exc:
            self.show_error(str(exc))
            return
        dialog = ScreenRegionDialog(monitors, self)
        if dialog.exec() == QDialog.DialogCode.Accepted:
            self.start_monitor("screen", dialog.region())

    def start_monitor_spec(self, spec: str) -> None:
        """CLI form: camera index, synthetic[:HR], screen[:L,T,W,H] or a file path."""
        if spec.isdigit():
            self.start_monitor("camera", int(spec))
        elif spec.startswith("synthetic"):
            self.start_monitor("synthetic", spec)
        elif spec == "screen" or spec.startswith("screen:"):
            region = tuple(int(v) for v in spec.split(":", 1)[1].split(",")) if ":" in spec else None
            self.start_monitor("screen", region)
        else:
            self.start_monitor("file", spec)

    def start_monitor(self, kind: str, value=None, realtime: bool | None = None) -> None:
        """Watch a 'file' (path), 'camera' (index), 'screen' (region or None) or
        'synthetic' (spec) and show its heart rate."""
        self.set_mode("monitor")
        self.stop_monitor()
        self.hide_error()
        if kind == "file":
            make, label = (lambda: FileSource(value)), f"video file {Path(value).name}"
        elif kind == "camera":
            make, label = (lambda: CameraSource(int(value))), f"camera {value}"
        elif kind == "screen":
            make, label = (lambda: ScreenSource(value, fps=15.0)), "screen region"
        elif kind == "synthetic":
            make = lambda: open_source(value or SYNTHETIC_SPEC, width=640, height=360, live=True)  # noqa: E731
            label = _source_label(value or SYNTHETIC_SPEC)
        else:
            raise ValueError(f"unknown monitor source kind {kind!r}")
        if realtime is not None:
            self.mon_realtime.setChecked(realtime)
        self.hr_panel.reset("measuring...")
        self.video.set_placeholder(f"opening {label}...")
        self.mon_status.setText(f"Opening {label}...")
        self.monitor = MonitorWorker(make, realtime=self.mon_realtime.isChecked(),
                                     hr_method=self.settings.hr_method).start()

    def stop_monitor(self) -> None:
        monitor, self.monitor = self.monitor, None
        if monitor is not None and not monitor.stop(timeout=10.0):
            log.error("monitor thread did not stop within 10 s")

    # ==================================================================================
    # drawing (GUI thread, timer)
    # ==================================================================================
    def _tick(self) -> None:
        if self._closing:
            return
        if self.mode == "patient" and self.worker is not None:
            snap = self.worker.latest.take()
            if snap is not None:
                self._show_patient(snap)
            if self.worker.state == "failed":
                self._worker_failed(self.worker.error)
        elif self.mode == "monitor" and self.monitor is not None:
            snap = self.monitor.latest.take()
            if snap is not None:
                self.video.show_panes([Pane(snap.image, "MONITOR - not de-identified", "monitor")], snap.faces)
                self.hr_panel.set_reading(snap.reading)
            self._monitor_status()
        if self.meter is not None:
            report = self.meter.reports.take()
            if report is not None:
                self.meter_box.show_report(report)
        now = time.monotonic()
        if now - self._stats_t >= STATS_INTERVAL_S:
            self._stats_t = now
            self._update_stats()
            self._update_outputs()

    def _show_patient(self, snap) -> None:
        if snap.protected:
            after = Pane(snap.output, "AFTER - protected output" if self.side_by_side.isChecked()
                         else "Protected output", "protected")
        else:
            after = Pane(snap.output, "UNPROTECTED - your real face", "unprotected")
        panes = [after]
        if self.side_by_side.isChecked():
            panes.insert(0, Pane(snap.image, "BEFORE - camera (never sent)", "camera"))
        self.video.show_panes(panes, snap.faces)
        self.hr_panel.set_reading(snap.reading)

    def _worker_failed(self, error: str | None) -> None:
        text = f"The camera pipeline stopped: {error or 'unknown error'}"
        if text != self._shown_error:
            self.show_error(text)
            self.video.set_placeholder(text)

    def _monitor_status(self) -> None:
        m = self.monitor
        if m is None:
            return
        if m.state == "failed":
            if m.error != self._shown_error:
                self.show_error(f"Monitor stopped: {m.error}")
                self._shown_error = m.error
                self.video.set_placeholder(f"Monitor stopped: {m.error}")
            self.mon_status.setText(f"Stopped: {m.error}")
        elif m.state == "ended":
            last = next((r for r in reversed(m.readings) if r.bpm is not None), None)
            tail = f"; last reading {last.bpm:.0f} bpm ({last.quality})" if last else "; no reliable reading"
            self.mon_status.setText(f"End of {m.description} ({m.frames} frames){tail}.")
        else:
            self.mon_status.setText(f"Watching {m.description or '...'} · {m.fps:.1f} fps · {m.frames} frames")

    def _update_stats(self) -> None:
        w = self.worker if self.mode == "patient" else None
        if self.mode == "monitor":
            m = self.monitor
            self.stat_fps.setText(f"{m.fps:.1f} fps" if m else "-- fps")
            self.stat_latency.setText("monitor mode: no de-identification")
            self.stat_dropped.setText("")
            self.stat_engine.setText("")
            return
        if w is None or w.pipeline is None or w.processor is None:
            self.stat_fps.setText("-- fps")
            return
        stats = w.pipeline.stats
        frames, t = stats.frames, time.monotonic()
        f0, t0 = self._stats_frames
        if t > t0:
            self._fps = (frames - f0) / (t - t0)
        self._stats_frames = (frames, t)
        self.stat_fps.setText(f"{self._fps:.1f} fps")
        pct = stats.percentiles()
        order = ("track", "window", "engine", "composite", "rppg")
        parts = [f"{s} {pct[s][0]:.1f}" for s in order if s in pct]
        total = pct.get("total")
        latency = " · ".join(parts)
        if total:
            latency += f" · total {total[0]:.1f} ms (p95 {total[1]:.1f})"
        self.stat_latency.setText(f"latency p50: {latency}" if parts else "latency --")
        self.stat_dropped.setText(f"dropped {stats.dropped} · hidden face-frames {stats.hidden_faces}")
        proc = w.processor
        self.stat_engine.setText(f"engine: {proc.engine.describe()}")
        self.stat_engine.setToolTip(f"{proc.engine_reason}\n" + "\n".join(f"skipped {s}" for s in proc.engine_skipped))
        warning = proc.warning or ""
        if proc.events:
            warning = (warning + "\n" if warning else "") + proc.events[-1]
        if warning:
            self.warn_banner.setText(f"WARNING: {warning}")
            self.warn_banner.show()
        else:
            self.warn_banner.hide()

    def _update_outputs(self) -> None:
        hub = self.worker.hub if self.worker is not None else None
        hint = False
        if not self.settings.virtual_camera:
            text = "Not sending to a video call."
        elif hub is None:
            text = "Virtual camera: waiting for the camera..."
        elif hub.camera is not None:
            text = f"Sending to {hub.camera.description} · {hub.sent} frames"
            if not self.settings.protect and not self.settings.send_unprotected:
                text += " · PAUSED while protection is off"
        elif hub.camera_error:
            text = f"Virtual camera not available: {hub.camera_error.split('; fix:')[0]}"
            hint = True
        else:
            text = "Virtual camera: opening..."
        self.vcam_status.setText(text)
        self.vcam_status.setProperty("error", hint)
        _repolish(self.vcam_status)
        self.vcam_hint.setVisible(hint)
        if hub is not None and hub.record_error:
            self.record_status.setText(hub.record_error)
            self.record_button.setChecked(False)
            self.record_button.setText("Record to file...")
            hub.record_error = None
        elif hub is not None and hub.recorder is not None:
            self.record_status.setText(f"Recording to {hub.recorder.path} · {hub.recorder.frames_written} frames")

    # ==================================================================================
    # messages, shutdown
    # ==================================================================================
    def show_error(self, text: str) -> None:
        self._shown_error = text
        self.error_banner.setText(text)
        self.error_banner.show()

    def hide_error(self) -> None:
        self._shown_error = None
        self.error_banner.hide()

    def shutdown(self) -> None:
        """Stop every thread and release camera, virtual camera and recording."""
        if self._closing:
            return
        self._closing = True
        self._timer.stop()
        self._stop_worker()
        self.stop_monitor()
        if self.meter is not None:
            self.meter.stop()
        if self._probe_thread is not None:
            self._probe_thread.join(timeout=5.0)

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt)
        self.shutdown()
        super().closeEvent(event)

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt)
        return QSize(1500, 860)
