"""Local training under DP-SGD (shared_models.privacy): Poisson-sampled batches, exact per-sample gradients
clipped to the run's norm, Gaussian noise, AdamW on the noisy mean. The privacy cost of a call is its
(noise multiplier, sample rate, steps); the site's ledger (client/privacy.py) accounts for it."""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from client.index import SiteData
from client.training import ZeroShotTraining, _batch, augment, objective
from shared_models.messages import TRAIN_LOSS, TRAIN_SECONDS
from shared_models.networks import RoutedExperts
from shared_models.privacy import DPSettings, clipped_gradient_sum, dp_schedule, is_dp_compatible, privatise
from shared_models.privacy.randomness import SecureStream, secure_global_rng, secure_poisson_batches
from shared_models.zeroshot.dp import check_dp_head, clipped_zeroshot_sum


def train_local_dp(
    model: RoutedExperts,
    data: SiteData,
    epochs: int,
    lr: float,
    batch_size: int,
    device: torch.device,
    dp: DPSettings,
    proximal_mu: float = 0.0,
    prevalence: np.ndarray | None = None,
    asl_class_weights: bool = False,
    logit_adjust_tau: float = 0.0,
    zeroshot: ZeroShotTraining | None = None,
    prompts: torch.Tensor | None = None,
    weight_decay: float = 1e-4,
    loss: str = "asl",
    augmentation: str = "shift",
    *,
    dataset_size: int,
) -> dict[str, float]:
    """``epochs`` x ceil(N / batch_size) DP-SGD steps at sample rate batch_size / N, N the released
    ``dataset_size`` (client/dp_release.py), never the exact one. FedProx's proximal
    gradient is added after the noise (it does not touch the data). Re-sampling for the long tail is not
    available under DP (the accountant assumes uniform Poisson sampling).

    With ``zeroshot`` (a ``DualBranch`` with a separate image encoder), each image's gradient has two parts, the
    routed experts' (ASL) and the zero-shot head's (per-sample SigLIP against ``prompts``, the seen classes' public
    prompt embeddings, shared_models/zeroshot/dp.py); each part is clipped to C / sqrt(2), so the whole per-sample
    vector stays within C and the noise (sigma * C) and the accountant are unchanged."""
    if zeroshot is not None:
        check_dp_head(model.zeroshot)
        if prompts is None:
            raise ValueError("DP-SGD for the zero-shot branch needs the seen classes' prompt embeddings")
    if not is_dp_compatible(model):
        raise ValueError("the model still has batch norm; build it with dp_compatible=True for DP-SGD")
    model.to(device).train()
    n = len(data)
    if n == 0:
        raise ValueError("no training images at this site")
    loss_fn, offset = objective(model, data, prevalence, asl_class_weights, logit_adjust_tau, device, loss)
    sample_rate, steps = dp_schedule(dataset_size, batch_size, epochs)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    params = dict(model.named_parameters())
    start = {k: v.detach().clone() for k, v in params.items()} if proximal_mu > 0 else None
    stream = SecureStream()  # noise, sampling, augmentation, dropout: OS CSPRNG re-seeded every step, never ``seed``
    total, seen, clipped, t0 = 0.0, 0, 0, time.perf_counter()
    with secure_global_rng():
        for idx in secure_poisson_batches(n, sample_rate, steps, stream):
            if len(idx):
                x, p, y, m = _batch(data, idx, device, model.num_classes)
                x = augment(x, stream.torch, augmentation)
                if zeroshot is None:
                    summed, losses, norms = clipped_gradient_sum(model, x, p, y, m, loss_fn, dp.max_grad_norm, offset)
                else:
                    zeroshot.hide(m)
                    part = dp.max_grad_norm / math.sqrt(2)
                    summed, losses, n1 = clipped_gradient_sum(model, x, p, y, m, loss_fn, part, offset)
                    t = torch.from_numpy(idx)
                    zs, zs_losses, n2 = clipped_zeroshot_sum(model.zeroshot, x, zeroshot.texts.features[t].to(device),
                                                             prompts.to(device), y, m, part)
                    for k, g in zs.items():
                        summed[f"zeroshot.{k}"] = summed[f"zeroshot.{k}"] + g
                    losses = losses + zs_losses  # (zeroshot-weight does not apply: each part has its own clip)
                    norms = torch.maximum(n1, n2) * math.sqrt(2)  # over C iff a part was over C / sqrt(2): clipped
                total += float(losses.sum())
                seen += len(idx)
                clipped += int((norms > dp.max_grad_norm).sum())
            else:  # an empty Poisson batch still takes a (pure-noise) step
                summed = {k: torch.zeros_like(v) for k, v in params.items() if v.requires_grad}
            grads = privatise(summed, dp, expected_batch=sample_rate * dataset_size, generator=stream.torch)
            for k, g in grads.items():
                if start is not None:
                    g = g + proximal_mu * (params[k].detach() - start[k])
                params[k].grad = g.to(params[k].dtype)
            opt.step()
            opt.zero_grad(set_to_none=True)
    return {TRAIN_LOSS: total / max(seen, 1), "steps": steps, "sample_rate": sample_rate,
            "noise_multiplier": dp.noise_multiplier, "max_grad_norm": dp.max_grad_norm,
            "clipped_fraction": clipped / max(seen, 1), TRAIN_SECONDS: time.perf_counter() - t0}
