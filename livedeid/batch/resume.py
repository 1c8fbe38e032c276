"""What makes a batch job resumable: the same command run again continues it.

* The job's settings (pipeline config, model and profile file hashes, codec, two-pass,
  livedeid's version) are hashed and kept in ``OUTPUT/livedeid_batch/job.json``; a rerun
  with other settings is refused, naming what changed, rather than mixing outputs made
  two ways in one archive.
* Each finished video has a report (``reports/<key>.json``) holding the settings hash, a
  cheap stat fingerprint of its input (sizes and modification times) and the SHA-256 of
  its content. A video is finished when its report says done, the settings hash matches,
  its output exists and the stat fingerprint is unchanged: it is skipped without reading
  it. A video whose stat changed is rehashed in its task; if the content is the same, the
  old result stands, otherwise it is processed again.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from livedeid import __version__
from livedeid.batch.inputs import JOB_FOLDER, VideoItem
from livedeid.core import strict_json
from livedeid.core.errors import UserError
from livedeid.core.settings import PipelineConfig
from livedeid.io.frames import frame_files


def file_sha256(path: Path, h=None):
    """SHA-256 of a file's bytes (fed into ``h`` when given; returned as hex otherwise)."""
    own = h is None
    h = hashlib.sha256() if own else h
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest() if own else h


def settings_record(config: PipelineConfig, *, codec: str, audio: bool, two_pass: bool,
                    cloak_steps: int | None) -> dict:
    """Everything that decides a video's output and report, as plain JSON values."""
    from livedeid.assets import engines_dir

    cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(config).items()}
    manifest = Path(config.manifest) if config.manifest else engines_dir() / "deid.json"
    files = {"model_manifest_sha256": _sha_or_none(manifest)}
    if config.profile is not None and Path(config.profile).is_file():
        files["profile_sha256"] = file_sha256(Path(config.profile))
    return {"config": cfg, **files, "codec": codec, "audio": audio, "two_pass": two_pass,
            "cloak_steps": cloak_steps, "livedeid": __version__}


def _sha_or_none(path: Path) -> str | None:
    return file_sha256(path) if path.is_file() else None


def settings_hash(record: dict) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def item_files(item: VideoItem) -> list[Path]:
    """The files a video's result depends on: the video (or its frames) and its ground truth."""
    files = frame_files(item.input) if item.kind == "frames" else [item.input]
    return files + ([item.truth] if item.truth is not None else [])


def stat_fingerprint(item: VideoItem) -> list:
    """Sizes and modification times of the item's files: cheap, read on every rerun."""
    out = []
    for p in item_files(item):
        st = p.stat()
        out.append([p.name, st.st_size, st.st_mtime_ns])
    return out


def content_sha256(item: VideoItem) -> str:
    """SHA-256 over the item's files' names and bytes (read in the worker, in parallel)."""
    h = hashlib.sha256()
    for p in item_files(item):
        h.update(p.name.encode() + b"\0")
        file_sha256(p, h)
    return h.hexdigest()


def job_folder(output: Path) -> Path:
    return Path(output) / JOB_FOLDER


def report_path(output: Path, key: str) -> Path:
    return job_folder(output) / "reports" / f"{key}.json"


def write_json_atomic(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(strict_json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def check_output(output: Path, record: dict) -> str:
    """The settings hash of a job that may start or continue in ``output`` (nothing is
    written); UserError when ``output`` holds a job with other settings."""
    digest = settings_hash(record)
    path = job_folder(output) / "job.json"
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read {path}: {exc}; delete it or use another OUTPUT") from None
        if saved.get("settings_hash") != digest:
            changed = _differences(saved.get("settings", {}), record)
            raise UserError(f"{output} holds a batch run with other settings ({changed}); rerun with the same "
                            f"settings to resume it, or use another OUTPUT")
    return digest


def claim_output(output: Path, record: dict) -> None:
    """Create ``output`` and record the job's settings in it (once the work can start)."""
    path = job_folder(output) / "job.json"
    if not path.is_file():
        try:
            write_json_atomic(path, {"settings_hash": settings_hash(record), "settings": record})
        except OSError as exc:
            raise UserError(f"cannot write {output}: {exc.strerror or exc}") from None


def _differences(old: dict, new: dict, prefix: str = "") -> str:
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = _differences(a, b, f"{prefix}{key}.")
            diffs += [inner] if inner else []
        elif a != b:
            diffs.append(f"{prefix}{key}: {a} -> {b}")
    return ", ".join(diffs)


def load_report(output: Path, key: str) -> dict | None:
    try:
        return json.loads(report_path(output, key).read_text())
    except (OSError, ValueError):
        return None


def is_finished(item: VideoItem, report: dict | None, digest: str) -> bool:
    """Done with these settings, its output present and its input's stat unchanged."""
    return (report is not None and report.get("status") == "done" and report.get("settings_hash") == digest
            and item.output.exists() and report.get("input_stat") == stat_fingerprint(item))
