"""CT metrics: text-to-volume recall at K, per-class AUROC with F1 at the Youden threshold, localisation MAE in mm."""

from __future__ import annotations

import numpy as np


def recall_at_k(text: np.ndarray, volume: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)) -> dict[int, float]:
    """Row i of ``text`` is the report of volume i. A report's rank is the number of volumes more similar to it
    (cosine) than its own volume (ties count in its favour); R@K is the share of reports ranked below K."""
    t = text / np.linalg.norm(text, axis=1, keepdims=True).clip(min=1e-12)
    v = volume / np.linalg.norm(volume, axis=1, keepdims=True).clip(min=1e-12)
    sim = t @ v.T
    own = np.diag(sim)
    rank = (sim > own[:, None]).sum(1)
    return {k: float((rank < k).mean()) for k in ks}


def youden(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    """(AUROC, threshold maximising TPR - FPR, F1 at that threshold) for one class; predictions are score >=
    threshold. NaN when the class lacks positives or negatives."""
    y = labels.astype(bool)
    if y.all() or not y.any():
        return float("nan"), float("nan"), float("nan")
    order = np.argsort(-scores, kind="stable")
    s, yy = scores[order], y[order]
    tp, fp = np.cumsum(yy), np.cumsum(~yy)
    last = np.r_[s[1:] != s[:-1], True]  # thresholds at distinct scores
    tpr, fpr = tp[last] / y.sum(), fp[last] / (~y).sum()
    pos, neg = scores[y], scores[~y]
    auroc = float(((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg)))
    best = int(np.argmax(tpr - fpr))
    tp_b, fp_b = tp[last][best], fp[last][best]
    fn_b = y.sum() - tp_b
    f1 = float(2 * tp_b / (2 * tp_b + fp_b + fn_b))
    return auroc, float(s[last][best]), f1


def per_class_youden(scores: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """Per class over its annotated cases: AUROC, Youden threshold, F1 there."""
    out = np.full((3, scores.shape[1]), np.nan)
    for c in range(scores.shape[1]):
        m = mask[:, c] > 0
        out[:, c] = youden(scores[m, c], targets[m, c])
    return {"auroc": out[0], "threshold": out[1], "f1": out[2]}


def localisation_mae_mm(predicted: np.ndarray, target: np.ndarray, spacing_mm: float | np.ndarray) -> float:
    """Mean |predicted - target| depth positions x mm per position."""
    if len(predicted) == 0:
        return float("nan")
    return float(np.mean(np.abs(np.asarray(predicted, float) - np.asarray(target, float)) * spacing_mm))
