"""Local training and prediction for the routed experts on one site's data."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from client.index import SiteData
from shared_models.longtail import logit_adjustment, sampling_weights
from shared_models.losses import AUGMENTATIONS, LOSSES, AsymmetricLoss, prevalence_class_weights
from shared_models.metrics import prevalence as class_prevalence
from shared_models.networks import RoutedExperts
from shared_models.progress import Progress, track

PIXEL_MEAN, PIXEL_STD = 0.5, 0.25


@dataclass
class ZeroShotTraining:
    """The image-text branch's share of the local objective: loss = ASL + weight * contrastive."""

    texts: object  # client.zeroshot.TrainingTexts for the rows of the training data
    weight: float
    hidden: tuple[int, ...] = ()  # proxy classes: hidden from the ASL branch (mask 0)

    def hide(self, mask: torch.Tensor) -> torch.Tensor:
        """The label mask with the proxy classes masked out (in place; ``_batch`` returns a copy)."""
        if self.hidden:
            mask[:, list(self.hidden)] = 0.0
        return mask


def _batch(data: SiteData, idx: np.ndarray, device: torch.device, num_classes: int):
    x = torch.from_numpy(data.pixels[idx]).to(device).float().div_(255.0).sub_(PIXEL_MEAN).div_(PIXEL_STD).unsqueeze(1)
    p = torch.from_numpy(data.projection[idx]).to(device)
    y = torch.from_numpy(data.targets[idx, :num_classes]).to(device)
    m = torch.from_numpy(data.mask[idx, :num_classes]).to(device)
    return x, p, y, m


def augment(x: torch.Tensor, generator: torch.Generator, kind: str = "shift") -> torch.Tensor:
    """Radiograph-safe augmentation (no flips: the heart is on the left). ``shift``: one small translation per
    batch and a brightness/contrast jitter of +-5 %. ``affine``: per image a rotation of +-5 degrees, a scale of
    0.9-1.1, a translation of +-6 % (border pixels repeated, nothing wraps round) and a contrast of +-20 %,
    brightness +-10 %."""
    if kind not in AUGMENTATIONS:
        raise ValueError(f"augment {kind!r}; expected one of {AUGMENTATIONS}")
    b = x.shape[0]
    if kind == "affine":
        def u() -> torch.Tensor:
            return torch.rand(b, generator=generator) * 2 - 1

        angle, scale, tx, ty = u() * (5 * math.pi / 180), 1 + 0.1 * u(), 0.06 * u(), 0.06 * u()
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1).to(x)
        grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
        x = torch.nn.functional.grid_sample(x, grid, padding_mode="border", align_corners=False)
        return x * (1 + 0.2 * u()).view(b, 1, 1, 1).to(x) + (0.1 * u()).view(b, 1, 1, 1).to(x)
    shift = torch.randint(-3, 4, (2,), generator=generator).tolist()
    x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(2, 3))
    gain = 1.0 + 0.1 * (torch.rand(b, 1, 1, 1, generator=generator) - 0.5)
    bias = 0.1 * (torch.rand(b, 1, 1, 1, generator=generator) - 0.5)
    return x * gain.to(x.device) + bias.to(x.device)


def objective(model: RoutedExperts, data: SiteData, prevalence: np.ndarray | None, asl_class_weights: bool,
              logit_adjust_tau: float, device: torch.device, loss: str = "asl"
              ) -> tuple[AsymmetricLoss, torch.Tensor | None]:
    """The loss (ASL, or ``loss="bce"``: ASL without focusing or clipping, i.e. masked binary cross-entropy;
    optionally class-weighted) and the logit-adjustment offset, from the consortium's prevalence when the server
    sent it, else the site's own."""
    if loss not in LOSSES:
        raise ValueError(f"loss {loss!r}; expected one of {LOSSES}")
    if prevalence is None:
        prevalence = class_prevalence(*data.class_counts(model.num_classes), empty=0.0)
    prior = torch.as_tensor(np.asarray(prevalence, dtype=np.float32), device=device)
    weights = prevalence_class_weights(prior) if asl_class_weights else None
    focus = dict(gamma_neg=4.0, gamma_pos=0.0, clip=0.05) if loss == "asl" else dict(gamma_neg=0.0, clip=0.0)
    loss_fn = AsymmetricLoss(class_weights=weights, **focus).to(device)
    return loss_fn, (logit_adjustment(prior, logit_adjust_tau) if logit_adjust_tau else None)


def train_local(
    model: RoutedExperts,
    data: SiteData,
    epochs: int,
    lr: float,
    batch_size: int,
    device: torch.device,
    seed: int = 0,
    proximal_mu: float = 0.0,
    prevalence: np.ndarray | None = None,
    asl_class_weights: bool = False,
    sampling: str = "none",
    logit_adjust_tau: float = 0.0,
    zeroshot: ZeroShotTraining | None = None,
    weight_decay: float = 1e-4,
    loss: str = "asl",
    progress_round: int = 0,
    augmentation: str = "shift",
) -> dict[str, float]:
    """AdamW + ASL with the label mask; FedProx's proximal term when ``proximal_mu`` > 0; with ``zeroshot`` (a
    ``DualBranch`` model) the weighted contrastive term on image / text pairs, proxy classes masked out of ASL.

    Long-tail options (shared_models.longtail): ASL per-class weights from ``prevalence`` (the CXR-LT
    variant), class-balanced or square-root re-sampling, and logit adjustment by tau * logit(prevalence).
    ``prevalence`` is the consortium's (sums of counts over sites) when the server sent it, else local.
    Progress (round, epoch, batches, running loss) goes to the local stderr only (shared_models/progress.py).
    """
    model.to(device).train()
    num_classes = model.num_classes
    loss_fn, offset = objective(model, data, prevalence, asl_class_weights, logit_adjust_tau, device, loss)
    draw = sampling_weights(data.targets[:, :num_classes], data.mask[:, :num_classes], sampling)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    global_params = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else None
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    n = len(data)
    total, steps, t0 = 0.0, 0, time.perf_counter()
    contrastive_total = 0.0
    if zeroshot is not None:
        from client.zeroshot import contrastive_term
    progress = Progress(f"local training{f' round {progress_round}' if progress_round else ''}",
                        epochs * sum(1 for s in range(0, n, batch_size) if n - s >= 2), "batches")
    for epoch in range(epochs):
        order = rng.permutation(n) if draw is None else rng.choice(n, size=n, replace=True, p=draw)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            if len(idx) < 2:
                continue
            x, p, y, m = _batch(data, idx, device, num_classes)
            if zeroshot is None:
                logits, router_logits = model.forward_with_router(augment(x, gen, augmentation), p)
            else:
                logits, router_logits, emb = model.forward_dual(augment(x, gen, augmentation), p)
                zeroshot.hide(m)
            loss = loss_fn(logits if offset is None else logits + offset, y, m)
            if zeroshot is not None:
                texts, positives = zeroshot.texts.batch(idx)
                term = contrastive_term(model, emb, texts.to(device), positives.to(device))
                contrastive_total += float(term.detach())
                loss = loss + zeroshot.weight * term
            known = p >= 0
            if router_logits is not None and bool(known.any()):  # the router learns from trusted metadata views
                loss = loss + torch.nn.functional.cross_entropy(router_logits[known], p[known])
            if global_params is not None:
                prox = sum(((w - g) ** 2).sum() for w, g in zip(model.parameters(), global_params))
                loss = loss + 0.5 * proximal_mu * prox
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            steps += 1
            progress.update(1, epoch=f"{epoch + 1}/{epochs}", loss=total / steps)  # local stream only
    progress.close()
    out = {"train_loss": total / max(steps, 1), "steps": steps, "train_seconds": time.perf_counter() - t0}
    if zeroshot is not None:
        out["contrastive_loss"] = contrastive_total / max(steps, 1)
    return out


@torch.no_grad()
def _predict_batches(model, data: SiteData, device: torch.device, batch_size: int, dual: bool):
    """Probabilities, router guesses and (``dual``) image-text embeddings, batch by batch."""
    model.to(device).eval()
    out, routes, embs = [], [], []
    for start in track(range(0, len(data), batch_size), "predict", unit="batches"):
        idx = np.arange(start, min(start + batch_size, len(data)))
        x, p, _, _ = _batch(data, idx, device, model.num_classes)
        if dual:
            logits, router_logits, emb = model.forward_dual(x, p)
            embs.append(emb.cpu())
        else:
            logits, router_logits = model.forward_with_router(x, p)
        out.append(torch.sigmoid(logits).cpu().numpy())
        if router_logits is not None:
            routes.append(router_logits.argmax(1).cpu().numpy())
    probs = np.concatenate(out) if out else np.zeros((0, model.num_classes), np.float32)
    return probs, (np.concatenate(routes) if routes else None), embs


def predict(model: RoutedExperts, data: SiteData, device: torch.device, batch_size: int = 256
            ) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities (N, C) for the model's classes, and the router's projection guesses (N,) when it has one."""
    probs, routes, _ = _predict_batches(model, data, device, batch_size, dual=False)
    return probs, routes


def predict_dual(model, data: SiteData, device: torch.device, batch_size: int = 256
                 ) -> tuple[np.ndarray, np.ndarray | None, torch.Tensor]:
    """``predict`` for a ``DualBranch``, plus the image embeddings (N, D) of the image-text branch."""
    probs, routes, embs = _predict_batches(model, data, device, batch_size, dual=True)
    emb = torch.cat(embs) if embs else torch.zeros(0, model.zeroshot.text_proj.out_features)
    return probs, routes, emb
