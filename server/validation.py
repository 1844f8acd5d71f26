"""Checks every model update must pass before aggregation: keys, shapes, dtypes, finite values."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord


def reference_of(arrays: ArrayRecord) -> dict[str, tuple[tuple[int, ...], str]]:
    return {k: (tuple(a.shape), str(a.dtype)) for k, a in arrays.items()}


def validate_update(arrays: ArrayRecord, reference: dict[str, tuple[tuple[int, ...], str]]) -> str | None:
    """None when the update is acceptable, else the reason it is rejected."""
    keys = set(arrays.keys())
    if keys != set(reference):
        missing, extra = sorted(set(reference) - keys), sorted(keys - set(reference))
        return f"parameter names differ from the global model (missing {missing[:3]}, unexpected {extra[:3]})"
    for k, a in arrays.items():
        shape, dtype = reference[k]
        if tuple(a.shape) != shape or str(a.dtype) != dtype:
            return f"{k}: shape {tuple(a.shape)} dtype {a.dtype}, expected {shape} {dtype}"
        v = a.numpy()
        if v.dtype.kind == "f" and not np.isfinite(v).all():
            return f"{k}: non-finite values"
    return None
