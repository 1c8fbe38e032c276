"""The Ray driver of ``livedeid batch``.

Without an address, ``ray.init`` starts a local cluster of ``workers`` CPUs (one video per
CPU by default); with one, the same job runs on an existing cluster, where INPUT and OUTPUT
must be on storage every node sees under the same paths (workers read the inputs and
write the outputs themselves; only reports travel back). One task per video declares its
CPUs (and a share of a GPU where the cluster has GPUs). At most ``2 x`` the parallel slots
are in flight at once, so a manifest of 10 000 videos does not flood the scheduler and
the driver's memory; ``ray.wait`` hands back each finished one. A worker that dies is
retried by Ray (``max_retries``); a video that kills its worker every time is marked failed.
"""
from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from livedeid.batch.inputs import VideoItem
from livedeid.batch.resume import is_finished, job_folder, load_report, report_path, write_json_atomic
from livedeid.batch.summary import write_summary
from livedeid.batch.video import process_item
from livedeid.core.errors import UserError

# Ray's shared-memory object store: tasks pass only small reports, so a small store is
# plenty and keeps a laptop's memory for the videos.
OBJECT_STORE_BYTES = 200 * 1024 ** 2
IN_FLIGHT_PER_SLOT = 2
PLOT_EVERY_S = 30.0
TASK_NAME = "livedeid-video"


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("batch needs Ray: pip install 'livedeid[batch]'") from None
    return ray


def connect(ray, workers: int, address: str | None, cpus_per_video: float, verbose: bool = False) -> bool:
    """Join or start the cluster; True when this call started it (and must shut it down).
    A session already started in this process (a caller's own ``ray.init``) is used as is."""
    if ray.is_initialized():
        return False
    common = {"log_to_driver": verbose, "logging_level": "INFO" if verbose else "ERROR"}
    try:
        if address:
            ray.init(address=address, **common)
        else:
            # "local": a new cluster of our size even when another one runs on this machine
            ray.init(address="local", num_cpus=max(1, int(round(workers * cpus_per_video))),
                     object_store_memory=OBJECT_STORE_BYTES,
                     include_dashboard=False, **common)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        hint = ("; a cluster with token authentication also needs RAY_AUTH_MODE=token and its token "
                "(RAY_AUTH_TOKEN or ~/.ray/auth_token) here" if address else "")
        raise UserError(f"cannot start or reach {where}: {str(exc).splitlines()[0]}{hint}") from None
    return True


def task_resources(ray, cpus_per_video: float) -> dict:
    """CPUs per video, and an even share of the cluster's GPUs where it has any."""
    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 1.0), resources.get("GPU", 0.0)
    slots = max(1, int(cpus // cpus_per_video))
    options = {"num_cpus": cpus_per_video}
    if gpus > 0:
        options["num_gpus"] = min(1.0, gpus / slots)
    return options | {"slots": slots}


def run_batch(items: list[VideoItem], settings: dict, digest: str, output: Path, *, workers: int,
              address: str | None = None, cpus_per_video: float = 1.0, retries: int = 2, quiet: bool = False,
              verbose: bool = False, on_report: Callable[[dict], None] | None = None,
              on_start: Callable[[], None] = lambda: None) -> dict:
    """Run every unfinished video of ``items``; returns the summary's counts (and the
    reports under ``reports``). Each report is written as it comes back. ``on_start`` is
    called once the cluster is reached, before anything is written (it creates OUTPUT)."""
    ray = import_ray()
    output = Path(output)
    reports, todo = {}, deque()
    for item in items:
        previous = load_report(output, item.key)
        if is_finished(item, previous, digest):
            reports[item.key] = {**previous, "skipped": True}
        else:
            todo.append((item, previous))
    if not todo:  # everything finished: no cluster to start
        counts = write_summary(job_folder(output), list(reports.values()), len(items))
        return {**counts, "skipped": len(reports), "reports": reports}
    started = connect(ray, workers, address, cpus_per_video, verbose)
    try:
        on_start()
        return _drive(ray, items, reports, todo, settings, digest, output, cpus_per_video, retries, quiet, on_report)
    finally:
        if started:
            ray.shutdown()


def _drive(ray, items, reports, todo, settings, digest, output, cpus_per_video, retries, quiet, on_report) -> dict:
    from tqdm import tqdm

    options = task_resources(ray, cpus_per_video)
    slots = options.pop("slots")
    task = ray.remote(process_item).options(name=TASK_NAME, max_retries=retries, **options)
    skipped = len(reports)
    summary_dir, last_plot = job_folder(output), time.monotonic()
    in_flight: dict = {}
    bar = tqdm(total=len(items), initial=skipped, unit="video", disable=quiet, file=sys.stderr, dynamic_ncols=True,
               desc="batch", smoothing=0.1)
    bar.set_postfix_str(f"skipped {skipped}, failed 0", refresh=True)
    try:
        while todo or in_flight:
            while todo and len(in_flight) < IN_FLIGHT_PER_SLOT * slots:
                item, previous = todo.popleft()
                in_flight[task.remote(item, settings, digest, previous)] = item
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                item = in_flight.pop(ref)
                report = _result(ray, ref, item, digest, retries)
                report.pop("skipped", None)
                write_json_atomic(report_path(output, item.key), report)
                reports[item.key] = report
                if on_report is not None:
                    on_report(report)
                bar.update(1)
                failed = sum(r.get("status") != "done" for r in reports.values())
                bar.set_postfix_str(f"skipped {skipped}, failed {failed}", refresh=False)
            plots = time.monotonic() - last_plot >= PLOT_EVERY_S
            write_summary(summary_dir, list(reports.values()), len(items), plots=plots)
            last_plot = time.monotonic() if plots else last_plot
    finally:
        bar.close()
    counts = write_summary(summary_dir, list(reports.values()), len(items), plots=True)
    return {**counts, "skipped": skipped, "reports": reports}


def _result(ray, ref, item: VideoItem, digest: str, retries: int) -> dict:
    """The task's report, or a failed one when its worker died ``retries + 1`` times."""
    from ray.exceptions import RayError

    try:
        return ray.get(ref)
    except RayError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return {"key": item.key, "input": str(item.input), "output": str(item.output), "layout": item.layout,
                "subject": item.subject, "settings_hash": digest, "status": "failed",
                "error": f"the worker died on every one of {retries + 1} attempts ({type(exc).__name__}: {first})"}
