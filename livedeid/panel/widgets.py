"""Small Qt helpers the window's parts share: icons, themes, combo boxes, source names."""
from __future__ import annotations

import logging
import re
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QComboBox, QFrame, QScrollArea, QWidget

from livedeid.assets import ui_dir

log = logging.getLogger(__name__)

UI_DIR = ui_dir()
SYNTHETIC_SPEC = "synthetic:72"
VIDEO_FILES = "Videos (*.mp4 *.mkv *.mov *.avi *.webm);;All files (*)"


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


def repolish(widget) -> None:
    # Qt re-reads a stylesheet's [property="..."] selectors only when asked to.
    widget.style().unpolish(widget)
    widget.style().polish(widget)
    widget.update()


def scrolling(widget: QWidget) -> QScrollArea:
    """``widget`` in a frameless area that scrolls vertically when the window is short."""
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setWidget(widget)
    return area


def select_data(combo: QComboBox, data, add: bool = False, label: str | None = None) -> None:
    """Select the item holding ``data``; with ``add``, append it first when missing."""
    i = combo.findData(data)
    if i < 0 and add:
        combo.addItem(label or str(data), data)
        i = combo.count() - 1
    if i >= 0:
        combo.setCurrentIndex(i)


def fill_source_combo(combo: QComboBox, cameras: list, clip: tuple[str, str], current: str | None,
                      current_label: str, pickers: list[tuple[str, str]]) -> None:
    """The source chooser of the Protect and Enrol tabs: the cameras, the built-in clip
    (``clip`` = (label, spec)), the current choice when it is none of those (as
    ``current_label``), then the pickers ((label, marker) items that open a file dialog);
    the current choice selected, without emitting a change."""
    combo.blockSignals(True)
    combo.clear()
    for c in cameras:
        combo.addItem(icon("camera"), c.label, str(c.index))
    combo.addItem(clip[0], clip[1])
    if current is not None and combo.findData(current) < 0:
        combo.addItem(icon("file"), current_label, current)
    for label, marker in pickers:
        combo.addItem(icon("file"), label, marker)
    if current is not None:
        select_data(combo, current)
    combo.blockSignals(False)


def source_label(spec: str) -> str:
    """A source spec (camera index, synthetic[:HR], file path) in words."""
    if spec.isdigit():
        return f"camera {spec}"
    if spec.startswith("synthetic"):
        hr = spec.split(":", 1)[1] if ":" in spec else "72"
        return f"synthetic face, {hr} bpm"
    return f"video file: {Path(spec).name}"


# "(see `livedeid doctor` for ...)" and "; fix: sudo ..." speak to a terminal user.
_TERMINAL_ASIDE = re.compile(r"\s*\([^()]*`[^`]*`[^()]*\)|;\s*fix:.*$")


def plain_error(text: str) -> str:
    """An error for the window: without the asides that send the user to a terminal (the
    window offers the next step as a button instead)."""
    return _TERMINAL_ASIDE.sub("", text).strip()
