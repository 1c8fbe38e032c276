"""Training settings: defaults, the JSON file, ``--set key=value`` overrides.

Settings live in a JSON file (``configs/train_default.json``); ``--set key=value``
overrides any of them (dotted keys for nested ones, values parsed as JSON when they
parse: ``--set batch=2 --set data.held_out.orl=8 --set recognizers='["dlib"]'``).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

from livedeid.core.errors import UserError

DEFAULTS: dict = {
    "seed": 0,
    "device": "auto",            # auto | cpu | cuda
    "threads": 0,                # torch CPU threads (0 = torch's default)
    "out_dir": "runs/default",
    "data": {
        "faces_root": "../shared/data/faces",   # relative to the working directory (the checkout)
        "cache": "runs/faces_cache.npz",
        "held_out": {"celebrities": 3, "orl": 10},
        "split_seed": 0,
    },
    "model": {"window": 8, "max_perturbation": 8.0 / 255.0, "width": 32,
              "identity_branch": False},   # decode a residual from SFace's own features too
    "recognizers": ["dlib", "sface"],
    "batch": 4,                  # clips per step
    "outputs_per_clip": 2,       # consecutive protected frames per clip (K)
    "steps": 2000,
    "max_minutes": 0,            # stop early after this wall time (0 = no limit)
    "lr": 1e-3,
    "pattern_lr": 0.02,          # Adam step for the model's universal pattern (pre-tanh units)
    "init_weights": "",          # start from these weights (a state dict .pt) instead of the seed
    "teacher": "",               # distil: learn this model's residual (a state dict .pt), see loss.distil
    "weight_decay": 1e-4,
    "warmup_steps": 50,
    "grad_clip": 1.0,
    "loss": {"alpha": 1.0, "beta": 0.05, "gamma": 0.05, "temporal": 0.05,
             "away": 1.0, "uniform": 0.5, "hinge": 4.0, "scale": 16.0, "margin": 0.1,
             "distil": 0.0},             # weight of the teacher's-residual term (needs "teacher")
    "rppg_every": 10,            # steps between Pearson-on-POS batches (0 = never)
    "rppg_outputs": 60,          # consecutive outputs in one such batch (2 s at 30 fps)
    "ckpt_every": 100,
    "log_every": 10,
    "eval": {"enabled": True, "max_photos_per_id": 5, "hr_clips": 3, "hr_seconds": 12.0,
             "baselines": True},
    "export": False,             # export to engines/ at the end if eval shows de-identification
    "export_notes": "",
}


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> dict:
    """DEFAULTS <- JSON file <- ``key=value`` overrides. Unknown keys are an error (a typo
    would otherwise train silently with the default)."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        try:
            cfg = _merge(cfg, json.loads(Path(path).read_text()))
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read training config {path}: {exc}") from None
    for item in overrides or []:
        if "=" not in item:
            raise UserError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    _check_keys(cfg, DEFAULTS, "")
    return cfg


def _check_keys(cfg: dict, ref: dict, prefix: str) -> None:
    for k, v in cfg.items():
        if k not in ref:
            raise UserError(f"unknown training setting: {prefix}{k}")
        if isinstance(ref[k], dict) and k not in ("held_out",):
            if not isinstance(v, dict):
                raise UserError(f"training setting {prefix}{k} must be an object")
            _check_keys(v, ref[k], f"{prefix}{k}.")


def resolve_path(p: str) -> Path:
    """A path from the settings. Training runs from the checkout (configs/, runs/ and
    ../shared beside it), never from an installed package, so relative paths are the
    working directory's."""
    return Path(p).expanduser().resolve()
