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
    auroc = float(((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum())
                  / (len(pos) * len(neg)))
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


def youden_from_histograms(pos_hist: np.ndarray, neg_hist: np.ndarray) -> dict[str, np.ndarray]:
    """Per class from (C, B) score histograms (bins in increasing score order; sites' histograms summed): the bin
    whose lower edge is the Youden threshold (predict positive from that bin up), TPR - FPR there, and F1 there;
    NaN where a class lacks positives or negatives. Equals ``youden`` on the bin-quantised scores."""
    pos, neg = np.asarray(pos_hist, np.float64), np.asarray(neg_hist, np.float64)
    tp = np.cumsum(pos[:, ::-1], 1)[:, ::-1]  # tp[:, b]: positives scored in bin b or above
    fp = np.cumsum(neg[:, ::-1], 1)[:, ::-1]
    p, n = pos.sum(1), neg.sum(1)
    c = pos.shape[0]
    out = {k: np.full(c, np.nan) for k in ("bin", "j", "f1")}
    ok = (p > 0) & (n > 0)
    if not ok.any():
        return out
    occupied = (pos + neg) > 0  # thresholds at distinct (quantised) scores only
    j = np.where(occupied, tp / np.maximum(p, 1)[:, None] - fp / np.maximum(n, 1)[:, None], -np.inf)
    best = j.shape[1] - 1 - j[:, ::-1].argmax(1)  # of equal J the highest threshold, as ``youden``
    rows = np.arange(c)
    tp_b, fp_b = tp[rows, best], fp[rows, best]
    f1 = 2 * tp_b / np.maximum(2 * tp_b + fp_b + (p - tp_b), 1)
    out["bin"] = np.where(ok, best, np.nan)
    out["j"] = np.where(ok, j[rows, best], np.nan)
    out["f1"] = np.where(ok, f1, np.nan)
    return out


def retrieval_hits(text: np.ndarray, volume: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)) -> dict[int, int]:
    """Reports whose own volume ranks below K (``recall_at_k`` x the number of reports): what a site sends, so the
    server can pool R@K over every site's queries, each against its own site's gallery."""
    n = len(text)
    return {k: int(round(r * n)) for k, r in recall_at_k(text, volume, ks).items()} if n else {k: 0 for k in ks}
