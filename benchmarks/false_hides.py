"""False hides of the fail-closed policy on a real one-person video (issue 17).

    python benchmarks/false_hides.py [--video ../shared/data/videos/hamilton_clip.mp4]
                                     [--out benchmarks/results/false_hides] [--frames N]

Runs the real `process` path (tracker, safety net, lost-face release, fail-closed hiding)
over a video with exactly one person, whose face the mesh tracks, and sorts every hidden
region of every frame:

* ``off_face``: a hidden region that touches no face (a hand, the
  microphone, the chest): a false hide, it costs the viewer picture and protects nobody;
* ``partial_face``: a hidden region over part of a face that leaves an eye
  uncovered: a failure, not a partial success (it hides what is not needed and shows
  what identifies);
* ``on_face``: a hidden region covering the face with both eyes (a lost face, or a face
  the mesh does not hold: correct failing closed).

The faces are those an independent detector (YuNet, shipped with SFace) finds in the
clean frame plus those the mesh tracks: a hidden region touching neither is taken to
hide no face. Writes
counts per frame as JSON and markdown and the worst frames (most off-face or partial
hides) as JPEG with the hidden regions outlined.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")

import cv2  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("off_face", "partial_face", "on_face")


def truth_faces(image, faces, detector) -> list[tuple[tuple, list]]:
    """The frame's faces as (box, [eye points]): every face YuNet finds in the clean
    ``image`` (a detector independent of the pipeline's) plus every face the mesh tracks."""
    from livedeid.core.face_regions import LEFT_EYE, RIGHT_EYE

    boxes, _, kps = detector.detect(image)
    out = [(tuple(b), [k[0], k[1]]) for b, k in zip(boxes, kps)]
    out += [(f.bbox(), [f.landmarks[list(idx)].mean(axis=0) for idx in (RIGHT_EYE, LEFT_EYE)])
            for f in faces if not f.is_lost]
    return out


def classify(box, truth) -> str:
    """Which of :data:`KINDS` a hidden ``box`` is, given the frame's ``truth`` faces."""
    from livedeid.core.geometry import overlap_area

    def covers(point) -> bool:
        return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]

    kinds = set()
    for fb, eyes in truth:
        if overlap_area(box, fb) > 0.05 * max(1, (fb[2] - fb[0]) * (fb[3] - fb[1])):
            kinds.add("on_face" if all(covers(e) for e in eyes) else "partial_face")
    return "on_face" if "on_face" in kinds else "partial_face" if kinds else "off_face"


def run(video: Path, limit: int | None) -> tuple[list[dict], dict]:
    from livedeid.core.settings import PipelineConfig
    from livedeid.io.sources import FileSource
    from livedeid.pipeline.factory import build_processor
    from livedeid.recognizers.sface import SFaceRecognizer

    detector = SFaceRecognizer().detector
    src = FileSource(video)
    proc = build_processor(PipelineConfig(), path="host")
    rows, worst = [], {}
    try:
        for frame in src:
            if limit is not None and frame.index >= limit:
                break
            done = [f for f in (proc.submit(frame), ) if f is not None]
            for f in done:
                truth = truth_faces(f.image, f.faces, detector)
                kinds = [classify(b, truth) for b in f.hidden_boxes]
                row = {"frame": f.index, "tracked": sum(not t.is_lost for t in f.faces),
                       **{k: kinds.count(k) for k in KINDS}, "boxes": [list(map(int, b)) for b in f.hidden_boxes]}
                rows.append(row)
                bad = row["off_face"] + row["partial_face"]
                if bad:
                    worst[f.index] = (bad, f.output.copy(), list(zip(f.hidden_boxes, kinds)))
        tail = proc.flush()
        if tail is not None:
            kinds = [classify(b, truth_faces(tail.image, tail.faces, detector)) for b in tail.hidden_boxes]
            rows.append({"frame": tail.index, "tracked": sum(not t.is_lost for t in tail.faces),
                         **{k: kinds.count(k) for k in KINDS}, "boxes": [list(map(int, b)) for b in tail.hidden_boxes]})
    finally:
        proc.close()
        src.close()
    return rows, worst


def summarise(rows: list[dict]) -> dict:
    n = len(rows)
    out = {"frames": n, "frames_tracked": sum(r["tracked"] > 0 for r in rows)}
    for k in KINDS:
        out[f"{k}_regions"] = sum(r[k] for r in rows)
        out[f"frames_with_{k}"] = sum(r[k] > 0 for r in rows)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--video", type=Path, default=ROOT.parent / "shared" / "data" / "videos" / "hamilton_clip.mp4")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "false_hides")
    ap.add_argument("--frames", type=int, default=None, help="stop after this many frames")
    ap.add_argument("--worst", type=int, default=4, help="save this many worst frames as JPEG")
    args = ap.parse_args()
    if not args.video.is_file():
        print(f"false_hides: video not found: {args.video}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    rows, worst = run(args.video, args.frames)
    summary = summarise(rows)
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("worst_*.jpg"):
        old.unlink()
    colours = {"off_face": (0, 0, 255), "partial_face": (0, 165, 255), "on_face": (0, 200, 0)}
    for idx, (_, image, boxes) in sorted(worst.items(), key=lambda kv: -kv[1][0])[:args.worst]:
        for box, kind in boxes:
            cv2.rectangle(image, tuple(map(int, box[:2])), tuple(map(int, box[2:])), colours[kind], 2)
        cv2.imwrite(str(args.out / f"worst_{idx:04d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    video = os.path.relpath(args.video, ROOT)
    (args.out / "false_hides.json").write_text(json.dumps({"video": video, "summary": summary, "frames": rows}, indent=1))
    lines = [f"# False hides on `{video}`", "",
             f"`python benchmarks/false_hides.py --video {video}`", "",
             "off_face: hidden region touching no face (false hide); partial_face: over part "
             "of the face with an eye left visible (failure); on_face: covering the face and both eyes.", "",
             "| measure | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary.items()]
    lines += ["", "Worst frames (red: off face, orange: partial face, green: whole face): "
              + ", ".join(f"`worst_{i:04d}.jpg`" for i in sorted(worst, key=lambda i: -worst[i][0])[:args.worst])]
    (args.out / "false_hides.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
