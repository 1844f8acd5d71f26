"""Projection-routed expert ensemble (CXR-LT 2026 task-1 entry).

Each image goes to the expert of its projection (PA / AP / LAT). The projection comes from metadata when it
is present and trusted; otherwise a small learned router (a 3-way projection classifier, trained alongside
the experts on images whose projection is known) decides: ``hard`` routing sends the image to the router's
most likely expert, ``soft`` routing mixes all experts' logits by the router's probabilities. Without a
router, unknown images get the mean of all experts. An optional generalist member sees every image and is
averaged with the routed logits.
"""

from __future__ import annotations

import torch
from torch import nn

from shared_models.ontology import PROJECTIONS

UNKNOWN_PROJECTION = -1
ROUTING_MODES = ("soft", "hard")


def projection_index(name: str | None) -> int:
    """Index of a harmonised projection name; -1 for None / unknown."""
    if name is None:
        return UNKNOWN_PROJECTION
    try:
        return PROJECTIONS.index(name)
    except ValueError:
        return UNKNOWN_PROJECTION


class RoutedExperts(nn.Module):
    def __init__(self, experts: dict[str, nn.Module], num_classes: int, router: nn.Module | None = None,
                 routing: str = "soft", generalist: nn.Module | None = None) -> None:
        super().__init__()
        missing = set(PROJECTIONS) - set(experts)
        if missing:
            raise ValueError(f"RoutedExperts needs one expert per projection; missing {sorted(missing)}")
        if routing not in ROUTING_MODES:
            raise ValueError(f"routing {routing!r}; expected one of {ROUTING_MODES}")
        self.experts = nn.ModuleDict({p: experts[p] for p in PROJECTIONS})
        self.router = router
        self.generalist = generalist  # optional member that sees every image; averaged with the routed logits
        self.routing = routing
        self.num_classes = num_classes

    def _run(self, expert: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """An expert on its share of the batch. In training, a share of one image is doubled so that batch
        norm sees more than one value per channel at small inputs (the copy's output is dropped)."""
        if self.training and x.shape[0] == 1:
            return expert(torch.cat([x, x]))[:1]
        return expert(x)

    def route(self, projection: torch.Tensor, router_logits: torch.Tensor | None) -> torch.Tensor:
        """Per image, the expert it goes to; -1 for the mixture of all experts (unknown view, soft routing)."""
        route = projection.clone()
        unknown = projection < 0
        if router_logits is not None and self.routing == "hard":
            route[unknown] = router_logits[unknown].argmax(1)
        return route

    def mixture(self, router_logits: torch.Tensor | None, rest: torch.Tensor) -> torch.Tensor:
        """(3, b, 1) weights of the experts for the images in ``rest``: the router's probabilities, else uniform."""
        if router_logits is None:
            return torch.full((len(PROJECTIONS), int(rest.sum()), 1), 1 / len(PROJECTIONS), device=rest.device)
        return torch.softmax(router_logits[rest], dim=1).T.unsqueeze(-1)

    def forward(self, x: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) for images ``x`` (B, 1, H, W) with projection indices (B,) in {-1, 0, 1, 2}."""
        return self.forward_with_router(x, projection)[0]

    def forward_with_router(self, x: torch.Tensor,
                            projection: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits and the router's projection logits (B, 3), or None without a router."""
        router_logits = self.router(x) if self.router is not None else None
        out = x.new_zeros(x.shape[0], self.num_classes)
        route = self.route(projection, router_logits)
        for i, name in enumerate(PROJECTIONS):
            sel = route == i
            if bool(sel.any()):
                out[sel] = self._run(self.experts[name], x[sel])
        rest = route < 0
        if bool(rest.any()):
            xu = x[rest]
            stacked = torch.stack([self._run(e, xu) for e in self.experts.values()])  # (3, b, C)
            out[rest] = (stacked * self.mixture(router_logits, rest)).sum(0)
        if self.generalist is not None:
            out = (out + self._run(self.generalist, x)) / 2
        return out, router_logits
