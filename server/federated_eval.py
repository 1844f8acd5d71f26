"""Turn sites' evaluation summaries into per-site and pooled consortium metrics.

Per-site metrics use the exact values each site computed locally; pooled metrics sum the sites' score
histograms (shared_models.metrics.HistogramSpec), so they equal scikit-learn on bin-quantised scores.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from shared_models.messages import EvalSummary, MetricRow, ReplyError, ScopeSummary, scope_key
from shared_models.metrics import GROUPS, HistogramSpec, bootstrap_macro, constant_predictor_ap, summarise

SCOPES = ("all", "PA", "AP", "LAT")
SUMMARY_KEYS = ("mAP", "mAUC", "mF1", "head_mAP", "medium_mAP", "tail_mAP")


@dataclass
class ScopeEval:
    per_class: dict[str, np.ndarray]  # ap, auroc, f1, n_pos, n_neg
    hist_pos: np.ndarray  # (C, B)
    hist_neg: np.ndarray
    n: int
    withheld: int = 0  # classes the site withheld under its small-count policy (client/evaluation.py)
    band_map: np.ndarray | None = None  # head/medium/tail mAP the site computed before suppression (or None)


def scope_eval(summary: ScopeSummary, num_classes: int, spec: HistogramSpec, scope: str, prefix: str = ""
               ) -> ScopeEval:
    """One scope of a site's summary (client/evaluation.py) as arrays."""
    pos = np.asarray(summary.hist_pos, dtype=np.int64).reshape(num_classes, spec.bins)
    neg = np.asarray(summary.hist_neg, dtype=np.int64).reshape(num_classes, spec.bins)
    pc = {k: np.asarray(getattr(summary, k), dtype=np.float64) for k in ("ap", "auroc", "f1")}
    pc["n_pos"], pc["n_neg"] = pos.sum(1), neg.sum(1)
    band = summary.band_map
    if band is not None:
        band = np.asarray(band, dtype=np.float64)
        if band.shape != (len(GROUPS),) or ((band < 0) | (band > 1)).any():
            raise ValueError(f"{scope_key('band_map', scope, prefix)}: expected {len(GROUPS)} values in [0, 1] or NaN")
    return ScopeEval(pc, pos, neg, int(summary.n), int(summary.withheld or 0), band)


def parse_site_eval(metrics: Mapping, num_classes: int, spec: HistogramSpec, prefix: str = "",
                    scopes: tuple[str, ...] = SCOPES) -> dict[str, ScopeEval]:
    """One site's summary (client/evaluation.py); ``prefix`` selects a family of keys (``zs.descriptive.``)."""
    return {scope: scope_eval(ScopeSummary.from_metrics(metrics, scope, prefix), num_classes, spec, scope, prefix)
            for scope in scopes}


def site_scopes(summary: EvalSummary, num_classes: int, spec: HistogramSpec) -> dict[str, ScopeEval]:
    """A radiograph site's summary, read (server/reply.py), as arrays: every scope of ``SCOPES`` is required."""
    missing = [scope_key("n", scope) for scope in SCOPES if scope not in summary.scopes]
    if missing:
        raise ReplyError(f"{EvalSummary.KIND}: {missing} missing")
    return {scope: scope_eval(summary.scopes[scope], num_classes, spec, scope) for scope in SCOPES}


def _rows(site: str | None, scope: str, pc: dict[str, np.ndarray], summary: dict[str, float],
          classes: tuple[str, ...], n: int) -> list[MetricRow]:
    rows = []
    for j, cls in enumerate(classes):
        for k in ("ap", "auroc", "f1"):
            rows.append(MetricRow(site, scope, cls, k, float(pc[k][j]), int(pc["n_pos"][j])))
        annotated = int(pc["n_pos"][j] + pc["n_neg"][j])  # 0: the site does not annotate this class
        rows.append(MetricRow(site, scope, cls, "eval_prevalence", pc["n_pos"][j] / annotated if annotated else None,
                              annotated))
    for k, v in summary.items():
        rows.append(MetricRow(site, scope, None, k, v, n))
    return rows


def frontal_lateral_gap(by_scope: Mapping[str, Mapping[str, float]]) -> float:
    """Mean frontal (PA, AP) mAP minus lateral mAP; NaN when either side has no result."""
    frontal = [by_scope[s]["mAP"] for s in ("PA", "AP") if not np.isnan(by_scope[s]["mAP"])]
    lateral = by_scope["LAT"]["mAP"]
    return float(np.mean(frontal) - lateral) if frontal and not np.isnan(lateral) else float("nan")


def round_metrics(
    site_evals: Mapping[str, dict[str, ScopeEval]],
    groups: np.ndarray,
    classes: tuple[str, ...],
    spec: HistogramSpec,
    ci_replicates: int = 0,
    seed: int = 0,
) -> tuple[list[MetricRow], dict]:
    """Registry rows and the round's summary: pooled and per site, per projection scope; with ``ci_replicates``,
    the pooled macro means' 95 % bootstrap intervals from the pooled histograms (``pooled_ci``)."""
    rows: list[MetricRow] = []
    summary: dict = {"pooled": {}, "pooled_by_projection": {}, "sites": {}, "frontal_lateral_gap": {}}
    for site, scopes in site_evals.items():
        summary["sites"][site] = {}
        for scope, ev in scopes.items():
            s = summarise(ev.per_class, groups) if ev.n else {k: float("nan") for k in SUMMARY_KEYS}
            if ev.band_map is not None and ev.n:  # the site's bands, computed before its small-count rule
                s.update({f"{g}_mAP": float(v) for g, v in zip(GROUPS, ev.band_map)})
            summary["sites"][site][scope] = s
            rows += _rows(site, scope, ev.per_class, s, classes, ev.n)
            if ev.withheld:
                rows.append(MetricRow(site, scope, None, "withheld_classes", float(ev.withheld), None))
        gap = frontal_lateral_gap(summary["sites"][site])
        summary["frontal_lateral_gap"][site] = gap
        rows.append(MetricRow(site, "all", None, "frontal_lateral_gap", gap, None))
    for scope in SCOPES:
        evs = [scopes[scope] for scopes in site_evals.values()]
        pos = sum(e.hist_pos for e in evs)
        neg = sum(e.hist_neg for e in evs)
        n = sum(e.n for e in evs)
        pc = spec.metrics(pos, neg)
        s = summarise(pc, groups) if n else {k: float("nan") for k in SUMMARY_KEYS}
        summary["pooled_by_projection"][scope] = s
        rows += _rows(None, scope, pc, s, classes, n)
        if scope == "LAT":
            gap = frontal_lateral_gap(summary["pooled_by_projection"])
            summary["frontal_lateral_gap"]["pooled"] = gap
            rows.append(MetricRow(None, "all", None, "frontal_lateral_gap", gap, None))
        if scope == "all":
            summary["pooled"] = s
            if ci_replicates and n:
                summary["pooled_ci"] = {k: list(v)
                                        for k, v in bootstrap_macro(pos, neg, spec, ci_replicates, seed).items()}
            prev_ap = constant_predictor_ap(pc["n_pos"], pc["n_neg"])
            summary["baseline"] = {"prevalence_mAP": float(np.nanmean(prev_ap)) if np.isfinite(prev_ap).any()
                                   else float("nan")}
            rows.append(MetricRow(None, scope, None, "prevalence_mAP", summary["baseline"]["prevalence_mAP"], n))
    return rows, summary
