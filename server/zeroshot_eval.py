"""Pool the sites' zero-shot summaries (``zs.<set>.*`` keys, client/zeroshot.py): per prompt set (descriptive,
template, random) and the proxy classes, pooled and per-site metrics per projection scope, with bootstrap
confidence intervals for the pooled macro means, and model selection on the proxy classes."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from server.federated_eval import SCOPES, ScopeEval, parse_site_eval
from shared_models.messages import MetricRow
from shared_models.metrics import HistogramSpec, bootstrap_macro, summarise

PROMPT_SETS = ("descriptive", "template", "random")
MACRO = ("mAP", "mAUC", "mF1")


def zero_shot_sets(held_out: tuple[str, ...], proxy: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Summary family -> its classes: every prompt set over the held-out classes, ``proxy`` over the proxies."""
    return {**{s: held_out for s in PROMPT_SETS}, **({"proxy": proxy} if proxy else {})}


def parse_zero_shot(metrics: Mapping, sets: Mapping[str, tuple[str, ...]], spec: HistogramSpec
                    ) -> dict[str, dict[str, ScopeEval]]:
    return {name: parse_site_eval(metrics, len(classes), spec, f"zs.{name}.") for name, classes in sets.items()}


def zero_shot_round(site_evals: Mapping[str, Mapping[str, dict[str, ScopeEval]]],
                    sets: Mapping[str, tuple[str, ...]], spec: HistogramSpec, replicates: int, seed: int = 0
                    ) -> tuple[list[MetricRow], dict]:
    """Registry rows ``(site, scope, class, metric, value, n)`` with metrics named ``zs_<set>_<metric>`` and the
    round's zero-shot summary: ``{set: {"pooled": {scope: {mAP, mAUC, mF1}}, "ci": {mAUC: [lo, hi], ...},
    "sites": {site: {scope: {...}}}, "n_pos": {class: n}, "site_ci": {site: {mAUC: [lo, hi], ...}},
    "site_n_pos": {site: {class: n}}, "site_released": {site: {mAP, mAUC, mF1}}}}``: intervals over scope 'all',
    pooled and per site (``{}`` where no positive was scored). ``sites`` holds each site's exact figures;
    ``site_released`` the macro means of the score histograms it released (bins merged under its small-count
    rule), the figures its interval is drawn around, like the pooled ones."""
    rows: list[MetricRow] = []
    out: dict = {}
    for name, classes in sets.items():
        entry: dict = {"classes": list(classes), "pooled": {}, "sites": {}, "ci": {}, "n_pos": {}, "site_ci": {},
                       "site_n_pos": {}, "site_released": {}}
        for site, families in site_evals.items():
            entry["sites"][site] = {}
            for scope, ev in families[name].items():
                s = summarise(ev.per_class) if ev.n else {k: float("nan") for k in MACRO}
                entry["sites"][site][scope] = s
                rows += [MetricRow(site, scope, None, f"zs_{name}_{k}", v, ev.n) for k, v in s.items()]
                rows += [MetricRow(site, scope, cls, f"zs_{name}_{k}", float(ev.per_class[k][j]),
                                   int(ev.per_class["n_pos"][j]))
                         for j, cls in enumerate(classes) for k in ("ap", "auroc", "f1")]
            ev = families[name]["all"]
            entry["site_n_pos"][site] = {cls: int(v) for cls, v in zip(classes, ev.hist_pos.sum(1))}
            entry["site_released"][site] = (summarise(spec.metrics(ev.hist_pos, ev.hist_neg)) if ev.hist_pos.sum()
                                            else {k: float("nan") for k in MACRO})
            ci, ci_rows = _intervals(ev.hist_pos, ev.hist_neg, ev.n, spec, replicates, seed, site, name)
            entry["site_ci"][site] = ci
            rows += ci_rows
        for scope in SCOPES:
            evs = [families[name][scope] for families in site_evals.values()]
            pos, neg = sum(e.hist_pos for e in evs), sum(e.hist_neg for e in evs)
            n = sum(e.n for e in evs)
            pc = spec.metrics(pos, neg)
            s = summarise(pc) if n else {k: float("nan") for k in MACRO}
            entry["pooled"][scope] = s
            rows += [MetricRow(None, scope, None, f"zs_{name}_{k}", v, n) for k, v in s.items()]
            rows += [MetricRow(None, scope, cls, f"zs_{name}_{k}", float(pc[k][j]), int(pc["n_pos"][j]))
                     for j, cls in enumerate(classes) for k in ("ap", "auroc", "f1")]
            if scope == "all":
                entry["n_pos"] = {cls: int(v) for cls, v in zip(classes, pc["n_pos"])}
                entry["ci"], ci_rows = _intervals(pos, neg, n, spec, replicates, seed, None, name)
                rows += ci_rows
        out[name] = entry
    return rows, out


def _intervals(pos: np.ndarray, neg: np.ndarray, n: int, spec: HistogramSpec, replicates: int, seed: int,
               site: str | None, name: str) -> tuple[dict, list[MetricRow]]:
    """95 % bootstrap intervals of the macro means over scope 'all' (``{}`` when nothing was scored) and their
    registry rows (``site`` None: pooled)."""
    if not (n and replicates > 0 and pos.sum()):
        return {}, []
    ci = bootstrap_macro(pos, neg, spec, replicates, seed)
    rows = [MetricRow(site, "all", None, f"zs_{name}_{k}_{end}", v, n) for k, bounds in ci.items()
            for end, v in zip(("lo", "hi"), bounds)]
    return {k: list(v) for k, v in ci.items()}, rows


def proxy_score(summary: Mapping) -> float | None:
    """The model-selection score of a round: pooled proxy-class mAUC (None without proxies or results)."""
    v = summary.get("proxy", {}).get("pooled", {}).get("all", {}).get("mAUC")
    return None if v is None or np.isnan(v) else float(v)
