"""The privacy meter's box: each recogniser's verdict on the video that leaves the computer."""
from __future__ import annotations

from PySide6.QtWidgets import QGridLayout, QGroupBox, QLabel, QPushButton

from livedeid.panel import meter as meter_mod
from livedeid.panel.meter import MeterReport
from livedeid.panel.widgets import repolish


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
            repolish(verdict)
            extra = "" if report.protected else "  [protection is OFF]"
            detail.setText(v.detail + extra)
