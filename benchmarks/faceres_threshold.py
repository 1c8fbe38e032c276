"""Calibrate the faceres cosine match threshold on the labelled photos beside the project.

    python benchmarks/faceres_threshold.py [--faces ../shared/data/faces] [--far 0.01]

Every photo of ``celebrities/idNN`` and ``orl/sN`` goes through the faceres evaluator
(YuNet, 5-point alignment onto Human's framing, the torch port; ORL's 92x112 photos are
enlarged 3x as the evaluation reads them). Pairs of photos of one identity are genuine,
pairs across identities impostors. On the celebrities it prints the equal-error point and
the threshold at which a fraction ``--far`` of impostor pairs match (the shipped
threshold: FAR 1 %), then, as a check on data not used to choose it, the genuine accept
and impostor reject rates of the shipped threshold on ORL, and the time per embedding.
Skips with a message (exit 0) when the data folder is absent.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def embed_dataset(rec, folder: Path):
    """(identities, embeddings) of the largest face of every photo found; misses counted."""
    from livedeid.evaluation.photos import identity_photos, read_image

    ids, embs, missed, seconds = [], [], 0, 0.0
    for s in identity_photos(folder):
        img = read_image(s.path, min_side=300)
        faces = rec.face_chips(img)
        if not faces:
            missed += 1
            continue
        t0 = time.perf_counter()
        embs.append(rec.embed_chips(faces[0][1][None])[0])
        seconds += time.perf_counter() - t0
        ids.append(s.identity)
    return ids, embs, missed, seconds / max(len(embs), 1)


def pair_scores(rec, ids, embs):
    import numpy as np

    genuine, impostor = [], []
    for a, b in itertools.combinations(range(len(embs)), 2):
        (genuine if ids[a] == ids[b] else impostor).append(rec.score(embs[a], embs[b]))
    return np.array(genuine), np.array(impostor)


def thresholds(genuine, impostor, far: float) -> tuple[float, float, float]:
    """(equal-error threshold, its error rate, threshold with impostor accept rate <= far)."""
    import numpy as np

    cands = np.unique(np.r_[genuine, impostor])
    gap = [abs(np.mean(genuine < t) - np.mean(impostor >= t)) for t in cands]
    eer_t = float(cands[int(np.argmin(gap))])
    eer = (np.mean(genuine < eer_t) + np.mean(impostor >= eer_t)) / 2
    # Smallest threshold (3 decimals, rounded up) at which at most `far` of impostors match.
    far_t = float(np.ceil(np.quantile(impostor, 1.0 - far, method="higher") * 1000) / 1000)
    while np.mean(impostor >= far_t) > far:
        far_t += 0.001
    return eer_t, float(eer), round(far_t, 3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--faces", default=str(ROOT.parent / "shared" / "data" / "faces"),
                    help="folder holding celebrities/ and orl/ (default: ../shared/data/faces)")
    ap.add_argument("--far", type=float, default=0.01, help="impostor accept rate for the threshold")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args(argv)
    faces = Path(args.faces)
    if not (faces / "celebrities").is_dir():
        print(f"skipped: no celebrity photos under {faces / 'celebrities'} (the data folder is absent)")
        return 0

    import numpy as np
    import torch

    from livedeid.recognizers.base import get_recognizer

    torch.set_num_threads(args.threads)
    rec = get_recognizer("faceres")
    ids, embs, missed, per = embed_dataset(rec, faces / "celebrities")
    genuine, impostor = pair_scores(rec, ids, embs)
    eer_t, eer, far_t = thresholds(genuine, impostor, args.far)
    print(f"celebrities: {len(embs)} faces ({missed} missed), {len(genuine)} genuine / {len(impostor)} impostor pairs")
    print(f"  cosine genuine mean {genuine.mean():.3f}  impostor mean {impostor.mean():.3f}")
    print(f"  equal-error threshold {eer_t:.3f}: error {eer:.1%} either way")
    print(f"  threshold at FAR {args.far:.1%}: {far_t:.3f} (genuine accepted {np.mean(genuine >= far_t):.1%}, "
          f"impostors accepted {np.mean(impostor >= far_t):.2%})")
    print(f"  shipped threshold {rec.threshold}: genuine accepted {np.mean(genuine >= rec.threshold):.1%}, "
          f"impostors accepted {np.mean(impostor >= rec.threshold):.2%}")
    if (faces / "orl").is_dir():
        ids, embs, missed, _ = embed_dataset(rec, faces / "orl")
        genuine, impostor = pair_scores(rec, ids, embs)
        print(f"orl (check): {len(embs)} faces ({missed} missed), cosine genuine mean {genuine.mean():.3f} "
              f"impostor mean {impostor.mean():.3f}")
        print(f"  at {rec.threshold}: genuine accepted {np.mean(genuine >= rec.threshold):.1%}, "
              f"impostors rejected {np.mean(impostor < rec.threshold):.1%} (own EER {thresholds(genuine, impostor, 0.01)[1]:.1%})")
    else:
        print(f"orl: not found under {faces} (check skipped)")
    print(f"time per embedding (torch CPU, {args.threads} thread(s), one 224 chip): {per * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
