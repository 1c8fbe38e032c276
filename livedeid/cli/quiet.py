"""Quiet by default: the native libraries' own log lines never reach the user.

MediaPipe, TensorFlow Lite (through absl) and OpenCV write straight to file descriptor 2
from C++ (``W0000 ... inference_feedback_manager.cc ...``, ``INFO: Created TensorFlow Lite
XNNPACK delegate``, ``[ WARN:0@0.1] ...``), before and regardless of the environment
variables meant to silence them. :func:`filter_native_logs` puts a pipe in front of
descriptor 2 and passes on everything except those lines, so the user's terminal shows
livedeid's own messages and progress bars only. ``livedeid -v`` leaves them all through.
"""
from __future__ import annotations

import atexit
import os
import re
import sys
import threading

# absl/glog lines (severity letter + MMDD or 0000 + time), TFLite's and absl's start-up
# notices, OpenCV's bracketed log levels.
NATIVE_LOG_LINE = re.compile(
    rb"^(?:[IWEF]\d{4} [\d:]+\.\d+ +\d+ \S+:\d+\]"
    rb"|INFO: Created TensorFlow Lite"
    rb"|WARNING: All log messages before absl::InitializeLog"
    rb"|\[ ?(?:WARN|INFO|DEBUG|ERROR):\d*@?[\d.]*\] )"
)

_installed = False


def is_native_log(line: bytes) -> bool:
    return NATIVE_LOG_LINE.match(line.lstrip(b"\r")) is not None


def filter_native_logs() -> None:
    """Route descriptor 2 through a filter thread for the rest of the process (once)."""
    global _installed
    if _installed:
        return
    try:
        read_end, write_end = os.pipe()
        terminal = os.dup(2)
    except OSError:
        return  # no descriptors to spare: better noisy than broken
    sys.stderr.flush()
    os.dup2(write_end, 2)
    os.close(write_end)
    _installed = True

    def pump() -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(read_end, 65536)
            except OSError:
                break
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            out = b"".join(line + b"\n" for line in lines if not is_native_log(line))
            # A partial line (a progress bar redrawn with \r) goes on at once unless it may
            # be the start of a log line still being written.
            if pending and not is_native_log(pending) and not pending[:1].isalpha() and pending[:1] != b"[":
                out, pending = out + pending, b""
            if out:
                os.write(terminal, out)
        if pending and not is_native_log(pending):
            os.write(terminal, pending)

    thread = threading.Thread(target=pump, name="native-log-filter", daemon=True)
    thread.start()

    def restore() -> None:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(terminal, 2)  # closes the pipe's last write end: the pump drains and stops
        thread.join(timeout=2.0)

    atexit.register(restore)
