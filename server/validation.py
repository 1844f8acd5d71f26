"""Checks every model update must pass before aggregation: keys, shapes, dtypes, finite values."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord


def reference_of(arrays: ArrayRecord) -> dict[str, tuple[tuple[int, ...], str]]:
    return {k: (tuple(a.shape), str(a.dtype)) for k, a in arrays.items()}


def validate_update(
    arrays: ArrayRecord,
    reference: dict[str, tuple[tuple[int, ...], str]],
    groups: dict[str, list[str]] | None = None,
) -> str | None:
    """None when the update is acceptable, else the reason it is rejected. With ``groups``, an update may
    carry a subset of the parameter groups, but each group it carries must be complete."""
    keys = set(arrays.keys())
    extra = sorted(keys - set(reference))
    if groups is None and keys != set(reference):
        missing = sorted(set(reference) - keys)
        return f"parameter names differ from the global model (missing {missing[:3]}, unexpected {extra[:3]})"
    if extra:
        return f"unexpected parameter names {extra[:3]}"
    for group, members in (groups or {}).items():
        present = keys & set(members)
        if present and len(present) != len(members):
            return f"group {group} is incomplete ({len(present)} of {len(members)} tensors)"
    if not keys:
        return "empty update"
    for k, a in arrays.items():
        shape, dtype = reference[k]
        if tuple(a.shape) != shape or str(a.dtype) != dtype:
            return f"{k}: shape {tuple(a.shape)} dtype {a.dtype}, expected {shape} {dtype}"
        v = a.numpy()
        if v.dtype.kind == "f" and not np.isfinite(v).all():
            return f"{k}: non-finite values"
    return None
