"""Qt panel (``livedeid gui``): protect-and-send for patients, heart-rate monitor for
clinicians. Needs the ``gui`` extra (PySide6, pyqtgraph, mss).

Widgets live in :mod:`.window`, :mod:`.video` and :mod:`.plots`; the threads that do the
work (and run without any display) in :mod:`.workers` and :mod:`.meter`.
"""
from __future__ import annotations

import importlib.util
import os
import platform
import signal
import sys

from livedeid.core.errors import UserError

GUI_HINT = "pip install 'livedeid[gui]'"


def require_gui() -> None:
    """UserError (one line, with the pip hint) when the GUI cannot start here."""
    missing = [m for m in ("PySide6", "pyqtgraph") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"the window needs {' and '.join(missing)}: {GUI_HINT} "
                        "(or see `livedeid --help` for the command-line tools)")
    if (platform.system() == "Linux" and not os.environ.get("QT_QPA_PLATFORM")
            and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY")):
        # Qt would abort the whole process with a core dump; say it in one line instead.
        raise UserError("no display to open the window on (DISPLAY is not set); "
                        "see `livedeid --help` for the command-line tools")


def run_panel(settings=None, *, mode: str = "patient", monitor_source: str | None = None,
              theme: str = "dark", privacy_meter: bool = True) -> int:
    """Open the window and run Qt's event loop until it is closed."""
    require_gui()
    from PySide6.QtWidgets import QApplication

    from livedeid.panel.main_window import MainWindow

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("livedeid")
    window = MainWindow(settings, mode=mode, monitor_source=monitor_source, theme=theme,
                        privacy_meter=privacy_meter)
    # Ctrl+C in the terminal closes the window properly (threads stopped, camera released);
    # Python sees the signal because the window's 30 Hz timer keeps running Python code.
    previous = signal.signal(signal.SIGINT, lambda *_: window.close())
    try:
        window.show()
        return int(app.exec())
    finally:
        window.shutdown()
        signal.signal(signal.SIGINT, previous)


__all__ = ["GUI_HINT", "require_gui", "run_panel"]
