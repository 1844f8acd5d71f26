"""Human-readable progress: the per-site x projection table printed after each round."""

from __future__ import annotations

import math

from server.federated_eval import SCOPES


def fmt(v: float | None) -> str:
    """A metric for the console: three decimals, '  -  ' for None / NaN."""
    return "  -  " if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def round_table(rnd: int, summary: dict, metric: str = "mAP") -> str:
    p = summary["pooled"]
    if not p:  # only CT sites answered this round
        return f"round {rnd}: no radiograph site answered\n" + ct_lines(summary.get("ct"))
    lines = [
        f"round {rnd}: pooled mAP {fmt(p['mAP'])}  mAUC {fmt(p['mAUC'])}  mF1 {fmt(p['mF1'])}  "
        f"head/medium/tail mAP {fmt(p['head_mAP'])}/{fmt(p['medium_mAP'])}/{fmt(p['tail_mAP'])}  "
        f"(constant-predictor mAP {fmt(summary['baseline']['prevalence_mAP'])}); "
        f"router accuracy {fmt(summary.get('router_accuracy'))}; "
        f"frontal-lateral mAP gap {fmt(summary['frontal_lateral_gap'].get('pooled'))}",
        f"  {metric:<22}" + "".join(f"{s:>8}" for s in SCOPES),
    ]
    for site, scopes in summary["sites"].items():
        lines.append(f"  {site:<22}" + "".join(f"{fmt(scopes[s][metric]):>8}" for s in SCOPES))
    pooled = summary["pooled_by_projection"]
    lines.append(f"  {'pooled':<22}" + "".join(f"{fmt(pooled[s][metric]):>8}" for s in SCOPES))
    if summary.get("zeroshot"):
        lines.append(zero_shot_line(summary["zeroshot"]))
    if summary.get("box"):
        lines.append(box_line(summary["box"]))
    if summary.get("ct"):
        lines.append(ct_lines(summary["ct"]))
    if summary.get("localization"):
        lines.append(loc_line(summary["localization"]))
    return "\n".join(lines)


def loc_line(loc: dict) -> str:
    """Pooled prompt-localiser figures: box mAP at IoU 0.5 and mean IoU of the top box, then per site."""
    def part(name: str, e: dict) -> str:
        return (f"{name} box mAP@0.5 {fmt(e['mAP50'])} mIoU {fmt(e['mIoU'])} "
                f"({e['images_with_boxes']} image-class pairs with boxes, {len(e['per_class'])} classes)")
    return "  localiser: " + part("pooled", loc["pooled"]) + "; " + "; ".join(
        part(site, e) for site, e in loc["sites"].items())


def ct_lines(ct: dict | None) -> str:
    """The CT model: text-to-volume R@K against chance, mAUC and Youden F1, localisation MAE against the middle of
    the scan; pooled, then per site."""
    if not ct:
        return "  CT: no CT site answered"

    def line(name: str, e: dict) -> str:
        recall = " ".join(f"R@{k} {fmt(e[f'R@{k}'])} ({fmt(e[f'R@{k}_chance'])})" for k in (1, 5, 10))
        return (f"  {name:<22} {recall}; mAUC {fmt(e['mAUC'])} Youden F1 {fmt(e['mean_youden_f1'])}; "
                f"depth MAE {fmt(e['loc_mae_mm'])} mm (middle of scan {fmt(e['loc_centre_mae_mm'])} mm); "
                f"{e['volumes']} volumes")
    return "\n".join(["  CT (chance / baseline in brackets):", line("pooled", ct["pooled"]),
                      *(line(site, e) for site, e in ct["sites"].items())])


def zero_shot_line(zs: dict) -> str:
    """Pooled zero-shot mAUC [95 % bootstrap interval] and mAP per prompt set (held-out classes) and proxies."""
    parts = []
    for name, entry in zs.items():
        p, ci = entry["pooled"]["all"], entry.get("ci", {}).get("mAUC", [None, None])
        parts.append(f"{name} mAUC {fmt(p['mAUC'])} [{fmt(ci[0])}, {fmt(ci[1])}] mAP {fmt(p['mAP'])}")
    return "  zero-shot (pooled): " + "; ".join(parts)


def _ci(ci) -> str:
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]" if ci else "[  -  ,   -  ]"


def box_line(box: dict) -> str:
    """Pooled box-latent figures: macro-AUROC per N of BL-TTA, Brier and ECE after temperature scaling at the
    primary N, OOD AUROC per kind, each with its 95 % bootstrap interval."""
    by_n, primary = box["by_samples"], box["primary"]
    auc = "; ".join(f"N={n} {fmt(e['mAUC'])} {_ci(e['mAUC_ci'])}" for n, e in by_n.items())
    e = by_n[primary]
    ood = "; ".join(f"{kind} {fmt(o['auroc'])} {_ci(o['ci'])}" for kind, o in box["ood"].items())
    return (f"  box-latent (pooled): mAUC {auc}\n"
            f"  box-latent N={primary}: Brier {fmt(e['brier'])} {_ci(e['brier_ci'])} (raw {fmt(e['brier_raw'])}), "
            f"ECE {fmt(e['ece'])} {_ci(e['ece_ci'])} (raw {fmt(e['ece_raw'])}); OOD AUROC (radius) {ood}")
