"""Can the window start here? Asked before Qt is loaded into this process, because a Qt
platform plugin that cannot load aborts the whole process (exit 134, a core dump and
Qt's own paragraph), which no ``try`` can catch.

:func:`check_qt_platform` starts a tiny Python that creates a ``QGuiApplication`` with
the environment the window would get, and, when it dies, names the cause: the system
libraries the platform plugin needs and cannot find (from Qt's output and ``ldd`` on the
plugin), with the command that installs them. ``livedeid doctor`` and ``livedeid gui``
both use it. No Qt is imported in this module.

:func:`prepare_qt_environment` undoes what OpenCV's ``cv2`` does on import on Linux: it
points ``QT_QPA_PLATFORM_PLUGIN_PATH`` (and ``QT_QPA_FONTDIR``) at its own bundled Qt 5
plugins, which PySide6's Qt 6 cannot use; the error then names OpenCV's folder and
hides the real cause.
"""
from __future__ import annotations

import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

# Variables cv2 sets on import (cv2/config-3.py) to its own Qt folders.
CV2_QT_VARIABLES = ("QT_QPA_PLATFORM_PLUGIN_PATH", "QT_QPA_FONTDIR")
# What the window does first; run in a fresh interpreter so that an abort kills only it.
_PROBE = ("import sys\n"
          "from PySide6.QtGui import QGuiApplication\n"
          "app = QGuiApplication(['livedeid'])\n"
          "print('platform=' + app.platformName())\n")
_CANNOT_OPEN = re.compile(r"(lib[\w.+-]+?\.so(?:\.\d+)*): cannot open shared object file")
_NOT_FOUND = re.compile(r"^\s*(lib[\w.+-]+?\.so(?:\.\d+)*) => not found", re.MULTILINE)
_PLUGIN = re.compile(r'Could not load the Qt platform plugin "([\w-]+)"')


@dataclass
class QtCheck:
    ok: bool
    platform: str                 # the platform plugin Qt used, or tried to
    detail: str                   # one line: what happened
    missing_libraries: list[str] = field(default_factory=list)
    fix: str = ""                 # one line: what to do (empty when ok or unknown)

    def message(self) -> str:
        """The one line ``livedeid gui`` prints instead of Qt's abort."""
        return f"the window cannot start: {self.detail}" + (f"; {self.fix}" if self.fix else "")


def prepare_qt_environment(environ: dict | None = None) -> None:
    """Remove the Qt variables ``cv2`` pointed at its own folder, so PySide6 uses its own
    plugins. cv2 is imported first (when installed) so that its import cannot set them
    again later, between this call and the ``QApplication``."""
    env = os.environ if environ is None else environ
    spec = importlib.util.find_spec("cv2")
    if spec is None or spec.origin is None:
        return
    import cv2  # noqa: F401  (its import sets the variables this removes)

    cv2_dir = Path(spec.origin).resolve().parent
    for name in CV2_QT_VARIABLES:
        value = env.get(name)
        if value and cv2_dir in Path(value).resolve().parents:
            del env[name]


def platform_plugin(name: str) -> Path | None:
    """PySide6's own file of the Qt platform plugin ``name`` (``xcb``, ``wayland``...)."""
    spec = importlib.util.find_spec("PySide6")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "Qt" / "plugins" / "platforms" / f"libq{name}.so"
    return path if path.is_file() else None


def unresolved_libraries(plugin: Path) -> list[str]:
    """The shared libraries ``ldd`` cannot find for ``plugin`` (empty where there is no ldd)."""
    if shutil.which("ldd") is None:
        return []
    out = subprocess.run(["ldd", str(plugin)], capture_output=True, text=True, timeout=30).stdout
    return list(dict.fromkeys(_NOT_FOUND.findall(out)))


def debian_package(soname: str) -> str:
    """The Debian/Ubuntu package that ships ``soname`` by the library packaging policy:
    ``libxcb-icccm.so.4`` -> ``libxcb-icccm4``, ``libxkbcommon-x11.so.0`` -> ``libxkbcommon-x11-0``."""
    stem, _, version = soname.partition(".so")
    version = version.lstrip(".").split(".")[0]
    stem = stem.lower()
    return f"{stem}{'-' if stem[-1].isdigit() else ''}{version}" if version else stem


def install_hint(libraries: list[str]) -> str:
    packages = " ".join(dict.fromkeys(debian_package(lib) for lib in libraries))
    if platform.system() == "Linux" and shutil.which("apt-get"):
        return f"install them with: sudo apt install {packages}"
    return f"install the system packages that provide {', '.join(libraries)} (on Debian/Ubuntu: {packages})"


def default_platform(environ) -> str:
    """The platform plugin Qt picks here when nobody chose one."""
    chosen = environ.get("QT_QPA_PLATFORM", "").split(":")[0].split(";")[0]
    if chosen:
        return chosen
    if platform.system() == "Linux":
        return "wayland" if environ.get("XDG_SESSION_TYPE") == "wayland" and environ.get("WAYLAND_DISPLAY") else "xcb"
    return {"Darwin": "cocoa", "Windows": "windows"}.get(platform.system(), "")


def diagnose(output: str, environ, ldd=unresolved_libraries) -> QtCheck:
    """What a failed start's output (Qt's messages) says, in one line with the fix."""
    found = _PLUGIN.search(output)
    name = found.group(1) if found else default_platform(environ)
    missing = list(dict.fromkeys(_CANNOT_OPEN.findall(output)))
    plugin = platform_plugin(name) if name else None
    if plugin is not None:
        missing += [lib for lib in ldd(plugin) if lib not in missing]
    if missing:
        return QtCheck(False, name, f"Qt's {name} platform plugin needs system libraries that are not installed "
                       f"({', '.join(missing)})", missing, install_hint(missing))
    if "could not connect to display" in output.lower():
        where = environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY") or "(none set)"
        return QtCheck(False, name, f"Qt cannot connect to the display {where}",
                       fix="start livedeid from a desktop session (or check DISPLAY)")
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    said = next((ln for ln in lines if ln.startswith("qt.qpa")), lines[-1] if lines else "no message")
    return QtCheck(False, name, f"Qt's {name or 'default'} platform plugin failed to start ({said})",
                   fix="run `livedeid doctor` and see `livedeid --help` for the command-line tools")


def check_qt_platform(timeout: float = 60.0, environ: dict | None = None) -> QtCheck:
    """Start Qt's platform plugin in a child Python, with this process's environment
    after :func:`prepare_qt_environment` (``environ`` overrides it)."""
    env = dict(os.environ if environ is None else environ)
    prepare_qt_environment(env)
    env.pop("QT_DEBUG_PLUGINS", None)  # its output is parsed below; the plugin loader lines say enough
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return QtCheck(False, default_platform(env), f"Qt did not start within {timeout:.0f} s")
    if proc.returncode == 0 and "platform=" in proc.stdout:
        name = proc.stdout.split("platform=", 1)[1].split()[0]
        return QtCheck(True, name, f"Qt starts with the {name} platform plugin")
    return diagnose(proc.stdout + proc.stderr, env)
