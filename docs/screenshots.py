"""The README's panel screenshots in three protection states, grabbed offscreen.

    .venv/bin/python docs/screenshots.py [OUT_DIR]      (default docs/img)

Writes ``panel_protected.png``, ``panel_partly.png`` and ``panel_not_protected.png``: the
window on the built-in synthetic face (no camera needed), with the status's Details open.
*Partly protected* is the shipped model as measured. No shipped cloak has a verification
that met its target, so *protected* is shown with a stand-in profile (a zero cloak whose
verification record says it met the target) and the live privacy check off - the live
check would rightly recognise a zero cloak and downgrade the status to partly protected.
*Not protected* is protection switched off (preview only).
"""
from __future__ import annotations

import io
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402

from livedeid.core.settings import PipelineConfig  # noqa: E402
from livedeid.io.profile import DEFAULT_BUDGET, Profile, save_profile, utc_now  # noqa: E402
from livedeid.panel.startup import prepare_qt_environment  # noqa: E402

WIDTH = 1000  # px of the saved picture (the window is grabbed larger and scaled down)


def stand_in_profile(folder: Path) -> Path:
    recs = {"dlib": {"gallery_match": 0.0, "detection": 1.0}, "sface": {"gallery_match": 0.0, "detection": 1.0}}
    profile = Profile(name="stand-in", pattern=np.zeros((3, 128, 128), np.float32), budget=DEFAULT_BUDGET,
                      created=utc_now(), verification={"recognizers": recs, "protects": True, "target": 0.05,
                                                       "probes": 12})
    return save_profile(profile, folder / "stand-in.npz")


def wait(app, condition, timeout_s: float = 60.0) -> None:
    """Run Qt's events until ``condition()``; TimeoutError after ``timeout_s``."""
    end = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError("the window did not get there in time")
        app.processEvents()
        time.sleep(0.02)


def shoot(app, window, path: Path, state: str) -> None:
    tab = window.patient_tab
    wait(app, lambda: tab.worker is not None and tab.worker.state == "running" and window.video.frames_shown > 20
         and tab.status_box.status is not None and tab.status_box.status.state == state)
    try:  # a heart rate in the picture too, if the machine is fast enough to give one soon
        wait(app, lambda: window.hr_panel.shown_bpm is not None and tab.status_box.status.state == state, 90)
    except TimeoutError:
        print(f"{path.name}: no heart rate reading within 90 s (a busy machine); shot without one")
    tab.status_box.details.button.setChecked(True)
    for _ in range(10):
        app.processEvents()
    from PIL import Image
    from PySide6.QtCore import QBuffer, QIODevice, Qt

    image = window.grab().toImage().scaledToWidth(WIDTH, Qt.TransformationMode.SmoothTransformation)
    buffer = QBuffer()
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    image.save(buffer, "PNG")
    # 256 colours (median cut): a third of the bytes; the panel's flat colours need no more.
    with Image.open(io.BytesIO(bytes(buffer.data()))) as full:
        full.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")


def main(out: Path) -> int:
    prepare_qt_environment()
    from PySide6.QtWidgets import QApplication

    from livedeid.panel.main_window import MainWindow
    from livedeid.panel.workers import PanelSettings

    out.mkdir(parents=True, exist_ok=True)
    app = QApplication.instance() or QApplication(sys.argv[:1])
    with tempfile.TemporaryDirectory() as tmp:
        shots = [("panel_partly.png", "partly protected", None),
                 ("panel_protected.png", "protected", stand_in_profile(Path(tmp))),
                 ("panel_not_protected.png", "not protected", None)]
        for name, state, profile in shots:
            config = PipelineConfig(engine="onnxruntime", profile=profile)
            settings = PanelSettings(config=config, source="synthetic:72", width=640, height=360, fps=15.0,
                                     virtual_camera=False)
            window = MainWindow(settings, probe=False, privacy_meter=False)
            window.resize(1400, 820)
            window.show()
            if state == "not protected":
                window.patient_tab.set_protection(False)
            try:
                shoot(app, window, out / name, state)
            finally:
                window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "img"))
