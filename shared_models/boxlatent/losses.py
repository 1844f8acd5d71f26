"""The box head's objective (one reading of C9, pluggable): classification on samples drawn in the box (any
masked multi-label loss, e.g. ASL), a volume regulariser that keeps boxes from collapsing to points or growing
without bound, and a device-invariance term asking the boxes of two augmentations of one image to overlap."""

from __future__ import annotations

from collections.abc import Callable

import torch

from shared_models.boxlatent.head import BoxOutput


def volume_regulariser(radius: torch.Tensor, target_log_radius: float = -2.0) -> torch.Tensor:
    """Squared distance of each box's mean log radius from a target (a box neither a point nor the space)."""
    return (radius.log().mean(1) - target_log_radius).pow(2).mean()


def box_gap(c1: torch.Tensor, r1: torch.Tensor, c2: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """Per image, the summed per-dimension gap between two boxes (0 when they overlap in every dimension)."""
    return ((c1 - c2).abs() - (r1 + r2)).clamp(min=0).sum(1)


def box_loss(out: BoxOutput, targets: torch.Tensor, mask: torch.Tensor,
             classification: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
             volume_weight: float = 0.01, other_view: BoxOutput | None = None, invariance_weight: float = 0.1,
             target_log_radius: float = -2.0) -> torch.Tensor:
    """Mean over samples of ``classification(logits, targets, mask)`` + volume term (+ the invariance term when
    the box of a second augmentation of the same images is given)."""
    loss = torch.stack([classification(lg, targets, mask) for lg in out.logits]).mean()
    loss = loss + volume_weight * volume_regulariser(out.radius, target_log_radius)
    if other_view is not None:
        loss = loss + invariance_weight * box_gap(out.centre, out.radius, other_view.centre, other_view.radius).mean()
    return loss
