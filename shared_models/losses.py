"""Losses for multi-label chest imaging with partially annotated labels."""

from __future__ import annotations

import torch
from torch import nn

AUGMENTATIONS = ("shift", "affine")  # the run config `augment` (client/training.py)
LOSSES = ("asl", "bce")  # the run config `loss`: asymmetric loss, or masked binary cross-entropy (ASL, no focusing)


class AsymmetricLoss(nn.Module):
    """Asymmetric Loss (Ridnik et al., ICCV 2021) with a label mask.

    For p = sigmoid(x) and shifted negative probability p_m = max(p - clip, 0):
    L = -sum[ y (1-p)^gamma_pos log p + (1-y) p_m^gamma_neg log(1-p_m) ] over annotated entries.
    The focusing weights are computed without gradient (the reference implementation's default).
    ``class_weights`` (pos, neg) implement the CXR-LT re-weighting w+ = exp(1-prev), w- = exp(prev).
    Reduction: the masked sum divided by the batch size (a per-sample sum, so the scale does not
    depend on how many classes a source annotates).
    """

    def __init__(
        self,
        gamma_neg: float = 4.0,
        gamma_pos: float = 0.0,
        clip: float = 0.05,
        eps: float = 1e-8,
        class_weights: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = gamma_neg, gamma_pos, clip, eps
        if class_weights is not None:
            self.register_buffer("w_pos", class_weights[0].float())
            self.register_buffer("w_neg", class_weights[1].float())
        else:
            self.w_pos = self.w_neg = None

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        p = torch.sigmoid(logits)
        p_neg = (1 - p + self.clip).clamp(max=1) if self.clip > 0 else 1 - p
        los_pos = targets * torch.log(p.clamp(min=self.eps))
        los_neg = (1 - targets) * torch.log(p_neg.clamp(min=self.eps))
        if self.w_pos is not None:
            los_pos = los_pos * self.w_pos
            los_neg = los_neg * self.w_neg
        loss = los_pos + los_neg
        if self.gamma_neg > 0 or self.gamma_pos > 0:
            with torch.no_grad():
                pt = p * targets + p_neg * (1 - targets)  # 1 - pt is (1 - p) for positives, p_m for negatives
                gamma = self.gamma_pos * targets + self.gamma_neg * (1 - targets)
                w = torch.pow(1 - pt, gamma)
            loss = loss * w
        if mask is not None:
            loss = loss * mask
        return -loss.sum() / max(logits.shape[0], 1)


def prevalence_class_weights(prevalence: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CXR-LT re-weighting (CheXFusion): w+ = exp(1 - prev), w- = exp(prev)."""
    prevalence = prevalence.float().clamp(0, 1)
    return torch.exp(1 - prevalence), torch.exp(prevalence)
