"""CXR-LT metrics: per-class AP / AUROC / F1, macro means, head-medium-tail groups, and the
privacy-preserving binned form used in federated evaluation.

Conventions (the CXR-LT challenges' evaluation code):
- AP_c is scikit-learn's ``average_precision_score`` (step-wise, tied scores form one threshold).
- AUROC_c is scikit-learn's ``roc_auc_score`` (trapezoidal ROC; ties count one half).
- F1_c thresholds probabilities like the organisers' ``y_hat.round()``: positive iff p > 0.5.
- Only annotated entries (mask 1) count. AP and F1 need at least one positive, AUROC a positive and a
  negative; undefined values are NaN and macro means skip them (mAP = mean over classes with >= 1 positive).
- Groups by training prevalence: head > 10 %, medium 1-10 %, tail < 1 %.

Both exact and binned metrics go through one core (`_ranking_metrics`) that works on counts of positives
and negatives per distinct score, from highest to lowest: distinct scores for exact metrics, score bins for
histograms. Pooled metrics from histograms therefore equal scikit-learn on the bin-quantised scores exactly;
the only error against exact pooled metrics is the quantisation (see `HistogramSpec`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HEAD_THRESHOLD = 0.10
TAIL_THRESHOLD = 0.01
GROUPS = ("head", "medium", "tail")
METRIC_NAMES = ("ap", "auroc", "f1")


def _ranking_metrics(pos: np.ndarray, neg: np.ndarray) -> tuple[float, float]:
    """AP and AUROC from per-threshold counts ordered from the highest score to the lowest."""
    ap, auroc = _ranking_metrics_rows(np.asarray(pos)[None], np.asarray(neg)[None])
    return float(ap[0]), float(auroc[0])


def _ranking_metrics_rows(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AP and AUROC of each row of (R, B) per-threshold counts, ordered from the highest score to the lowest (the
    bootstrap's replicates in one call: one call per replicate took ~0.8 s per zero-shot family and round)."""
    pos = np.asarray(pos, dtype=np.float64)
    neg = np.asarray(neg, dtype=np.float64)
    n_pos, n_neg = pos.sum(1), neg.sum(1)
    tp, fp = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        # recall only increases where positives sit; there tp > 0
        precision = np.where(pos > 0, tp / np.where(pos > 0, tp + fp, 1.0), 0.0)
        ap = (pos * precision).sum(1) / n_pos
        # Mann-Whitney with ties = trapezoidal ROC area: P(s+ > s-) + 0.5 P(s+ = s-); fp - neg: negatives strictly
        # above each threshold group
        auroc = (pos * (n_neg[:, None] - (fp - neg) - 0.5 * neg)).sum(1) / (n_pos * n_neg)
    ap[n_pos == 0] = np.nan
    auroc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return ap, auroc


def _f1(tp: float, fp: float, fn: float) -> float:
    denom = 2 * tp + fp + fn
    return float(2 * tp / denom) if denom > 0 else 0.0


def per_class_metrics(
    y: np.ndarray, scores: np.ndarray, mask: np.ndarray | None = None, threshold: float = 0.5
) -> dict[str, np.ndarray]:
    """Exact per-class metrics for (N, C) targets and scores; returns arrays of length C."""
    y = np.asarray(y, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 2:
        raise ValueError(f"targets {y.shape} and scores {s.shape} must both be (N, C)")
    m = np.ones_like(y, dtype=bool) if mask is None else np.asarray(mask) > 0
    c = y.shape[1]
    out = {k: np.full(c, np.nan) for k in METRIC_NAMES}
    out["n_pos"] = np.zeros(c, dtype=np.int64)
    out["n_neg"] = np.zeros(c, dtype=np.int64)
    for j in range(c):
        sel = m[:, j]
        yj, sj = y[sel, j] > 0.5, s[sel, j]
        n_pos = int(yj.sum())
        out["n_pos"][j], out["n_neg"][j] = n_pos, int(sel.sum()) - n_pos
        if not sel.any():
            continue
        uniq, inv = np.unique(-sj, return_inverse=True)  # ascending -s = descending s
        pos = np.bincount(inv, weights=yj.astype(np.float64), minlength=len(uniq))
        neg = np.bincount(inv, minlength=len(uniq)) - pos
        out["ap"][j], out["auroc"][j] = _ranking_metrics(pos, neg)
        if n_pos > 0:
            pred = sj > threshold
            tp = float(np.sum(pred & yj))
            out["f1"][j] = _f1(tp, float(np.sum(pred & ~yj)), float(n_pos - tp))
    return out


def prevalence(positives: np.ndarray, annotated: np.ndarray, empty: float = float("nan")) -> np.ndarray:
    """Per-class positives / annotated counts; ``empty`` where a class was never annotated."""
    positives = np.asarray(positives, dtype=np.float64)
    annotated = np.asarray(annotated, dtype=np.float64)
    return np.divide(positives, annotated, out=np.full_like(positives, empty), where=annotated > 0)


def prevalence_groups(train_pos: np.ndarray, train_n: np.ndarray) -> np.ndarray:
    """'head' / 'medium' / 'tail' per class from training counts; '' where nothing was annotated."""
    prev = prevalence(train_pos, train_n)
    groups = np.full(prev.shape, "", dtype=object)
    groups[prev > HEAD_THRESHOLD] = "head"
    groups[(prev >= TAIL_THRESHOLD) & (prev <= HEAD_THRESHOLD)] = "medium"
    groups[prev < TAIL_THRESHOLD] = "tail"
    return groups


def group_codes(groups: np.ndarray) -> list[int]:
    """Groups as the integers the evaluate config carries (``class-bands``): index in GROUPS, -1 for none."""
    return [GROUPS.index(g) if g in GROUPS else -1 for g in groups]


def band_means(values: np.ndarray, codes: np.ndarray) -> list[float]:
    """Per group (head, medium, tail), the mean of ``values`` over the classes coded with it (NaN where none is
    finite)."""
    values, codes = np.asarray(values, np.float64), np.asarray(codes)
    return [_nanmean(values[codes == i]) for i in range(len(GROUPS))]


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")


def summarise(per_class: dict[str, np.ndarray], groups: np.ndarray | None = None) -> dict[str, float]:
    """Macro means (mAP, mAUC, mF1) and, given groups, head/medium/tail mAP."""
    out = {
        "mAP": _nanmean(per_class["ap"]),
        "mAUC": _nanmean(per_class["auroc"]),
        "mF1": _nanmean(per_class["f1"]),
    }
    if groups is not None:
        for g in GROUPS:
            sel = np.asarray(groups) == g
            out[f"{g}_mAP"] = _nanmean(np.asarray(per_class["ap"])[sel]) if sel.any() else float("nan")
    return out


def constant_predictor_ap(n_pos: np.ndarray, n_neg: np.ndarray) -> np.ndarray:
    """AP of a constant score: every sample ties, so AP = the test prevalence (NaN without positives)."""
    n_pos = np.asarray(n_pos, dtype=np.float64)
    n = n_pos + np.asarray(n_neg, dtype=np.float64)
    return np.divide(n_pos, n, out=np.full_like(n_pos, np.nan), where=n_pos > 0)


@dataclass(frozen=True)
class HistogramSpec:
    """Score bins for federated evaluation: uniform in logit space on [-limit, limit], right-closed.

    Logit bins keep resolution where rare-class scores live (near 0 and 1), and a bin edge sits at logit 0
    (p = 0.5), so F1 at 0.5 is exact from the histogram. Scores beyond +-limit fall into the end bins.
    AP and AUROC from the histogram equal scikit-learn on the quantised scores; against raw scores the
    error comes only from pairs tied inside one bin (measured in tests/test_metrics.py).
    """

    bins: int = 240
    limit: float = 12.0

    def __post_init__(self) -> None:
        if self.bins % 2:
            raise ValueError("HistogramSpec.bins must be even so that p = 0.5 is a bin edge")

    @property
    def inner_edges(self) -> np.ndarray:
        return np.linspace(-self.limit, self.limit, self.bins + 1)[1:-1]

    def bin_index(self, probs: np.ndarray) -> np.ndarray:
        p = np.clip(np.asarray(probs, dtype=np.float64), 1e-300, 1.0)
        with np.errstate(divide="ignore"):
            logit = np.log(p) - np.log1p(-np.minimum(p, 1.0 - 1e-16))
        logit = np.where(p >= 1.0, np.inf, logit)
        return np.searchsorted(self.inner_edges, logit, side="left")  # bin k covers (e_k, e_k+1]

    def histograms(
        self, y: np.ndarray, probs: np.ndarray, mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(C, bins) integer counts of positive and negative annotated entries per score bin."""
        y = np.asarray(y) > 0.5
        idx = self.bin_index(probs)
        m = np.ones(y.shape, dtype=bool) if mask is None else np.asarray(mask) > 0
        c = y.shape[1]
        pos = np.zeros((c, self.bins), dtype=np.int64)
        neg = np.zeros((c, self.bins), dtype=np.int64)
        for j in range(c):
            sel = m[:, j]
            pos[j] = np.bincount(idx[sel & y[:, j], j], minlength=self.bins)
            neg[j] = np.bincount(idx[sel & ~y[:, j], j], minlength=self.bins)
        return pos, neg

    def metrics(self, pos_hist: np.ndarray, neg_hist: np.ndarray) -> dict[str, np.ndarray]:
        """Per-class metrics from (C, bins) histograms, with the same keys as `per_class_metrics`."""
        pos_hist = np.asarray(pos_hist, dtype=np.float64)
        neg_hist = np.asarray(neg_hist, dtype=np.float64)
        c = pos_hist.shape[0]
        out = {k: np.full(c, np.nan) for k in METRIC_NAMES}
        out["n_pos"] = pos_hist.sum(1).astype(np.int64)
        out["n_neg"] = neg_hist.sum(1).astype(np.int64)
        half = self.bins // 2
        for j in range(c):
            out["ap"][j], out["auroc"][j] = _ranking_metrics(pos_hist[j, ::-1], neg_hist[j, ::-1])
            if out["n_pos"][j] > 0:
                tp, fp = pos_hist[j, half:].sum(), neg_hist[j, half:].sum()
                out["f1"][j] = _f1(tp, fp, out["n_pos"][j] - tp)
        return out


def bootstrap_macro(pos_hist: np.ndarray, neg_hist: np.ndarray, spec: HistogramSpec, replicates: int = 1000,
                    seed: int = 0, level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile confidence intervals of mAP, mAUC and mF1 from (C, bins) score histograms: a stratified
    bootstrap per class (each replicate redraws the class's positives and negatives, in their observed numbers,
    from its own histograms) and the macro mean per replicate. Classes are resampled independently: the
    correlation between classes of one image is not in the histograms, so intervals may be slightly narrower
    than an image-level bootstrap's."""
    pos_hist = np.asarray(pos_hist, dtype=np.int64)
    neg_hist = np.asarray(neg_hist, dtype=np.int64)
    rng = np.random.default_rng(seed)
    half = spec.bins // 2
    values = {k: np.full((replicates, len(pos_hist)), np.nan) for k in ("mAP", "mAUC", "mF1")}
    for j, (p, n) in enumerate(zip(pos_hist, neg_hist)):
        n_pos, n_neg = int(p.sum()), int(n.sum())
        if n_pos == 0:
            continue
        # Only the bins holding a score can be redrawn, and empty bins neither rank nor consume the generator's
        # draws, so the bootstrap runs on those (and the last bin, which takes a multinomial's remainder): the same
        # draws as over all bins, ~20x less work with 1,000 bins. The replicates' metrics come as one array op.
        used = np.union1d(np.flatnonzero(p + n), [len(p) - 1])
        ps = rng.multinomial(n_pos, p[used] / n_pos, size=replicates)
        ns = rng.multinomial(n_neg, n[used] / n_neg, size=replicates) if n_neg else np.zeros_like(ps)
        values["mAP"][:, j], values["mAUC"][:, j] = _ranking_metrics_rows(ps[:, ::-1], ns[:, ::-1])
        upper = used >= half
        tp, fp = ps[:, upper].sum(1), ns[:, upper].sum(1)
        values["mF1"][:, j] = 2 * tp / (2 * tp + fp + (n_pos - tp))  # > 0: n_pos > 0
    alpha = (1 - level) / 2
    out = {}
    for k, v in values.items():
        keep = ~np.all(np.isnan(v), axis=1)
        macro = np.nanmean(v[keep], axis=1) if keep.any() else np.array([])
        out[k] = ((float(np.quantile(macro, alpha)), float(np.quantile(macro, 1 - alpha))) if macro.size
                  else (float("nan"), float("nan")))
    return out
