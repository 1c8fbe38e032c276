"""Quick held-out check of a training checkpoint, through the differentiable recogniser ports.

    python benchmarks/heldout_proxy.py runs/NAME/ckpt.pt [--config configs/train_default.json]

`livedeid train`'s own evaluation runs every held-out photo through the live pipeline and
each recogniser's own detector and runtime (minutes). This proxy is for watching a run:
every held-out photo's aligned crop (window of 8 copies), the model, the oval mask as the
composite applies it, then the torch ports on the crop's chip (seconds). Prints face PSNR
(crop) and, per recogniser, the share of held-out crops still matching their clean self
(and the same for training crops, to see the generalisation gap).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="ckpt.pt (training checkpoint) or a weights .pt")
    ap.add_argument("--config", default=str(ROOT / "configs" / "train_default.json"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from livedeid.nets.autoencoder import DeidAutoencoder
    from livedeid.training import loop as T
    from livedeid.training.data import FaceClipSampler

    torch.set_num_threads(args.threads)
    cfg = T.load_config(args.config, [])
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    step = state.get("step", "?")
    state = state.get("model", state)
    model = DeidAutoencoder(int(cfg["model"]["window"]), float(cfg["model"]["max_perturbation"]),
                            int(cfg["model"]["width"]), identity_branch="chip_grid" in state)
    model.load_state_dict(state)
    model.eval()
    _, faces, train_ids, test_ids = T.build_data(cfg)   # the trainer's own data and split
    heads = T.build_heads(cfg["recognizers"], torch.device("cpu"))
    print(f"checkpoint {args.checkpoint} (step {step})")
    for label, ids in (("held-out", test_ids), ("training", train_ids)):
        sampler = FaceClipSampler(faces, ids)
        crops, _ = sampler.aligned_crops()
        oval = np.stack([f.oval for f in sampler.faces])
        x = torch.from_numpy(crops)
        ov = torch.from_numpy(_centre(oval))[:, None]
        with torch.no_grad():
            out = torch.cat([model(x[i:i + 16, None].expand(-1, model.window, -1, -1, -1))
                             for i in range(0, len(x), 16)])
            prot = x + (out - x) * ov
            line = f"{label:9s} {len(x):4d} crops  PSNR {T.psnr(prot, x):.2f} dB"
            for h in heads:
                s = torch.cat([h.score(h(prot[i:i + 32]), h(x[i:i + 32])) for i in range(0, len(x), 32)])
                line += f"  {h.name} self-match {float((s >= h.score_threshold).float().mean()):.1%}" \
                        f" (mean score {float(s.mean()):.3f})"
        print(line)
    return 0


def _centre(masks):
    """The centred 128 px crop of the samplers' BIG masks (as aligned_crops does for images)."""
    import cv2
    import numpy as np

    from livedeid.training.data import CROP, _similarity

    m = _similarity(0, 0, 0, 1.0)
    return np.stack([cv2.warpAffine(k, m, (CROP, CROP), flags=cv2.INTER_LINEAR) for k in masks]).astype("float32")

if __name__ == "__main__":
    sys.exit(main())
