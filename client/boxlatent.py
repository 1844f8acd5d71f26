"""The box-latent head at a site: local training on the frozen backbone (two device-shifted views per image),
the evaluation summary (BL-TTA at N = 1 / 8 / 32, temperature fitted on the site's validation split, reliability
tables for the Brier score and ECE, the radius OOD score against three OOD kinds, per-class box statistics for
site similarity), and the site-local artefacts ``predict --report`` uses (case index, temperature, OOD threshold).

What leaves the site: the head's weights and aggregate summaries under the site's small-count rule. The case
index (boxes, local case numbers and report sentences) stays in the work dir.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from client.index import SiteData
from client.site_config import SiteConfig
from client.training import PIXEL_MEAN, PIXEL_STD, _batch, objective
from shared_models.boxlatent import BoxLatentNet, BoxSpec, CaseIndex, box_loss, fit_temperature
from shared_models.boxlatent.calibration import reliability_table
from shared_models.boxlatent.shifts import OOD_KINDS, corrupt, device_shift, held_out_device, non_chest_images
from shared_models.losses import AsymmetricLoss
from shared_models.messages import TRAIN_LOSS, TRAIN_SECONDS
from shared_models.metrics import HistogramSpec

OOD_HISTOGRAM = HistogramSpec(400, 10.0)  # mean log radius, binned as sigmoid(score): 0.05-wide bins on [-10, 10]
OOD_MAX_IMAGES = 512  # per OOD kind, a fixed subsample of the evaluated split
OOD_QUANTILE = 0.95  # predict's OOD flag: above this quantile of the site's validation scores


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x * PIXEL_STD + PIXEL_MEAN


def _normalised(x: torch.Tensor) -> torch.Tensor:
    return (x - PIXEL_MEAN) / PIXEL_STD


def train_box(model: BoxLatentNet, data: SiteData, spec: BoxSpec, epochs: int, lr: float, batch_size: int,
              device: torch.device, seed: int = 0, prevalence: np.ndarray | None = None,
              asl_class_weights: bool = False) -> dict[str, float]:
    """AdamW on the box head only: BCE (or ASL) on ``train_samples`` latents per image, the volume regulariser, and the
    overlap of the boxes of two device-shifted views of each image."""
    model.to(device).train()
    loss_fn, _ = objective(model, data, prevalence, asl_class_weights, 0.0, device)
    if spec.loss == "bce":  # ASL with no focusing and no clip is the masked binary cross-entropy
        loss_fn = AsymmetricLoss(gamma_neg=0.0, gamma_pos=0.0, clip=0.0).to(device)
    opt = torch.optim.AdamW(model.box.parameters(), lr=lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    total, gap_total, steps, t0 = 0.0, 0.0, 0, time.perf_counter()
    for _ in range(epochs):
        order = rng.permutation(len(data))
        for start in range(0, len(data), batch_size):
            idx = order[start:start + batch_size]
            if len(idx) < 2:
                continue
            x, p, y, m = _batch(data, idx, device, model.num_classes)
            views = [model.features(_normalised(device_shift(_unit(x), gen)), p) for _ in range(2)]
            first, second = (model.box(f, spec.train_samples, gen) for f in views)
            loss = box_loss(first, y, m, loss_fn, spec.volume_weight, second, spec.invariance_weight,
                            spec.target_log_radius)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            gap_total += float(((first.centre - second.centre).abs() - first.radius - second.radius).clamp(min=0)
                               .sum(1).mean().detach())
            steps += 1
    return {TRAIN_LOSS: total / max(steps, 1), "box_gap": gap_total / max(steps, 1), "steps": steps,
            TRAIN_SECONDS: time.perf_counter() - t0}


@dataclass
class BoxPredictions:
    centres: np.ndarray  # (N, d)
    radii: np.ndarray  # (N, d)
    probs: dict[int, np.ndarray]  # BL-TTA probabilities (N, C) per number of samples

    def ood_score(self) -> np.ndarray:
        return np.log(self.radii).mean(1)


@torch.no_grad()
def box_predictions(model: BoxLatentNet, data: SiteData, device: torch.device, samples: tuple[int, ...],
                    seed: int = 0, shift=None, batch_size: int = 256) -> BoxPredictions:
    """Boxes and BL-TTA probabilities for every image of ``data`` (the backbone runs once per image; the samples
    only pass through the classifier). ``shift(x_unit, generator)`` transforms the images first (OOD kinds)."""
    model.to(device).eval()
    gen = torch.Generator().manual_seed(seed)
    cs, rs, ps = [], [], {n: [] for n in samples}
    for start in range(0, len(data), batch_size):
        idx = np.arange(start, min(start + batch_size, len(data)))
        x, p, _, _ = _batch(data, idx, device, model.num_classes)
        if shift is not None:
            x = _normalised(shift(_unit(x).cpu(), gen).to(device))
        feats = model.features(x, p)
        c, r = model.box.box(feats)
        cs.append(c.cpu().numpy())
        rs.append(r.cpu().numpy())
        for n in samples:
            ps[n].append(model.box(feats, n, gen).probabilities().cpu().numpy())
    d, k = model.box.centre.out_features, model.num_classes
    return BoxPredictions(np.concatenate(cs) if cs else np.zeros((0, d)),
                          np.concatenate(rs) if rs else np.zeros((0, d)),
                          {n: np.concatenate(v) if v else np.zeros((0, k)) for n, v in ps.items()})


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p) - np.log1p(-p)


def calibrate(probs: np.ndarray, temperature: float) -> np.ndarray:
    """sigmoid(logit(p) / T): temperature scaling of BL-TTA's averaged probabilities."""
    return 1.0 / (1.0 + np.exp(-_logit(probs) / temperature))


def site_temperature(probs: np.ndarray, val: SiteData, num_classes: int) -> float | None:
    """T fitted on the validation split's annotated entries; None when the split has none."""
    mask = val.mask[:, :num_classes]
    if len(val) == 0 or mask.sum() == 0:
        return None
    return fit_temperature(_logit(probs), val.targets[:, :num_classes], mask)


def _subsample(data: SiteData, limit: int, seed: int) -> SiteData:
    if len(data) <= limit:
        return data
    idx = np.sort(np.random.default_rng(seed).choice(len(data), limit, replace=False))
    return SiteData(data.pixels[idx], data.projection[idx], data.targets[idx], data.mask[idx])


def _ood_histogram(scores: np.ndarray) -> list[int]:
    probs = 1.0 / (1.0 + np.exp(-np.asarray(scores, np.float64)))
    return np.bincount(OOD_HISTOGRAM.bin_index(probs), minlength=OOD_HISTOGRAM.bins).astype(int).tolist()


def box_evaluation(model: BoxLatentNet, data: SiteData, val: SiteData, spec: BoxSpec, device: torch.device,
                   hist: HistogramSpec, min_count: int, seed: int = 0) -> tuple[np.ndarray, dict]:
    """The probabilities the standard summary uses (BL-TTA at ``spec.samples``, calibrated with the site's own
    temperature) and the ``box.*`` summary keys (see the module docstring); nothing per image."""
    c = model.num_classes
    targets, mask = data.targets[:, :c], data.mask[:, :c]
    ns = spec.reported_samples
    test = box_predictions(model, data, device, ns, seed)
    held = box_predictions(model, val, device, ns, seed) if len(val) else None
    out: dict = {}
    enough = (len(data) >= min_count and (targets * mask).sum() >= min_count
              and ((1 - targets) * mask).sum() >= min_count)
    primary = None
    for n in ns:
        t = site_temperature(held.probs[n], val, c) if held is not None else None
        cal = calibrate(test.probs[n], t) if t else test.probs[n]
        primary = cal if n == spec.samples else primary
        pos, neg = hist.histograms(targets, test.probs[n], mask)
        small = (pos.sum(1) < min_count) | (neg.sum(1) < min_count)
        out[f"box.n{n}.hist_pos"] = np.where(small[:, None], 0, pos).reshape(-1).astype(int).tolist()
        out[f"box.n{n}.hist_neg"] = np.where(small[:, None], 0, neg).reshape(-1).astype(int).tolist()
        for name, p in (("raw", test.probs[n]), ("cal", cal)):
            table = reliability_table(p, targets, mask) if enough else np.zeros((10, 2, 3))
            out[f"box.n{n}.rel_{name}"] = table.reshape(-1).tolist()
        out[f"box.n{n}.temperature"] = float(t) if t else float("nan")
    id_scores = test.ood_score()
    gen = torch.Generator().manual_seed(seed + 1)
    ok = len(data) >= min_count
    out["box.ood.id"] = _ood_histogram(id_scores) if ok else [0] * OOD_HISTOGRAM.bins
    sub = _subsample(data, OOD_MAX_IMAGES, seed)
    for kind in OOD_KINDS:
        if kind == "nonchest":
            size = data.pixels.shape[-1]
            px = (non_chest_images(len(sub), size, gen)[:, 0].numpy() * 255).round().astype(np.uint8)
            # the same views as the chest images they replace, so routing alone cannot tell them apart
            shifted = SiteData(px, sub.projection, sub.targets, sub.mask)
            scores = box_predictions(model, shifted, device, (1,), seed).ood_score()
        else:
            shift = held_out_device if kind == "device" else corrupt
            scores = box_predictions(model, sub, device, (1,), seed, shift=shift).ood_score()
        out[f"box.ood.{kind}"] = _ood_histogram(scores) if ok else [0] * OOD_HISTOGRAM.bins
    out.update(box_statistics(test, targets, mask, min_count))
    return primary, out


def box_statistics(pred: BoxPredictions, targets: np.ndarray, mask: np.ndarray, min_count: int) -> dict:
    """Per class, the mean centre and mean radius of the annotated positives' boxes (NaN and a count of 0 for a
    class with fewer than ``min_count`` positives); the server compares sites with them."""
    c, d = targets.shape[1], pred.centres.shape[1]
    centre, radius, n = np.full((c, d), np.nan), np.full((c, d), np.nan), np.zeros(c, int)
    for j in range(c):
        sel = (targets[:, j] > 0.5) & (mask[:, j] > 0)
        if sel.sum() >= max(min_count, 1):
            centre[j], radius[j], n[j] = pred.centres[sel].mean(0), pred.radii[sel].mean(0), int(sel.sum())
    return {"box.stats.centre": centre.reshape(-1).tolist(), "box.stats.radius": radius.reshape(-1).tolist(),
            "box.stats.n": n.tolist()}


# -- site-local artefacts for predict --report ----------------------------------------------------------------

def label_sentence(row_targets: np.ndarray, row_mask: np.ndarray, classes: list[str]) -> str:
    found = [classes[j] for j in range(len(classes)) if row_mask[j] > 0 and row_targets[j] > 0.5]
    return ("Findings: " + ", ".join(found) + ".") if found else "No labelled finding."


def artefact_dir(site: SiteConfig, digest: str) -> Path:
    return site.work_dir / "boxlatent" / digest[:16]


def build_site_artefacts(model: BoxLatentNet, train: SiteData, val: SiteData, spec: BoxSpec, classes: list[str],
                         folder: Path, device: torch.device) -> dict:
    """The case index of the site's training boxes (local case numbers, report text else the labels in words),
    the temperature for ``spec.samples`` and the OOD threshold, written to ``folder``; returns the calibration."""
    pred = box_predictions(model, train, device, (1,))
    rows = train.rows if train.rows is not None else np.arange(len(train))
    reports = train.reports or ("",) * len(train)
    texts = [r.strip() or label_sentence(train.targets[i], train.mask[i], classes) for i, r in enumerate(reports)]
    CaseIndex(pred.centres, pred.radii, [f"case-{int(r)}" for r in rows], texts).save(folder)
    held = box_predictions(model, val, device, (spec.samples, 1)) if len(val) else None
    t = site_temperature(held.probs[spec.samples], val, model.num_classes) if held is not None else None
    scores = held.ood_score() if held is not None else pred.ood_score()
    calibration = {"temperature": t, "samples": spec.samples, "ood_threshold": float(np.quantile(scores, OOD_QUANTILE)),
                   "ood_quantile": OOD_QUANTILE, "ood_reference": "validation" if held is not None else "training",
                   "cases": len(train)}
    (folder / "calibration.json").write_text(json.dumps(calibration, indent=1))
    return calibration
