"""Contrastive image-text losses (shared/docs/domain.md C3). Inputs are embeddings of matching pairs (row i of
``image`` goes with row i of ``text``); both are L2-normalised here. In federated training the negatives of a
batch come from one site's batch only (no cross-site all-gather)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

CLIP_INIT_T = math.log(1 / 0.07)  # ~2.659
CLIP_MAX_SCALE = 100.0
SIGLIP_INIT_T = math.log(10.0)  # ~2.303
SIGLIP_INIT_B = -10.0


def _cos(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    return F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T


def clip_loss(image: torch.Tensor, text: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """InfoNCE: logits = exp(t) cos(i, j), scale clamped at 100; the mean of the row and column cross-entropies
    with the diagonal as targets."""
    logits = t.exp().clamp(max=CLIP_MAX_SCALE) * _cos(image, text)
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def siglip_loss(image: torch.Tensor, text: torch.Tensor, t: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SigLIP: independent binary terms, -(1/B) sum_ij log sigmoid(z_ij (exp(t) cos(i, j) + b)), z = +1 on the
    diagonal and -1 elsewhere."""
    logits = t.exp() * _cos(image, text) + b
    z = 2 * torch.eye(logits.shape[0], device=logits.device) - 1
    return -F.logsigmoid(z * logits).sum() / logits.shape[0]
