"""Test-time augmentation for radiographs, averaged in probability space.

The default set is radiograph-safe: identity, small translations and a mild zoom. No horizontal flip:
chest anatomy is not mirror-symmetric (heart on the left, aortic knob, situs).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Transform = Callable[[torch.Tensor], torch.Tensor]


def _shift(dx: float, dy: float) -> Transform:
    def f(x: torch.Tensor) -> torch.Tensor:
        sx, sy = round(dx * x.shape[-1]), round(dy * x.shape[-2])
        return torch.roll(x, shifts=(sy, sx), dims=(-2, -1))
    return f


def _zoom(scale: float) -> Transform:
    def f(x: torch.Tensor) -> torch.Tensor:
        theta = torch.tensor([[1 / scale, 0, 0], [0, 1 / scale, 0]], dtype=x.dtype, device=x.device)
        grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, align_corners=False, padding_mode="border")
    return f


DEFAULT_TTA: dict[str, Transform] = {
    "identity": lambda x: x,
    "shift_left": _shift(-0.03, 0.0),
    "shift_right": _shift(0.03, 0.0),
    "shift_up": _shift(0.0, -0.03),
    "shift_down": _shift(0.0, 0.03),
    "zoom_in": _zoom(1.05),
    "zoom_out": _zoom(0.95),
}


@torch.no_grad()
def predict_with_tta(model, x: torch.Tensor, projection: torch.Tensor,
                     transforms: dict[str, Transform] | None = None) -> torch.Tensor:
    """Mean of sigmoid probabilities over the transforms (B, C)."""
    views = transforms or DEFAULT_TTA
    return torch.stack([torch.sigmoid(model(t(x), projection)) for t in views.values()]).mean(0)
