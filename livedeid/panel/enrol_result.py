"""The enrolment tab's verification box: a new cloak's figures on the held-out images, as
``livedeid enrol`` prints them (per recogniser: detection, gallery match clean -> cloaked,
same-photo match; face PSNR/SSIM) and the verdict in green or red."""
from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from livedeid.panel.widgets import icon, repolish

TABLE_HEADER = ("recogniser", "detected", "gallery match\nclean → cloaked", "same-photo\nmatch")


def pct(x) -> str:
    return "-" if x is None or x != x else f"{float(x):.0%}"  # x != x: NaN, no face to judge


def verdict_text(profile) -> str:
    """'PROTECTS: ...' or 'NOT PROTECTING (target <= 5%): ...', with the held-out numbers."""
    v = profile.verification
    target = pct(v.get("target", 0.05))
    shares = ", ".join(f"{name} {pct(fig.get('gallery_match'))}"
                       for name, fig in sorted((v.get("recognizers") or {}).items()))
    if profile.protects:
        return f"PROTECTS: held-out gallery match ≤ {target} for every recogniser ({shares})"
    return f"NOT PROTECTING (target ≤ {target}): held-out gallery match {shares}"


class VerificationBox(QGroupBox):
    """The figures of one profile (:meth:`show_profile`), its verdict, and the Save and
    Use buttons (the tab connects them)."""

    def __init__(self, parent=None):
        super().__init__("Verification on held-out images", parent)
        lay = QVBoxLayout(self)
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        self.table = QTableWidget(0, len(TABLE_HEADER))
        self.table.setObjectName("verificationTable")
        self.table.setHorizontalHeaderLabels(list(TABLE_HEADER))
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.quality = QLabel()
        self.verdict = QLabel()
        self.verdict.setObjectName("verdict")  # the stylesheet's green / red verdict
        self.verdict.setWordWrap(True)
        self.save_button = QPushButton("Save profile")
        self.save_button.setObjectName("enrolSave")
        self.use_button = QPushButton(icon("shield"), "Use in the patient tab")
        self.use_button.setObjectName("enrolUse")
        buttons = QHBoxLayout()
        buttons.addWidget(self.save_button)
        buttons.addWidget(self.use_button)
        for w in (self.summary, self.table, self.quality, self.verdict):
            lay.addWidget(w)
        lay.addLayout(buttons)
        self.clear()

    def clear(self) -> None:
        self.summary.setText("The figures appear here when the enrolment is done.")
        self.table.setRowCount(0)
        self._fit_height()
        self.quality.setText("")
        self.verdict.setText("")
        self.verdict.hide()
        self.save_button.setEnabled(False)
        self.use_button.setEnabled(False)

    def _fit_height(self) -> None:
        # As tall as its rows: the tab scrolls as a whole, the table should not scroll inside it.
        rows = sum(self.table.rowHeight(r) for r in range(self.table.rowCount()))
        self.table.setFixedHeight(self.table.horizontalHeader().sizeHint().height() + rows
                                  + 2 * self.table.frameWidth())

    def row(self, name: str) -> list[str]:
        """Recogniser ``name``'s row, as shown (its name first)."""
        rows = [self.cell(r, 0) for r in range(self.table.rowCount())]
        return [self.cell(rows.index(name), c) for c in range(self.table.columnCount())]

    def cell(self, row: int, col: int) -> str:
        item = self.table.item(row, col)
        return item.text() if item is not None else ""

    def show_profile(self, profile) -> None:
        v = profile.verification
        self.summary.setText(f"{v.get('held_out_images')} images of {profile.name} the cloak never saw, against "
                             f"{v.get('gallery_images')} clean ones (the attacker's gallery).")
        recs = sorted((v.get("recognizers") or {}).items())
        self.table.setRowCount(len(recs))
        for row, (name, fig) in enumerate(recs):
            cells = (name, pct(fig.get("detection")),
                     f"{pct(fig.get('clean_gallery_match'))} → {pct(fig.get('gallery_match'))}",
                     pct(fig.get("same_photo_match")))
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                self.table.setItem(row, col, item)
        self.table.resizeRowsToContents()
        self._fit_height()
        self.quality.setText(f"face PSNR {v.get('psnr_db', float('nan')):.1f} dB, "
                             f"SSIM {v.get('ssim', float('nan')):.3f}")
        self.verdict.setText(verdict_text(profile))
        self.verdict.setProperty("tone", "good" if profile.protects else "bad")
        repolish(self.verdict)
        self.verdict.show()
        self.save_button.setEnabled(True)
        self.use_button.setEnabled(True)
