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
    from livedeid.training.config import load_config
    from livedeid.training.data import FaceClipSampler, centre_crop
    from livedeid.training.loop import build_data, build_heads, protect_windows, psnr

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, [])
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    step = state.get("step", "?")
    state = state.get("model", state)
    model = DeidAutoencoder(int(cfg["model"]["window"]), float(cfg["model"]["max_perturbation"]),
                            int(cfg["model"]["width"]), identity_branch="chip_grid" in state)
    model.load_state_dict(state)
    model.eval()
    _, faces, train_ids, test_ids = build_data(cfg)   # the trainer's own data and split
    heads = build_heads(cfg["recognizers"], torch.device("cpu"))
    print(f"checkpoint {args.checkpoint} (step {step})")
    for label, ids in (("held-out", test_ids), ("training", train_ids)):
        sampler = FaceClipSampler(faces, ids)
        crops, _ = sampler.aligned_crops()
        x = torch.from_numpy(crops)
        ov = torch.from_numpy(np.stack([centre_crop(f.oval) for f in sampler.faces]))[:, None]
        with torch.no_grad():
            # A still crop as a window of identical frames, the residual under the oval.
            prot = torch.cat([protect_windows(model, x[i:i + 16, None].expand(-1, model.window, -1, -1, -1),
                                              ov[i:i + 16])[1] for i in range(0, len(x), 16)])
            line = f"{label:9s} {len(x):4d} crops  PSNR {psnr(prot, x):.2f} dB"
            for h in heads:
                s = torch.cat([h.score(h(prot[i:i + 32]), h(x[i:i + 32])) for i in range(0, len(x), 32)])
                line += f"  {h.name} self-match {float((s >= h.score_threshold).float().mean()):.1%}" \
                        f" (mean score {float(s.mean()):.3f})"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
