"""TRCGL-Net's feature-side parts (SE: Hu et al. 2018; CSRA: Zhu & Wu 2021): squeeze-and-excitation channel
reweighting and CSRA's class-specific residual attention, on a backbone's spatial feature map.

- ``SqueezeExcite``: z = GAP(X); s = sigmoid(W2 ReLU(W1 z)), W1: C -> C/r, W2: C/r -> C (r = 16); X * s.
- ``CSRA``: per head, score = conv1x1(X) / ||w_c|| (B, C, HW); base = mean_HW(score); att = sum_HW softmax(T score)
  * score (T = 99 is max pooling); logit = base + lambda * att, summed over heads with the reference's temperature
  lists. The class attention maps (softmax(T score) per class) are kept for inspection.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CSRA_TEMPERATURES = {1: (1,), 2: (1, 99), 4: (1, 2, 4, 99), 6: (1, 2, 3, 4, 5, 99), 8: (1, 2, 3, 4, 5, 6, 7, 99)}
MAX_POOL_T = 99  # the reference treats T = 99 as max pooling


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1, self.fc2 = nn.Linear(channels, hidden), nn.Linear(hidden, channels)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C) channel weights in (0, 1)."""
        return torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3))))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale(x)[:, :, None, None]


class CSRAHead(nn.Module):
    """One CSRA head: ``weight`` (C_classes, C_feat) may be given per call (a label-graph classifier)."""

    def __init__(self, temperature: float, lam: float) -> None:
        super().__init__()
        self.temperature, self.lam = temperature, lam

    def forward(self, x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C_feat, H, W), (K, C_feat) -> logits (B, K) and attention maps (B, K, H, W)."""
        b, _, h, w = x.shape
        score = torch.einsum("bchw,kc->bkhw", x, weight) / weight.norm(dim=1).clamp(min=1e-12)[None, :, None, None]
        score = score.flatten(2)  # (B, K, HW)
        base = score.mean(2)
        if self.temperature >= MAX_POOL_T:
            att_map = F.one_hot(score.argmax(2), h * w).to(score.dtype)
            att = score.amax(2)
        else:
            att_map = torch.softmax(self.temperature * score, dim=2)
            att = (att_map * score).sum(2)
        return base + self.lam * att, att_map.view(b, -1, h, w)


class CSRA(nn.Module):
    """Multi-head CSRA with its own per-class 1x1 weights (or a classifier passed to ``forward``)."""

    def __init__(self, channels: int, num_classes: int, heads: int = 1, lam: float = 0.1,
                 own_weights: bool = True) -> None:
        super().__init__()
        if heads not in CSRA_TEMPERATURES:
            raise ValueError(f"CSRA heads = {heads}; expected one of {sorted(CSRA_TEMPERATURES)}")
        self.heads = nn.ModuleList(CSRAHead(t, lam) for t in CSRA_TEMPERATURES[heads])
        # (classes, heads, channels): one row per class first, as the projection+class aggregation expects
        self.weight = nn.Parameter(torch.empty(num_classes, heads, channels)) if own_weights else None
        if self.weight is not None:
            nn.init.normal_(self.weight, std=0.01)
        self.last_maps: torch.Tensor | None = None  # (B, K, H, W) of the first head, for inspection

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        out = 0.0
        for i, head in enumerate(self.heads):
            w = weight if weight is not None else self.weight[:, i]
            logit, maps = head(x, w)
            out = out + logit
            if i == 0:
                self.last_maps = maps.detach()
        return out
