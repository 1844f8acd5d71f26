"""`fedchest-site evaluate`: the consortium's model scored on the site's own indexed images, at the site.

A hospital (one that trained, or one that joined after training) runs the global checkpoint over a split of its
index and gets per-class AUROC / AP / F1 with the number of positives, macro means, and the same per projection.
Classes with fewer than the site's ``min_count`` annotated positives are listed as such and not scored (their
figures would rest on a handful of patients); classes the site's sources cannot express (masked) are listed
apart, never scored as negatives. Metrics come from shared_models.metrics, the project's one place for them.
Nothing is sent anywhere; the optional per-image scores CSV is written where the user asks.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from client.index import SiteData, load_split, sample_paths
from client.predict import load_global_model, read_checkpoint
from client.site_config import SiteConfig
from client.training import predict
from shared_models.boxlatent.config import box_spec
from shared_models.device import select_device
from shared_models.metrics import per_class_metrics
from shared_models.networks import PROJECTIONS
from shared_models.ontology import load_label_set

SPLITS = ("all", "train", "val", "test")


class EvaluationMismatch(ValueError):
    """The checkpoint cannot be scored on this site (label set, image size, unreadable file); says why."""


@dataclass
class Evaluation:
    site: str
    checkpoint: str
    split: str
    classes: list[str]
    images: list[str]  # file names, one per scored image (stay at the site)
    probs: np.ndarray  # (N, C) predicted probabilities
    result: dict  # the figures: per class, macro, per projection


def check_compatible(checkpoint: Path, cfg: SiteConfig) -> dict:
    """The checkpoint's contents when it fits the site (same label set and classes, same image size)."""
    try:
        ckpt = read_checkpoint(checkpoint)
    except ValueError as exc:
        raise EvaluationMismatch(str(exc)) from None
    if not isinstance(ckpt, dict) or "classes" not in ckpt or "state_dict" not in ckpt:
        raise EvaluationMismatch(f"{checkpoint}: not a fedchest round checkpoint (no classes / state_dict)")
    if box_spec(ckpt.get("box") or {}) is not None:
        raise EvaluationMismatch(f"{checkpoint}: a box-latent checkpoint; evaluate scores the routed experts "
                                 "(use `fedchest-site predict --report` for the box-latent head)")
    label_set, classes = str(ckpt.get("label_set", "")), list(ckpt["classes"])
    site_classes = list(load_label_set(cfg.label_set).classes)  # seen classes first: a model predicts those
    if label_set != cfg.label_set or site_classes[:len(classes)] != classes:
        raise EvaluationMismatch(
            f"label set mismatch: checkpoint {checkpoint} predicts {len(classes)} classes of label set {label_set!r}; "
            f"site {cfg.path} indexes the {len(site_classes)} classes of {cfg.label_set!r} (site.label_set)")
    size = int(ckpt.get("image_size", 0) or 0)
    if size != cfg.image_size:
        raise EvaluationMismatch(
            f"image size mismatch: checkpoint {checkpoint} was trained on {size} px images; site {cfg.path} indexes "
            f"at site.image_size = {cfg.image_size} px (set it to {size} and run `fedchest-site check` again)")
    return ckpt


def _scope(probs: np.ndarray, data: SiteData, sel: np.ndarray, classes: list[str], k: int) -> dict:
    """Per-class figures and macro means over the images in ``sel``; classes under k positives not scored."""
    pc = per_class_metrics(data.targets[sel, :len(classes)], probs[sel], data.mask[sel, :len(classes)])
    annotated = data.mask[sel, :len(classes)].sum(0) > 0
    per_class, scored = {}, []
    for j, name in enumerate(classes):
        if not annotated[j]:
            continue  # the site's sources cannot express it: masked, not a negative
        n_pos = int(pc["n_pos"][j])
        entry = {"positives": n_pos, "negatives": int(pc["n_neg"][j])}
        if n_pos < k or pc["n_neg"][j] == 0:
            entry["scored"] = False
            entry["reason"] = f"fewer than {k} positives" if n_pos < k else "no negatives"
        else:
            entry.update(scored=True, auroc=float(pc["auroc"][j]), ap=float(pc["ap"][j]), f1=float(pc["f1"][j]),
                         prevalence=n_pos / (n_pos + int(pc["n_neg"][j])))
            scored.append(entry)
        per_class[name] = entry
    masked = [name for j, name in enumerate(classes) if not annotated[j]]
    macro = {m: (float(np.mean([e[m] for e in scored])) if scored else float("nan")) for m in ("auroc", "ap", "f1")}
    return {"images": int(sel.sum()), "classes": per_class, "scored_classes": len(scored), "not_annotated": masked,
            "mAUC": macro["auroc"], "mAP": macro["ap"], "mF1": macro["f1"],
            "constant_predictor_mAP": float(np.mean([e["prevalence"] for e in scored])) if scored else float("nan")}


def evaluate_site(checkpoint: Path, cfg: SiteConfig, split: str = "all") -> Evaluation:
    """Score the checkpoint on one split of the site's index (``all``: every indexed image)."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    ckpt = check_compatible(checkpoint, cfg)
    try:
        model, classes, _size = load_global_model(checkpoint)
    except ValueError as exc:
        raise EvaluationMismatch(str(exc)) from None
    data = load_split(cfg, None if split == "all" else split)
    if not len(data):
        raise ValueError(f"{cfg.path}: the {split} split holds no indexed image")
    probs, _routes = predict(model, data, select_device())
    k = cfg.min_count
    result = {"site": cfg.name, "checkpoint": str(checkpoint), "run_id": ckpt.get("run_id"), "round": ckpt.get("round"),
              "split": split, "min_count": k, "all": _scope(probs, data, np.ones(len(data), bool), classes, k),
              "by_projection": {}}
    for i, view in enumerate(PROJECTIONS):
        sel = data.projection == i
        if sel.any():
            result["by_projection"][view] = _scope(probs, data, sel, classes, k)
    if (data.projection < 0).any():
        result["by_projection"]["unknown"] = _scope(probs, data, data.projection < 0, classes, k)
    names = [Path(p).name for p in sample_paths(cfg, data.rows)]
    return Evaluation(cfg.name, str(checkpoint), split, classes, names, probs, result)


def write_scores(ev: Evaluation, path: Path) -> Path:
    """One row per image: ``image`` (its file name), then the predicted probability of every class."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image", *ev.classes])
        for name, row in zip(ev.images, ev.probs):
            w.writerow([name, *(f"{p:.9g}" for p in row)])  # 9 digits: every float32 score exactly
    return path


def jsonable(value):
    """The result with NaN (undefined metrics) as None, so that ``--json`` prints strict JSON."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    return None if isinstance(value, float) and value != value else value


def _fmt(v: float) -> str:
    return "  -  " if v != v else f"{v:.3f}"


def evaluation_lines(result: dict) -> list[str]:
    """The console form of an evaluation result."""
    a = result["all"]
    lines = [f"site {result['site']}: {result['checkpoint']} (run {result['run_id']}, round {result['round']}) on "
             f"split {result['split']}: {a['images']} images",
             f"  {'class':<26}{'positives':>10}{'AUROC':>8}{'AP':>8}{'F1':>8}"]
    for name, e in a["classes"].items():
        if e["scored"]:
            lines.append(f"  {name:<26}{e['positives']:>10}{_fmt(e['auroc']):>8}{_fmt(e['ap']):>8}{_fmt(e['f1']):>8}")
        else:
            shown = f"<{result['min_count']}" if e["positives"] < result["min_count"] else str(e["positives"])
            lines.append(f"  {name:<26}{shown:>10}  not scored ({e['reason']})")
    lines.append(f"  mAUC {_fmt(a['mAUC'])}  mAP {_fmt(a['mAP'])} "
                 f"(constant predictor {_fmt(a['constant_predictor_mAP'])})"
                 f"  mF1 {_fmt(a['mF1'])} over {a['scored_classes']} classes with >= {result['min_count']} positives")
    if a["not_annotated"]:
        lines.append("  not annotated at this site (masked, not scored): " + ", ".join(a["not_annotated"]))
    for view, s in result["by_projection"].items():
        lines.append(f"  {view:<8} {s['images']:>6} images: mAUC {_fmt(s['mAUC'])}  mAP {_fmt(s['mAP'])}  "
                     f"mF1 {_fmt(s['mF1'])} over {s['scored_classes']} classes")
    return lines
