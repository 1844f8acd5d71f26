"""What a site sends back from federated evaluation: aggregate summaries only, never per-patient rows.

Per projection ('all', 'PA', 'AP', 'LAT') and class: exact local AP / AUROC / F1 (NaN where undefined) and
binned score histograms of positives and negatives (shared_models.metrics.HistogramSpec), from which the
server computes pooled consortium metrics. Everything is a fixed-length list so that every site's reply has
the same keys.
"""

from __future__ import annotations

import numpy as np

from shared_models.metrics import HistogramSpec, per_class_metrics
from shared_models.networks import PROJECTIONS

SCOPES = ("all",) + PROJECTIONS


def evaluation_summary(
    probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, projection: np.ndarray, spec: HistogramSpec
) -> dict[str, list[float] | list[int] | int]:
    out: dict[str, list[float] | list[int] | int | float] = {"num-examples": int(len(probs))}
    c = probs.shape[1]
    for scope in SCOPES:
        sel = np.ones(len(probs), bool) if scope == "all" else projection == PROJECTIONS.index(scope)
        if sel.any():
            pc = per_class_metrics(targets[sel], probs[sel], mask[sel])
            pos, neg = spec.histograms(targets[sel], probs[sel], mask[sel])
        else:
            pc = {k: np.full(c, np.nan) for k in ("ap", "auroc", "f1")}
            pos = neg = np.zeros((c, spec.bins), np.int64)
        for k in ("ap", "auroc", "f1"):
            out[f"{k}.{scope}"] = [float(v) for v in pc[k]]
        out[f"hist_pos.{scope}"] = pos.reshape(-1).astype(int).tolist()
        out[f"hist_neg.{scope}"] = neg.reshape(-1).astype(int).tolist()
        out[f"n.{scope}"] = int(sel.sum())
    return out
