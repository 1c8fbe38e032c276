"""The recognisers as frozen differentiable torch heads on livedeid model crops: what
training's de-identification loss and the personal cloak's optimisation both attack.

torch is imported at module level: only torch-side code (training, ``livedeid.cloak``'s
optimisation) imports this module, never the patient's CPU path.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


class RecognizerHead(torch.nn.Module):
    """A frozen differentiable recogniser on livedeid crops: warps the 128 crop onto the
    recogniser's chip (its calibrated ``chip_grid_theta``) and embeds it."""

    def __init__(self, name: str, module: torch.nn.Module, theta: np.ndarray, chip_size: int,
                 metric: str, threshold: float):
        super().__init__()
        self.name, self.metric, self.threshold, self.chip_size = name, metric, float(threshold), chip_size
        self.net = module.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.register_buffer("theta", torch.as_tensor(theta, dtype=torch.float32))

    @classmethod
    def from_recognizer(cls, rec, crop_size: int = 128) -> "RecognizerHead":
        return cls(rec.name, rec.torch_module(), rec.chip_grid_theta(crop_size), rec.chip_size,
                   rec.metric, rec.threshold)

    def chips(self, crops: torch.Tensor) -> torch.Tensor:
        n = crops.shape[0]
        grid = F.affine_grid(self.theta.expand(n, 2, 3), (n, 3, self.chip_size, self.chip_size), align_corners=False)
        return F.grid_sample(crops, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.net(self.chips(crops)).float()

    def score(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Row-wise similarity on the recogniser's own scale (higher = more alike):
        cosine (SFace) or minus Euclidean distance (dlib)."""
        if self.metric == "cosine":
            return F.cosine_similarity(a, b, dim=-1)
        return -(a - b).norm(dim=-1)

    @property
    def score_threshold(self) -> float:
        return self.threshold if self.metric == "cosine" else -self.threshold


def hinge_term(head: RecognizerHead, emb: torch.Tensor, clean_emb: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean of relu(score(protected, own clean) - (threshold - margin)): zero once the
    protected face is ``margin`` beyond the recogniser's match threshold from itself."""
    return F.relu(head.score(emb, clean_emb) - (head.score_threshold - margin)).mean()
