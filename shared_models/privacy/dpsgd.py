"""DP-SGD for the routed experts: exact per-sample gradients with ``torch.func`` (vmap over whole samples),
per-sample clipping to ``max_grad_norm``, Gaussian noise of std ``noise_multiplier * max_grad_norm`` on the
sum, Poisson sampling of each batch (each image independently with probability q).

Two engines give the same clipped sum (tests check both against micro-batches of one):

* ``vmap``: ``torch.func`` over each sample's whole loss. Exact for any architecture without cross-sample
  layers (``compat.make_dp_compatible`` removes those), including Swin, which folds attention windows into the
  batch axis and keeps buffers next to parameters, and CaiT's class token and layer scales.
* ``per-layer`` (``per_layer.py``): one forward, one input-gradient backward, per-sample norms per layer (ghost
  norms where cheaper). For networks of convolutions, linear layers and norms (ResNet, ConvNeXt-V2).

``auto`` takes the per-layer engine for every route whose members it can run. Opacus's own hooks are not used
(they refuse Swin, break on ResNet's residual adds and are slower here: ``make bench``, ``dp_cost``); Opacus
provides the accountant (``accountant.py``), its per-layer samplers for norms and its functorch fallback.

A routed model is not one computation per sample (each image goes to its view's expert), so the batch is split
by route: images with a trusted view i use expert i (+ the router's cross-entropy, + the generalist when
present); images without one use the soft mixture of every expert by the router's probabilities. Each image's
gradient is one vector over all parameters it touched; that vector is clipped as a whole.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

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


def dp_schedule(public_size: int, batch: int, epochs: int) -> tuple[float, int]:
    """(Poisson sampling rate, steps) of a DP-SGD round of ``epochs`` over ``public_size`` examples: the released
    dataset size (client/dp_release.py), never the exact one. The batches themselves come from
    ``randomness.secure_poisson_batches``."""
    size = max(int(public_size), 1)
    return min(1.0, batch / size), epochs * math.ceil(size / batch)


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


def _route_loss(model: RoutedExperts, route: int, loss_fn: Callable, offset: torch.Tensor | None,
                call: Callable[[str, nn.Module, torch.Tensor], torch.Tensor]):
    """Per-sample losses of a batch on the route's members; ``call(prefix, module, x)`` runs one member
    (directly, or functionally on given parameters)."""

    def loss(x, y, m):
        router = call("router", model.router, x) if model.router is not None else None
        if route >= 0:
            logits = call(f"experts.{PROJECTIONS[route]}", model.experts[PROJECTIONS[route]], x)
        else:
            outs = torch.stack([call(f"experts.{p}", model.experts[p], x) for p in PROJECTIONS])
            w = (torch.softmax(router, 1).T.unsqueeze(-1) if router is not None
                 else torch.full((len(PROJECTIONS), 1, 1), 1 / len(PROJECTIONS), device=x.device))
            logits = (outs * w).sum(0)
        if model.generalist is not None:
            logits = (logits + call("generalist", model.generalist, x)) / 2
        if offset is not None:
            logits = logits + offset
        if x.shape[0] == 1:
            value = loss_fn(logits, y, m).reshape(1)
        else:  # the objective averages over its batch: one call per sample gives each sample's own loss
            value = vmap(lambda lg, yy, mm: loss_fn(lg[None], yy[None], mm[None]))(logits, y, m)
        if route >= 0 and router is not None:
            value = value + nn.functional.cross_entropy(
                router, torch.full((x.shape[0],), route, device=x.device), reduction="none")
        return value

    return loss


def _single_loss(model: RoutedExperts, route: int, loss_fn: Callable, offset: torch.Tensor | None):
    """The loss of one image (no batch axis) as a function of the route's parameters (for vmap)."""

    def loss(params, x, y, m):
        run = _route_loss(model, route, loss_fn, offset,
                          lambda prefix, module, x1: functional_call(module, _sub(params, prefix), (x1,)))
        return run(x.unsqueeze(0), y.unsqueeze(0), m.unsqueeze(0))[0]

    return loss


ENGINES = ("auto", "vmap", "per-layer")


def engine_for(model: RoutedExperts, route: int, engine: str = "auto") -> str:
    """The per-layer engine where every member of the route is built of layers it handles, else vmap."""
    from shared_models.privacy.per_layer import unsupported  # opacus: imported by runs that train with DP only

    if engine not in ENGINES:
        raise ValueError(f"DP engine must be one of {ENGINES}, got {engine!r}")
    if engine != "auto":
        if engine == "per-layer" and (why := unsupported(_modules(model, route))):
            raise ValueError(f"the per-layer DP engine cannot run this model: {why[0]}")
        return engine
    return "vmap" if unsupported(_modules(model, route)) else "per-layer"


def _modules(model: RoutedExperts, route: int) -> list[nn.Module]:
    return [model.get_submodule(prefix) for prefix in _members(model, route)]


def clipped_gradient_sum(model: RoutedExperts, x: torch.Tensor, projection: torch.Tensor, y: torch.Tensor,
                         m: torch.Tensor, loss_fn: Callable, max_grad_norm: float,
                         offset: torch.Tensor | None = None,
                         engine: str = "auto") -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Sum over the batch of per-sample gradients, each clipped to ``max_grad_norm`` (L2 over every parameter
    the sample touched). Returns (summed gradients by parameter name, per-sample losses, per-sample norms
    before clipping), in the batch's order for the last two. ``engine``: ``vmap`` (any architecture),
    ``per-layer`` (conv / linear / norm layers only, faster), ``auto`` (per-layer where it applies)."""
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    names = {v: k for k, v in model.named_parameters()}
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    losses = x.new_zeros(x.shape[0])
    norms = x.new_zeros(x.shape[0])
    for route in (*range(len(PROJECTIONS)), -1):
        sel = (projection == route) if route >= 0 else (projection < 0)
        if not bool(sel.any()):
            continue
        if engine_for(model, route, engine) == "per-layer":
            from shared_models.privacy.per_layer import clipped_sum_per_layer

            run = _route_loss(model, route, loss_fn, offset, lambda prefix, module, x1: module(x1))
            by_param, values, norm = clipped_sum_per_layer(
                _modules(model, route), x[sel], lambda xs, run=run, sel=sel: run(xs, y[sel], m[sel]), max_grad_norm)
            for p, g in by_param.items():
                total[names[p]] += g
        else:
            prefixes = _members(model, route)
            sub = {k: v.detach() for k, v in model.named_parameters(remove_duplicate=False)
                   if v.requires_grad and any(k.startswith(p + ".") for p in prefixes)}
            grads, values = vmap(grad_and_value(_single_loss(model, route, loss_fn, offset)),
                                 in_dims=(None, 0, 0, 0), randomness="different")(sub, x[sel], y[sel], m[sel])
            merged: dict[str, torch.Tensor] = {}  # a parameter shared by several members: one gradient
            for k, g in grads.items():
                name = names[model.get_parameter(k)]
                merged[name] = merged[name] + g if name in merged else g
            grads = merged
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
