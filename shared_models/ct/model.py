"""The CT vision-language model (RadFinder-style) at CPU scale: a small 3D convolutional encoder
stands in for the frozen SPECTRE ViT + feature combiner; the frozen MiniLM text encoder with a trainable adapter is
the text side. The encoder keeps the axial axis at half the input depth, so a 32-slice volume at 6 mm gives 16
depth positions of 12 mm, RadFinder's localisation resolution.

Parameter groups (the federation's unit): ``ct.encoder`` (the 3D encoder and its projections) and ``ct.head``
(SigLIP temperature and bias) and ``ct.text`` (the adapter on MiniLM and the text projection) train only at CT
sites. In a run's global model the CT keys carry the prefix ``ct.`` (``CT_PREFIX``), next to the radiograph model.
GroupNorm, not BatchNorm, so the encoder trains under DP-SGD (Opacus) as is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from shared_models.arrays import under_prefix, with_prefix
from shared_models.zeroshot.losses import SIGLIP_INIT_B, SIGLIP_INIT_T
from shared_models.zeroshot.model import TextAdapter

TEXT_DIM = 384  # MiniLM sentence embeddings


@dataclass(frozen=True)
class CTPreset:
    widths: tuple[int, ...]
    embed_dim: int
    groups: int = 8  # GroupNorm groups


CT_PRESETS = {
    "ct-tiny": CTPreset(widths=(16, 32, 64, 64), embed_dim=128),
    "ct-small": CTPreset(widths=(32, 64, 128, 192), embed_dim=256),
}


def _block(cin: int, cout: int, stride: tuple[int, int, int], groups: int, kz: tuple[int, int]) -> nn.Sequential:
    """Two convolutions; ``kz`` their axial kernel sizes (1: in-plane only)."""
    return nn.Sequential(nn.Conv3d(cin, cout, (kz[0], 3, 3), stride=stride, padding=(kz[0] // 2, 1, 1), bias=False),
                         nn.GroupNorm(min(groups, cout), cout), nn.GELU(),
                         nn.Conv3d(cout, cout, (kz[1], 3, 3), padding=(kz[1] // 2, 1, 1), bias=False),
                         nn.GroupNorm(min(groups, cout), cout), nn.GELU())


class CTEncoder(nn.Module):
    """(B, 1, Z, Y, X) -> global embedding (B, D) and slice-level embeddings (B, Z/2, D)."""

    def __init__(self, preset: CTPreset) -> None:
        super().__init__()
        strides = [(1, 2, 2), (2, 2, 2)] + [(1, 2, 2)] * (len(preset.widths) - 2)
        # axial kernels: 3 in the first convolution of the first two stages, in-plane after that, so each depth
        # position sees about 5 input slices (30 mm at 6 mm), not the whole chest: localisation needs it
        kz = [(3, 1), (3, 1)] + [(1, 1)] * (len(preset.widths) - 2)
        chans = (1, *preset.widths)
        self.stages = nn.Sequential(*[_block(a, b, s, preset.groups, k)
                                      for a, b, s, k in zip(chans, chans[1:], strides, kz)])
        c = preset.widths[-1]
        self.global_proj = nn.Linear(2 * c, preset.embed_dim)
        self.slice_proj = nn.Linear(2 * c, preset.embed_dim)
        self.depth_stride = 2

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and max pooling side by side: findings are small against a chest, and a mean alone washes them
        out (the tiny model learnt nothing with it on the synthetic sites)."""
        f = self.stages(x)  # (B, C, Z/2, y, x)
        flat = f.flatten(3)  # (B, C, Z/2, y*x)
        per_slice = torch.cat([flat.mean(-1), flat.amax(-1)], 1).transpose(1, 2)  # (B, Z/2, 2C)
        c = f.shape[1]
        pooled = torch.cat([per_slice[..., :c].mean(1), per_slice[..., c:].amax(1)], -1)
        return self.global_proj(pooled), self.slice_proj(per_slice)


class CTVLM(nn.Module):
    def __init__(self, preset: str = "ct-tiny") -> None:
        super().__init__()
        if preset not in CT_PRESETS:
            raise ValueError(f"unknown CT preset {preset!r}; available: {', '.join(CT_PRESETS)}")
        p = CT_PRESETS[preset]
        self.preset = preset
        self.encoder = CTEncoder(p)
        self.text_adapter = TextAdapter(TEXT_DIM)
        self.text_proj = nn.Linear(TEXT_DIM, p.embed_dim)
        self.t = nn.Parameter(torch.tensor(SIGLIP_INIT_T))
        self.b = nn.Parameter(torch.tensor(SIGLIP_INIT_B))

    def encode_volume(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x if x.ndim == 5 else x[:, None])

    def encode_text(self, sentence_embeddings: torch.Tensor) -> torch.Tensor:
        """Frozen MiniLM embeddings (N, 384), computed once per site, through the shared adapter and projection."""
        return self.text_proj(self.text_adapter(sentence_embeddings))


CT_PREFIX = "ct."


def ct_parameter_group(key: str) -> str:
    """The group of a CTVLM state-dict key, with or without the global model's ``ct.`` prefix."""
    key = key.removeprefix(CT_PREFIX)
    if key.startswith("encoder."):
        return "ct.encoder"
    if key.startswith(("text_adapter.", "text_proj.")):
        return "ct.text"
    return "ct.head"


def prefixed(state: dict) -> dict:
    """A CTVLM state dict under the global model's ``ct.`` prefix."""
    return with_prefix(state, CT_PREFIX)


def unprefixed(state) -> dict:
    """The CT part of a global state dict (keys under ``ct.``), as a CTVLM state dict."""
    return under_prefix(state, CT_PREFIX)


def positions_for(depth_positions_grid: int, stride: int = 2) -> int:
    """The encoder's depth positions for an input of ``depth_positions_grid`` slices."""
    return math.ceil(depth_positions_grid / stride)


def grid_to_feature(position: int, stride: int = 2) -> int:
    """The encoder depth position covering a grid (input) slice."""
    return position // stride


def feature_valid(valid_slices: torch.Tensor, stride: int = 2) -> torch.Tensor:
    """(B, Z) input-slice validity -> (B, ceil(Z / stride)) feature-position validity (any covered slice valid)."""
    pad = (-valid_slices.shape[1]) % stride
    v = F.pad(valid_slices.float(), (0, pad))
    return v.view(v.shape[0], -1, stride).amax(-1) > 0
