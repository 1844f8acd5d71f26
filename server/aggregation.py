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
import torch

from server.robust import RobustRule, combine
from shared_models.arrays import as_tensor

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
    return value.astype(like.dtype, copy=False)


CHUNK = 1 << 18  # elements per step: a 2 MB float64 staging buffer


def add_scaled(acc: np.ndarray, weight: float, x: np.ndarray) -> None:
    """acc += weight * x (acc float64) without a temporary the size of the tensor: a chunk of ``x`` is widened
    into a small float64 buffer, scaled, then added in place with torch (two threads); NumPy chunks where torch
    cannot wrap the arrays.

    The product is rounded before the sum, never fused: torch's ``add_(x, alpha=w)`` runs as a fused multiply-add,
    and fl(w_b * b + fl(w_a * a)) is not fl(w_a * a + fl(w_b * b)), so two sites' mean would depend on which reply
    arrived first (1 float64 ulp, amplified where the two terms nearly cancel, then by the server optimiser).
    Rounded products make two senders' sum exact-order independent; for three or more, float64 addition is still
    not associative (differences of an ulp of float64, rarely visible after the cast to float32)."""
    ta, tx = as_tensor(acc.reshape(-1)), as_tensor(np.asarray(x).reshape(-1))
    n = acc.size
    if ta is not None and tx is not None:
        buf = torch.empty(min(CHUNK, n), dtype=ta.dtype)
        for i in range(0, n, CHUNK):
            b = buf[:min(CHUNK, n - i)]
            b.copy_(tx[i:i + CHUNK])
            b.mul_(weight)
            ta[i:i + CHUNK].add_(b)
        return
    a, v = acc.reshape(-1), np.asarray(x).reshape(-1)
    for i in range(0, n, CHUNK):
        a[i:i + CHUNK] += weight * v[i:i + CHUNK].astype(np.float64)


class RunningMean:
    """The mean modes folded in one update at a time, so the server holds the global model, one accumulator per
    tensor and the update in flight, never every site's copy: ``add`` each update as it arrives, then ``result``.
    Sums are float64 (2x a float32 model) of rounded products (``add_scaled``): replies arrive in any order, and
    float32 sums or fused multiply-adds would make the result depend on it (a resumed run would then differ from an
    uninterrupted one); each group is divided by its senders' total count at the end, and ``result`` releases each
    accumulator as its tensor is finished."""

    def __init__(self, global_arrays: dict[str, np.ndarray], groups: dict[str, list[str]],
                 classifiers: dict[str, list[str]] | None = None, mode: str = "projection") -> None:
        if mode not in MODES:
            raise ValueError(f"aggregation mode {mode!r}; expected one of {MODES}")
        self.global_arrays, self.groups, self.mode = global_arrays, groups, mode
        self.rows = {g: set((classifiers or {}).get(g, [])) for g in groups} if mode == "projection+class" else {}
        self.sums: dict[str, np.ndarray] = {}
        self.total: dict[str, float] = {g: 0.0 for g in groups}
        self.contributors: dict[str, list[str]] = {g: [] for g in groups}
        self.pos_sums: dict[str, np.ndarray] = {}  # classifier keys: sum over sites of positives x rows
        self.pos_total: dict[str, np.ndarray] = {}  # group -> (C,) positives summed
        self.all_pos: dict[str, bool] = {g: True for g in groups}

    def add(self, u: SiteUpdate) -> None:
        for group, keys in self.groups.items():
            count = float(u.group_counts.get(group, 0))
            if count <= 0 or not all(k in u.arrays for k in keys):
                continue
            self.contributors[group].append(u.site)
            self.total[group] += count
            pos = None
            if self.rows.get(group):
                if group in u.class_pos and self.all_pos[group]:
                    pos = np.asarray(u.class_pos[group], dtype=np.float64)
                    self.pos_total[group] = self.pos_total.get(group, 0.0) + pos
                else:
                    self.all_pos[group] = False
            for k in keys:
                like = self.global_arrays[k]
                x = np.asarray(u.arrays[k])
                acc = self.sums.get(k)
                if acc is None:
                    acc = self.sums[k] = np.zeros(like.shape, np.float64)
                add_scaled(acc, count, x)
                if pos is not None and k in self.rows[group] and x.ndim >= 1 and x.shape[0] == pos.shape[0]:
                    ps = self.pos_sums.setdefault(k, np.zeros(like.shape, np.float64))
                    ps += pos.reshape(pos.shape + (1,) * (x.ndim - 1)) * x

    def result(self) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
        """New global arrays (a group nobody sent keeps its global value) and each group's contributors. The
        accumulators are released as each tensor is finished."""
        out = dict(self.global_arrays)
        for group, keys in self.groups.items():
            if not self.contributors[group]:
                continue
            for k in keys:
                value = self.sums.pop(k)
                value /= self.total[group]
                ps = self.pos_sums.pop(k, None)
                if ps is not None and self.all_pos[group]:
                    col = self.pos_total[group]
                    col = col.reshape(col.shape + (1,) * (ps.ndim - 1))
                    value = np.where(col > 0, ps / np.where(col > 0, col, 1.0), value)
                out[k] = _cast(value, self.global_arrays[k])
        return out, self.contributors


def aggregate(
    global_arrays: dict[str, np.ndarray],
    updates: list[SiteUpdate],
    groups: dict[str, list[str]],
    classifiers: dict[str, list[str]] | None = None,
    mode: str = "projection",
    robust: RobustRule | None = None,
    notes: list[str] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """New global arrays and, per group, the sites that contributed to it. Without a robust rule this is
    ``RunningMean`` over the updates. With a ``robust`` rule (server/robust.py) each group's float tensors are
    combined by that rule instead, which needs every sender's update at once (per-class row weights do not
    apply); sites the rule excluded are not contributors, and ``notes`` receives what the rule could not do."""
    if mode not in MODES:
        raise ValueError(f"aggregation mode {mode!r}; expected one of {MODES}")
    if robust is None or robust.name == "none":
        acc = RunningMean(global_arrays, groups, classifiers, mode)
        for u in updates:
            acc.add(u)
        return acc.result()
    out = dict(global_arrays)
    contributors: dict[str, list[str]] = {}
    for group, keys in groups.items():
        senders = [u for u in updates if u.group_counts.get(group, 0) > 0 and all(k in u.arrays for k in keys)]
        contributors[group] = [u.site for u in senders]
        if not senders:
            continue
        w = np.array([u.group_counts[group] for u in senders], dtype=np.float64)
        w /= w.sum()
        contributors[group] = _robust_group(out, global_arrays, senders, keys, w, robust, group, notes)
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


SERVER_OPTIMIZERS = ("none", "fedadam", "fedyogi", "fedavgm")
SERVER_LR_DEFAULTS = {"fedadam": 1e-2, "fedyogi": 1e-2, "fedavgm": 1.0}  # the run config's server-lr = 0
STATISTICS_SUFFIXES = ("running_mean", "running_var")  # normalisation statistics: averaged, never stepped


class ServerOptimizer:
    """A server step on the pseudo-gradient (the aggregate minus the current global model), per parameter; groups
    that no site sent get no step. FedAdam / FedYogi (Reddi et al., 2021) or FedAvgM (Hsu et al., 2019: heavy-ball
    momentum, ``v = momentum * v + delta``, ``w += eta * v``; eta 1 and momentum 0 is plain FedAvg). Integer buffers
    (batch-norm counters), batch-norm running statistics (an average of the sites' statistics is a statistic, a
    step on it is not) and keys without a pseudo-gradient pass through as aggregated."""

    def __init__(self, kind: str = "fedadam", eta: float | None = None, beta_1: float = 0.9, beta_2: float = 0.99,
                 tau: float = 1e-3, momentum: float = 0.9) -> None:
        if kind not in SERVER_OPTIMIZERS[1:]:
            raise ValueError(f"server optimizer {kind!r}; expected one of {SERVER_OPTIMIZERS[1:]}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"server momentum {momentum!r}; expected 0 <= momentum < 1")
        self.kind, self.beta_1, self.beta_2, self.tau, self.momentum = kind, beta_1, beta_2, tau, momentum
        self.eta = SERVER_LR_DEFAULTS[kind] if not eta else eta
        self.m: dict[str, np.ndarray] = {}  # fedavgm: the velocity
        self.v: dict[str, np.ndarray] = {}

    def step(self, current: dict[str, np.ndarray], aggregated: dict[str, np.ndarray],
             contributors: dict[str, list[str]], groups: dict[str, list[str]]) -> dict[str, np.ndarray]:
        out = dict(aggregated)
        for group, keys in groups.items():
            if not contributors.get(group):
                continue
            for k in keys:
                if not np.issubdtype(current[k].dtype, np.floating) or k.endswith(STATISTICS_SUFFIXES):
                    continue
                delta = aggregated[k].astype(np.float64) - current[k].astype(np.float64)
                if self.kind == "fedavgm":
                    m = self.momentum * self.m.get(k, np.zeros_like(delta)) + delta
                    self.m[k] = m
                    out[k] = (current[k] + self.eta * m).astype(current[k].dtype)
                    continue
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
