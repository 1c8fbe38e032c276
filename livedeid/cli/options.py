"""Options several commands share, and the one way a command turns them into the
pipeline's :class:`~livedeid.core.settings.PipelineConfig`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from livedeid.core.settings import ENGINE_NAMES, FAIL_CLOSED_POLICIES, HR_METHODS

if TYPE_CHECKING:
    from livedeid.core.settings import PipelineConfig
    from livedeid.pipeline.processor import FrameProcessor

# Command-line option (argparse dest) -> PipelineConfig field.
CONFIG_OPTIONS = {"engine": "engine", "model": "manifest", "fail_closed": "fail_closed",
                  "max_faces": "max_faces", "hr_method": "hr_method", "hr_overlay": "hr_overlay",
                  "profile": "profile", "hide_unverified": "hide_unverified"}


def add_pipeline_options(p: argparse.ArgumentParser) -> None:
    # Defaults are None so that a value given on the command line can be told apart from
    # one to take from --config (or, failing that, from PipelineConfig's defaults).
    p.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help="pipeline settings as JSON or TOML (keys as PipelineConfig: engine, model, fail_closed, "
                        "max_faces, min_confidence, hr_method, hr_window_s, hr_overlay, detect_long_side, "
                        "safety_net, startup_guard, profile, hide_unverified, engine_every, engine_reuse_change, "
                        "engine_threads); "
                        "options given here win")
    p.add_argument("--engine", choices=ENGINE_NAMES, default=None,
                   help="inference backend (default: auto = TensorRT > torch CUDA > ONNX Runtime)")
    p.add_argument("--model", type=Path, default=None, metavar="MANIFEST",
                   help="model manifest JSON (default: the shipped engines/deid.json)")
    p.add_argument("--fail-closed", choices=FAIL_CLOSED_POLICIES, default=None,
                   help="what to show for a face that is lost or uncertain (default: blur)")
    p.add_argument("--max-faces", type=int, default=None, help="faces tracked and protected, 1..4 (default 4)")
    p.add_argument("--hr-method", choices=HR_METHODS, default=None,
                   help="rPPG method for the heart rate (default: pos)")
    p.add_argument("--hr-overlay", action="store_true", default=None, help="burn the live heart rate into the output")
    p.add_argument("--profile", type=Path, default=None, metavar="NAME_OR_FILE",
                   help="the enrolled person's cloak (`livedeid enrol`): a profile file, or a name in the profile "
                        "folder; the largest face in the picture wears it, other faces get the model")
    p.add_argument("--hide-unverified", action="store_true", default=None,
                   help="hide (by the fail-closed policy) every face whose protection is not verified: the "
                        "cloak's wearer until the profile's held-out check meets its target, other faces "
                        "unless the model's held-out measurement says it protects")


def add_live_options(p: argparse.ArgumentParser, no_virtual_camera_help: str) -> None:
    """Camera size/rate and virtual-camera options shared by `run` and `gui`."""
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--no-virtual-camera", action="store_true", help=no_virtual_camera_help)
    p.add_argument("--backend", default=None, help="pyvirtualcam backend (default: the OS's)")
    p.add_argument("--device", default=None, help="virtual camera device, e.g. /dev/video10")


def pipeline_config(args: argparse.Namespace) -> PipelineConfig:
    """The pipeline settings of a command: command line > --config file > PipelineConfig
    defaults. Every command that runs the pipeline (run, process, demo, gui) builds its
    config here and nowhere else."""
    from livedeid.core.settings import PipelineConfig, load_pipeline_config

    config = load_pipeline_config(args.config) if args.config else PipelineConfig()
    for option, field_name in CONFIG_OPTIONS.items():
        value = getattr(args, option)
        if value is not None:
            setattr(config, field_name, value)
    config.validate()
    return config


def start_processor(config: PipelineConfig, path: str = "auto") -> FrameProcessor:
    """The pipeline's processor (on the frame ``path``, see
    :func:`~livedeid.pipeline.factory.build_processor`), with the engine chosen (and why)
    said on stderr."""
    from livedeid.pipeline.factory import build_processor

    proc = build_processor(config, path=path)
    print(f"engine: {proc.engine.describe()} [{proc.engine_reason}]", file=sys.stderr)
    for why in proc.engine_skipped:
        print(f"  skipped {why}", file=sys.stderr)
    if proc.profile is not None:
        print(f"profile: {proc.profile.name} (cloak {proc.profile.budget * 255:.0f}/255, created "
              f"{proc.profile.created}) on the largest face", file=sys.stderr)
    print_warnings(proc, sys.stderr)
    return proc


def print_warnings(proc: FrameProcessor, stream) -> None:
    """The processor's warnings, one line each; a cloak that is not verified to protect
    comes first and in red where the stream is a terminal (it is the patient's protection)."""
    if proc.cloak_warning:
        line = f"WARNING: {proc.cloak_warning}"
        print(f"\033[1;31m{line}\033[0m" if stream.isatty() else line, file=stream)
    if proc.model_warning:
        print(f"WARNING: {proc.model_warning}", file=stream)
