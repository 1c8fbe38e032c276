"""Command line: ``livedeid demo | run | process | batch | monitor | doctor | gui | enrol | eval | train | export |
bench``.

User errors (bad path, no camera, bad config, missing device) print one line
``livedeid: error: ...`` and exit with status 2; nothing partial is left behind.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

# MediaPipe/TFLite print C++ log lines on start-up; users only need ours.
os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

from livedeid import __version__  # noqa: E402
from livedeid.cli import batch, dev, doctor, enrol, files, live  # noqa: E402
from livedeid.core.errors import UserError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="livedeid", description=(
        "Real-time face de-identification that keeps the pulse: protected video for face "
        "recognition machines, live heart rate for the clinician."))
    p.add_argument("--version", action="version", version=f"livedeid {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log details")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for add in (live.add_demo_parser, live.add_run_parser, files.add_process_parser, batch.add_batch_parser,
                files.add_monitor_parser,
                doctor.add_doctor_parser, live.add_gui_parser, enrol.add_enrol_parser, dev.add_eval_parser,
                dev.add_train_parser,
                dev.add_export_parser, dev.add_bench_parser):
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if argv is None and not args.verbose:  # the real command line (not a caller's own process)
        from livedeid.cli.quiet import filter_native_logs

        filter_native_logs()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="livedeid: %(levelname)s: %(message)s")
    if not args.command:  # no command: open the window, the everyday entry point
        args = parser.parse_args([*(["--verbose"] if args.verbose else []), "gui"])
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"livedeid: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("livedeid: interrupted", file=sys.stderr)
        return 130
