"""`livedeid train`: train the de-identification autoencoder, evaluate it on held-out
people, and (when it de-identifies better than the untrained model) export it.

One readable loop, top to bottom: config -> data -> recognisers -> model (and, when
distilling, its frozen teacher) -> steps -> checkpoint -> evaluation -> export.
Settings: :mod:`livedeid.training.config`; the held-out evaluation and the export rule:
:mod:`livedeid.training.heldout`.

Outputs in ``out_dir``: ``config.json`` (what ran), ``split.json`` (train / held-out
identities), ``log.csv`` (one row per step), ``ckpt.pt`` (resumable: weights + optimiser
+ step, loaded with ``weights_only=True``), ``weights.pt`` (final state dict),
``eval.json`` (held-out metrics).
"""
from __future__ import annotations

import csv
import json
import math
import pickle
import time
from pathlib import Path

import numpy as np

from livedeid.core.errors import UserError
from livedeid.training.config import resolve_path

LOGGED_RECOGNIZER_METRICS = ("self_score", "self_match", "top1")
# What torch.load(weights_only=True) and load_state_dict raise for a weights file that is
# unreadable, truncated, a pickle payload or of other shapes: one-line user errors.
WEIGHTS_LOAD_ERRORS = (OSError, RuntimeError, EOFError, pickle.UnpicklingError)


# --------------------------------------------------------------------------------------
# pieces
# --------------------------------------------------------------------------------------
def build_data(cfg: dict):
    from livedeid.training.data import FaceClipSampler, prepare_faces, split_identities

    d = cfg["data"]
    root = resolve_path(d["faces_root"])
    if not root.is_dir():
        raise UserError(f"training faces not found: {root} (set data.faces_root)")
    faces = prepare_faces(root, resolve_path(d["cache"]) if d.get("cache") else None)
    train_ids, test_ids = split_identities([f.identity for f in faces], d["held_out"], d["split_seed"])
    return FaceClipSampler(faces, train_ids), faces, train_ids, test_ids


def build_heads(names, device):
    from livedeid.recognizers.base import get_recognizer
    from livedeid.recognizers.heads import RecognizerHead

    return [RecognizerHead.from_recognizer(get_recognizer(n)).to(device) for n in names]


def prototypes(heads, sampler, device, batch: int = 32) -> dict:
    """Mean clean embedding per training identity, per recogniser (the CE gallery)."""
    import torch

    crops, labels = sampler.aligned_crops()
    out = {}
    with torch.no_grad():
        for head in heads:
            emb = torch.cat([head(torch.from_numpy(crops[i:i + batch]).to(device))
                             for i in range(0, len(crops), batch)])
            if head.metric == "cosine":
                emb = torch.nn.functional.normalize(emb, dim=-1)
            lab = torch.from_numpy(labels).to(device)
            out[head.name] = torch.stack([emb[lab == k].mean(0) for k in range(len(sampler.identities))])
    return out


def windows_of(frames, window: int):
    """(B, L, 3, H, W) consecutive frames -> (B, K, T, 3, H, W) causal windows, K = L-T+1."""
    return frames.unfold(1, window, 1).permute(0, 1, 5, 2, 3, 4)


def protect_windows(model, windows, oval):
    """(clean last frames, protected frames) of windows ``(N, T, 3, H, W)``. As live, the
    composite adds the residual only under the feathered face ``oval``, so the recognisers
    must be fooled (and quality judged) with that mask applied."""
    clean = windows[:, -1]
    return clean, clean + (model(windows) - clean) * oval


def psnr(a, b) -> float:
    mse = float(((a - b) ** 2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-12))


# --------------------------------------------------------------------------------------
# model and optimiser
# --------------------------------------------------------------------------------------
def pick_device(cfg: dict):
    import torch

    if cfg["device"] == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg["device"])


def build_model(cfg: dict, device):
    from livedeid.nets.autoencoder import DeidAutoencoder

    mc = cfg["model"]
    model = DeidAutoencoder(int(mc["window"]), float(mc["max_perturbation"]), int(mc["width"]),
                            identity_branch=bool(mc["identity_branch"]))
    if model.identity_branch:
        from livedeid.recognizers.base import get_recognizer

        sface = get_recognizer("sface")
        model.ident.load_sface(sface.torch_module().graph)
        model.set_chip_warp(sface.chip_grid_theta(128))
    return model.to(device)


def build_teacher(cfg: dict, device):
    """The frozen model whose residual the student learns (``teacher``), or None.

    Distillation exists for speed: the shipped model's identity branch costs about 3x the
    pixel-only network on the CPU, and a pixel-only student that reproduced its residual
    would keep its effect at the smaller network's cost. The first student did not
    (docs/decisions.md, issue 16, third steps): ``configs/train_distil_cpu.json``."""
    from livedeid.nets.autoencoder import load_weights

    if not cfg["teacher"]:
        if cfg["loss"]["distil"]:
            raise UserError("loss.distil needs a teacher (set teacher=WEIGHTS.pt)")
        return None
    mc = cfg["model"]
    try:
        teacher = load_weights(resolve_path(cfg["teacher"]), int(mc["window"]), float(mc["max_perturbation"]))
    except WEIGHTS_LOAD_ERRORS as exc:
        raise UserError(f"cannot load teacher {cfg['teacher']}: {str(exc).splitlines()[0]}") from None
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.to(device).eval()


def build_optimizer(model, cfg: dict):
    import torch

    # The universal pattern lives in pre-tanh units and is shared by every face: it wants a
    # much larger step than the convolutions and no weight decay.
    conv_params = [p for n, p in model.named_parameters() if n != "pattern" and p.requires_grad]
    return torch.optim.AdamW([
        {"params": conv_params, "lr_scale": 1.0},
        {"params": [model.pattern], "lr_scale": float(cfg["pattern_lr"]) / float(cfg["lr"]), "weight_decay": 0.0},
    ], lr=cfg["lr"], weight_decay=cfg["weight_decay"])


def lr_schedule(cfg: dict, t0: float):
    """Step -> learning rate: linear warm-up, cosine decay to 5 %; with a wall-time budget
    the decay follows whichever runs out first, steps or time."""
    steps, warm = int(cfg["steps"]), int(cfg["warmup_steps"])
    limit_s = float(cfg["max_minutes"]) * 60.0

    def lr_at(step: int) -> float:
        if step < warm:
            return cfg["lr"] * (step + 1) / warm
        f = (step - warm) / max(1, steps - warm)
        if limit_s:
            f = max(f, (time.time() - t0) / limit_s)
        return cfg["lr"] * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(f, 1.0))))
    return lr_at


def _init_weights(model, cfg: dict, device) -> None:
    import torch

    # Non-strict only for the identity branch: a warm start of the branch from a
    # pixel-only model (its SFace weights and warp, set in build_model, stay), or a
    # pixel-only student started from its teacher's shared layers (the branch is dropped);
    # anything else missing or unexpected is an error.
    branch = ("ident.", "id_", "chip_grid", "crop_grid")
    try:
        missing, unexpected = model.load_state_dict(
            torch.load(resolve_path(cfg["init_weights"]), map_location=device, weights_only=True), strict=False)
    except WEIGHTS_LOAD_ERRORS as exc:
        raise UserError(f"cannot start from init_weights {cfg['init_weights']}: "
                        f"{str(exc).splitlines()[0]}") from None
    dropped = [] if model.identity_branch else [k for k in unexpected if k.startswith(branch)]
    if set(unexpected) - set(dropped) or any(not k.startswith(branch) for k in missing):
        raise UserError(f"init_weights {cfg['init_weights']} do not fit the model "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    print(f"initialised from {cfg['init_weights']}" + (" without its identity branch" if dropped else ""))


def restore(model, opt, cfg: dict, ckpt_path: Path, device) -> int:
    """The step to start from: a checkpoint's (weights and optimiser resumed), else 0
    (from ``init_weights`` when set)."""
    import torch

    if not ckpt_path.is_file():
        if cfg["init_weights"]:
            _init_weights(model, cfg, device)
        return 0
    ck = torch.load(ckpt_path, map_location=device, weights_only=True)
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optim"])
    print(f"resumed from {ckpt_path} at step {int(ck['step'])}")
    return int(ck["step"])


# --------------------------------------------------------------------------------------
# one step
# --------------------------------------------------------------------------------------
def _rppg_loss(model, sampler, cfg: dict, rng, device):
    """-Pearson between clean and protected POS pulses of one 2 s sequence."""
    import torch

    from livedeid.training.losses import rppg_pearson_loss

    window = int(cfg["model"]["window"])
    long = sampler.sample(1, window + int(cfg["rppg_outputs"]) - 1, rng)
    wins = windows_of(torch.from_numpy(long.frames).to(device), window)[0]      # (K, T, 3, H, W)
    clean, protected = protect_windows(model, wins, torch.from_numpy(long.oval[0]).to(device))
    return rppg_pearson_loss(clean[None], protected[None], torch.from_numpy(long.roi).to(device), long.fs)


def step_loss(model, heads, protos: dict, sampler, cfg: dict, step: int, rng, device, teacher=None):
    """The loss of one step and its parts: ``(loss, terms, info, psnr)``, ``terms`` the
    weighted-in tensors by name (``rppg`` only on the steps that run it), ``info`` the
    per-recogniser diagnostics of :func:`livedeid.training.losses.deid_loss` (empty when
    ``loss.beta`` is 0: the recognisers are then not run at all)."""
    import torch

    from livedeid.training.losses import DeidWeights, deid_loss, reconstruction_loss, residual_temporal_loss

    lw = cfg["loss"]
    window, k_out = int(cfg["model"]["window"]), int(cfg["outputs_per_clip"])
    # 1) a batch of clips -> K causal windows each -> protected frames
    batch = sampler.sample(cfg["batch"], window + k_out - 1, rng)
    wins = windows_of(torch.from_numpy(batch.frames).to(device), window)      # (B, K, T, 3, H, W)
    b = wins.shape[0]
    oval = torch.from_numpy(np.repeat(batch.oval, k_out, axis=0)).to(device)
    clean, protected = protect_windows(model, wins.reshape(b * k_out, *wins.shape[2:]), oval)

    # 2) losses: reconstruct, de-identify (ensemble), residual's skin colour steady
    recon = reconstruction_loss(protected, clean)
    ident = torch.from_numpy(np.repeat(batch.identity, k_out)).to(device)
    if lw["beta"]:
        weights = DeidWeights(lw["away"], lw["uniform"], lw["hinge"], lw["scale"], lw["margin"])
        deid, info = deid_loss(heads, protected, clean, ident, protos, weights)
    else:
        deid, info = protected.new_zeros(()), {}
    residual = (protected - clean).reshape(b, k_out, *protected.shape[1:])
    roi = torch.from_numpy(batch.roi).to(device)
    temporal = residual_temporal_loss(residual, roi) if k_out > 1 else protected.new_zeros(())
    loss = lw["alpha"] * recon + lw["beta"] * deid + lw["temporal"] * temporal
    terms = {"recon": recon, "deid": deid, "temporal": temporal}
    if teacher is not None:
        # The teacher's composited residual on the same windows, in units of the budget.
        with torch.no_grad():
            _, taught = protect_windows(teacher, wins.reshape(b * k_out, *wins.shape[2:]), oval)
        scale = float(cfg["model"]["max_perturbation"])
        terms["distil"] = torch.mean(((protected - taught) / scale) ** 2)
        loss = loss + lw["distil"] * terms["distil"]

    # 3) every few steps: a 2 s sequence, Pearson between clean and protected POS pulses
    if cfg["rppg_every"] and lw["gamma"] and step % int(cfg["rppg_every"]) == 0:
        terms["rppg"] = _rppg_loss(model, sampler, cfg, rng, device)
        loss = loss + lw["gamma"] * terms["rppg"]
    return loss, terms, info, psnr(protected.detach(), clean)


# --------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------
class TrainLog:
    """``log.csv``: one row per step, appended to when a run resumes."""

    def __init__(self, path: Path, heads, resumed: bool):
        fields = ["step", "seconds", "lr", "loss", "recon", "deid", "temporal", "rppg", "distil", "psnr"]
        fields += [f"{h.name}_{m}" for h in heads for m in LOGGED_RECOGNIZER_METRICS]
        new = not path.is_file() or not resumed
        self.file = open(path, "w" if new else "a", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=fields)
        if new:
            self.writer.writeheader()
        self.rppg = float("nan")  # the last Pearson batch's loss, repeated until the next

    def write(self, step: int, seconds: float, lr: float, loss, terms: dict, info: dict, psnr_db: float) -> dict:
        if "rppg" in terms:
            self.rppg = float(terms["rppg"].detach())
        row = {"step": step, "seconds": round(seconds, 1), "lr": f"{lr:.2e}", "loss": f"{float(loss.detach()):.4f}",
               "recon": f"{float(terms['recon'].detach()):.5f}", "deid": f"{float(terms['deid'].detach()):.4f}",
               "temporal": f"{float(terms['temporal'].detach()):.4f}", "rppg": f"{self.rppg:.4f}",
               "distil": f"{float(terms['distil'].detach()):.4f}" if "distil" in terms else "",
               "psnr": f"{psnr_db:.2f}"}
        for name, d in info.items():
            row.update({f"{name}_{m}": f"{d[m]:.3f}" for m in LOGGED_RECOGNIZER_METRICS})
        self.writer.writerow(row)
        return row

    def close(self) -> None:
        self.file.close()


def _run_steps(model, opt, heads, protos, sampler, cfg: dict, start: int, out_dir: Path, t0: float,
               progress: bool, teacher=None) -> int:
    """Steps ``start`` .. ``cfg['steps']`` (or until ``max_minutes`` after ``t0``); returns
    the last one done."""
    import torch
    from tqdm import tqdm

    device = next(model.parameters()).device
    steps, limit_s = int(cfg["steps"]), float(cfg["max_minutes"]) * 60.0
    lr_at = lr_schedule(cfg, t0)
    log = TrainLog(out_dir / "log.csv", heads, resumed=start > 0)
    model.train()
    done_steps = start
    bar = tqdm(range(start, steps), initial=start, total=steps, disable=not progress, dynamic_ncols=True)
    for step in bar:
        rng = np.random.default_rng([cfg["seed"], step])  # resumable: batch = f(seed, step)
        for g in opt.param_groups:
            g["lr"] = lr_at(step) * g["lr_scale"]
        loss, terms, info, psnr_db = step_loss(model, heads, protos, sampler, cfg, step, rng, device, teacher)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        opt.step()
        row = log.write(step + 1, time.time() - t0, opt.param_groups[0]["lr"], loss, terms, info, psnr_db)
        if (step + 1) % cfg["log_every"] == 0:
            log.file.flush()
            extra = {"distil": row["distil"]} if row["distil"] else {}
            bar.set_postfix(loss=row["loss"], psnr=row["psnr"], **extra,
                            **{f"{n}_self": row[f"{n}_self_match"] for n in info})
        done_steps = step + 1
        done = step + 1 == steps or (limit_s and time.time() - t0 > limit_s)
        if (step + 1) % cfg["ckpt_every"] == 0 or done:
            torch.save({"model": model.state_dict(), "optim": opt.state_dict(), "step": step + 1}, out_dir / "ckpt.pt")
        if done:
            break
    log.close()
    bar.close()
    return done_steps


def _evaluate_and_export(cfg: dict, out_dir: Path, weights: Path, test_ids: list[str], done_steps: int) -> dict:
    from livedeid.training.heldout import evaluate, format_report

    # The saved weights file is what is evaluated (and hashed), not the module in memory.
    report = evaluate(weights, cfg, test_ids, out=out_dir / "eval.json")
    print(format_report(report))
    if not cfg["export"]:
        return report
    if not report["better_than_untrained"]:
        print("NOT exported: " + "; ".join(report["export_rule_failures"]))
        return report
    from livedeid.training.export import export_model

    notes = cfg["export_notes"] or f"trained by livedeid train ({out_dir.name}, {done_steps} steps)"
    for line in export_model(weights=weights, trained=True, fp16=True, notes=notes,
                             window=int(cfg["model"]["window"]), max_perturbation=float(cfg["model"]["max_perturbation"]),
                             evaluation=out_dir / "eval.json"):
        print(line)
    return report


def train(cfg: dict, progress: bool = True) -> dict:
    import torch

    out_dir = resolve_path(cfg["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    torch.manual_seed(cfg["seed"])
    if cfg["threads"]:
        torch.set_num_threads(int(cfg["threads"]))
    device = pick_device(cfg)

    sampler, _, train_ids, test_ids = build_data(cfg)
    heads = build_heads(cfg["recognizers"], device)
    protos = prototypes(heads, sampler, device)
    (out_dir / "split.json").write_text(json.dumps({"train": train_ids, "held_out": test_ids}, indent=2) + "\n")
    model = build_model(cfg, device)
    teacher = build_teacher(cfg, device)
    opt = build_optimizer(model, cfg)
    t0 = time.time()
    start = restore(model, opt, cfg, out_dir / "ckpt.pt", device)
    done_steps = _run_steps(model, opt, heads, protos, sampler, cfg, start, out_dir, t0, progress, teacher)

    weights = out_dir / "weights.pt"
    model.eval().cpu()
    torch.save(model.state_dict(), weights)
    result = {"weights": str(weights), "steps": done_steps, "train_seconds": round(time.time() - t0, 1),
              "train_ids": train_ids, "held_out_ids": test_ids}
    print(f"trained {done_steps - start} steps in {result['train_seconds']} s -> {weights}")
    if cfg["eval"]["enabled"]:
        result["eval"] = _evaluate_and_export(cfg, out_dir, weights, test_ids, done_steps)
    return result
