"""The prompt localiser at a site, framework-free: the site's ground-truth boxes, class prompts, a local training
round, evaluation tallies and prediction for ``fedchest-site localize``.

Boxes come from the site index's ``boxes`` table (written by the sources: fedchest's boxes.csv beside synthetic
data, NIH's BBox_List_2017.csv, RSNA's stage-2 labels), in pixels of the original image, and are mapped onto the
site's square cache. A box label is matched to the run's label set by class name, else through the source's
synonym map; labels that match neither are counted and reported, never guessed.

What leaves the site: the localiser's parameter groups with the number of images behind them, and per class the
score histograms of true- and false-positive detections, the number of ground-truth boxes and the summed IoU of
the top box, for classes with at least min_count images with boxes. Never an image, a box or a per-image row.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from client.index import SiteData
from client.site_config import SiteConfig
from client.training import PIXEL_MEAN, PIXEL_STD
from shared_models.device import select_device
from shared_models.localization.boxes import SetLossWeights, pixel_boxes_to_relative, set_loss
from shared_models.localization.config import LocRunSpec
from shared_models.localization.metrics import BoxTally
from shared_models.localization.model import PromptLocalizer, loc_parameter_group, prefixed, unprefixed
from shared_models.ontology import load_label_set, load_source_map, normalise_term

HEAD = "localizer"


@dataclass
class SiteBoxes:
    """Ground-truth boxes of one split: (position in the split, class index) -> (G, 4) relative (cx, cy, w, h)."""

    boxes: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    unmatched: dict[str, int] = field(default_factory=dict)  # box labels outside the label set, with counts

    def covered(self, num_classes: int) -> np.ndarray:
        """Classes this split has at least one box for."""
        out = np.zeros(num_classes, bool)
        for _, c in self.boxes:
            if c < num_classes:
                out[c] = True
        return out

    def get(self, i: int, c: int) -> np.ndarray | None:
        return self.boxes.get((i, c))


def _class_of(label: str, source: str, label_set: str, names: dict[str, int], maps: dict) -> tuple[int, ...]:
    key = normalise_term(label)
    if key in names:
        return (names[key],)
    if source not in maps:
        try:
            maps[source] = load_source_map(source, label_set)
        except KeyError:
            maps[source] = None
    found = maps[source].lookup(label) if maps[source] is not None else None
    return tuple(found or ())


def site_boxes(cfg: SiteConfig, data: SiteData, label_set: str | None = None) -> SiteBoxes:
    """The split's boxes, from the index, on the site's image_size x image_size cache."""
    out = SiteBoxes()
    if data.rows is None or not cfg.index_path.exists():
        return out
    ls = load_label_set(label_set or cfg.label_set)
    names = {normalise_term(c): i for i, c in enumerate(ls.classes)}
    position = {int(r): i for i, r in enumerate(data.rows)}
    con = sqlite3.connect(cfg.index_path)
    try:
        rows = con.execute("SELECT s.row, s.source, s.height, s.width, b.label, b.x, b.y, b.w, b.h "
                           "FROM boxes b JOIN samples s USING (sample_id)").fetchall()
    finally:
        con.close()
    maps: dict = {}
    collect: dict[tuple[int, int], list[np.ndarray]] = {}
    for row, source, height, width, label, x, y, w, h in rows:
        i = position.get(int(row))
        if i is None or not (height and width and w > 0 and h > 0):
            continue
        classes = _class_of(str(label), str(source), ls.name, names, maps)
        if not classes:
            out.unmatched[str(label)] = out.unmatched.get(str(label), 0) + 1
            continue
        rel = pixel_boxes_to_relative(np.array([[x, y, w, h]]), int(height), int(width), cfg.image_size)[0]
        for c in classes:
            collect.setdefault((i, c), []).append(rel)
    out.boxes = {k: np.stack(v) for k, v in collect.items()}
    return out


def prompt_text(name: str) -> str:
    """The training prompt of a class: its name as a radiologist would type it."""
    return name.replace("_", " ").strip().lower()


def class_prompts(work_dir: Path, names: tuple[str, ...]) -> torch.Tensor:
    """MiniLM embeddings (C, 384) of the class prompts, from the site's sentence cache (never sent)."""
    from client.zeroshot import sentence_cache

    return torch.from_numpy(sentence_cache(work_dir).encode([prompt_text(n) for n in names]))


def pair_targets(data: SiteData, boxes: SiteBoxes, idx: np.ndarray, num_classes: int
                 ) -> tuple[list[torch.Tensor | None], torch.Tensor]:
    """Per (image, class) pair of a batch, row-major: ground-truth boxes or None, and 1 annotated present / 0
    annotated absent / -1 unannotated."""
    t, m = data.targets[idx, :num_classes], data.mask[idx, :num_classes]
    present = np.where(m > 0, (t > 0).astype(np.float32), -1.0).reshape(-1)
    targets: list[torch.Tensor | None] = []
    for i in idx:
        for c in range(num_classes):
            b = boxes.get(int(i), c)
            targets.append(None if b is None else torch.from_numpy(b))
    return targets, torch.from_numpy(present)


def to_input(pixels: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 images (N, S, S) as the model's input (N, 1, S, S), normalised as the classifier's."""
    x = torch.from_numpy(np.ascontiguousarray(pixels)).to(device=device, dtype=torch.float32)
    return x.div_(255.0).sub_(PIXEL_MEAN).div_(PIXEL_STD).unsqueeze(1)


def train_localizer(model: PromptLocalizer, data: SiteData, boxes: SiteBoxes, prompts: torch.Tensor,
                    spec: LocRunSpec, epochs: int, seed: int, weights: SetLossWeights = SetLossWeights()
                    ) -> dict[str, float]:
    """Local epochs of AdamW on the set loss over every (image, class prompt) pair of the split."""
    device = select_device()
    model.to(device).train()
    prompts = prompts.to(device)
    c = prompts.shape[0]
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=1e-4)
    rng = np.random.default_rng(seed)
    totals: dict[str, float] = {}
    steps = 0
    for _ in range(epochs):
        order = rng.permutation(len(data))
        for start in range(0, len(order), spec.batch_size):
            idx = order[start:start + spec.batch_size]
            pred_boxes, logits = model(to_input(data.pixels[idx], device), prompts)
            targets, present = pair_targets(data, boxes, idx, c)
            loss = set_loss(pred_boxes.reshape(-1, model.regions, 4).cpu(), logits.reshape(-1, model.regions).cpu(),
                            targets, present, weights)
            opt.zero_grad(set_to_none=True)
            loss["total"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            steps += 1
            for k, v in loss.items():
                totals[k] = totals.get(k, 0.0) + float(v.detach())
    model.cpu()
    return {f"loc_{k}_loss" if k != "matched" else "loc_matched_boxes": v / max(steps, 1) for k, v in totals.items()}


@torch.no_grad()
def predict_boxes(model: PromptLocalizer, pixels: np.ndarray, prompts: torch.Tensor, batch_size: int = 64
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (N, P, R, 4) relative (cx, cy, w, h) and presence probabilities (N, P, R) for uint8 images (N, S, S)."""
    device = select_device()
    model.to(device).eval()
    out_b, out_s = [], []
    for start in range(0, len(pixels), batch_size):
        b, logit = model(to_input(pixels[start:start + batch_size], device), prompts.to(device))
        out_b.append(b.cpu().numpy())
        out_s.append(torch.sigmoid(logit).cpu().numpy())
    model.cpu()
    p, r = prompts.shape[0], model.regions
    return (np.concatenate(out_b) if out_b else np.zeros((0, p, r, 4), np.float32),
            np.concatenate(out_s) if out_s else np.zeros((0, p, r), np.float32))


def evaluate_localizer(model: PromptLocalizer, data: SiteData, boxes: SiteBoxes, prompts: torch.Tensor,
                       bins: int = 200) -> BoxTally:
    """Tallies for the classes this split has boxes for, over the images where the class is annotated (present
    with its boxes, or absent); present-without-boxes images are left out (their ground truth is unknown)."""
    c = prompts.shape[0]
    tally = BoxTally(c, bins)
    covered = np.flatnonzero(boxes.covered(c))
    if not len(covered) or not len(data):
        return tally
    pred, score = predict_boxes(model, data.pixels, prompts[covered])
    column = {int(cls): j for j, cls in enumerate(covered)}
    for i, cls, gt in scored_pairs(data, boxes, covered):
        tally.add(cls, pred[i, column[cls]], score[i, column[cls]], gt)
    return tally


def scored_pairs(data: SiteData, boxes: SiteBoxes, classes: np.ndarray):
    """(image, class, ground-truth boxes) for every pair box metrics score: the class annotated present with its
    boxes, or annotated absent (no boxes); present without boxes is left out (its ground truth is unknown)."""
    for cls in classes:
        for i in range(len(data)):
            if data.mask[i, cls] <= 0:
                continue
            gt = boxes.get(i, int(cls))
            if data.targets[i, cls] > 0 and gt is None:
                continue
            yield i, int(cls), np.zeros((0, 4)) if gt is None else gt


def tally_summary(tally: BoxTally, min_count: int) -> dict[str, Any]:
    """The site's box tallies as metric-record lists (``loc.*``); classes with fewer than ``min_count`` images
    with boxes are sent as zeros."""
    keep = tally.images >= max(min_count, 1)
    return {"loc.bins": tally.bins,
            "loc.tp": [int(v) for v in (tally.tp * keep[:, None]).reshape(-1)],
            "loc.fp": [int(v) for v in (tally.fp * keep[:, None]).reshape(-1)],
            "loc.n_gt": [int(v) for v in tally.n_gt * keep],
            "loc.images": [int(v) for v in tally.images * keep],
            "loc.iou_sum": [float(v) for v in tally.iou_sum * keep]}


# -- a federated round at a radiograph site -----------------------------------------------------------------------
_BOXES: dict[tuple[str, str, float], SiteBoxes] = {}


def cached_boxes(cfg: SiteConfig, data: SiteData, split: str) -> SiteBoxes:
    key = (str(cfg.path), split, os.path.getmtime(cfg.index_path))
    if key not in _BOXES:
        _BOXES[key] = site_boxes(cfg, data)
    return _BOXES[key]


def loc_model(spec: LocRunSpec, state: Mapping[str, torch.Tensor]) -> PromptLocalizer:
    model = PromptLocalizer(spec.preset, spec.regions)
    model.load_state_dict(unprefixed(state))
    return model


def train_loc_round(config: Mapping[str, Any], site: SiteConfig, data: SiteData, spec: LocRunSpec,
                    state: Mapping[str, torch.Tensor], num_classes: int
                    ) -> tuple[dict[str, torch.Tensor], dict[str, float], dict]:
    """One local round of the localiser: (the groups that leave, under ``loc.``; the samples behind each group
    (the train reply's group counts); the other metrics that leave)."""
    if bool(config.get("dp", False)):
        raise ValueError(f"{site.name}: the prompt localiser has no DP-SGD training; run it with dp = false")
    t0 = time.perf_counter()
    model = loc_model(spec, state)
    boxes = cached_boxes(site, data, "train")
    ls = load_label_set(str(config["label-set"]))
    prompts = class_prompts(site.work_dir, ls.classes[:num_classes])
    epochs = spec.epochs or int(config["local-epochs"])
    stats = train_localizer(model, data, boxes, prompts, spec, epochs,
                            seed=int(config.get("seed", 0)) * 1000 + int(config["server-round"]))
    k = site.privacy.suppress
    count = float(k(len(data)))
    out = {key: v for key, v in prefixed(model.state_dict()).items()
           if count > 0 and not site.privacy.withheld(loc_parameter_group(key))}
    counts = {g: count for g in sorted({loc_parameter_group(key) for key in out})}
    metrics = {**{key: float(v) for key, v in stats.items()},
               "loc_box_images": int(k(len({i for i, _ in boxes.boxes}))),
               "loc_seconds": time.perf_counter() - t0}
    return out, counts, metrics


def evaluate_loc_round(config: Mapping[str, Any], site: SiteConfig, data: SiteData, split: str, spec: LocRunSpec,
                       state: Mapping[str, torch.Tensor], num_classes: int) -> dict[str, Any]:
    model = loc_model(spec, state)
    ls = load_label_set(str(config["label-set"]))
    prompts = class_prompts(site.work_dir, ls.classes[:num_classes])
    tally = evaluate_localizer(model, data, cached_boxes(site, data, split), prompts)
    return tally_summary(tally, site.privacy.min_count)
