"""Tail-class synthesis at a site (TRCGL-Net's generator): a small text-conditioned diffusion model trained on the
site's training images, once per run, that adds images of the consortium's tail classes to local training.

- Condition: the MiniLM embedding of the class's descriptive prompts (shared_models/zeroshot/data), the same public
  text every site has; an image trains the generator under one of its annotated positive classes (tail classes
  drawn ten times as often), or unconditionally when it has none.
- Tail classes: consortium prevalence below the tail threshold (the server's ``class-prevalence``; the site's own
  counts in round 1) with at least ``tail-synthesis-min-positives`` positives here to learn from.
- Labels of a synthetic image: its class positive, every other class unknown (mask 0): nothing else is known.
- Synthetic images train the experts as images of unknown projection; the counts that weight this site's update
  count real images only. The generator and its images stay in the site's work folder; nothing of them is sent.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from client.index import SiteData
from client.site_config import SiteConfig
from shared_models.messages import GENERATOR_SECONDS, SYNTH_IMAGES
from shared_models.metrics import TAIL_THRESHOLD, prevalence
from shared_models.ontology import load_label_set
from shared_models.synthesis import ConditionalUNet, DiffusionSchedule, ddim_sample, diffusion_loss
from shared_models.synthesis.config import SynthesisSpec

SCHEDULE = DiffusionSchedule()
BATCH = 32
TAIL_OVERSAMPLING = 10.0


def tail_classes(config: Mapping[str, Any], data: SiteData, num_classes: int, min_positives: int) -> np.ndarray:
    pos, ann = data.class_counts(num_classes)
    prev = (np.asarray(config["class-prevalence"], np.float64)[:num_classes] if "class-prevalence" in config
            else prevalence(pos, ann))
    return np.flatnonzero((prev < TAIL_THRESHOLD) & (pos >= min_positives))


def to_generator_scale(pixels: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (N, S, S) -> (N, 1, size, size) in [-1, 1] (area resize)."""
    x = torch.from_numpy(np.ascontiguousarray(pixels)).float().div(127.5).sub(1.0).unsqueeze(1)
    return F.interpolate(x, size=(size, size), mode="area") if x.shape[-1] != size else x


def from_generator_scale(x: torch.Tensor, size: int) -> np.ndarray:
    y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False) if x.shape[-1] != size else x
    return ((y[:, 0].clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).numpy()


def train_generator(data: SiteData, prompts: torch.Tensor, tails: np.ndarray, spec: SynthesisSpec, seed: int
                    ) -> tuple[ConditionalUNet, dict[str, float]]:
    """``spec.steps`` AdamW steps of the diffusion loss; each image conditioned on one of its positive classes."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    c = prompts.shape[0]
    labelled = (data.targets[:, :c] > 0.5) & (data.mask[:, :c] > 0)
    is_tail = np.zeros(c, bool)
    is_tail[tails] = True
    weight = 1.0 + (TAIL_OVERSAMPLING - 1.0) * (labelled & is_tail).any(1)
    weight = weight / weight.sum()
    images = to_generator_scale(data.pixels, spec.size)
    model = ConditionalUNet()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, spec.steps)
    t0, losses = time.perf_counter(), []
    model.train()
    for _ in range(spec.steps):
        idx = rng.choice(len(data), size=min(BATCH, len(data)), p=weight)
        cond = torch.zeros(len(idx), prompts.shape[1])
        for j, i in enumerate(idx):
            pos = np.flatnonzero(labelled[i])
            if len(pos):
                tail_pos = pos[is_tail[pos]]
                pick = rng.choice(tail_pos) if len(tail_pos) else rng.choice(pos)
                cond[j] = prompts[pick]
        loss = diffusion_loss(model, images[idx], cond, SCHEDULE, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    tail_loss = float(np.mean(losses[-max(1, len(losses) // 10):]))
    return model.eval(), {GENERATOR_SECONDS: time.perf_counter() - t0, "generator_loss": tail_loss}


def synthesize(model: ConditionalUNet, prompts: torch.Tensor, classes: np.ndarray, spec: SynthesisSpec,
               image_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images (N, S, S), class index per image) with ``spec.per_class`` images per class."""
    g = torch.Generator().manual_seed(seed)
    out, labels = [], []
    for cls in classes:
        cond = prompts[int(cls)].expand(spec.per_class, -1)
        x = ddim_sample(model, cond, spec.size, SCHEDULE, guidance=spec.guidance, generator=g)
        out.append(from_generator_scale(x, image_size))
        labels.append(np.full(spec.per_class, int(cls)))
    if not out:
        return np.zeros((0, image_size, image_size), np.uint8), np.zeros(0, np.int64)
    return np.concatenate(out), np.concatenate(labels)


def with_synthetic(data: SiteData, images: np.ndarray, labels: np.ndarray) -> SiteData:
    """``data`` plus synthetic images: unknown projection, their class positive, every other class unknown."""
    n, c = len(labels), data.targets.shape[1]
    targets, mask = np.zeros((n, c), np.float32), np.zeros((n, c), np.float32)
    targets[np.arange(n), labels] = 1.0
    mask[np.arange(n), labels] = 1.0
    return dataclasses.replace(
        data, pixels=np.concatenate([data.pixels, images]),
        projection=np.concatenate([data.projection, np.full(n, -1, np.int64)]),
        targets=np.concatenate([data.targets, targets]), mask=np.concatenate([data.mask, mask]),
        reports=tuple(data.reports) + ("",) * n if data.reports else (),
        rows=None if data.rows is None else np.concatenate([data.rows, np.full(n, -1, np.int64)]))


def tail_training_data(config: Mapping[str, Any], site: SiteConfig, data: SiteData, num_classes: int,
                       spec: SynthesisSpec) -> tuple[SiteData, dict[str, float]]:
    """The site's training data plus its synthetic tail-class images (made once per run and kept in the work
    folder), and what to report (counts under the site's small-count rule)."""
    from client.zeroshot import seen_prompt_features

    run = str(config.get("run-id", "")) or "no-run-id"
    folder = site.work_dir / "tail-synthesis"
    cache = folder / f"{run}.npz"
    if cache.exists():
        with np.load(cache) as z:
            images, labels, info = z["images"], z["labels"], {GENERATOR_SECONDS: 0.0,
                                                              "generator_loss": float(z["loss"])}
    else:
        label_set = load_label_set(str(config["label-set"]))
        prompts = seen_prompt_features(label_set, site.work_dir)[:num_classes]
        tails = tail_classes(config, data, num_classes, spec.min_positives)
        seed = int(config.get("seed", 0))
        if len(tails):
            model, info = train_generator(data, prompts, tails, spec, seed)
            images, labels = synthesize(model, prompts, tails, spec, data.pixels.shape[-1], seed + 1)
        else:
            images, labels = np.zeros((0,) + data.pixels.shape[1:], np.uint8), np.zeros(0, np.int64)
            info = {GENERATOR_SECONDS: 0.0, "generator_loss": float("nan")}
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(cache, images=images, labels=labels, loss=info["generator_loss"])
    k = site.privacy.suppress
    report = {SYNTH_IMAGES: float(k(len(labels))), "synth_classes": float(k(len(np.unique(labels)))),
              GENERATOR_SECONDS: info[GENERATOR_SECONDS]}
    return with_synthetic(data, images, labels), report
