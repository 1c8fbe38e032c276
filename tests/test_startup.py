"""Panel start-up that explains itself (``livedeid.panel.startup``): `doctor` and `gui`
say which system libraries Qt's platform plugin lacks, and the command that installs
them, instead of Qt's abort (exit 134) pointing into OpenCV's plugin folder."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("PySide6", reason="the gui extra is not installed")

from conftest import run_cli  # noqa: E402

from livedeid.panel import startup  # noqa: E402

# Qt 6.8's own words on a machine without libxcb-icccm4 and libxcb-keysyms1 (this one),
# as `livedeid gui` used to print them before aborting.
RECORDED_ABORT = """\
qt.qpa.plugin: From 6.5.0, xcb-cursor0 or libxcb-cursor0 is needed to load the Qt xcb platform plugin.
qt.qpa.plugin: Could not load the Qt platform plugin "xcb" in "" even though it was found.
This application failed to start because no Qt platform plugin could be initialized. Reinstalling the \
application may fix this problem.

Available platform plugins are: minimal, linuxfb, offscreen, xcb, wayland-brcm, wayland-egl, wayland, eglfs.
"""


def _xcb_missing() -> list[str]:
    plugin = startup.platform_plugin("xcb")
    return startup.unresolved_libraries(plugin) if plugin is not None else []


def _desktop_env() -> dict:
    """The environment of a plain X11 desktop session: the window would use xcb."""
    env = dict(os.environ)
    env.update(DISPLAY=":0", QT_QPA_PLATFORM="xcb")
    return env


needs_missing_xcb_libs = pytest.mark.skipif(
    not _xcb_missing(), reason="every library Qt's xcb plugin needs is installed here: the real failure "
                               "cannot be produced (the recorded-output test still runs)")


@needs_missing_xcb_libs
def test_the_check_names_the_missing_libraries_and_the_apt_command():
    missing = _xcb_missing()
    check = startup.check_qt_platform(environ=_desktop_env())
    assert not check.ok and check.platform == "xcb"
    assert check.missing_libraries == missing
    for lib in missing:
        assert lib in check.detail and startup.debian_package(lib) in check.fix
    assert "cv2" not in check.message() and "\n" not in check.message()


@needs_missing_xcb_libs
def test_gui_turns_qts_abort_into_one_line_and_doctor_fails(monkeypatch):
    for var, value in _desktop_env().items():
        if var in ("DISPLAY", "QT_QPA_PLATFORM"):
            monkeypatch.setenv(var, value)
    rc, out, err = run_cli("gui", "--camera", "synthetic")
    assert rc == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("livedeid: error: the window cannot start: "), err
    assert all(lib in lines[0] for lib in _xcb_missing())
    assert "sudo apt install" in lines[0] or "on Debian/Ubuntu" in lines[0]
    rc, out, _ = run_cli("doctor", "--no-cameras", "--no-virtual-camera")
    assert rc == 1 and "[MISS] window" in out and "missing: window" in out


def test_a_recorded_abort_is_diagnosed_with_ldds_findings():
    seen = []

    def ldd(plugin: Path) -> list[str]:
        seen.append(plugin)
        return ["libxcb-icccm.so.4", "libxcb-keysyms.so.1"]

    check = startup.diagnose(RECORDED_ABORT, {"DISPLAY": ":0"}, ldd=ldd)
    assert seen and seen[0].name == "libqxcb.so" and "PySide6" in str(seen[0])
    assert not check.ok and check.platform == "xcb"
    assert check.missing_libraries == ["libxcb-icccm.so.4", "libxcb-keysyms.so.1"]
    assert "libxcb-icccm4 libxcb-keysyms1" in check.fix
    # Without anything missing, Qt's own first qpa line is the reason given (one line).
    other = startup.diagnose(RECORDED_ABORT, {"DISPLAY": ":0"}, ldd=lambda p: [])
    assert not other.missing_libraries and "qt.qpa.plugin" in other.detail and "\n" not in other.message()


def test_debian_package_names_follow_the_library_policy():
    assert startup.debian_package("libxcb-icccm.so.4") == "libxcb-icccm4"
    assert startup.debian_package("libxcb-keysyms.so.1") == "libxcb-keysyms1"
    assert startup.debian_package("libxkbcommon-x11.so.0") == "libxkbcommon-x11-0"
    assert startup.debian_package("libEGL.so.1") == "libegl1"
    assert startup.debian_package("libdbus-1.so.3") == "libdbus-1-3"


def test_the_check_passes_where_qt_can_start():
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    check = startup.check_qt_platform(environ=env)
    assert check.ok and check.platform == "offscreen", check


def test_opencvs_qt_folder_is_taken_out_of_the_environment():
    import cv2

    cv2_dir = Path(cv2.__file__).resolve().parent
    env = {"QT_QPA_PLATFORM_PLUGIN_PATH": str(cv2_dir / "qt" / "plugins"),
           "QT_QPA_FONTDIR": str(cv2_dir / "qt" / "fonts"), "QT_QPA_PLATFORM": "xcb"}
    startup.prepare_qt_environment(env)
    assert env == {"QT_QPA_PLATFORM": "xcb"}
    own = {"QT_QPA_PLATFORM_PLUGIN_PATH": "/opt/my-qt/plugins"}  # somebody's own choice stays
    startup.prepare_qt_environment(own)
    assert own == {"QT_QPA_PLATFORM_PLUGIN_PATH": "/opt/my-qt/plugins"}
