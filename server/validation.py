"""Checks every model update must pass before aggregation: keys, shapes, dtypes, finite values."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from shared_models.arrays import as_tensor
from shared_models.messages import (CT_TRAIN_ANNOTATED, CT_TRAIN_POS, NUM_EXAMPLES, TRAIN_ANNOTATED, TRAIN_POS,
                                     count_key)


def reference_of(state: Mapping[str, np.ndarray]) -> dict[str, tuple[tuple[int, ...], str]]:
    return {k: (tuple(a.shape), str(a.dtype)) for k, a in state.items()}


def validate_update(
    update: Mapping[str, np.ndarray],
    reference: dict[str, tuple[tuple[int, ...], str]],
    groups: dict[str, list[str]] | None = None,
    values: bool = True,
) -> str | None:
    """None when the update (its unpacked views, server/records.py) is acceptable, else the reason it is
    rejected. With ``groups``, an update may carry a subset of the parameter groups, but each group it carries must
    be complete. ``values=False`` leaves the finite-values check to ``update_norms`` + ``nonfinite_reason`` (one pass
    over the values, not two)."""
    keys = set(update.keys())
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
    for k, a in update.items():
        shape, dtype = reference[k]
        if tuple(a.shape) != shape or str(a.dtype) != dtype:
            return f"{k}: shape {tuple(a.shape)} dtype {a.dtype}, expected {shape} {dtype}"
        if values and _nonfinite(a):
            return f"{k}: non-finite values"
    return None


def _nonfinite(v: np.ndarray) -> bool:
    v = v.reshape(-1)
    return v.dtype.kind == "f" and not all(np.isfinite(v[i:i + CHUNK]).all() for i in range(0, v.size, CHUNK))


REQUIRED_TRAIN_METRICS = (NUM_EXAMPLES,)
CT_GROUP_PREFIX = "ct."  # the CT model's groups (shared_models/ct/model.py)


def check_train_metrics(metrics, groups_sent: set[str], num_classes: int, num_ct_classes: int = 0) -> str | None:
    """None when a train reply's metric record has what aggregation needs (extra keys are ignored), else why not:
    per-class counts for the radiograph label set from a site that sent radiograph groups, for the CT label set
    from one that sent CT groups."""
    missing = [k for k in REQUIRED_TRAIN_METRICS if k not in metrics]
    missing += [count_key(g) for g in sorted(groups_sent) if count_key(g) not in metrics]
    lists = []
    if any(not g.startswith(CT_GROUP_PREFIX) for g in groups_sent) or not groups_sent:
        lists += [(TRAIN_POS, num_classes), (TRAIN_ANNOTATED, num_classes)]
    if any(g.startswith(CT_GROUP_PREFIX) for g in groups_sent):
        lists += [(CT_TRAIN_POS, num_ct_classes), (CT_TRAIN_ANNOTATED, num_ct_classes)]
    missing += [k for k, _ in lists if k not in metrics]
    if missing:
        return f"metric record lacks required keys {missing}"
    for k, n in lists:
        v = metrics[k]
        if not isinstance(v, list) or len(v) != n:
            return f"metric {k} must list {n} per-class counts"
    return None


CHUNK = 1 << 16  # elements per step for NumPy passes over a tensor
TORCH_CHUNK = 1 << 20  # elements per step for the norm: 4 MB temporaries, float32 sums accurate to ~1e-5


def squared_distance(a: np.ndarray, b: np.ndarray) -> float:
    """sum((a - b)^2) over a tensor, a chunk at a time (no temporary the size of the tensor), with torch (two
    threads, memory-bandwidth bound); each chunk's sum is added in float64. Not finite when ``a`` is not."""
    ta, tb = as_tensor(a.reshape(-1)), as_tensor(b.reshape(-1))
    if ta is None or tb is None or ta.dtype != tb.dtype:
        d = np.subtract(a, b, dtype=np.float64)
        return float(np.dot(d.reshape(-1), d.reshape(-1)))
    total = 0.0
    for i in range(0, ta.numel(), TORCH_CHUNK):
        d = ta[i:i + TORCH_CHUNK] - tb[i:i + TORCH_CHUNK]
        total += float(torch.dot(d, d))
    return total


def update_norms(arrays: dict[str, np.ndarray], current: dict[str, np.ndarray], groups: dict[str, list[str]]
                 ) -> dict[str, float]:
    """Per group the update carries, the L2 norm of (its values - the current global values) over float tensors
    (inf or nan when a value is not finite: see ``nonfinite_reason``)."""
    out = {}
    for group, keys in groups.items():
        if keys[0] in arrays:
            sq = sum(squared_distance(arrays[k], current[k])
                     for k in keys if np.issubdtype(current[k].dtype, np.floating))
            out[group] = sq ** 0.5
    return out


def nonfinite_reason(arrays: dict[str, np.ndarray], norms: dict[str, float], groups: dict[str, list[str]]
                     ) -> str | None:
    """Why an update whose norm is not finite is refused: the first tensor with a non-finite value, or an
    overflowing norm."""
    for group, norm in norms.items():
        if not math.isfinite(norm):
            for k in groups[group]:
                if _nonfinite(arrays[k]):
                    return f"{k}: non-finite values"
            return f"group {group}: the update's norm overflows"
    return None


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
