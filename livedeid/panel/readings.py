"""The Monitor tab's heart-rate readings, saved for the clinician's records (no Qt).

One row per reading (about one a second): when it was made (UTC, the computer's clock),
where in the stream (seconds: a file's own time, or the live clock), the heart rate
(empty in CSV / ``null`` in JSON when the window gave no reading - never a guess), its
quality, SNR and how many seconds of signal were behind it. JSON is strict (no NaN or
Infinity); CSV is plain RFC 4180 with a header. Written to a temporary file beside the
target and renamed into place when complete.
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import math
import os
from pathlib import Path

from livedeid.core.errors import UserError
from livedeid.core.strict_json import dumps
from livedeid.io.sinks import temp_file_beside

FIELDS = ("time_utc", "stream_s", "bpm", "quality", "snr_db", "signal_s")
FORMATS = (".csv", ".json")


def _utc(wall: float) -> str:
    return _dt.datetime.fromtimestamp(wall, _dt.timezone.utc).isoformat(timespec="milliseconds")


def reading_rows(readings: list, wall_times: list[float]) -> list[dict]:
    """Each reading (``HRReading``) with the wall-clock time it was made, as a row of FIELDS."""
    if len(readings) != len(wall_times):
        raise ValueError("every reading needs the time it was made")
    return [{"time_utc": _utc(wall), "stream_s": round(float(r.timestamp), 3),
             "bpm": None if r.bpm is None else round(float(r.bpm), 1), "quality": r.quality,
             "snr_db": round(float(r.snr_db), 2) if math.isfinite(r.snr_db) else None,
             "signal_s": round(float(r.signal_s), 1)} for r, wall in zip(readings, wall_times)]


def save_readings(path: str | os.PathLike, rows: list[dict], about: dict) -> Path:
    """Write ``rows`` (:func:`reading_rows`) as CSV or JSON by ``path``'s suffix; ``about``
    (source, method, window...) heads the JSON and is left out of the CSV."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise UserError(f"readings are saved as .csv or .json, not '{path.suffix or path.name}'")
    if suffix == ".json":
        text = dumps({**about, "saved_utc": _utc(_dt.datetime.now(_dt.timezone.utc).timestamp()),
                      "fields": list(FIELDS), "readings": rows}, indent=1) + "\n"
    else:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
        text = buffer.getvalue()
    tmp = temp_file_beside(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path
