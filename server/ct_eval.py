"""The CT model's federated evaluation (issue 11): per site and pooled over CT sites.

- Per class: AUROC from the summed score histograms (exact on bin-quantised scores) and F1 at the Youden threshold
  found on those histograms; per site, the site's exact local AUROC and the Youden F1 of its own histograms.
- Text-to-volume R@1/5/10: each site ranks its reports against its own volumes (its gallery), and sends hit counts;
  the pooled R@K is the share of every site's reports found in the top K of their site's gallery. Galleries
  differ in size, so each figure comes with its chance level, min(K, n) / n summed the same way.
- Localisation: summed absolute depth errors in mm over the snippets, against the same sum for always answering
  the middle of the scanned range.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from server.federated_eval import ScopeEval, parse_site_eval
from shared_models.ct.metrics import youden_from_histograms
from shared_models.messages import MetricRow
from shared_models.metrics import HistogramSpec

KS = (1, 5, 10)
SCOPE = "CT"  # the registry's projection column for CT rows


@dataclass
class CTSiteEval:
    scores: ScopeEval
    r_n: int
    r_hits: list[int]
    loc_n: int
    loc_abs_mm: float
    loc_centre_abs_mm: float


def is_ct_summary(metrics: Mapping) -> bool:
    return "ct.r_n" in metrics


def parse_ct(metrics: Mapping, num_classes: int, spec: HistogramSpec) -> CTSiteEval:
    """A CT site's evaluation summary (client/ct/federated.py); KeyError / ValueError when malformed."""
    hits = [int(v) for v in metrics["ct.r_hits"]]
    if len(hits) != len(KS):
        raise ValueError(f"ct.r_hits must list {len(KS)} counts (R@{KS})")
    return CTSiteEval(parse_site_eval(metrics, num_classes, spec, "ct.", ("all",))["all"], int(metrics["ct.r_n"]),
                      hits, int(metrics["ct.loc_n"]), float(metrics["ct.loc_abs_mm"]),
                      float(metrics["ct.loc_centre_abs_mm"]))


def _figures(auroc: np.ndarray, f1: np.ndarray, n_pos: np.ndarray, r_n: int, hits: list[int], chance: list[float],
             loc_n: int, loc_abs: float, loc_centre: float, classes: tuple[str, ...]) -> tuple[dict, list[MetricRow]]:
    """One scope's summary and its registry rows (site filled in by the caller)."""
    nan = float("nan")
    out = {"mAUC": float(np.nanmean(auroc)) if np.isfinite(auroc).any() else nan,
           "mean_youden_f1": float(np.nanmean(f1)) if np.isfinite(f1).any() else nan,
           "volumes": r_n, "snippets": loc_n,
           "loc_mae_mm": loc_abs / loc_n if loc_n else nan,
           "loc_centre_mae_mm": loc_centre / loc_n if loc_n else nan,
           "per_class": {c: {"auroc": float(a), "youden_f1": float(f), "n_pos": int(p)}
                         for c, a, f, p in zip(classes, auroc, f1, n_pos)}}
    for k, h, ch in zip(KS, hits, chance):
        out[f"R@{k}"] = h / r_n if r_n else nan
        out[f"R@{k}_chance"] = ch / r_n if r_n else nan
    rows = [MetricRow(None, SCOPE, c, name, v[name], v["n_pos"]) for c, v in out["per_class"].items()
            for name in ("auroc", "youden_f1")]
    rows += [MetricRow(None, SCOPE, None, name, out[name], r_n) for name in
             ("mAUC", "mean_youden_f1", *(f"R@{k}" for k in KS), *(f"R@{k}_chance" for k in KS))]
    rows += [MetricRow(None, SCOPE, None, name, out[name], loc_n) for name in ("loc_mae_mm", "loc_centre_mae_mm")]
    return out, rows


def ct_round(evals: Mapping[str, CTSiteEval], classes: tuple[str, ...], spec: HistogramSpec
             ) -> tuple[list[MetricRow], dict]:
    """Registry rows and the round's CT summary: ``pooled`` and ``sites``."""
    rows: list[MetricRow] = []
    summary: dict = {"sites": {}}
    for site, e in evals.items():
        f1 = youden_from_histograms(e.scores.hist_pos, e.scores.hist_neg)["f1"]
        chance = [float(min(k, e.r_n)) for k in KS]
        s, r = _figures(e.scores.per_class["auroc"], f1, e.scores.per_class["n_pos"], e.r_n, e.r_hits, chance,
                        e.loc_n, e.loc_abs_mm, e.loc_centre_abs_mm, classes)
        summary["sites"][site] = s
        rows += [row._replace(site=site) for row in r]
    pos = sum(e.scores.hist_pos for e in evals.values())
    neg = sum(e.scores.hist_neg for e in evals.values())
    pc = spec.metrics(pos, neg)
    f1 = youden_from_histograms(pos, neg)["f1"]
    r_n = sum(e.r_n for e in evals.values())
    hits = [sum(e.r_hits[i] for e in evals.values()) for i in range(len(KS))]
    chance = [float(sum(min(k, e.r_n) for e in evals.values())) for k in KS]
    s, r = _figures(pc["auroc"], f1, pc["n_pos"], r_n, hits, chance, sum(e.loc_n for e in evals.values()),
                    sum(e.loc_abs_mm for e in evals.values()), sum(e.loc_centre_abs_mm for e in evals.values()),
                    classes)
    summary["pooled"] = s
    return rows + r, summary
