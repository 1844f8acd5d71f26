"""Projection-routed expert ensemble (CXR-LT 2026 task-1 entry, first cut).

Each image goes to the expert of its projection (PA / AP / LAT), taken from metadata. Images whose
projection is unknown get the mean of all experts' logits (uniform soft routing) until the learned
router lands.
"""

from __future__ import annotations

import torch
from torch import nn

PROJECTIONS: tuple[str, ...] = ("PA", "AP", "LAT")
UNKNOWN_PROJECTION = -1


def projection_index(name: str | None) -> int:
    """Index of a harmonised projection name; -1 for None / unknown."""
    if name is None:
        return UNKNOWN_PROJECTION
    try:
        return PROJECTIONS.index(name)
    except ValueError:
        return UNKNOWN_PROJECTION


class RoutedExperts(nn.Module):
    def __init__(self, experts: dict[str, nn.Module], num_classes: int) -> None:
        super().__init__()
        missing = set(PROJECTIONS) - set(experts)
        if missing:
            raise ValueError(f"RoutedExperts needs one expert per projection; missing {sorted(missing)}")
        self.experts = nn.ModuleDict({p: experts[p] for p in PROJECTIONS})
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) for images ``x`` (B, 1, H, W) with projection indices (B,) in {-1, 0, 1, 2}."""
        out = x.new_zeros(x.shape[0], self.num_classes)
        for i, name in enumerate(PROJECTIONS):
            sel = projection == i
            if bool(sel.any()):
                out[sel] = self.experts[name](x[sel])
        unknown = projection < 0
        if bool(unknown.any()):
            xu = x[unknown]
            out[unknown] = torch.stack([e(xu) for e in self.experts.values()]).mean(0)
        return out
