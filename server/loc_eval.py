"""The prompt localiser's federated evaluation (issue 12): box AP at IoU 0.5 and mean IoU per class, per site and
pooled over the sites with boxes. Sites send per-class score histograms of true- and false-positive detections,
ground-truth box counts and summed top-box IoU (client/localization.py); pooled AP is computed from the summed
histograms (shared_models/localization/metrics.py), so it is the AP of all sites' detections ranked together."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from shared_models.localization.metrics import BoxTally
from shared_models.messages import MetricRow


def check_loc_run(cfg: Mapping, box) -> None:
    """Refuse, before any site trains, what the localiser cannot run with."""
    if not bool(cfg.get("localizer", False)):
        return
    if box is not None:
        raise ValueError("run config: localizer and box-latent cannot be combined in one run")
    if bool(cfg["dp"]):
        raise ValueError("run config: the prompt localiser has no DP-SGD training yet; set dp = false or "
                         "localizer = false")


def parse_loc(metrics: Mapping, num_classes: int) -> BoxTally | None:
    """A site's box tallies (``loc.*`` keys), or None when it sent none; ValueError when malformed."""
    if "loc.n_gt" not in metrics:
        return None
    bins = int(metrics["loc.bins"])
    tally = BoxTally(num_classes, bins)
    tp, fp = np.asarray(metrics["loc.tp"], np.int64), np.asarray(metrics["loc.fp"], np.int64)
    if tp.size != num_classes * bins or fp.size != num_classes * bins:
        raise ValueError(f"loc.tp / loc.fp must hold {num_classes} x {bins} counts")
    tally.tp, tally.fp = tp.reshape(num_classes, bins), fp.reshape(num_classes, bins)
    for name, kind in (("n_gt", np.int64), ("images", np.int64), ("iou_sum", np.float64)):
        v = np.asarray(metrics[f"loc.{name}"], kind)
        if v.size != num_classes:
            raise ValueError(f"loc.{name} must list {num_classes} values")
        setattr(tally, name, v)
    return tally


def _scope(tally: BoxTally, classes: tuple[str, ...]) -> dict:
    per = tally.per_class()
    scored = per["images"] > 0
    return {"mAP50": float(np.nanmean(per["AP50"][scored])) if scored.any() else None,
            "mIoU": float(np.nanmean(per["mIoU"][scored])) if scored.any() else None,
            "images_with_boxes": int(per["images"].sum()), "boxes": int(per["n_gt"].sum()),
            "per_class": {classes[c]: {"AP50": float(per["AP50"][c]), "mIoU": float(per["mIoU"][c]),
                                       "images": int(per["images"][c]), "boxes": int(per["n_gt"][c])}
                          for c in np.flatnonzero(scored)}}


def loc_round(tallies: dict[str, BoxTally], classes: tuple[str, ...]) -> tuple[list[MetricRow], dict | None]:
    """Registry rows and the round's summary: pooled and per site."""
    with_boxes = {s: t for s, t in tallies.items() if t.images.sum() > 0}
    if not with_boxes:
        return [], None
    pooled = BoxTally(len(classes), next(iter(with_boxes.values())).bins)
    for t in with_boxes.values():
        pooled.merge(t)
    out = {"pooled": _scope(pooled, classes), "sites": {s: _scope(t, classes) for s, t in with_boxes.items()}}
    rows: list[MetricRow] = []
    for site, entry in [(None, out["pooled"]), *out["sites"].items()]:
        for c, e in entry["per_class"].items():
            rows += [MetricRow(site, "all", c, "box_AP50", e["AP50"], e["images"]),
                     MetricRow(site, "all", c, "box_mIoU", e["mIoU"], e["images"])]
        rows += [MetricRow(site, "all", None, "box_mAP50", entry["mAP50"], entry["images_with_boxes"]),
                 MetricRow(site, "all", None, "box_mIoU", entry["mIoU"], entry["images_with_boxes"])]
    return rows, out
