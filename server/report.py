"""Human-readable progress: the per-site x projection table printed after each round."""

from __future__ import annotations

import math

from server.federated_eval import SCOPES


def _f(v: float) -> str:
    return "  -  " if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def round_table(rnd: int, summary: dict, metric: str = "mAP") -> str:
    p = summary["pooled"]
    lines = [
        f"round {rnd}: pooled mAP {_f(p['mAP'])}  mAUC {_f(p['mAUC'])}  mF1 {_f(p['mF1'])}  "
        f"head/medium/tail mAP {_f(p['head_mAP'])}/{_f(p['medium_mAP'])}/{_f(p['tail_mAP'])}  "
        f"(constant-predictor mAP {_f(summary['baseline']['prevalence_mAP'])}); "
        f"router accuracy {_f(summary.get('router_accuracy'))}; "
        f"frontal-lateral mAP gap {_f(summary['frontal_lateral_gap'].get('pooled'))}",
        f"  {metric:<22}" + "".join(f"{s:>8}" for s in SCOPES),
    ]
    for site, scopes in summary["sites"].items():
        lines.append(f"  {site:<22}" + "".join(f"{_f(scopes[s][metric]):>8}" for s in SCOPES))
    pooled = summary["pooled_by_projection"]
    lines.append(f"  {'pooled':<22}" + "".join(f"{_f(pooled[s][metric]):>8}" for s in SCOPES))
    if summary.get("zeroshot"):
        lines.append(zero_shot_line(summary["zeroshot"]))
    return "\n".join(lines)


def zero_shot_line(zs: dict) -> str:
    """Pooled zero-shot mAUC [95 % bootstrap interval] and mAP per prompt set (held-out classes) and proxies."""
    parts = []
    for name, entry in zs.items():
        p, ci = entry["pooled"]["all"], entry.get("ci", {}).get("mAUC", [None, None])
        parts.append(f"{name} mAUC {_f(p['mAUC'])} [{_f(ci[0])}, {_f(ci[1])}] mAP {_f(p['mAP'])}")
    return "  zero-shot (pooled): " + "; ".join(parts)
