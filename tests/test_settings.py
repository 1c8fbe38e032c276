"""Every documented ``--config`` key reaches the pipeline from every entry point that runs
it: ``run``, ``process``, ``demo`` and ``gui`` (through the panel's pipeline worker)."""
from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np
import pytest
from conftest import write_video

import livedeid.panel as panel
from livedeid.assets import engines_dir
from livedeid.cli.main import main
from livedeid.core.errors import UserError
from livedeid.core.settings import PipelineConfig, load_pipeline_config
from livedeid.io.profile import Profile, save_profile
from livedeid.pipeline.processor import FrameProcessor

# The keys the README and `--config`'s help list, each with a value that is not the default.
DOCUMENTED = {
    "engine": "onnxruntime", "model": None, "fail_closed": "mask", "max_faces": 2, "min_confidence": 0.7,
    "hr_method": "chrom", "hr_window_s": 8.0, "hr_overlay": True, "detect_long_side": 480,
    "safety_net": False, "startup_guard": False, "profile": "ada.npz", "hide_unverified": True, "engine_every": 2,
    "engine_reuse_change": 0.05, "engine_threads": 1,
}
CAPTURED = "stopped here: the test has the pipeline's config"


@pytest.fixture
def config_file(tmp_path):
    values = dict(DOCUMENTED, model=str(engines_dir() / "deid.json"))
    # A real profile beside the settings file (a relative path means beside it).
    save_profile(Profile(name="ada", pattern=np.zeros((3, 128, 128), np.float32), budget=8 / 255),
                 tmp_path / "ada.npz")
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(values))
    return path


@pytest.fixture
def captured(monkeypatch):
    """The config each processor is built with; building stops there with a user error."""
    seen = []

    def capture(self, config=None, spec=None, engine=None):
        seen.append(dataclasses.replace(config))
        raise UserError(CAPTURED)

    monkeypatch.setattr(FrameProcessor, "__init__", capture)
    return seen


def test_the_documented_keys_are_every_setting_of_the_pipeline(capsys):
    fields = {f.name for f in dataclasses.fields(PipelineConfig)} - {"protect"}  # protect: a live switch
    assert set(DOCUMENTED) == (fields - {"manifest"}) | {"model"}
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for key in DOCUMENTED:
        assert key in help_text, f"--config help does not list {key}"


def _expect(config_file, captured, capsys) -> None:
    assert len(captured) == 1
    assert CAPTURED in capsys.readouterr().err
    expected = load_pipeline_config(config_file)
    assert captured[0] == expected
    defaults = PipelineConfig()
    for f in dataclasses.fields(PipelineConfig):
        if f.name != "protect":
            assert getattr(expected, f.name) != getattr(defaults, f.name), f"{f.name}: pick a non-default value"


def test_config_reaches_the_pipeline_of_run(config_file, captured, capsys):
    assert main(["run", "--camera", "synthetic", "--no-virtual-camera", "--width", "320", "--height", "240",
                 "--config", str(config_file)]) == 2
    _expect(config_file, captured, capsys)


def test_config_reaches_the_pipeline_of_process(tmp_path, config_file, captured, capsys):
    write_video(tmp_path / "in.mp4", n=5)
    assert main(["process", str(tmp_path / "in.mp4"), str(tmp_path / "out.mp4"), "--config", str(config_file)]) == 2
    _expect(config_file, captured, capsys)


def test_config_reaches_the_pipeline_of_demo(tmp_path, config_file, captured, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo.mp4"), "--seconds", "1", "--width", "320", "--height", "240",
                 "--config", str(config_file)]) == 2
    _expect(config_file, captured, capsys)


def test_config_reaches_the_pipeline_of_the_window(config_file, captured, capsys, monkeypatch):
    pytest.importorskip("PySide6", reason="the gui extra is not installed")
    from livedeid.panel.workers import PipelineWorker

    def panel_without_window(settings, **kwargs):
        # What the window does with its settings, minus the widgets: one pipeline worker.
        worker = PipelineWorker(settings).start()
        worker.thread.join(120)
        print(f"livedeid: error: {worker.error}", file=sys.stderr)
        return 2

    monkeypatch.setattr(panel, "run_panel", panel_without_window)
    assert main(["gui", "--camera", "synthetic", "--no-virtual-camera", "--no-privacy-meter",
                 "--width", "320", "--height", "240", "--config", str(config_file)]) == 2
    _expect(config_file, captured, capsys)


# -- one key at a time: each documented key, alone in a file, reaches each pipeline ------------
def _one_key_file(tmp_path, key: str):
    value = DOCUMENTED[key]
    if key == "model":
        value = str(engines_dir() / "deid.json")
    if key == "profile":
        save_profile(Profile(name="ada", pattern=np.zeros((3, 128, 128), np.float32), budget=8 / 255),
                     tmp_path / "ada.npz")
    path = tmp_path / f"{key}.json"
    path.write_text(json.dumps({key: value}))
    return path


def _window_instead_of_the_event_loop(qapp):
    """``run_panel`` as the real one builds the window (offscreen), minus Qt's event loop:
    the window starts its pipeline worker from its settings; the test waits for it."""
    from livedeid.panel.main_window import MainWindow

    def run_panel(settings, *, mode="patient", monitor_source=None, theme="dark", privacy_meter=True):
        window = MainWindow(settings, mode=mode, monitor_source=monitor_source, theme=theme, probe=False,
                            privacy_meter=privacy_meter)
        try:
            worker = window.patient_tab.worker
            worker.thread.join(120)
            print(f"livedeid: error: {worker.error}", file=sys.stderr)
        finally:
            window.shutdown()
            window.deleteLater()
        return 2

    return run_panel


ENTRIES = {
    "run": ["run", "--camera", "synthetic", "--no-virtual-camera", "--width", "320", "--height", "240"],
    "process": ["process", "{in}", "{out}"],
    "gui": ["gui", "--camera", "synthetic", "--no-virtual-camera", "--no-privacy-meter", "--width", "320",
            "--height", "240"],
}


@pytest.mark.parametrize("entry", sorted(ENTRIES))
@pytest.mark.parametrize("key", sorted(DOCUMENTED))
def test_each_key_alone_reaches_the_pipeline(tmp_path, key, entry, captured, capsys, monkeypatch, request):
    path = _one_key_file(tmp_path, key)
    if entry == "gui":
        pytest.importorskip("PySide6", reason="the gui extra is not installed")
        monkeypatch.setattr(panel, "run_panel", _window_instead_of_the_event_loop(request.getfixturevalue("qapp")))
    if entry == "process":
        write_video(tmp_path / "in.mp4", n=3)
    argv = [a.format(**{"in": tmp_path / "in.mp4", "out": tmp_path / "out.mp4"}) for a in ENTRIES[entry]]
    assert main([*argv, "--config", str(path)]) == 2
    assert len(captured) == 1 and CAPTURED in capsys.readouterr().err
    field = "manifest" if key == "model" else key
    defaults = PipelineConfig()
    changed = {f.name for f in dataclasses.fields(PipelineConfig)
               if getattr(captured[0], f.name) != getattr(defaults, f.name)}
    assert changed == {field}, f"{entry}: {key} from the file, the config built: {changed}"
    assert captured[0] == load_pipeline_config(path)
