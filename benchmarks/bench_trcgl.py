"""trcgl: TRCGL-Net's components one at a time on the non-IID synthetic consortium of the experts benchmark (tail
classes planted at one site), and the prompt localiser's box metrics.

Runs (same sites, rounds and seed; federated, aggregation projection+class):
- base: the routed experts; base, seed 1: the same with another seed (the run-to-run spread to read the others by);
- + SE, + CSRA (2 heads, lambda 0.1), + label graph, SE + CSRA + graph;
- SE + CSRA + graph + tail synthesis (each site's diffusion model adds images of its tail classes);
- the base run also trains the prompt localiser (a separate model: the classifier's figures are unaffected), whose
  pooled box AP@0.5 and mIoU are set against a prior-box reference (each class's mean training box, one box per
  image, every one with the same score: AP is then precision x recall of that box).
Figures: pooled mAP, tail mAP and mAUC of the last round (server-side pooled histograms). Synthetic data: these
show the machinery, not what TRCGL-Net does on PadChest.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_experts import SITES, make_non_iid_sites
from benchmarks.common import record, site_configs
from client.index import load_split
from client.localization import scored_pairs, site_boxes
from server.report import fmt
from consortium.simulation import run_in_process
from shared_models.localization.metrics import BoxTally
from shared_models.ontology import load_label_set

ROUNDS, EPOCHS, IMAGES, SIZE, PRESET = 6, 2, 800, 64, "small"
GRAPH = {"se": True, "csra-heads": 2, "csra-lambda": 0.1, "label-graph": True}
VARIANTS = {
    "base": {"localizer": True, "loc-epochs": 4},
    "base, seed 1": {"seed": 1},
    "+ SE": {"se": True},
    "+ CSRA": {"csra-heads": 2, "csra-lambda": 0.1},
    "+ label graph": {"label-graph": True},
    "SE + CSRA + graph": GRAPH,
    "SE + CSRA + graph + tail synthesis": {**GRAPH, "tail-synthesis": True, "tail-synthesis-steps": 600,
                                           "tail-synthesis-per-class": 32},
}


def _run(out: Path, sites: Path, name: str, extra: dict) -> tuple[dict, dict]:
    run_dir = out / name.replace(" ", "_").replace(",", "").replace("+", "plus")
    t0 = time.perf_counter()
    run_in_process({
        "num-server-rounds": ROUNDS, "local-epochs": EPOCHS, "lr": 0.001, "batch-size": 32, "model-preset": PRESET,
        "image-size": SIZE, "label-set": "cxrlt2026", "fraction-train": 1.0, "min-nodes": len(SITES),
        "round-timeout": 7200.0, "deadline-floor": 7200.0, "out-dir": str(run_dir), "sim-sites-dir": str(sites),
        "run-name": f"bench-trcgl-{name}", "seed": 0, "aggregation": "projection+class", **extra,
    }, num_supernodes=len(SITES))
    summary = json.loads((run_dir / "summary.json").read_text())
    last = summary["rounds"][-1]["pooled"]
    figures = {"pooled_mAP": last["mAP"], "tail_mAP": last["tail_mAP"], "mAUC": last["mAUC"],
               "wall_seconds": time.perf_counter() - t0}
    return figures, summary


def prior_box_reference(sites: Path, classes: tuple[str, ...]) -> dict:
    """Box AP@0.5 and mIoU of always answering each class's mean training box (pooled over the sites' training
    boxes: a reference, not a federated method), scored by the class's training prevalence, on the test splits."""
    c = len(classes)
    boxes_sum, boxes_n = np.zeros((c, 4)), np.zeros(c)
    tests = []
    for cfg in site_configs(sites):
        train, test = load_split(cfg, "train"), load_split(cfg, "test")
        for (_, k), b in site_boxes(cfg, train).boxes.items():
            if k < c:
                boxes_sum[k] += b.sum(0)
                boxes_n[k] += len(b)
        tests.append((test, site_boxes(cfg, test)))
    mean_box = boxes_sum / np.maximum(boxes_n, 1)[:, None]
    tally = BoxTally(c)
    for test, boxes in tests:
        for _, k, gt in scored_pairs(test, boxes, np.flatnonzero(boxes.covered(c))):
            tally.add(k, mean_box[k][None], np.array([0.5]), gt)
    per = tally.per_class()
    scored = per["images"] > 0
    return {"mAP50": float(np.nanmean(per["AP50"][scored])), "mIoU": float(np.nanmean(per["mIoU"][scored]))}


def scored_at_min_count_one(sites: Path) -> None:
    """Site policies with min_count 1: at these site sizes every tail class has fewer than 5 test positives at
    each site, so under the default rule no tail class is ever scored. Synthetic data only: a real site keeps its
    own min_count."""
    for toml in Path(sites).glob("*/site.toml"):
        text = toml.read_text()
        if "[privacy]" not in text:
            toml.write_text(text.rstrip() + "\n\n[privacy]\nmin_count = 1\n")


def run(out: Path) -> dict:
    sites = make_non_iid_sites(out, IMAGES, SIZE)
    scored_at_min_count_one(sites)
    classes = load_label_set("cxrlt2026").seen
    figures, localization = {}, {}
    for name, extra in VARIANTS.items():
        figures[name], summary = _run(out, sites, name, extra)
        if extra.get("localizer"):
            pooled = summary["localization"]["last"]["pooled"]
            localization = {"federated": {"mAP50": pooled["mAP50"], "mIoU": pooled["mIoU"],
                                          "images_with_boxes": pooled["images_with_boxes"],
                                          "per_class": pooled["per_class"]},
                            "prior_box_reference": prior_box_reference(sites, classes),
                            "mAP50_by_round": summary["localization"]["mAP50_by_round"]}
    base = figures["base"]
    spread = {k: abs(figures["base, seed 1"][k] - base[k]) if None not in (figures["base, seed 1"][k], base[k])
              else None for k in ("pooled_mAP", "tail_mAP", "mAUC")}
    headline = {}
    for name, f in figures.items():
        headline[f"{name}: mAP / tail mAP"] = f"{fmt(f['pooled_mAP'])} / {fmt(f['tail_mAP'])}"
    headline["seed-to-seed spread of base mAP / tail mAP"] = f"{fmt(spread['pooled_mAP'])} / {fmt(spread['tail_mAP'])}"
    loc, ref = localization["federated"], localization["prior_box_reference"]
    headline["localiser box mAP@0.5 / mIoU (prior box)"] = (f"{fmt(loc['mAP50'])} / {fmt(loc['mIoU'])} "
                                                            f"({fmt(ref['mAP50'])} / {fmt(ref['mIoU'])})")
    return {"trcgl": record({"variants": figures, "seed_spread": spread, "localization": localization,
                             "headline": headline,
                             "setup": f"3 non-IID synthetic sites x {IMAGES} images ({SIZE} px; tail classes planted "
                                      f"at one site; site min_count 1 so tail classes are scored at all), preset "
                                      f"{PRESET}, {ROUNDS} rounds x {EPOCHS} local epochs, aggregation "
                                      "projection+class; localiser loc-tiny, 4 local epochs per round"},
                            "make bench (python -m benchmarks.run --only trcgl)")}
