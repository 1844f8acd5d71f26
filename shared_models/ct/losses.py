"""RadFinder's training losses besides the global SigLIP (``shared_models.zeroshot.losses.siglip_loss``):

- the prompt-based disease loss: per class a (positive, negative) prompt pair; the difference of the two SigLIP
  logits, exp(t) (cos(v, p) - cos(v, n)) (the bias cancels), against the report-derived label with a masked,
  positively-weighted BCE (pos_weight capped at 20);
- intra-scan snippet localisation: the cosine of each slice-level feature with the snippet's embedding, over tau
  = 0.1, masked to the depths the volume has, against a one-hot target at the referenced depth smoothed by a
  Gaussian of sigma = 2 positions and renormalised; soft cross-entropy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

POS_WEIGHT_CAP = 20.0
LOCALISATION_TAU = 0.1
LOCALISATION_SIGMA = 2.0


def pos_weights(positives: torch.Tensor, annotated: torch.Tensor, cap: float = POS_WEIGHT_CAP) -> torch.Tensor:
    """Per class negatives / positives among annotated cases, capped; 1 where a class has no positive."""
    pos = positives.float()
    neg = annotated.float() - pos
    return torch.where(pos > 0, (neg / pos.clamp(min=1)).clamp(max=cap, min=1e-3), torch.ones_like(pos))


def prompt_disease_loss(volume: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, t: torch.Tensor,
                        targets: torch.Tensor, mask: torch.Tensor, pos_weight: torch.Tensor | None = None
                        ) -> torch.Tensor:
    """volume (B, D); positive / negative prompt embeddings (C, D); targets and mask (B, C). The mean over
    annotated entries of BCE-with-logits(exp(t) (cos(v, p_c) - cos(v, n_c)), y) with ``pos_weight`` (C,)."""
    v = F.normalize(volume, dim=-1)
    logits = t.exp() * (v @ F.normalize(positive, dim=-1).T - v @ F.normalize(negative, dim=-1).T)
    per = F.binary_cross_entropy_with_logits(logits, targets.float(), reduction="none", pos_weight=pos_weight)
    m = mask.float()
    return (per * m).sum() / m.sum().clamp(min=1.0)


def depth_targets(positions: torch.Tensor, valid: torch.Tensor, sigma: float = LOCALISATION_SIGMA) -> torch.Tensor:
    """(B, Z) soft targets: exp(-(z - position)^2 / (2 sigma^2)) on the valid depths, renormalised to sum 1."""
    z = torch.arange(valid.shape[1], device=valid.device, dtype=torch.float32)
    g = torch.exp(-((z[None, :] - positions.float()[:, None]) ** 2) / (2 * sigma**2)) * valid.float()
    return g / g.sum(1, keepdim=True).clamp(min=1e-12)


def localisation_logits(slices: torch.Tensor, snippet: torch.Tensor, valid: torch.Tensor,
                        tau: float = LOCALISATION_TAU) -> torch.Tensor:
    """slices (B, Z, D), snippet (B, D), valid (B, Z) -> (B, Z) cos / tau, -inf where not valid."""
    cos = (F.normalize(slices, dim=-1) * F.normalize(snippet, dim=-1)[:, None, :]).sum(-1)
    return (cos / tau).masked_fill(~valid.bool(), float("-inf"))


def localisation_loss(slices: torch.Tensor, snippet: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor,
                      tau: float = LOCALISATION_TAU, sigma: float = LOCALISATION_SIGMA) -> torch.Tensor:
    """Soft cross-entropy between the Gaussian-smoothed depth target and softmax(cos / tau) over valid depths,
    averaged over the snippets."""
    logits = localisation_logits(slices, snippet, valid, tau)
    target = depth_targets(positions, valid, sigma)
    logp = torch.log_softmax(logits, dim=1).masked_fill(~valid.bool(), 0.0)
    return -(target * logp).sum(1).mean()
