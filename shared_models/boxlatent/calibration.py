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
    return float(log_t.exp())


def _annotated(probs, targets, mask) -> tuple[np.ndarray, np.ndarray]:
    keep = np.asarray(mask) > 0
    return np.asarray(probs, dtype=np.float64)[keep], (np.asarray(targets) > 0.5)[keep].astype(np.float64)


def brier_score(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> float:
    """Mean squared error of the probabilities over annotated entries."""
    p, y = _annotated(probs, targets, mask)
    return float(np.mean((p - y) ** 2)) if p.size else float("nan")


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, bins: int = 10) -> float:
    """sum_b (n_b / n) |mean(y in b) - mean(p in b)| over equal-width probability bins (right-closed, first
    bin [0, 1/bins])."""
    p, y = _annotated(probs, targets, mask)
    if not p.size:
        return float("nan")
    idx = np.clip(np.ceil(p * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            total += sel.sum() / p.size * abs(y[sel].mean() - p[sel].mean())
    return float(total)


def confidence_tier(probability: float) -> str:
    """How sure the model is of its call (positive or negative): max(p, 1 - p) in tiers high / moderate / low."""
    sure = max(probability, 1 - probability)
    return next(name for threshold, name in TIERS if sure >= threshold)
