"""DP-SGD for the routed experts: exact per-sample gradients with ``torch.func`` (vmap over whole samples),
per-sample clipping to ``max_grad_norm``, Gaussian noise of std ``noise_multiplier * max_grad_norm`` on the
sum, Poisson sampling of each batch (each image independently with probability q).

Why not Opacus's per-layer hooks: Swin folds its attention windows into the batch axis (a per-layer hook sees
B x windows "samples"), keeps buffers next to parameters, and fused timm layers fall back to slow paths. A
vmap over the whole per-sample loss is exact for any architecture without cross-sample layers
(``compat.make_dp_compatible`` removes those) and costs one batched forward / backward. Opacus provides the
accountant (``accountant.py``).

A routed model is not one computation per sample (each image goes to its view's expert), so the batch is split
by route: images with a trusted view i use expert i (+ the router's cross-entropy, + the generalist when
present); images without one use the soft mixture of every expert by the router's probabilities. Each image's
gradient is one vector over all parameters it touched; that vector is clipped as a whole.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from shared_models.networks.experts import PROJECTIONS, RoutedExperts


@dataclass(frozen=True)
class DPSettings:
    noise_multiplier: float
    max_grad_norm: float

    def __post_init__(self) -> None:
        if self.noise_multiplier < 0 or self.max_grad_norm <= 0:
            raise ValueError(f"DP settings need noise_multiplier >= 0 and max_grad_norm > 0, got {self}")


def poisson_batches(n: int, sample_rate: float, steps: int, rng: np.random.Generator):
    """``steps`` batches, each image in each batch independently with probability ``sample_rate`` (the
    sampling the privacy accountant assumes); batches may be empty."""
    for _ in range(steps):
        yield np.flatnonzero(rng.random(n) < sample_rate)


def _members(model: RoutedExperts, route: int) -> list[str]:
    used = [f"experts.{PROJECTIONS[route]}"] if route >= 0 else [f"experts.{p}" for p in PROJECTIONS]
    if model.router is not None:
        used.append("router")
    if model.generalist is not None:
        used.append("generalist")
    return used


def _sub(params: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    cut = len(prefix) + 1
    return {k[cut:]: v for k, v in params.items() if k.startswith(prefix + ".")}


def _single_loss(model: RoutedExperts, route: int, loss_fn: Callable, offset: torch.Tensor | None):
    """The loss of one image (no batch axis) on the route's members, as a function of their parameters."""

    def run(params, prefix: str, module: nn.Module, x1):
        return functional_call(module, _sub(params, prefix), (x1,))

    def loss(params, x, y, m):
        x1, y1, m1 = x.unsqueeze(0), y.unsqueeze(0), m.unsqueeze(0)
        router = run(params, "router", model.router, x1) if model.router is not None else None
        if route >= 0:
            logits = run(params, f"experts.{PROJECTIONS[route]}", model.experts[PROJECTIONS[route]], x1)
        else:
            outs = torch.stack([run(params, f"experts.{p}", model.experts[p], x1) for p in PROJECTIONS])
            w = (torch.softmax(router, 1).T.unsqueeze(-1) if router is not None
                 else torch.full((len(PROJECTIONS), 1, 1), 1 / len(PROJECTIONS), device=x.device))
            logits = (outs * w).sum(0)
        if model.generalist is not None:
            logits = (logits + run(params, "generalist", model.generalist, x1)) / 2
        value = loss_fn(logits if offset is None else logits + offset, y1, m1)
        if route >= 0 and router is not None:
            value = value + nn.functional.cross_entropy(router, torch.full((1,), route, device=x.device))
        return value

    return loss


def clipped_gradient_sum(model: RoutedExperts, x: torch.Tensor, projection: torch.Tensor, y: torch.Tensor,
                         m: torch.Tensor, loss_fn: Callable, max_grad_norm: float,
                         offset: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Sum over the batch of per-sample gradients, each clipped to ``max_grad_norm`` (L2 over every parameter
    the sample touched). Returns (summed gradients by parameter name, per-sample losses, per-sample norms
    before clipping), in the batch's order for the last two."""
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    losses = x.new_zeros(x.shape[0])
    norms = x.new_zeros(x.shape[0])
    for route in (*range(len(PROJECTIONS)), -1):
        sel = (projection == route) if route >= 0 else (projection < 0)
        if not bool(sel.any()):
            continue
        prefixes = _members(model, route)
        sub = {k: v for k, v in params.items() if any(k.startswith(p + ".") for p in prefixes)}
        grads, values = vmap(grad_and_value(_single_loss(model, route, loss_fn, offset)),
                             in_dims=(None, 0, 0, 0), randomness="different")(sub, x[sel], y[sel], m[sel])
        norm = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in grads.values()))
        factor = (max_grad_norm / (norm + 1e-6)).clamp(max=1.0)
        for k, g in grads.items():
            total[k] += torch.einsum("b,b...->...", factor, g)
        losses[sel], norms[sel] = values.detach(), norm.detach()
    return total, losses, norms


def privatise(summed: dict[str, torch.Tensor], settings: DPSettings, expected_batch: float,
              generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Gaussian noise N(0, (sigma * C)^2) on every coordinate of the clipped sum, divided by the expected batch
    size (Poisson sampling: q * N), as DP-SGD prescribes."""
    std = settings.noise_multiplier * settings.max_grad_norm
    out = {}
    for k, g in summed.items():
        noise = torch.normal(0.0, std, g.shape, generator=generator).to(g.device) if std > 0 else 0.0
        out[k] = (g + noise) / expected_batch
    return out
