"""`livedeid batch`: a whole archive of videos de-identified on Ray (``livedeid.batch``)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from livedeid.cli.files import add_file_output_options
from livedeid.cli.options import add_pipeline_options, pipeline_config
from livedeid.core.errors import UserError


def add_batch_parser(sub) -> None:
    b = sub.add_parser(
        "batch", help="de-identify a whole archive on Ray: a folder, a CSV manifest, UBFC-rPPG or PURE",
        description="Every video of INPUT de-identified as `process` does it, one Ray task per video, into OUTPUT "
                    "under the same relative paths (ground-truth files copied beside them; PURE's PNG frames "
                    "written back as PNG frames). INPUT is a folder (walked recursively; UBFC-rPPG subjects "
                    "subjectN/vid.avi + ground_truth.txt and PURE sessions NN-NN/NN-NN/*.png + NN-NN.json are "
                    "recognised) or a CSV manifest (columns path, optional subject and ground_truth). Reports, "
                    "summary.csv, summary.md and plots go to OUTPUT/livedeid_batch/, rewritten as videos finish. "
                    "A failed video is reported and the job goes on (exit status 1 at the end); the same command "
                    "again skips finished videos and refuses changed settings.")
    b.add_argument("input", type=Path, help="folder of videos, dataset root (UBFC-rPPG, PURE) or CSV manifest")
    b.add_argument("output", type=Path, help="output folder (created; mirrors INPUT)")
    b.add_argument("--workers", type=int, default=None,
                   help="videos processed at once on the local cluster (default: the machine's CPUs divided by "
                        "--cpus-per-video); ignored with --address")
    b.add_argument("--address", default=None, metavar="ADDR",
                   help="run on an existing Ray cluster (e.g. ray://head:10001 or head:6379); INPUT and OUTPUT "
                        "must be on storage every node sees under the same paths, with livedeid installed there")
    b.add_argument("--cpus-per-video", type=float, default=1.0,
                   help="CPUs each video's task declares, and the threads of its ONNX Runtime engine unless "
                        "engine_threads is set in --config (default 1)")
    b.add_argument("--retries", type=int, default=2,
                   help="times a video is retried after the worker running it died (default 2); then it is "
                        "marked failed")
    add_file_output_options(b)
    b.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_pipeline_options(b)
    b.set_defaults(func=cmd_batch)


def cmd_batch(args) -> int:
    from livedeid.batch.inputs import discover
    from livedeid.batch.job import import_ray, run_batch
    from livedeid.batch.resume import check_output, claim_output, job_folder, settings_record

    import_ray()  # not installed: one line, before any work
    if (args.workers is not None and args.workers < 1) or args.cpus_per_video <= 0 or args.retries < 0:
        raise UserError("--workers and --cpus-per-video must be positive, --retries at least 0")
    workers = args.workers or max(1, int((os.cpu_count() or 1) // args.cpus_per_video))
    config = pipeline_config(args)
    if args.two_pass:
        from livedeid.cloak.tracks import check_two_pass

        if config.profile is not None:
            raise UserError("--two-pass makes a cloak per person itself: leave out --profile")
        check_two_pass(args.cloak_steps)
    items = discover(args.input, args.output)
    if args.codec == "ffv1" and any(i.kind == "video" and i.output.suffix.lower() in (".mp4", ".mov") for i in items):
        raise UserError("--codec ffv1 does not fit in .mp4/.mov files, and outputs keep the inputs' names: "
                        "use lossless or h264")
    if config.engine_threads == 0:
        # ONNX Runtime's default pool takes every core and spin-waits on them between calls:
        # each task's pool gets the CPUs the task declares (pixels do not change).
        config.engine_threads = max(1, round(args.cpus_per_video))
    record = settings_record(config, codec=args.codec, audio=not args.no_audio, two_pass=args.two_pass,
                             cloak_steps=args.cloak_steps)
    digest = check_output(args.output, record)
    layouts = sorted({i.layout for i in items})
    print(f"batch: {len(items)} videos ({', '.join(layouts)}) -> {args.output}", file=sys.stderr)
    counts = run_batch(items, record, digest, args.output, workers=workers, address=args.address,
                       cpus_per_video=args.cpus_per_video, retries=args.retries, quiet=args.quiet,
                       verbose=args.verbose, on_start=lambda: claim_output(args.output, record))
    mae = counts["hr_mae"]
    hr = (f"; HR MAE vs ground truth input {mae['input']:.2f} bpm, output {mae['output']:.2f} bpm "
          f"({mae['videos']} videos)" if mae["videos"] else "")
    print(f"batch: {counts['done']} of {counts['total']} videos done ({counts['skipped']} already finished), "
          f"{counts['failed']} failed{hr}; summary in {job_folder(args.output) / 'summary.md'}")
    for report in sorted(counts["reports"].values(), key=lambda r: r["key"]):
        if report.get("status") != "done":
            print(f"failed: {report['key']}: {report.get('error')}", file=sys.stderr)
    return 1 if counts["failed"] else 0
