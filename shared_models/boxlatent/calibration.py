"""Calibration of multi-label probabilities: one temperature fitted on a site's validation split (negative log
likelihood over annotated entries), Brier score, expected calibration error (10 equal-width bins over every
annotated entry), and confidence tiers for the report."""

from __future__ import annotations

import numpy as np
import torch

TIERS = ((0.85, "high"), (0.6, "moderate"), (0.0, "low"))


def fit_temperature(logits: np.ndarray, targets: np.ndarray, mask: np.ndarray, steps: int = 200) -> float:
    """T > 0 minimising the masked binary cross-entropy of sigmoid(logits / T) (LBFGS on log T)."""
    x = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(targets, dtype=torch.float64)
    m = torch.as_tensor(mask, dtype=torch.float64)
    if m.sum() == 0:
        raise ValueError("temperature scaling needs annotated validation entries; none were given")
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(x / log_t.exp(), y, reduction="none") * m
                ).sum() / m.sum()
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


def _annotated(probs, targets, mask) -> tuple[np.ndarray, np.ndarray]:
    keep = np.asarray(mask) > 0
    return np.asarray(probs, dtype=np.float64)[keep], (np.asarray(targets) > 0.5)[keep].astype(np.float64)


def reliability_table(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, bins: int = 10) -> np.ndarray:
    """(bins, 2, 3): per equal-width probability bin (right-closed, the first [0, 1/bins]) and label (0, 1), the
    count of annotated entries, the sum of their probabilities and the sum of squares. Sums over sites pool
    exactly, and give the Brier score and the ECE exactly (``brier_from_table``, ``ece_from_table``)."""
    p, y = _annotated(probs, targets, mask)
    idx = np.clip(np.ceil(p * bins).astype(int) - 1, 0, bins - 1)
    table = np.zeros((bins, 2, 3))
    for label in (0, 1):
        sel = y == label
        table[:, label, 0] = np.bincount(idx[sel], minlength=bins)
        table[:, label, 1] = np.bincount(idx[sel], weights=p[sel], minlength=bins)
        table[:, label, 2] = np.bincount(idx[sel], weights=p[sel] ** 2, minlength=bins)
    return table


def brier_from_table(table: np.ndarray) -> float:
    """sum (p - y)^2 / n = (sum p^2 - 2 sum_{y=1} p + n_{y=1}) / n."""
    n = table[..., 0].sum()
    if n == 0:
        return float("nan")
    return float((table[..., 2].sum() - 2 * table[:, 1, 1].sum() + table[:, 1, 0].sum()) / n)


def ece_from_table(table: np.ndarray) -> float:
    """sum_b (n_b / n) |mean(y in b) - mean(p in b)| = sum_b |sum_b y - sum_b p| / n."""
    n = table[..., 0].sum()
    if n == 0:
        return float("nan")
    return float(np.abs(table[:, 1, 0] - table[..., 1].sum(1)).sum() / n)


def brier_score(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> float:
    """Mean squared error of the probabilities over annotated entries."""
    return brier_from_table(reliability_table(probs, targets, mask))


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, bins: int = 10) -> float:
    """sum_b (n_b / n) |mean(y in b) - mean(p in b)| over equal-width probability bins (right-closed, first
    bin [0, 1/bins])."""
    return ece_from_table(reliability_table(probs, targets, mask, bins))


def calibration_ci(table: np.ndarray, replicates: int, seed: int = 0, level: float = 0.95
                   ) -> dict[str, tuple[float, float]]:
    """Percentile intervals of the Brier score and the ECE from a pooled reliability table: each replicate
    redraws the entries' cells multinomially and keeps each cell's mean p and p^2 (the spread of p inside a
    bin is not in the table, so the intervals are slightly narrow)."""
    counts = table[..., 0].reshape(-1)
    n = int(counts.sum())
    if n == 0 or replicates <= 0:
        return {}
    mean = np.divide(table[..., 1:], table[..., :1], out=np.zeros_like(table[..., 1:]), where=table[..., :1] > 0)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, counts / n, size=replicates).reshape(replicates, *table.shape[:2], 1)
    out = {"brier": [], "ece": []}
    for d in draws:
        t = np.concatenate([d, d * mean], axis=-1)
        out["brier"].append(brier_from_table(t))
        out["ece"].append(ece_from_table(t))
    a = (1 - level) / 2
    return {k: (float(np.quantile(v, a)), float(np.quantile(v, 1 - a))) for k, v in out.items()}


def confidence_tier(probability: float) -> str:
    """How sure the model is of its call (positive or negative): max(p, 1 - p) in tiers high / moderate / low."""
    sure = max(probability, 1 - probability)
    return next(name for threshold, name in TIERS if sure >= threshold)
