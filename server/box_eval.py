"""Pool the sites' box-latent summaries (``box.*`` keys, client/boxlatent.py): macro-AUROC at N = 1 / 8 / 32
latents from the pooled score histograms, the Brier score and ECE (raw and with each site's temperature) from the
pooled reliability tables, OOD AUROC of the radius score per OOD kind, all with bootstrap confidence intervals,
and a site-similarity matrix from the sites' per-class mean boxes."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from shared_models.boxlatent.calibration import brier_from_table, calibration_ci, ece_from_table
from shared_models.boxlatent.shifts import OOD_KINDS
from shared_models.messages import MetricRow
from shared_models.metrics import HistogramSpec, bootstrap_macro, summarise

OOD_HISTOGRAM = HistogramSpec(400, 10.0)  # the sites' binning of the mean log radius (client/boxlatent.py)


def parse_box(metrics: Mapping, samples: tuple[int, ...], num_classes: int, spec: HistogramSpec) -> dict:
    """One site's ``box.*`` keys as arrays (KeyError / ValueError on a malformed summary)."""
    out: dict = {"n": {}, "ood": {}}
    for n in samples:
        out["n"][n] = {
            "pos": np.asarray(metrics[f"box.n{n}.hist_pos"], np.int64).reshape(num_classes, spec.bins),
            "neg": np.asarray(metrics[f"box.n{n}.hist_neg"], np.int64).reshape(num_classes, spec.bins),
            "raw": np.asarray(metrics[f"box.n{n}.rel_raw"], np.float64).reshape(10, 2, 3),
            "cal": np.asarray(metrics[f"box.n{n}.rel_cal"], np.float64).reshape(10, 2, 3),
            "temperature": float(metrics[f"box.n{n}.temperature"]),
        }
    for kind in ("id", *OOD_KINDS):
        out["ood"][kind] = np.asarray(metrics[f"box.ood.{kind}"], np.int64).reshape(OOD_HISTOGRAM.bins)
    counts = np.asarray(metrics["box.stats.n"], np.int64)
    out["stats"] = {"n": counts,
                    "centre": np.asarray(metrics["box.stats.centre"], np.float64).reshape(len(counts), -1),
                    "radius": np.asarray(metrics["box.stats.radius"], np.float64).reshape(len(counts), -1)}
    return out


def ood_auroc(id_hist: np.ndarray, ood_hist: np.ndarray, replicates: int, seed: int) -> tuple[float, list[float]]:
    """AUROC of the radius score separating OOD images (positives) from in-distribution ones, and its 95 %
    bootstrap interval (both histograms redrawn in their observed numbers)."""
    if id_hist.sum() == 0 or ood_hist.sum() == 0:
        return float("nan"), [float("nan"), float("nan")]
    auroc = float(OOD_HISTOGRAM.metrics(ood_hist[None], id_hist[None])["auroc"][0])
    ci = bootstrap_macro(ood_hist[None], id_hist[None], OOD_HISTOGRAM, replicates, seed)["mAUC"] if replicates else (
        float("nan"), float("nan"))
    return auroc, list(ci)


def box_overlap(c1: np.ndarray, r1: np.ndarray, c2: np.ndarray, r2: np.ndarray) -> float:
    """Mean over dimensions of the 1-D intersection over union of two boxes (1 = the same box, 0 = disjoint)."""
    inter = np.clip(np.minimum(c1 + r1, c2 + r2) - np.maximum(c1 - r1, c2 - r2), 0, None)
    union = np.maximum(c1 + r1, c2 + r2) - np.minimum(c1 - r1, c2 - r2)
    return float(np.mean(inter / np.maximum(union, 1e-12)))


def site_similarity(stats: Mapping[str, Mapping[str, np.ndarray]], classes: tuple[str, ...]) -> dict:
    """Sites x sites: the mean, over the classes both sites report (enough positives at each), of the overlap of
    their mean class boxes; with the classes it rests on. NaN where two sites share no reported class."""
    names = sorted(stats)
    matrix = np.full((len(names), len(names)), np.nan)
    shared: dict[str, list[str]] = {}
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            common = [k for k in range(len(classes)) if stats[a]["n"][k] > 0 and stats[b]["n"][k] > 0]
            if common:
                matrix[i, j] = np.mean([box_overlap(stats[a]["centre"][k], stats[a]["radius"][k],
                                                    stats[b]["centre"][k], stats[b]["radius"][k]) for k in common])
            if i < j:
                shared[f"{a}|{b}"] = [classes[k] for k in common]
    return {"sites": names, "matrix": matrix.tolist(), "shared_classes": shared}


def box_round(site_evals: Mapping[str, dict], samples: tuple[int, ...], primary: int, classes: tuple[str, ...],
              spec: HistogramSpec, replicates: int, seed: int = 0) -> tuple[list[MetricRow], dict]:
    """Registry rows ``(site, scope, class, metric, value, n)`` (metrics ``box_*``) and the round's box summary:
    ``{"by_samples": {N: {mAUC, mAUC_ci, brier_raw, brier, brier_ci, ece_raw, ece, ece_ci}}, "primary": N,
    "ood": {kind: {auroc, ci, n}}, "similarity": {...}, "temperature": {site: T}}``."""
    rows: list[MetricRow] = []
    out: dict = {"primary": primary, "by_samples": {}, "ood": {}, "temperature": {}}
    for n in samples:
        pos = sum(e["n"][n]["pos"] for e in site_evals.values())
        neg = sum(e["n"][n]["neg"] for e in site_evals.values())
        pc = spec.metrics(pos, neg)
        entry = {"mAUC": summarise(pc)["mAUC"], "mAP": summarise(pc)["mAP"], "n_images_pos": int(pos.sum())}
        entry["mAUC_ci"] = list(bootstrap_macro(pos, neg, spec, replicates, seed)["mAUC"]) if replicates else None
        for name in ("raw", "cal"):
            table = sum(e["n"][n][name] for e in site_evals.values())
            key = "" if name == "cal" else "_raw"
            entry[f"brier{key}"], entry[f"ece{key}"] = brier_from_table(table), ece_from_table(table)
            ci = calibration_ci(table, replicates, seed)
            entry[f"brier{key}_ci"], entry[f"ece{key}_ci"] = list(ci.get("brier", ())), list(ci.get("ece", ()))
        out["by_samples"][n] = entry
        for k in ("mAUC", "brier", "ece", "brier_raw", "ece_raw"):
            rows.append(MetricRow(None, "all", None, f"box_n{n}_{k}", entry[k], None))
        for k in ("mAUC", "brier", "ece"):
            ci = entry[f"{k}_ci"]
            if ci:
                rows += [MetricRow(None, "all", None, f"box_n{n}_{k}_lo", ci[0], None),
                         MetricRow(None, "all", None, f"box_n{n}_{k}_hi", ci[1], None)]
        for site, e in site_evals.items():
            out["temperature"].setdefault(site, {})[n] = e["n"][n]["temperature"]
            if n == primary:
                rows.append(MetricRow(site, "all", None, "box_temperature", e["n"][n]["temperature"], None))
    id_hist = sum(e["ood"]["id"] for e in site_evals.values())
    for kind in OOD_KINDS:
        hist = sum(e["ood"][kind] for e in site_evals.values())
        auroc, ci = ood_auroc(id_hist, hist, replicates, seed)
        out["ood"][kind] = {"auroc": auroc, "ci": ci, "n": int(hist.sum()), "n_id": int(id_hist.sum())}
        rows += [MetricRow(None, "all", None, f"box_ood_{kind}_auroc", auroc, int(hist.sum())),
                 MetricRow(None, "all", None, f"box_ood_{kind}_auroc_lo", ci[0], None),
                 MetricRow(None, "all", None, f"box_ood_{kind}_auroc_hi", ci[1], None)]
        for site, e in site_evals.items():
            a, _ = ood_auroc(e["ood"]["id"], e["ood"][kind], 0, seed)
            rows.append(MetricRow(site, "all", None, f"box_ood_{kind}_auroc", a, int(e["ood"][kind].sum())))
    sim = site_similarity({s: e["stats"] for s, e in site_evals.items()}, classes)
    out["similarity"] = sim
    # one row per ordered pair: the other site goes in the class column (a site name, never a class)
    for i, a in enumerate(sim["sites"]):
        for j, b in enumerate(sim["sites"]):
            rows.append(MetricRow(a, "all", b, "box_site_similarity", sim["matrix"][i][j], None))
    return rows, out
