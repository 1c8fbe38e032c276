"""What the perturbation budget allows: per-image PGD against the recognisers.

    python benchmarks/pgd_upper_bound.py --eps 4 --steps 20 --images 8

The model is a feed-forward network that must find a de-identifying residual for faces
it has never seen, in one pass. Per-image projected gradient descent (sign steps of
eps/4, projected to the L-inf ball of ``--eps``/255) on the same aligned 128 px crops,
through the same differentiable recogniser ports and chip warps as training, bounds what
any model can reach within that budget: if PGD cannot de-identify at a budget, no model
will; if it can, the gap is the model's (its training), not the budget's.

Prints PSNR, SSIM and, per recogniser, the similarity of each perturbed crop to its own
clean crop and the share still matching (at the recogniser's threshold). Needs torch and
the training data (``--faces``, default ../shared/data/faces).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--eps", type=float, default=8.0, help="L-inf budget in 8-bit levels (default 8)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--images", type=int, default=8, help="crops, spread over the training identities")
    ap.add_argument("--recognizers", default="dlib,sface")
    ap.add_argument("--faces", default=None, help="faces root (default: the training config's)")
    args = ap.parse_args(argv)

    import torch
    from pytorch_msssim import ssim

    from livedeid.training.config import load_config
    from livedeid.training.loop import build_data, build_heads, psnr

    overrides = [f"data.faces_root={args.faces}"] if args.faces else []
    cfg = load_config(ROOT / "configs" / "train_default.json", overrides)
    sampler, _, _, _ = build_data(cfg)
    heads = build_heads(args.recognizers.split(","), torch.device("cpu"))
    crops, _ = sampler.aligned_crops()
    step = max(1, len(crops) // args.images)
    x = torch.from_numpy(crops[::step][:args.images]).float()
    eps = args.eps / 255.0
    with torch.no_grad():
        clean = [h(x) for h in heads]
    delta = torch.zeros_like(x, requires_grad=True)
    t0 = time.time()
    for _ in range(args.steps):
        # Push every recogniser's similarity to the face's own clean embedding down.
        loss = sum((h.score(h((x + delta).clamp(0, 1)), c) - h.score_threshold).mean() for h, c in zip(heads, clean))
        loss.backward()
        with torch.no_grad():
            delta -= eps / 4 * delta.grad.sign()
            delta.clamp_(-eps, eps)
            delta.grad = None
    with torch.no_grad():
        y = (x + delta).clamp(0, 1)
        print(f"PGD eps {args.eps:g}/255, {args.steps} steps, {len(x)} crops, {time.time() - t0:.0f} s")
        print(f"PSNR {psnr(y, x):.2f} dB, SSIM {float(ssim(y, x, data_range=1.0)):.4f} (whole 128 px crop)")
        for h, c in zip(heads, clean):
            s = h.score(h(y), c)
            print(f"{h.name}: similarity to own clean crop {[round(v, 3) for v in s.tolist()]} "
                  f"(threshold {h.score_threshold:g}), still matching {float((s >= h.score_threshold).float().mean()):.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
