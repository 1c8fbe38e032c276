"""The patient's protection status in the window: the state in large words on its colour
(green only for *protected*), one or two plain sentences, and the recogniser names and
numbers behind a "Details" disclosure. What it says comes from
:mod:`livedeid.pipeline.status`, the same words ``livedeid run`` prints; colours too."""
from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFrame, QLabel, QToolButton, QVBoxLayout, QWidget

from livedeid.pipeline.status import PARTLY, PROTECTED, ProtectionStatus


class Disclosure(QWidget):
    """A "Details" toggle that shows or hides a word-wrapped label below it (closed at first)."""

    def __init__(self, title: str = "Details", parent=None):
        super().__init__(parent)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        self.button = QToolButton()
        self.button.setObjectName("disclosure")
        self.button.setText(title)
        self.button.setCheckable(True)
        self.button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.button.setArrowType(Qt.ArrowType.RightArrow)
        self.button.toggled.connect(self._toggled)
        self.label = QLabel()
        self.label.setObjectName("disclosed")
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.label.hide()
        lay.addWidget(self.button, 0, Qt.AlignmentFlag.AlignLeft)
        lay.addWidget(self.label)

    def _toggled(self, open_: bool) -> None:
        self.button.setArrowType(Qt.ArrowType.DownArrow if open_ else Qt.ArrowType.RightArrow)
        self.label.setVisible(open_)

    @property
    def is_open(self) -> bool:
        return self.button.isChecked()


def state_style(status: ProtectionStatus, selector: str) -> str:
    """A style sheet painting ``selector`` in the state's colour (the colour is the status
    module's, so the panel cannot disagree with it)."""
    return f"{selector} {{ background: {status.colour}; border-color: {status.colour}; color: white; }}"


class ProtectionStatusBox(QFrame):
    """Badge (the state), summary (plain words) and details (names and numbers)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("protectionStatus")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 4, 0, 0)
        self.badge = QLabel("Starting...")
        self.badge.setObjectName("protectionBadge")
        self.badge.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.summary = QLabel("")
        self.summary.setObjectName("protectionSummary")
        self.summary.setWordWrap(True)
        self.details = Disclosure("Details")
        lay.addWidget(self.badge)
        lay.addWidget(self.summary)
        lay.addWidget(self.details)
        self.status: ProtectionStatus | None = None

    def show_status(self, status: ProtectionStatus) -> None:
        self.status = status
        self.badge.setText(status.headline)
        self.badge.setProperty("state", status.state)
        self.badge.setStyleSheet(state_style(status, "#protectionBadge"))
        self.summary.setText(status.summary)
        self.details.label.setText(status.details)


def protection_off_text(measured: ProtectionStatus | None) -> str:
    """The protection-off question's explanation: what is lost, as measured. With a
    verified cloak, recognisers are measured to fail on the protected video and would
    succeed on the real face; with partial protection, only that nothing is changed any
    more (never "they will be able to identify you", which would imply they cannot now)."""
    preview = ("Choose 'Off, preview only' to look at the unprotected picture here while the video call "
               "receives nothing.")
    if measured is None:
        return f"With protection off, nothing in the video is changed. {preview}"
    if measured.state == PROTECTED:
        lost = ("Your personal cloak stopped face recognition in the checks made for you; without it, "
                "face-recognition software can identify your real face in anything that receives this video.")
    elif measured.state == PARTLY:
        lost = (f"Right now you are only partly protected. {measured.summary} With protection off, nothing in "
                "the video is changed at all.")
    else:
        lost = ("Right now the filter has not been shown to stop face recognition. With protection off, "
                "nothing in the video is changed at all.")
    return f"{lost} {preview}"
