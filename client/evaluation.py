"""What a site sends back from federated evaluation: aggregate summaries only, never per-patient rows.

Per projection ('all', 'PA', 'AP', 'LAT') and class: exact local AP / AUROC / F1 (NaN where undefined) and
binned score histograms of positives and negatives (shared_models.metrics.HistogramSpec), from which the
server computes pooled consortium metrics. Everything is a fixed-length list so that every site's reply has
the same keys.

Small counts (the site's ``[privacy] min_count`` k): a scope with fewer than k images sends nothing but zeros /
NaN; within a scope, a class with fewer than k annotated positives or fewer than k negatives sends neither its
histograms nor its local AP / AUROC / F1 (both would describe fewer than k patients). ``withheld.<scope>`` says
how many classes were withheld, so the server and the dashboard can tell withheld from absent.
"""

from __future__ import annotations

import numpy as np

from shared_models.metrics import HistogramSpec, per_class_metrics
from shared_models.networks import PROJECTIONS

SCOPES = ("all",) + PROJECTIONS


def scope_summary(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, spec: HistogramSpec, min_count: int = 0,
                  scope: str = "all", prefix: str = "") -> dict[str, list[float] | list[int] | int]:
    """One scope's keys (``<prefix>ap.<scope>`` ... ``<prefix>withheld.<scope>``) under the small-count rule."""
    out: dict = {}
    c, n = probs.shape[1], int(len(probs))
    if n and n >= min_count:
        pc = per_class_metrics(targets, probs, mask)
        pos, neg = spec.histograms(targets, probs, mask)
    else:
        n = 0
        pc = {k: np.full(c, np.nan) for k in ("ap", "auroc", "f1")}
        pos = neg = np.zeros((c, spec.bins), np.int64)
    small = ((pos.sum(1) < min_count) | (neg.sum(1) < min_count)) & ((pos.sum(1) + neg.sum(1)) > 0)
    pos, neg = np.where(small[:, None], 0, pos), np.where(small[:, None], 0, neg)
    for k in ("ap", "auroc", "f1"):
        out[f"{prefix}{k}.{scope}"] = [float("nan") if s else float(v) for v, s in zip(pc[k], small)]
    out[f"{prefix}hist_pos.{scope}"] = pos.reshape(-1).astype(int).tolist()
    out[f"{prefix}hist_neg.{scope}"] = neg.reshape(-1).astype(int).tolist()
    out[f"{prefix}n.{scope}"] = n
    out[f"{prefix}withheld.{scope}"] = int(small.sum())
    return out


def evaluation_summary(
    probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, projection: np.ndarray, spec: HistogramSpec,
    min_count: int = 0,
) -> dict[str, list[float] | list[int] | int]:
    out: dict[str, list[float] | list[int] | int | float] = {"num-examples": int(len(probs))}
    for scope in SCOPES:
        sel = np.ones(len(probs), bool) if scope == "all" else projection == PROJECTIONS.index(scope)
        out.update(scope_summary(probs[sel], targets[sel], mask[sel], spec, min_count, scope))
    return out
