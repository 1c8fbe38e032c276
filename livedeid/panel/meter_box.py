"""The privacy meter's box: whether face recognition knows the person in the video that
leaves the computer, in one plain sentence; each recogniser's verdict and number behind
"Details"."""
from __future__ import annotations

from PySide6.QtWidgets import QGridLayout, QGroupBox, QLabel, QPushButton, QWidget

from livedeid.panel import meter as meter_mod
from livedeid.panel.meter import MeterReport
from livedeid.panel.status_box import Disclosure
from livedeid.panel.widgets import repolish

JUDGED = (meter_mod.RECOGNISABLE, meter_mod.NOT_RECOGNISABLE)


def meter_summary(report: MeterReport) -> tuple[str, str]:
    """(sentence, tone) of a report for the patient: no recogniser names, no numbers."""
    verdicts = list(report.verdicts.values())
    judged = [v for v in verdicts if v.status in JUDGED]
    off = "" if report.protected else " Protection is off."
    if judged:
        known = [v for v in judged if v.status == meter_mod.RECOGNISABLE]
        if known:
            return (f"Face recognition recognises you in the video you send right now "
                    f"({len(known)} of {len(judged)} checks).{off}", "bad")
        # Not green: one moment unrecognised is not "protected" (the status box says how much is measured).
        return f"Face recognition did not recognise you in the video you send just now.{off}", "neutral"
    statuses = {v.status for v in verdicts}
    if statuses & {meter_mod.LOADING, meter_mod.ENROLLING}:
        return "Getting ready: taking a reference picture of your face from the camera...", "neutral"
    if meter_mod.NO_FACE in statuses:
        return "No face is visible in the video you send.", "neutral"
    return "The live check cannot run here (details below).", "off"


class PrivacyMeterBox(QGroupBox):
    """A plain sentence (the live check's verdict), then per recogniser - behind Details -
    its verdict in words and colour and the number behind it."""

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
        super().__init__("Live privacy check", parent)
        self.setObjectName("meterBox")
        grid = QGridLayout(self)
        self.summary = QLabel("Getting ready...")
        self.summary.setObjectName("meterSummary")
        self.summary.setProperty("tone", "neutral")
        self.summary.setWordWrap(True)
        grid.addWidget(self.summary, 0, 0, 1, 2)
        self.details = Disclosure("Details")
        self.details.label.setText("Each face recogniser, in its own units and at its own threshold:")
        grid.addWidget(self.details, 1, 0, 1, 2)
        rows = QWidget()
        rows.setObjectName("meterRows")
        rows.hide()
        self.details.button.toggled.connect(rows.setVisible)
        inner = QGridLayout(rows)
        inner.setContentsMargins(0, 0, 0, 0)
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
            inner.addWidget(title, 2 * r, 0)
            inner.addWidget(verdict, 2 * r, 1)
            inner.addWidget(detail, 2 * r + 1, 0, 1, 2)
            self.rows[name] = (title, verdict, detail)
        inner.setColumnStretch(1, 1)
        grid.addWidget(rows, 2, 0, 1, 2)
        self.note = QLabel("Compares the video you send with a picture of your face taken from the camera "
                           "(kept in memory only, never sent).")
        self.note.setObjectName("meterNote")
        self.note.setWordWrap(True)
        self.enrol_button = QPushButton("Take my reference picture again")
        self.enrol_button.setObjectName("enrolButton")
        grid.addWidget(self.note, 3, 0, 1, 2)
        grid.addWidget(self.enrol_button, 4, 0, 1, 2)
        grid.setColumnStretch(1, 1)
        self.last_report: MeterReport | None = None

    def verdict_text(self, name: str) -> str:
        return self.rows[name][1].text()

    def show_report(self, report: MeterReport) -> None:
        self.last_report = report
        text, tone = meter_summary(report)
        self.summary.setText(text)
        self.summary.setProperty("tone", tone)
        repolish(self.summary)
        for name, v in report.verdicts.items():
            if name not in self.rows:
                continue
            _, verdict, detail = self.rows[name]
            verdict.setText(v.status.upper() if v.status in JUDGED else v.status)
            verdict.setProperty("tone", self.TONE.get(v.status, "neutral"))
            repolish(verdict)
            extra = "" if report.protected else "  [protection is OFF]"
            detail.setText(v.detail + extra)
