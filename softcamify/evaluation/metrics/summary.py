"""JSON-safe values and per-image summaries: :func:`json_safe` and :func:`aggregate` (numpy only)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

__all__ = ["aggregate", "json_safe"]


def json_safe(obj: Any) -> Any:
    """Return ``obj`` with numpy scalars/arrays turned into Python values and ``nan``/``inf`` into ``None``.

    Dicts, lists and tuples are converted recursively (tuples become lists), so ``json.dumps`` of the
    result is strict JSON.
    """
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


def aggregate(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean, standard deviation (population, ddof = 0) and count of every numeric key over records.

    ``nan``/``None`` values are skipped (e.g. localisation scores of images without an annotation) and
    ``n`` counts the values used; booleans count as 0/1; non-numeric keys are ignored. JSON-safe: a key
    with no usable value has ``mean``/``std`` ``None`` and ``n`` 0. Keys keep first-seen order.
    """
    values: dict[str, list[float]] = {}
    for rec in records:
        for key, v in rec.items():
            if isinstance(v, (bool, np.bool_, numbers.Real)):
                values.setdefault(key, [])
                f = float(v)
                if math.isfinite(f):
                    values[key].append(f)
            elif v is None:
                values.setdefault(key, [])
    out: dict[str, dict[str, Any]] = {}
    for key, vals in values.items():
        arr = np.asarray(vals, dtype=np.float64)
        out[key] = {
            "mean": float(arr.mean()) if arr.size else None,
            "std": float(arr.std()) if arr.size else None,
            "n": int(arr.size),
        }
    return out
