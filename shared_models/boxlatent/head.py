"""The box head: centre c = f_c(h) and radius r = softplus(f_r(h)) per latent dimension from backbone features h;
a linear classifier on latents z. Training draws z = c + r * u with u ~ U[-1, 1]^d (reparameterised); BL-TTA
averages the class probabilities of N such samples (N = 1, 8 by default, 32)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class BoxOutput:
    centre: torch.Tensor  # (B, d)
    radius: torch.Tensor  # (B, d), > 0
    logits: torch.Tensor  # (S, B, C): one row of logits per sample drawn in the box

    def probabilities(self) -> torch.Tensor:
        """BL-TTA: class probabilities averaged over the samples (B, C)."""
        return torch.sigmoid(self.logits).mean(0)

    def ood_score(self) -> torch.Tensor:
        """Mean log radius per image (B,): larger boxes = less certain where the image belongs."""
        return self.radius.log().mean(1)


class BoxHead(nn.Module):
    def __init__(self, in_dim: int, latent_dim: int, num_classes: int, min_radius: float = 1e-4) -> None:
        super().__init__()
        self.centre = nn.Linear(in_dim, latent_dim)
        self.radius = nn.Linear(in_dim, latent_dim)
        nn.init.constant_(self.radius.bias, -2.0)  # boxes start small: softplus(-2) ~ 0.13
        self.classifier = nn.Linear(latent_dim, num_classes)
        self.min_radius = min_radius

    def box(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.centre(features), F.softplus(self.radius(features)) + self.min_radius

    def forward(self, features: torch.Tensor, samples: int = 8, generator: torch.Generator | None = None
                ) -> BoxOutput:
        """``samples`` latents per image drawn uniformly in its box (``samples = 0``: the centre only)."""
        c, r = self.box(features)
        if samples <= 0:
            return BoxOutput(c, r, self.classifier(c)[None])
        return BoxOutput(c, r, self.classifier(sample_in_box(c, r, samples, generator)))


def sample_in_box(c: torch.Tensor, r: torch.Tensor, samples: int, generator: torch.Generator | None = None
                  ) -> torch.Tensor:
    """(samples, B, d) latents z = c + r * u, u ~ U[-1, 1]^d, differentiable in c and r."""
    u = torch.rand((samples, *c.shape), generator=generator)
    return c[None] + r[None] * (2 * u.to(c.device) - 1)
