"""Parameter-group-aware aggregation of site updates.

The global model is organised in named groups (one per projection expert, later the router and shared
parts). Three modes:

- ``fedavg``: every site sends every group; each group is the sample-weighted mean over all sites (plain
  FedAvg: a lateral expert is averaged with copies from sites that saw no lateral view).
- ``projection``: a site sends only the groups it has data for, with the number of samples behind each;
  each group is averaged over the sites that sent it, weighted by those counts. A group nobody sent keeps
  its global value.
- ``projection+class``: as ``projection``, and the rows of each expert's classifier (one per class) are
  averaged with weights from the sites' per-class positive counts in that group; a class no site has
  positives for falls back to the group's sample weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from server.robust import RobustRule, combine

MODES = ("fedavg", "projection", "projection+class")


@dataclass
class SiteUpdate:
    site: str
    arrays: dict[str, np.ndarray]  # whole groups only, a subset of the global keys
    group_counts: dict[str, float]  # samples behind each group the site sent
    class_pos: dict[str, np.ndarray] = field(default_factory=dict)  # group -> (C,) positives


def _cast(value: np.ndarray, like: np.ndarray) -> np.ndarray:
    if np.issubdtype(like.dtype, np.integer):
        return np.rint(value).astype(like.dtype)
    return value.astype(like.dtype)


def aggregate(
    global_arrays: dict[str, np.ndarray],
    updates: list[SiteUpdate],
    groups: dict[str, list[str]],
    classifiers: dict[str, list[str]] | None = None,
    mode: str = "projection",
    robust: RobustRule | None = None,
    notes: list[str] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """New global arrays and, per group, the sites that contributed to it. With a ``robust`` rule
    (server/robust.py) each group's float tensors are combined by that rule instead (per-class row weights do not
    apply); sites the rule excluded are not contributors, and ``notes`` receives what the rule could not do."""
    if mode not in MODES:
        raise ValueError(f"aggregation mode {mode!r}; expected one of {MODES}")
    out = dict(global_arrays)
    contributors: dict[str, list[str]] = {}
    for group, keys in groups.items():
        senders = [u for u in updates if u.group_counts.get(group, 0) > 0 and all(k in u.arrays for k in keys)]
        contributors[group] = [u.site for u in senders]
        if not senders:
            continue
        w = np.array([u.group_counts[group] for u in senders], dtype=np.float64)
        w /= w.sum()
        if robust is not None and robust.name != "none":
            contributors[group] = _robust_group(out, global_arrays, senders, keys, w, robust, group, notes)
            continue
        rows = set((classifiers or {}).get(group, [])) if mode == "projection+class" else set()
        pos = None
        if rows and all(group in u.class_pos for u in senders):
            pos = np.stack([np.asarray(u.class_pos[group], dtype=np.float64) for u in senders])  # (S, C)
            col = pos.sum(0)
            pos = np.where(col > 0, pos / np.where(col > 0, col, 1.0), w[:, None])  # per-class site weights
        for k in keys:
            stack = np.stack([np.asarray(u.arrays[k], dtype=np.float64) for u in senders])
            if pos is not None and k in rows and stack.shape[1] == pos.shape[1]:
                cw = pos.reshape(pos.shape + (1,) * (stack.ndim - 2))
                value = (stack * cw).sum(0)
            else:
                value = np.tensordot(w, stack, axes=1)
            out[k] = _cast(value, global_arrays[k])
    return out, contributors


def _robust_group(out: dict[str, np.ndarray], global_arrays: dict[str, np.ndarray], senders: list[SiteUpdate],
                  keys: list[str], w: np.ndarray, rule: RobustRule, group: str, notes: list[str] | None) -> list[str]:
    floats = [k for k in keys if np.issubdtype(global_arrays[k].dtype, np.floating)]
    for k in set(keys) - set(floats):  # integer buffers (batch-norm counters): the weighted mean
        value = np.tensordot(w, np.stack([np.asarray(u.arrays[k], dtype=np.float64) for u in senders]), axes=1)
        out[k] = _cast(value, global_arrays[k])
    if not floats:
        return [u.site for u in senders]
    current = np.concatenate([global_arrays[k].astype(np.float64).ravel() for k in floats])
    deltas = np.stack([np.concatenate([np.asarray(u.arrays[k], dtype=np.float64).ravel() for k in floats])
                       for u in senders]) - current
    update, used, note = combine(deltas, w, rule)
    if note and notes is not None:
        notes.append(f"group {group}: {note}")
    value, start = current + update, 0
    for k in floats:
        size = global_arrays[k].size
        out[k] = _cast(value[start:start + size].reshape(global_arrays[k].shape), global_arrays[k])
        start += size
    return [u.site for u, x in zip(senders, used) if x > 0]


SERVER_OPTIMIZERS = ("none", "fedadam", "fedyogi")


class ServerOptimizer:
    """FedAdam / FedYogi (Reddi et al., 2021) applied per parameter: the aggregate minus the current global
    model is a pseudo-gradient; groups that no site sent get no step. Integer buffers (batch-norm counters)
    and keys without a pseudo-gradient pass through unchanged."""

    def __init__(self, kind: str = "fedadam", eta: float = 1e-2, beta_1: float = 0.9, beta_2: float = 0.99,
                 tau: float = 1e-3) -> None:
        if kind not in SERVER_OPTIMIZERS[1:]:
            raise ValueError(f"server optimizer {kind!r}; expected one of {SERVER_OPTIMIZERS[1:]}")
        self.kind, self.eta, self.beta_1, self.beta_2, self.tau = kind, eta, beta_1, beta_2, tau
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}

    def step(self, current: dict[str, np.ndarray], aggregated: dict[str, np.ndarray],
             contributors: dict[str, list[str]], groups: dict[str, list[str]]) -> dict[str, np.ndarray]:
        out = dict(aggregated)
        for group, keys in groups.items():
            if not contributors.get(group):
                continue
            for k in keys:
                if not np.issubdtype(current[k].dtype, np.floating):
                    continue
                delta = aggregated[k].astype(np.float64) - current[k].astype(np.float64)
                m = self.beta_1 * self.m.get(k, np.zeros_like(delta)) + (1 - self.beta_1) * delta
                v_prev = self.v.get(k, np.full_like(delta, self.tau**2))
                sq = delta * delta
                if self.kind == "fedadam":
                    v = self.beta_2 * v_prev + (1 - self.beta_2) * sq
                else:  # fedyogi
                    v = v_prev - (1 - self.beta_2) * sq * np.sign(v_prev - sq)
                self.m[k], self.v[k] = m, v
                out[k] = (current[k] + self.eta * m / (np.sqrt(v) + self.tau)).astype(current[k].dtype)
        return out
