"""JSON that every parser reads: no NaN, no Infinity.

Python's ``json`` writes ``NaN`` and ``Infinity`` by default, which JavaScript's
``JSON.parse`` and most other languages' parsers reject. Reports say "no value" with
``null`` instead: a heart rate without a reading, an SNR of a window with no signal, a
PSNR of identical images.
"""
from __future__ import annotations

import json
import math
from typing import Any


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (at any depth) replaced by None; numpy
    scalars become plain numbers, tuples become lists."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()  # numpy scalar
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(value: Any, **kwargs) -> str:
    """``json.dumps`` of :func:`finite` ``(value)``, refusing anything still non-finite."""
    return json.dumps(finite(value), allow_nan=False, **kwargs)
