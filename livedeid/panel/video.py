"""The video view: the protected output, optionally beside the camera image, with labels
that cannot be misread and an optional face box / face-mesh overlay.

Frames are painted straight from the numpy arrays (``Format_BGR888``, no colour
conversion); scaling happens in the paint, so a slow repaint only ever costs the frames
the timer skips.
"""
from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QFont, QImage, QPainter, QPen, QPolygonF
from PySide6.QtWidgets import QSizePolicy, QWidget

from livedeid.panel.common import FaceView

COLOURS = {
    "protected": QColor("#3b7dd8"),  # not green: green is kept for the measured "protected" status
    "unprotected": QColor("#d32f2f"),
    "camera": QColor("#5b6470"),
    "monitor": QColor("#2d6cdf"),
    "face": QColor("#36d17a"),
    "hidden": QColor("#f0a30a"),
}


class Pane:
    """One image with its caption."""

    def __init__(self, image: np.ndarray, caption: str, kind: str):
        self.image = np.ascontiguousarray(image)  # QImage borrows this buffer while painting
        self.caption = caption
        self.kind = kind

    def qimage(self) -> QImage:
        h, w = self.image.shape[:2]
        return QImage(self.image.data, w, h, int(self.image.strides[0]), QImage.Format.Format_BGR888)


class VideoView(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("videoView")
        self.setMinimumSize(480, 270)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.panes: list[Pane] = []
        self.faces: list[FaceView] = []
        self.show_box = False
        self.show_mesh = False
        self.placeholder = "starting..."
        self.frames_shown = 0
        self.background = QColor("#101418")
        self.text_colour = QColor("#dfe6ee")

    def set_theme(self, dark: bool) -> None:
        self.background = QColor("#101418" if dark else "#e4e8ee")
        self.text_colour = QColor("#dfe6ee" if dark else "#1d2530")
        self.update()

    def set_placeholder(self, text: str) -> None:
        self.panes, self.faces, self.placeholder = [], [], text
        self.update()

    def show_panes(self, panes: list[Pane], faces: list[FaceView]) -> None:
        self.panes, self.faces = panes, faces
        self.frames_shown += 1
        self.update()

    # -- painting -----------------------------------------------------------------------
    def paintEvent(self, event) -> None:  # noqa: N802 (Qt)
        p = QPainter(self)
        p.fillRect(self.rect(), self.background)
        if not self.panes:
            p.setPen(self.text_colour)
            font = QFont(self.font())
            font.setPointSizeF(font.pointSizeF() * 1.4)
            p.setFont(font)
            p.drawText(self.rect().adjusted(20, 20, -20, -20),
                       Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, self.placeholder)
            p.end()
            return
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        n = len(self.panes)
        gap = 8
        h0, w0 = self.panes[0].image.shape[:2]
        # Side by side or one above the other, whichever shows the pictures larger.
        across = min((self.width() - gap * (n + 1)) / n / w0, (self.height() - 2 * gap) / h0)
        stacked = min((self.width() - 2 * gap) / w0, (self.height() - gap * (n + 1)) / n / h0)
        horizontal = across >= stacked
        if horizontal:
            cell_w, cell_h = (self.width() - gap * (n + 1)) / n, self.height() - 2 * gap
        else:
            cell_w, cell_h = self.width() - 2 * gap, (self.height() - gap * (n + 1)) / n
        for i, pane in enumerate(self.panes):
            h, w = pane.image.shape[:2]
            s = min(cell_w / w, cell_h / h)
            tw, th = w * s, h * s
            cx = gap + (i * (cell_w + gap) if horizontal else 0)
            cy = gap + (0 if horizontal else i * (cell_h + gap))
            x0 = cx + (cell_w - tw) / 2
            y0 = cy + (cell_h - th) / 2
            target = QRectF(x0, y0, tw, th)
            p.drawImage(target, pane.qimage())
            self._overlay(p, x0, y0, s)
            colour = COLOURS[pane.kind]
            border = QPen(colour, 4 if pane.kind == "unprotected" else 2)
            p.setPen(border)
            p.setBrush(Qt.BrushStyle.NoBrush)
            p.drawRect(target.adjusted(1, 1, -1, -1))
            self._caption(p, target, pane.caption, colour)
        p.end()

    def _overlay(self, p: QPainter, x0: float, y0: float, s: float) -> None:
        for face in self.faces:
            colour = COLOURS["hidden"] if face.lost else COLOURS["face"]
            if self.show_box:
                bx0, by0, bx1, by1 = face.box
                p.setPen(QPen(colour, 2))
                p.setBrush(Qt.BrushStyle.NoBrush)
                p.drawRect(QRectF(x0 + bx0 * s, y0 + by0 * s, (bx1 - bx0) * s, (by1 - by0) * s))
            if self.show_mesh:
                pts = face.landmarks * s + np.array([x0, y0], np.float32)
                p.setPen(QPen(colour, 1.6))
                p.drawPoints(QPolygonF([QPointF(float(x), float(y)) for x, y in pts]))

    def _caption(self, p: QPainter, target: QRectF, text: str, colour: QColor) -> None:
        font = QFont(self.font())
        font.setBold(True)
        font.setPointSizeF(max(font.pointSizeF(), 10.5))
        p.setFont(font)
        metrics = p.fontMetrics()
        pad = 6
        w = min(metrics.horizontalAdvance(text) + 2 * pad + 4, target.width() - 8)  # +4: sub-pixel slack
        box = QRectF(target.left() + 4, target.top() + 4, w, metrics.height() + pad)
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(colour)
        p.drawRoundedRect(box, 4, 4)
        p.setPen(QColor("white"))
        p.drawText(box.adjusted(pad, 0, -pad, 0), Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft,
                   metrics.elidedText(text, Qt.TextElideMode.ElideRight, int(box.width() - 2 * pad)))
