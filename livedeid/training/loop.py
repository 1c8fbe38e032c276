"""`livedeid train`: train the de-identification autoencoder, evaluate it on held-out
people, and (when it de-identifies better than the untrained model) export it.

One readable loop, top to bottom: config -> data -> recognisers -> model -> steps ->
checkpoint -> evaluation -> export. Settings live in a JSON file
(``configs/train_default.json``); ``--set key=value`` overrides any of them (dotted keys
for nested ones, values parsed as JSON when they parse: ``--set batch=2
--set data.held_out.orl=8 --set recognizers='["dlib"]'``).

Outputs in ``out_dir``: ``config.json`` (what ran), ``log.csv`` (one row per step),
``ckpt.pt`` (resumable: weights + optimiser + step, loaded with ``weights_only=True``),
``weights.pt`` (final state dict), ``eval.json`` (held-out metrics).
"""
from __future__ import annotations

import copy
import csv
import json
import math
import time
from pathlib import Path

import numpy as np

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
    "weight_decay": 1e-4,
    "warmup_steps": 50,
    "grad_clip": 1.0,
    "loss": {"alpha": 1.0, "beta": 0.05, "gamma": 0.05, "temporal": 0.05,
             "away": 1.0, "uniform": 0.5, "hinge": 4.0, "scale": 16.0, "margin": 0.1},
    "rppg_every": 10,            # steps between Pearson-on-POS batches (0 = never)
    "rppg_outputs": 60,          # consecutive outputs in one such batch (2 s at 30 fps)
    "ckpt_every": 100,
    "log_every": 10,
    "eval": {"enabled": True, "max_photos_per_id": 5, "hr_clips": 3, "hr_seconds": 12.0,
             "baselines": True},
    "export": False,             # export to engines/ at the end if eval shows de-identification
    "export_notes": "",
}


# --------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------
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


def _path(p: str) -> Path:
    q = Path(p).expanduser()
    # Training runs from the checkout (configs/, runs/ and ../shared beside it), never
    # from an installed package, so relative paths are the working directory's.
    return q.resolve()


# --------------------------------------------------------------------------------------
# pieces
# --------------------------------------------------------------------------------------
def build_data(cfg: dict):
    from livedeid.training.data import FaceClipSampler, prepare_faces, split_identities

    d = cfg["data"]
    root = _path(d["faces_root"])
    if not root.is_dir():
        raise UserError(f"training faces not found: {root} (set data.faces_root)")
    faces = prepare_faces(root, _path(d["cache"]) if d.get("cache") else None)
    train_ids, test_ids = split_identities([f.identity for f in faces], d["held_out"], d["split_seed"])
    return FaceClipSampler(faces, train_ids), faces, train_ids, test_ids


def build_heads(names, device):
    from livedeid.recognizers.base import get_recognizer
    from livedeid.training.losses import RecognizerHead

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


def psnr(a, b) -> float:
    mse = float(((a - b) ** 2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-12))


# --------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------
def train(cfg: dict, progress: bool = True) -> dict:
    import torch
    from tqdm import tqdm

    from livedeid.nets.autoencoder import DeidAutoencoder
    from livedeid.training.losses import (
        DeidWeights,
        deid_loss,
        reconstruction_loss,
        residual_temporal_loss,
        rppg_pearson_loss,
    )

    out_dir = _path(cfg["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    torch.manual_seed(cfg["seed"])
    if cfg["threads"]:
        torch.set_num_threads(int(cfg["threads"]))
    device = torch.device("cuda" if cfg["device"] == "auto" and torch.cuda.is_available()
                          else ("cpu" if cfg["device"] == "auto" else cfg["device"]))

    # data, recognisers, gallery
    sampler, _, train_ids, test_ids = build_data(cfg)
    heads = build_heads(cfg["recognizers"], device)
    protos = prototypes(heads, sampler, device)
    (out_dir / "split.json").write_text(json.dumps({"train": train_ids, "held_out": test_ids}, indent=2) + "\n")

    # model + optimiser
    mc = cfg["model"]
    window = int(mc["window"])
    model = DeidAutoencoder(window, float(mc["max_perturbation"]), int(mc["width"]),
                            identity_branch=bool(mc["identity_branch"]))
    if model.identity_branch:
        from livedeid.recognizers.base import get_recognizer

        sface = get_recognizer("sface")
        model.ident.load_sface(sface.torch_module().graph)
        model.set_chip_warp(sface.chip_grid_theta(128))
    model = model.to(device)
    # The universal pattern lives in pre-tanh units and is shared by every face: it wants a
    # much larger step than the convolutions and no weight decay.
    conv_params = [p for n, p in model.named_parameters() if n != "pattern" and p.requires_grad]
    opt = torch.optim.AdamW([
        {"params": conv_params, "lr_scale": 1.0},
        {"params": [model.pattern], "lr_scale": float(cfg["pattern_lr"]) / float(cfg["lr"]), "weight_decay": 0.0},
    ], lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    steps, warm = int(cfg["steps"]), int(cfg["warmup_steps"])
    t0 = time.time()
    limit_s = float(cfg["max_minutes"]) * 60.0

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to 5 %
        if step < warm:
            return cfg["lr"] * (step + 1) / warm
        f = (step - warm) / max(1, steps - warm)
        if limit_s:  # a wall-time budget: decay by whichever runs out first, steps or time
            f = max(f, (time.time() - t0) / limit_s)
        return cfg["lr"] * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(f, 1.0))))

    start = 0
    ckpt_path = out_dir / "ckpt.pt"
    if cfg["init_weights"] and not ckpt_path.is_file():
        # Non-strict only for what the new model adds (a warm start of the identity branch
        # from a pixel-only model: its SFace weights and warp, set above, stay); anything
        # else missing or unexpected is an error.
        try:
            missing, unexpected = model.load_state_dict(
                torch.load(_path(cfg["init_weights"]), map_location=device, weights_only=True), strict=False)
        except (OSError, RuntimeError) as exc:   # unreadable, a pickle payload, shapes that differ
            raise UserError(f"cannot start from init_weights {cfg['init_weights']}: "
                            f"{str(exc).splitlines()[0]}") from None
        if unexpected or any(not k.startswith(("ident.", "id_", "chip_grid", "crop_grid")) for k in missing):
            raise UserError(f"init_weights {cfg['init_weights']} do not fit the model "
                            f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        print(f"initialised from {cfg['init_weights']}")
    if ckpt_path.is_file():
        ck = torch.load(ckpt_path, map_location=device, weights_only=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optim"])
        start = int(ck["step"])
        print(f"resumed from {ckpt_path} at step {start}")

    lw = cfg["loss"]
    dw = DeidWeights(lw["away"], lw["uniform"], lw["hinge"], lw["scale"], lw["margin"])
    k_out = int(cfg["outputs_per_clip"])
    log_path = out_dir / "log.csv"
    fields = ["step", "seconds", "lr", "loss", "recon", "deid", "temporal", "rppg", "psnr"]
    fields += [f"{h.name}_{m}" for h in heads for m in ("self_score", "self_match", "top1")]
    new_log = not log_path.is_file() or start == 0
    log_file = open(log_path, "w" if new_log else "a", newline="")
    writer = csv.DictWriter(log_file, fieldnames=fields)
    if new_log:
        writer.writeheader()

    rppg_loss_value = float("nan")
    model.train()
    bar = tqdm(range(start, steps), initial=start, total=steps, disable=not progress, dynamic_ncols=True)
    done_steps = start
    for step in bar:
        rng = np.random.default_rng([cfg["seed"], step])  # resumable: batch = f(seed, step)
        for g in opt.param_groups:
            g["lr"] = lr_at(step) * g["lr_scale"]

        # 1) a batch of clips -> K causal windows each -> protected frames
        batch = sampler.sample(cfg["batch"], window + k_out - 1, rng)
        frames = torch.from_numpy(batch.frames).to(device)
        roi = torch.from_numpy(batch.roi).to(device)
        wins = windows_of(frames, window)                                  # (B, K, T, 3, H, W)
        b = wins.shape[0]
        flat = wins.reshape(b * k_out, *wins.shape[2:])
        clean = flat[:, -1]
        # As live: the composite adds the residual only under the feathered face oval, so
        # the recognisers must be fooled (and quality judged) with that mask applied.
        oval = torch.from_numpy(np.repeat(batch.oval, k_out, axis=0)).to(device)
        protected = clean + (model(flat) - clean) * oval

        # 2) losses: reconstruct, de-identify (ensemble), residual's skin colour steady
        recon = reconstruction_loss(protected, clean)
        ident = torch.from_numpy(np.repeat(batch.identity, k_out)).to(device)
        deid, info = deid_loss(heads, protected, clean, ident, protos, dw)
        residual = (protected - clean).reshape(b, k_out, *protected.shape[1:])
        temporal = residual_temporal_loss(residual, roi) if k_out > 1 else protected.new_zeros(())
        loss = lw["alpha"] * recon + lw["beta"] * deid + lw["temporal"] * temporal

        # 3) every few steps: a 2 s sequence, Pearson between clean and protected POS pulses
        if cfg["rppg_every"] and lw["gamma"] and step % int(cfg["rppg_every"]) == 0:
            long = sampler.sample(1, window + int(cfg["rppg_outputs"]) - 1, rng)
            lf = torch.from_numpy(long.frames).to(device)
            lwins = windows_of(lf, window)[0]                              # (K, T, 3, H, W)
            lclean = lwins[:, -1]
            prot_seq = (lclean + (model(lwins) - lclean) * torch.from_numpy(long.oval[0]).to(device))[None]
            rppg = rppg_pearson_loss(lclean[None], prot_seq, torch.from_numpy(long.roi).to(device), long.fs)
            loss = loss + lw["gamma"] * rppg
            rppg_loss_value = float(rppg.detach())

        # 4) step
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        opt.step()

        # 5) log, checkpoint, time limit
        row = {"step": step + 1, "seconds": round(time.time() - t0, 1), "lr": f"{opt.param_groups[0]['lr']:.2e}",
               "loss": f"{float(loss.detach()):.4f}", "recon": f"{float(recon.detach()):.5f}", "deid": f"{float(deid.detach()):.4f}",
               "temporal": f"{float(temporal.detach()):.4f}", "rppg": f"{rppg_loss_value:.4f}",
               "psnr": f"{psnr(protected.detach(), clean):.2f}"}
        for name, d in info.items():
            row.update({f"{name}_{m}": f"{d[m]:.3f}" for m in ("self_score", "self_match", "top1")})
        writer.writerow(row)
        if (step + 1) % cfg["log_every"] == 0:
            log_file.flush()
            bar.set_postfix(loss=row["loss"], psnr=row["psnr"],
                            **{f"{n}_self": row[f"{n}_self_match"] for n in info})
        done_steps = step + 1
        done = step + 1 == steps or (limit_s and time.time() - t0 > limit_s)
        if (step + 1) % cfg["ckpt_every"] == 0 or done:
            torch.save({"model": model.state_dict(), "optim": opt.state_dict(), "step": step + 1}, ckpt_path)
        if done:
            break
    log_file.close()
    bar.close()

    weights = out_dir / "weights.pt"
    model.eval().cpu()
    torch.save(model.state_dict(), weights)
    result = {"weights": str(weights), "steps": done_steps, "train_seconds": round(time.time() - t0, 1),
              "train_ids": train_ids, "held_out_ids": test_ids}
    print(f"trained {done_steps - start} steps in {result['train_seconds']} s -> {weights}")

    if cfg["eval"]["enabled"]:
        report = evaluate(model, cfg, test_ids)
        (out_dir / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
        print(format_report(report))
        result["eval"] = report
        if cfg["export"]:
            if report["better_than_untrained"]:
                from livedeid.nets.export import export_model, held_out_self_match

                notes = cfg["export_notes"] or f"trained by livedeid train ({out_dir.name}, {done_steps} steps)"
                for line in export_model(weights=weights, trained=True, fp16=True, notes=notes,
                                         window=window, max_perturbation=float(mc["max_perturbation"]),
                                         held_out_self_match=held_out_self_match(out_dir / "eval.json")):
                    print(line)
            else:
                print("NOT exported: the trained model does not de-identify better than the untrained one")
    return result


# --------------------------------------------------------------------------------------
# evaluation on held-out people (full images, the real pipeline, the real recognisers)
# --------------------------------------------------------------------------------------
def _fn_engine(spec, fn):
    from livedeid.inference.engines import Engine

    class FnEngine(Engine):
        name = "eval"

        def __call__(self, windows):
            return fn(self.check_input(windows)).astype(np.float32)

    return FnEngine(spec)


def _torch_fn(model):
    import torch

    def run(windows):
        with torch.no_grad():
            return model(torch.from_numpy(windows)).numpy()
    return run


def _baseline_fn(kind: str, strength: float):
    import cv2

    def run(windows):
        out = []
        for crop in windows[:, -1]:
            img = crop.transpose(1, 2, 0)
            if kind == "blur":
                res = cv2.GaussianBlur(img, (0, 0), strength)
            elif kind == "pixelate":  # strength = block size in crop pixels
                s = max(2, int(round(128 / strength)))
                res = cv2.resize(cv2.resize(img, (s, s), interpolation=cv2.INTER_AREA), (128, 128),
                                 interpolation=cv2.INTER_NEAREST)
            elif kind == "noise":
                rng = np.random.default_rng(int(img.sum() * 1000) % 2**32)
                res = img + rng.normal(0, strength, img.shape).astype(np.float32)
            else:
                raise ValueError(kind)
            out.append(np.clip(res, 0, 1).transpose(2, 0, 1))
        return np.stack(out)
    return run


def load_eval_image(path: str):
    """BGR image for evaluation; ORL's 92x112 greyscale photos are upscaled 3x (bicubic)
    so that every detector (HOG's 80 px minimum, YuNet, MediaPipe) finds the face."""
    import cv2

    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if max(img.shape[:2]) < 300:
        img = cv2.resize(img, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)
    return img


def protect_image(image, spec, fn, repeats: int = 8):
    """Run the live pipeline on ``repeats`` copies of a still image (fills the window);
    returns (output image, face landmarks or None)."""
    from livedeid.core.records import Frame
    from livedeid.core.settings import PipelineConfig
    from livedeid.pipeline.processor import FrameProcessor

    proc = FrameProcessor(PipelineConfig(engine="onnxruntime"), spec=spec, engine=_fn_engine(spec, fn))
    try:
        fr = None
        for i in range(repeats):
            fr = proc.process(Frame(image=image.copy(), index=i, timestamp=i / 30.0))
        faces = [f for f in fr.faces if not f.is_lost and f.protected is not None]
        return fr.output, (faces[0].landmarks if faces else None)
    finally:
        proc.close()


def face_quality(clean, out, landmarks) -> tuple[float, float]:
    """(PSNR dB, SSIM) of the output against the input over the face oval (the only
    pixels the model may change); SSIM over the oval's bounding box."""
    from skimage.metrics import structural_similarity

    from livedeid.protect.composite import oval_mask

    box, mask = oval_mask(landmarks, clean.shape[:2])
    x0, y0, x1, y1 = box
    a = clean[y0:y1, x0:x1].astype(np.float64) / 255.0
    b = out[y0:y1, x0:x1].astype(np.float64) / 255.0
    inside = np.asarray(mask) > 0
    mse = float(((a - b) ** 2)[inside].mean())
    return 10 * math.log10(1.0 / max(mse, 1e-12)), float(structural_similarity(a, b, channel_axis=2, data_range=1.0))


def _identity_metrics(rec, clean_emb: dict, prot_emb: dict, labels: dict) -> dict:
    """self-match: protected photo still matches its own clean photo; top-1: nearest
    identity (mean clean embedding of the *other* photos of each held-out person)."""
    ids = sorted(set(labels.values()))
    self_match, top1, clean_top1, found, self_score = [], [], [], [], []
    for path, emb in prot_emb.items():
        if path not in clean_emb:
            continue
        found.append(emb is not None)
        if emb is None:  # the recogniser no longer finds a face: neither match nor identify
            self_match.append(False)
            top1.append(False)
            continue
        self_match.append(rec.is_match(emb, clean_emb[path]))
        self_score.append(rec.score(emb, clean_emb[path]))
        gallery, names = [], []
        for ident in ids:
            others = [clean_emb[p] for p, l in labels.items() if l == ident and p != path and p in clean_emb]
            if others:
                gallery.append(np.mean(others, axis=0))
                names.append(ident)
        scores = [rec.score(emb, g) for g in gallery]
        top1.append(names[int(np.argmax(scores))] == labels[path])
        cs = [rec.score(clean_emb[path], g) for g in gallery]
        clean_top1.append(names[int(np.argmax(cs))] == labels[path])
    n = max(len(self_match), 1)
    return {"faces": len(self_match), "detected": float(np.mean(found)) if found else 0.0,
            "self_match": float(np.sum(self_match) / n), "top1": float(np.sum(top1) / n),
            "clean_top1": float(np.mean(clean_top1)) if clean_top1 else float("nan"),
            # mean similarity to the own clean photo over detected faces (cosine for SFace,
            # minus distance for dlib; the match threshold is 0.363 / -0.6)
            "self_score": float(np.mean(self_score)) if self_score else float("nan"),
            "chance": 1.0 / max(len(ids), 1)}


def evaluate(model, cfg: dict, test_ids: list[str], names=("dlib", "sface")) -> dict:
    """Held-out metrics of ``model`` (torch, CPU) against the untrained model and blur /
    pixelate / noise baselines at the model's PSNR."""
    from livedeid.inference.manifest import ModelSpec
    from livedeid.nets.autoencoder import seeded_untrained
    from livedeid.nets.export import DEFAULT_CROP
    from livedeid.recognizers.base import get_recognizer
    from livedeid.training.data import list_face_images

    ec = cfg["eval"]
    mc = cfg["model"]
    spec = ModelSpec(name="eval", window=int(mc["window"]), crop_size=DEFAULT_CROP,
                     max_perturbation=float(mc["max_perturbation"]), trained=True)
    photos = {}
    for ident, path in list_face_images(_path(cfg["data"]["faces_root"])):
        if ident in test_ids and sum(1 for v in photos.values() if v == ident) < ec["max_photos_per_id"]:
            photos[str(path)] = ident
    images = {p: load_eval_image(p) for p in photos}
    recs = [get_recognizer(n) for n in names]

    def largest(rec, img):
        faces = rec.embed_faces(img)
        return faces[0].embedding if faces else None

    clean = {r.name: {p: e for p in images if (e := largest(r, images[p])) is not None} for r in recs}

    # The untrained reference is the shipped placeholder (seed 0), what users ran before.
    untrained = seeded_untrained(int(mc["window"]), float(mc["max_perturbation"]), 0)
    methods = {"trained": _torch_fn(model.eval()), "untrained": _torch_fn(untrained)}

    def run_method(fn, subset=None):
        outs, q = {}, []
        for p in (subset or images):
            out, lm = protect_image(images[p], spec, fn)
            outs[p] = out
            if lm is not None:
                q.append(face_quality(images[p], out, lm))
        q = np.array(q) if q else np.full((1, 2), np.nan)
        return outs, float(np.mean(q[:, 0])), float(np.mean(q[:, 1])), len(q)

    report = {"held_out_ids": test_ids, "photos": len(images), "methods": {}}
    for name, fn in list(methods.items()):
        outs, p, s, n = run_method(fn)
        report["methods"][name] = _method_report(recs, clean, outs, photos, p, s, n)
    if ec.get("baselines"):
        target = report["methods"]["trained"]["psnr"]
        sub = list(images)[:: max(1, len(images) // 8)]
        # Each baseline's strength is picked on a subset so that its face PSNR (measured
        # exactly like the model's: through the composite, over the oval) is closest to
        # the model's.
        for kind, grid in (("blur", (0.5, 0.75, 1.0, 1.5, 2.0, 3.0)), ("pixelate", (1.5, 2.0, 3.0, 4.0, 6.0, 8.0)),
                           ("noise", (0.01, 0.015, 0.02, 0.03, 0.045, 0.06))):
            best = min(grid, key=lambda g: abs(run_method(_baseline_fn(kind, g), sub)[1] - target))
            outs, p, s, n = run_method(_baseline_fn(kind, best))
            report["methods"][f"{kind}({best:.3g})"] = _method_report(recs, clean, outs, photos, p, s, n)
    if ec.get("hr_clips"):
        report["hr"] = hr_check(model, spec, [p for p, i in photos.items() if i.startswith("celebrities")],
                                ec["hr_clips"], ec["hr_seconds"])
    report["better_than_untrained"] = better_than_untrained(report, [r.name for r in recs])
    return report


def better_than_untrained(report: dict, recognizers) -> bool:
    """The export rule: on the held-out people the trained model lets fewer protected faces
    match themselves than the untrained one for at least one recogniser and more for none,
    while keeping face PSNR >= 32 dB and every heart rate within 1 bpm of the input's. A
    model that passes but still misses the 5 % target ships with that measured share in its
    manifest, and every command and the panel say it protects only partly."""
    t, u = report["methods"]["trained"], report["methods"]["untrained"]
    fewer = [t[r]["self_match"] < u[r]["self_match"] for r in recognizers]
    more = [t[r]["self_match"] > u[r]["self_match"] for r in recognizers]
    quality = t["psnr"] >= 32.0 and all(h["change_bpm"] <= 1.0 for h in report.get("hr", []))
    return any(fewer) and not any(more) and quality


def _method_report(recs, clean, outs, labels, p, s, n):
    rep = {"psnr": round(p, 2), "ssim": round(s, 4), "tracked": n}
    for r in recs:
        prot = {}
        for path, img in outs.items():
            faces = r.embed_faces(img)
            prot[path] = faces[0].embedding if faces else None
        rep[r.name] = {k: (round(v, 4) if isinstance(v, float) else v)
                       for k, v in _identity_metrics(r, clean[r.name], prot, labels).items()}
        # Per dataset too (gallery and chance within one dataset: 1/3 celebrities, 1/10 ORL).
        for ds in sorted({v.split("/")[0] for v in labels.values()}):
            sub = {p: v for p, v in labels.items() if v.startswith(ds + "/")}
            m = _identity_metrics(r, clean[r.name], {p: e for p, e in prot.items() if p in sub}, sub)
            rep.setdefault("by_dataset", {}).setdefault(ds, {})[r.name] = {
                k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items()}
    return rep


def hr_check(model, spec, photo_paths, clips: int, seconds: float) -> list[dict]:
    """Synthetic pulse clips of held-out faces through the live pipeline: heart rate of
    the input vs the output (both read the same way: POS on forehead + cheeks)."""
    from livedeid.core.settings import PipelineConfig
    from livedeid.io.synthetic import SyntheticPulseSource
    from livedeid.pipeline.processor import FrameProcessor, TraceRecorder

    out = []
    for k, path in enumerate(photo_paths[:clips]):
        hr = 60.0 + 25.0 * k
        src = SyntheticPulseSource(face=path, hr_bpm=hr, duration_s=seconds, size=(640, 360), seed=k)
        proc = FrameProcessor(PipelineConfig(engine="onnxruntime"), spec=spec, engine=_fn_engine(spec, _torch_fn(model)))
        rec = TraceRecorder()
        try:
            for fr in src:
                rec(proc.process(fr), proc)
        finally:
            proc.close()
        r = rec.heart_rates()
        out.append({"photo": path, "true_bpm": hr, "input_bpm": r["input"] and r["input"]["bpm"],
                    "output_bpm": r["output"] and r["output"]["bpm"],
                    "change_bpm": (round(abs(r["input"]["bpm"] - r["output"]["bpm"]), 2)
                                   if r["input"] and r["output"] else None)})
    return out


def format_report(report: dict) -> str:
    lines = [f"held-out identities: {len(report['held_out_ids'])}, photos: {report['photos']}"]
    first = next(iter(report["methods"].values()))
    names = [k for k in first if isinstance(first[k], dict) and k != "by_dataset"]
    head = f"{'method':16s} {'PSNR':>6s} {'SSIM':>6s}" + "".join(
        f" {n + ' self':>10s} {n + ' top1':>10s} {n + ' det':>9s}" for n in names)
    lines.append(head)
    for m, r in report["methods"].items():
        lines.append(f"{m:16s} {r['psnr']:6.2f} {r['ssim']:6.4f}" + "".join(
            f" {r[n]['self_match']:10.3f} {r[n]['top1']:10.3f} {r[n]['detected']:9.2f}" for n in names))
    chance = {n: next(iter(report["methods"].values()))[n]["chance"] for n in names}
    clean = {n: report["methods"]["trained"][n]["clean_top1"] for n in names}
    lines.append(f"chance top-1: {chance}; clean top-1: {clean}")
    for h in report.get("hr", []):
        lines.append(f"HR {Path(h['photo']).parent.name}/{Path(h['photo']).name}: true {h['true_bpm']}, "
                     f"input {h['input_bpm']}, output {h['output_bpm']}, change {h['change_bpm']}")
    return "\n".join(lines)
