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


REQUIRED_TRAIN_METRICS = ("num-examples", "train_pos", "train_annotated")


def check_train_metrics(metrics, groups_sent: set[str], num_classes: int) -> str | None:
    """None when a train reply's metric record has what aggregation needs (extra keys are ignored), else why not."""
    missing = [k for k in REQUIRED_TRAIN_METRICS if k not in metrics]
    missing += [f"count.{g}" for g in sorted(groups_sent) if f"count.{g}" not in metrics]
    if missing:
        return f"metric record lacks required keys {missing}"
    for k in ("train_pos", "train_annotated"):
        v = metrics[k]
        if not isinstance(v, list) or len(v) != num_classes:
            return f"metric {k} must list {num_classes} per-class counts"
    return None


def update_norms(arrays: dict[str, np.ndarray], current: dict[str, np.ndarray], groups: dict[str, list[str]]
                 ) -> dict[str, float]:
    """Per group the update carries, the L2 norm of (its values - the current global values) over float tensors."""
    out = {}
    for group, keys in groups.items():
        if keys[0] in arrays:
            sq = sum(float(((arrays[k].astype(np.float64) - current[k].astype(np.float64)) ** 2).sum())
                     for k in keys if np.issubdtype(current[k].dtype, np.floating))
            out[group] = sq ** 0.5
    return out


class NormHistory:
    """Per group, the update norms accepted in recent rounds. An update whose norm in a group exceeds ``factor`` x
    the median of that history is rejected (once at least ``min_history`` norms are known; ``factor`` 0: off)."""

    def __init__(self, factor: float = 10.0, window: int = 50, min_history: int = 3) -> None:
        self.factor, self.window, self.min_history = factor, window, min_history
        self.history: dict[str, list[float]] = {}

    def check(self, norms: dict[str, float]) -> str | None:
        if self.factor <= 0:
            return None
        for group, norm in norms.items():
            past = self.history.get(group, [])
            if len(past) >= self.min_history:
                bound = self.factor * float(np.median(past))
                if norm > bound:
                    return (f"group {group}: update norm {norm:.3g} exceeds {self.factor:g} x the median of recent "
                            f"accepted updates ({bound:.3g})")
        return None

    def record(self, norms: dict[str, float]) -> None:
        for group, norm in norms.items():
            self.history.setdefault(group, []).append(norm)
            del self.history[group][:-self.window]
