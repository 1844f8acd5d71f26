"""localizer: the prompt localiser against the prior box, over seeds, on one synthetic site's boxes.

Setup: one synthetic PadChest-format site (800 images, 64 px; its train / test split), the site's own localiser
code (client/localization.py: train_localizer, evaluate_localizer; MiniLM class-name prompts), trained centrally on
the site's training split for ``EPOCHS`` epochs per seed (seeds vary the initialisation and the batch order; the
data are the same). The federated figure of the same model is the ``trcgl`` benchmark's.

Figures per seed, on the test split, for (a) every class with test boxes and (b) the classes with at least
``MIN_TRAIN_BOXES`` training boxes (the ones a localiser can learn at this size): box mAP@0.5 and top-box mIoU
(shared_models/localization/metrics.py), and the prior box's (each class's mean training box, one per image, every
one with the same score). Real NIH boxes: counted, not scored (see ``real_nih_boxes``).
"""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import fmt_interval, record, seed_interval
from client.index import load_split, prepare_site
from client.localization import (class_prompts, evaluate_localizer, scored_pairs, site_boxes, train_localizer)
from client.site_config import load_site_config
from client.synth import synthesize_site
from shared_models.localization import BoxTally, LocRunSpec, PromptLocalizer
from shared_models.ontology import load_label_set

IMAGES, SIZE, EPOCHS, MIN_TRAIN_BOXES = 800, 64, 15, 20
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


def _site(out: Path) -> Path:
    toml = out / "site" / "site.toml"
    if not toml.exists():
        synthesize_site(toml.parent, "padchest", "loc-bench", IMAGES, SIZE, 0)
        prepare_site(load_site_config(toml))
    return toml


def _scores(tally: BoxTally, classes: np.ndarray) -> dict:
    per = tally.per_class()
    keep = classes[per["images"][classes] > 0]
    return {"mAP50": float(np.nanmean(per["AP50"][keep])), "mIoU": float(np.nanmean(per["mIoU"][keep])),
            "classes": int(len(keep))}


def prior_box_tally(train_boxes, test, test_boxes, c: int) -> BoxTally:
    """Each class's mean training box, one per scored test image, all with the same score."""
    total, count = np.zeros((c, 4)), np.zeros(c)
    for (_, k), b in train_boxes.boxes.items():
        if k < c:
            total[k] += b.sum(0)
            count[k] += len(b)
    mean = total / np.maximum(count, 1)[:, None]
    tally = BoxTally(c)
    for _, k, gt in scored_pairs(test, test_boxes, np.flatnonzero(test_boxes.covered(c))):
        tally.add(k, mean[k][None], np.array([0.5]), gt)
    return tally


def real_nih_boxes() -> dict:
    """NIH boxes whose image is among the real images at hand (nih64/, nih256/, nih/)."""
    have = {p.name for d in ("nih64", "nih256", "nih") if (REAL / d).is_dir() for p in (REAL / d).glob("*.png")}
    rows = gzip.open(REAL / "nih" / "BBox_List_2017.csv.gz", "rt").read().splitlines()[1:]
    hits = [r.split(",")[:2] for r in rows if r.split(",")[0] in have]
    labels: dict[str, int] = {}
    for _, label in hits:
        labels[label] = labels.get(label, 0) + 1
    return {"boxes_with_images": len(hits), "boxes_listed": len(rows), "by_label": labels}


def run(out: Path, seeds: tuple[int, ...] = (0, 1, 2)) -> dict:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    cfg = load_site_config(_site(out))
    train, test = load_split(cfg, "train"), load_split(cfg, "test")
    train_boxes, test_boxes = site_boxes(cfg, train), site_boxes(cfg, test)
    ls = load_label_set(cfg.label_set)
    c = ls.num_seen
    prompts = class_prompts(cfg.work_dir, ls.classes[:c])
    counts = np.bincount([k for _, k in train_boxes.boxes if k < c], minlength=c)
    scopes = {"all box classes": np.arange(c), f">= {MIN_TRAIN_BOXES} training boxes":
              np.flatnonzero(counts >= MIN_TRAIN_BOXES)}
    prior = prior_box_tally(train_boxes, test, test_boxes, c)
    runs = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = PromptLocalizer("loc-tiny", 3)
        t0 = time.perf_counter()
        for epoch in range(EPOCHS):
            train_localizer(model, train, train_boxes, prompts, LocRunSpec(), 1, seed * 1000 + epoch)
        tally = evaluate_localizer(model, test, test_boxes, prompts)
        scores = {name: _scores(tally, cls) for name, cls in scopes.items()}
        runs.append({"seconds": time.perf_counter() - t0, **scores})
    figures, headline = {}, {}
    for name, cls in scopes.items():
        ref = _scores(prior, cls)
        entry = {"prior_box": ref, "classes": [ls.classes[k] for k in cls if prior.images[k] > 0]}
        for metric in ("mAP50", "mIoU"):
            entry[metric] = seed_interval([r[name][metric] for r in runs])
            headline[f"{name}: box {metric} (prior box {ref[metric]:.3f})"] = fmt_interval(entry[metric])
        figures[name] = entry
    return {"localizer": record({"scopes": figures, "runs": runs, "real_nih": real_nih_boxes(), "headline": headline,
                                 "setup": f"1 synthetic PadChest-format site x {IMAGES} images ({SIZE} px), train "
                                          f"{len(train)} / test {len(test)}; loc-tiny, 3 regions, {EPOCHS} epochs "
                                          "centrally with the site's train_localizer (AdamW 1e-3, batch 32), MiniLM "
                                          "class-name prompts; seeds vary init and batch order"},
                                "python -m benchmarks.run --only localizer --seeds 0 1 2", seeds=list(seeds))}
