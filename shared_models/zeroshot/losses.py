"""Contrastive image-text losses (CLIP, Radford et al. 2021; SigLIP, Zhai et al. 2023). Inputs are embeddings of
matching pairs (row i of ``image`` goes with row i of ``text``); both are L2-normalised here. In federated training
the negatives of a batch come from one site's batch only (no cross-site all-gather)."""

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


def _positives(image: torch.Tensor, text: torch.Tensor, positives: torch.Tensor | None) -> torch.Tensor:
    if positives is None:
        if image.shape[0] != text.shape[0]:
            raise ValueError(f"{image.shape[0]} images and {text.shape[0]} texts: matching pairs need as many of each "
                             "(or say which text belongs to which image with `positives`)")
        return torch.eye(image.shape[0], device=image.device)
    if tuple(positives.shape) != (image.shape[0], text.shape[0]):
        raise ValueError(f"positives {tuple(positives.shape)} must be (images, texts) = "
                         f"{(image.shape[0], text.shape[0])}")
    return positives.to(image.dtype)


def clip_loss(image: torch.Tensor, text: torch.Tensor, t: torch.Tensor, positives: torch.Tensor | None = None
              ) -> torch.Tensor:
    """InfoNCE: logits = exp(t) cos(i, j), scale clamped at 100; the mean of the row and column cross-entropies.
    Targets: the diagonal (row i of ``image`` goes with row i of ``text``), or ``positives`` (B_img, B_txt): texts
    that belong to an image (its report's sentences, or identical texts of two studies), the target spread evenly
    over an image's positives (and over a text's images) instead of counting them as negatives."""
    logits = t.exp().clamp(max=CLIP_MAX_SCALE) * _cos(image, text)
    pos = _positives(image, text, positives)
    rows = -(pos / pos.sum(1, keepdim=True) * F.log_softmax(logits, 1)).sum(1).mean()
    cols = -(pos.T / pos.T.sum(1, keepdim=True) * F.log_softmax(logits.T, 1)).sum(1).mean()
    return 0.5 * (rows + cols)


def siglip_loss(image: torch.Tensor, text: torch.Tensor, t: torch.Tensor, b: torch.Tensor,
                positives: torch.Tensor | None = None) -> torch.Tensor:
    """SigLIP: independent binary terms, -(1/B) sum_ij log sigmoid(z_ij (exp(t) cos(i, j) + b)), z = +1 for the
    matching pairs (the diagonal, or ``positives``) and -1 elsewhere; B = the number of images."""
    logits = t.exp() * _cos(image, text) + b
    z = 2 * _positives(image, text, positives) - 1
    return -F.logsigmoid(z * logits).sum() / logits.shape[0]
