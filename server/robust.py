"""Robust aggregation rules, applied per parameter group to the sites that sent the group (so a lateral expert is
judged among the sites that have lateral views, not against every site's absent copy).

Each rule works on the sites' updates to the group (their values minus the current global values, flattened and
concatenated over the group's float tensors; integer buffers keep the weighted mean):

- ``median``: coordinate-wise median (unweighted).
- ``trimmed-mean``: coordinate-wise mean after dropping the ``trim`` fraction at each end (unweighted).
- ``krum`` / ``multi-krum`` (Blanchard et al., NeurIPS 2017): each update's score is the summed squared distance to
  its n - f - 2 nearest others; Krum keeps the lowest-scoring update, Multi-Krum the n - f lowest (sample-weighted
  mean). They need n >= 2f + 3 senders; a group with fewer falls back to the median, and says so (a registry event).
- ``norm-clip``: each update's L2 norm is clipped to ``clip`` x the median norm of the group's updates this round,
  then the sample-weighted mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RULES = ("none", "median", "trimmed-mean", "krum", "multi-krum", "norm-clip")


@dataclass(frozen=True)
class RobustRule:
    name: str = "none"
    trim: float = 0.2  # trimmed-mean: fraction dropped at each end, per coordinate
    byzantine: int = 1  # krum / multi-krum: f, the malicious sites tolerated
    clip: float = 2.0  # norm-clip: bound as a multiple of the round's median update norm in the group

    def __post_init__(self) -> None:
        if self.name not in RULES:
            raise ValueError(f"robust-aggregation = {self.name!r}; expected one of {', '.join(RULES)}")
        if not 0 <= self.trim < 0.5:
            raise ValueError(f"robust-trim = {self.trim}; expected a fraction in [0, 0.5)")
        if self.byzantine < 0 or self.clip <= 0:
            raise ValueError("robust-byzantine must be >= 0 and robust-clip > 0")


def krum_scores(deltas: np.ndarray, f: int) -> np.ndarray:
    """Per row, the sum of squared distances to its n - f - 2 nearest other rows."""
    n = len(deltas)
    sq = (deltas * deltas).sum(1)
    dist = np.maximum(sq[:, None] + sq[None, :] - 2 * deltas @ deltas.T, 0.0)
    np.fill_diagonal(dist, np.inf)
    k = max(n - f - 2, 1)
    return np.sort(dist, axis=1)[:, :k].sum(1)


def combine(deltas: np.ndarray, weights: np.ndarray, rule: RobustRule) -> tuple[np.ndarray, np.ndarray, str | None]:
    """The robust update (P,) from the senders' updates (S, P) and sample weights (S,) (summing to 1); the weight
    each sender ended up with (0 = excluded); and a note when the rule could not run as asked."""
    s = len(deltas)
    if rule.name == "median" or (rule.name in ("krum", "multi-krum") and s < 2 * rule.byzantine + 3):
        note = None if rule.name == "median" else (
            f"{rule.name} needs at least {2 * rule.byzantine + 3} senders for f = {rule.byzantine}; "
            f"{s} sent this group, so it used the coordinate median")
        return np.median(deltas, axis=0), np.full(s, 1.0 / s), note
    if rule.name == "trimmed-mean":
        k = min(int(np.floor(rule.trim * s)), (s - 1) // 2)
        kept = np.sort(deltas, axis=0)[k:s - k]
        return kept.mean(0), np.full(s, 1.0 / s), None
    if rule.name in ("krum", "multi-krum"):
        scores = krum_scores(deltas, rule.byzantine)
        m = 1 if rule.name == "krum" else s - rule.byzantine
        chosen = np.argsort(scores, kind="stable")[:m]
        w = np.zeros(s)
        w[chosen] = weights[chosen] / weights[chosen].sum()
        return w @ deltas, w, None
    if rule.name == "norm-clip":
        norms = np.linalg.norm(deltas, axis=1)
        bound = rule.clip * float(np.median(norms))
        scale = np.minimum(1.0, bound / np.maximum(norms, 1e-12))
        return weights @ (deltas * scale[:, None]), weights, None
    return weights @ deltas, weights, None
