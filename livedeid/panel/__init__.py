"""Qt panel (``livedeid gui``): protect-and-send for patients, heart-rate monitor for
clinicians. Needs the ``gui`` extra (PySide6, pyqtgraph, mss).

Lives here: the window (:mod:`.main_window`) hosting the patient's tab
(:mod:`.patient_tab`, with :mod:`.output_box` and :mod:`.meter_box`), the
clinician's tab (:mod:`.monitor_tab`) and the enrolment tab (:mod:`.enrol_tab`, with
:mod:`.enrol_result`), the video view and heart-rate plots
(:mod:`.video`, :mod:`.plots`, :mod:`.widgets`); and, without any Qt, the threads that do
the work (:mod:`.workers`, :mod:`.meter`), the panel's sink (:mod:`.sink_hub`), the
screen source (:mod:`.screen`), their hand-over to the window (:mod:`.common`), the
readings the Monitor tab saves (:mod:`.readings`) and the check that Qt can start here at
all (:mod:`.startup`, also used by ``livedeid doctor``).
May import: the pipeline and everything below it, the recognisers, and the personal
cloak (``cloak``, for the enrolment step; torch only when an enrolment runs), never
``cli``. Qt is imported only here and nowhere else in livedeid.
"""
from __future__ import annotations

import importlib.util
import os
import platform
import signal
import sys
from typing import TYPE_CHECKING

from livedeid.core.errors import UserError

if TYPE_CHECKING:
    from livedeid.panel.workers import PanelSettings

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
    from PySide6.QtCore import QCoreApplication  # loads no platform plugin

    if QCoreApplication.instance() is None:  # Qt is not up in this process yet: will it come up?
        from livedeid.panel.startup import check_qt_platform

        check = check_qt_platform()
        if not check.ok:
            raise UserError(check.message())


def run_panel(settings: PanelSettings | None = None, *, mode: str = "patient", monitor_source: str | None = None,
              theme: str = "dark", privacy_meter: bool = True) -> int:
    """Open the window and run Qt's event loop until it is closed."""
    require_gui()
    from livedeid.panel.startup import prepare_qt_environment

    prepare_qt_environment()  # PySide6's own plugins, not the ones cv2 pointed Qt at
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
