"""Heart-rate panel: the big number, a quality light, the pulse and its spectrum.

Fed with :class:`livedeid.rppg.streaming.HRReading` (about once a second); a poor reading is never
shown as a number - the light turns red and says "no reading".
"""
from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QVBoxLayout

from livedeid.panel.widgets import repolish

NO_NUMBER = "\u2013"  # an en dash: "no number", never a guessed one
QUALITY_TEXT = {"good": "good signal", "fair": "fair signal", "poor": "no reading"}


class HeartRatePanel(QFrame):
    def __init__(self, title: str = "Heart rate", parent=None):
        super().__init__(parent)
        self.setObjectName("hrPanel")
        self.last_reading = None
        self.shown_bpm: float | None = None
        self.updates = 0

        self.title = QLabel(title)
        self.title.setObjectName("panelTitle")
        self.title.setWordWrap(True)
        self.bpm_label = QLabel(NO_NUMBER)
        self.bpm_label.setObjectName("bpm")
        self.bpm_label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.unit = QLabel("bpm")
        self.unit.setObjectName("bpmUnit")
        self.light = QLabel()
        self.light.setObjectName("qualityLight")
        self.light.setFixedSize(22, 22)
        self.light.setProperty("quality", "none")
        self.quality_label = QLabel("waiting for a face")
        self.quality_label.setObjectName("qualityText")
        self.detail = QLabel("")
        self.detail.setObjectName("hrDetail")

        self.detail.setWordWrap(True)
        top = QHBoxLayout()
        top.addWidget(self.bpm_label, 0)
        top.addWidget(self.unit, 0, Qt.AlignmentFlag.AlignBottom)
        top.addStretch(1)
        # The light and its words on their own row: beside a 64 pt number, in the window's
        # narrowest right column, "no reading (no face)" was cut off.
        quality = QHBoxLayout()
        quality.addWidget(self.light, 0, Qt.AlignmentFlag.AlignVCenter)
        quality.addWidget(self.quality_label, 1, Qt.AlignmentFlag.AlignVCenter)
        self.quality_label.setWordWrap(True)

        pg.setConfigOptions(antialias=True)
        self.wave_plot = pg.PlotWidget()
        self.wave_plot.setObjectName("wavePlot")
        self.wave_plot.setMinimumHeight(110)
        self.wave_plot.setMenuEnabled(False)
        self.wave_plot.setMouseEnabled(False, False)
        self.wave_plot.hideButtons()
        self.wave_plot.setLabel("bottom", "seconds")
        self.wave_plot.getAxis("left").setStyle(showValues=False)
        self.wave_plot.setTitle("pulse (last 10 s)")
        self.wave_plot.setXRange(-10, 0, padding=0)
        self.wave_curve = self.wave_plot.plot([], [])

        self.spec_plot = pg.PlotWidget()
        self.spec_plot.setObjectName("spectrumPlot")
        self.spec_plot.setMinimumHeight(110)
        self.spec_plot.setMenuEnabled(False)
        self.spec_plot.setMouseEnabled(False, False)
        self.spec_plot.hideButtons()
        self.spec_plot.setLabel("bottom", "beats per minute")
        self.spec_plot.getAxis("left").setStyle(showValues=False)
        self.spec_plot.setTitle("spectrum")
        self.spec_plot.setXRange(40, 210, padding=0)
        self.spec_plot.setYRange(0, 1.05, padding=0)
        self.spec_curve = self.spec_plot.plot([], [], fillLevel=0)
        self.peak_line = pg.InfiniteLine(angle=90, movable=False)
        self.peak_line.setVisible(False)
        self.spec_plot.addItem(self.peak_line)

        layout = QVBoxLayout(self)
        layout.addWidget(self.title)
        layout.addLayout(top)
        layout.addLayout(quality)
        layout.addWidget(self.detail)
        layout.addWidget(self.wave_plot, 1)
        layout.addWidget(self.spec_plot, 1)
        self.set_theme(True)

    def set_theme(self, dark: bool) -> None:
        bg, fg = ("#161b22", "#c9d1d9") if dark else ("#ffffff", "#24292f")
        self._line = "#ff5c7a" if dark else "#d6204e"
        for plot in (self.wave_plot, self.spec_plot):
            plot.setBackground(bg)
            for axis in ("left", "bottom"):
                plot.getAxis(axis).setPen(fg)
                plot.getAxis(axis).setTextPen(fg)
            plot.getPlotItem().titleLabel.setText(plot.getPlotItem().titleLabel.text, color=fg)
        self.wave_curve.setPen(pg.mkPen(self._line, width=2))
        self.spec_curve.setPen(pg.mkPen(self._line, width=2))
        self.spec_curve.setBrush(pg.mkBrush(self._line + "40"))
        self.peak_line.setPen(pg.mkPen(fg, width=1, style=Qt.PenStyle.DashLine))

    def reset(self, note: str = "waiting for a face") -> None:
        self.last_reading, self.shown_bpm = None, None
        self.bpm_label.setText(NO_NUMBER)
        self._set_quality("none", note)
        self.detail.setText("")
        self.wave_curve.setData([], [])
        self.spec_curve.setData([], [])
        self.peak_line.setVisible(False)

    def _set_quality(self, quality: str, text: str) -> None:
        self.light.setProperty("quality", quality)
        repolish(self.light)
        self.quality_label.setText(text)

    def set_reading(self, reading) -> bool:
        """Show a reading; returns False when it is the one already shown."""
        if reading is None or reading is self.last_reading:  # StreamingHR re-hands the same object
            return False
        self.last_reading = reading
        self.updates += 1
        if reading.bpm is None:
            self.shown_bpm = None
            self.bpm_label.setText(NO_NUMBER)
            if not len(reading.waveform) and reading.signal_s > 0:
                self._set_quality("none", f"measuring... {reading.signal_s:.0f} s")
            elif not len(reading.waveform):
                self._set_quality("poor", "no reading (no face)")
            else:
                self._set_quality("poor", QUALITY_TEXT["poor"])
        else:
            self.shown_bpm = float(reading.bpm)
            self.bpm_label.setText(f"{reading.bpm:.0f}")
            self._set_quality(reading.quality, QUALITY_TEXT[reading.quality])
        snr = f"SNR {reading.snr_db:.1f} dB" if np.isfinite(reading.snr_db) else "SNR --"
        self.detail.setText(f"{snr} · {reading.signal_s:.0f} s of signal")
        if len(reading.waveform):
            t = np.asarray(reading.waveform_t) - float(reading.waveform_t[-1])
            w = np.asarray(reading.waveform, dtype=np.float64)
            scale = np.max(np.abs(w)) or 1.0
            self.wave_curve.setData(t, w / scale)
        else:
            self.wave_curve.setData([], [])
        if len(reading.freqs):
            self.spec_curve.setData(np.asarray(reading.freqs) * 60.0, np.asarray(reading.power))
            peak = reading.bpm if reading.bpm is not None else reading.peak_bpm
            self.peak_line.setVisible(peak is not None)
            if peak is not None:
                self.peak_line.setValue(peak)
        else:
            self.spec_curve.setData([], [])
            self.peak_line.setVisible(False)
        return True
