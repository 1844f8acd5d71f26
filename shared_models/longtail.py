"""Long-tail options for multi-label training: re-sampling weights and logit adjustment.

Prevalences come from counts summed over sites (never images), so every site uses the consortium's view
of the tail.
"""

from __future__ import annotations

import numpy as np
import torch

SAMPLING = ("none", "class-balanced", "sqrt")


def sampling_weights(targets: np.ndarray, mask: np.ndarray, mode: str = "none") -> np.ndarray | None:
    """Per-image sampling weights (sum 1), or None for plain shuffling.

    An image weighs as much as its rarest annotated positive class: (1 / n_c) for ``class-balanced``,
    (1 / n_c) ** 0.5 for ``sqrt``; images without positives weigh as the most common class.
    """
    if mode not in SAMPLING:
        raise ValueError(f"sampling {mode!r}; expected one of {SAMPLING}")
    if mode == "none" or len(targets) == 0:
        return None
    pos = (targets * mask) > 0
    counts = pos.sum(0).astype(np.float64)
    power = 1.0 if mode == "class-balanced" else 0.5
    per_class = np.where(counts > 0, 1.0 / np.maximum(counts, 1.0), 0.0) ** power
    floor = per_class[counts > 0].min() if (counts > 0).any() else 1.0
    w = np.where(pos, per_class[None, :], 0.0).max(1)
    w = np.where(w > 0, w, floor)
    return w / w.sum()


def logit_adjustment(prevalence: torch.Tensor, tau: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """Per-class offsets tau * logit(prior) added to the logits during training only (Menon et al., 2021,
    in its binary form): rare classes must earn a larger margin, which raises their scores at test time."""
    p = prevalence.float().clamp(eps, 1 - eps)
    return tau * torch.log(p / (1 - p))
