"""A small class-conditional denoising diffusion model (DDPM training, DDIM sampling) for low-resolution chest
radiographs, conditioned on a text embedding (MiniLM of a class description).

TRCGL-Net's abstract names a "learnable text-guided conditional diffusion" for tail classes and gives no details
(its abstract only). This is the textbook version at CPU scale: epsilon-prediction (Ho et al. 2020) with a linear
beta schedule, a two-level U-Net with time and condition embeddings added in every residual block, condition
dropout for classifier-free guidance (Ho & Salimans 2022), and deterministic DDIM sampling (Song et al. 2021).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

TEXT_DIM = 384


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    a = t.float()[:, None] * freq[None]
    return torch.cat([a.sin(), a.cos()], dim=1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb: int) -> None:
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(8, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.e = nn.Linear(emb, cout)
        self.n2, self.c2 = nn.GroupNorm(8, cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.c1(F.silu(self.n1(x))) + self.e(emb)[:, :, None, None]
        h = self.c2(F.silu(self.n2(h)))
        return h + self.skip(x)


class ConditionalUNet(nn.Module):
    """epsilon(x_t, t, c) for (B, 1, S, S) images (S divisible by 4) and (B, 384) condition embeddings; a row of
    ``cond`` that is all zeros (or ``drop`` True) means unconditional (the learned null condition)."""

    def __init__(self, width: int = 32, emb: int = 128) -> None:
        super().__init__()
        w1, w2 = width, 2 * width
        self.emb_dim = emb
        self.time = nn.Sequential(nn.Linear(emb, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.cond = nn.Linear(TEXT_DIM, emb)
        self.null = nn.Parameter(torch.zeros(emb))
        self.inp = nn.Conv2d(1, w1, 3, padding=1)
        self.d1, self.d2 = ResBlock(w1, w1, emb), ResBlock(w1, w2, emb)
        self.mid = ResBlock(w2, w2, emb)
        self.u2, self.u1 = ResBlock(2 * w2, w1, emb), ResBlock(2 * w1, w1, emb)
        self.down1, self.down2 = nn.Conv2d(w1, w1, 3, 2, 1), nn.Conv2d(w2, w2, 3, 2, 1)
        self.out = nn.Sequential(nn.GroupNorm(8, w1), nn.SiLU(), nn.Conv2d(w1, 1, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, drop: torch.Tensor | None = None
                ) -> torch.Tensor:
        c = self.cond(cond)
        if drop is not None:
            c = torch.where(drop[:, None], self.null.expand_as(c), c)
        e = self.time(timestep_embedding(t, self.emb_dim)) + c
        h1 = self.d1(self.inp(x), e)  # S
        h2 = self.d2(self.down1(h1), e)  # S / 2
        m = self.mid(self.down2(h2), e)  # S / 4
        u = self.u2(torch.cat([F.interpolate(m, scale_factor=2.0, mode="nearest"), h2], 1), e)
        u = self.u1(torch.cat([F.interpolate(u, scale_factor=2.0, mode="nearest"), h1], 1), e)
        return self.out(u)


@dataclass(frozen=True)
class DiffusionSchedule:
    steps: int = 200
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def alpha_bar(self) -> torch.Tensor:
        """Cumulative products of (1 - beta) for the linear schedule (scaled to ``steps``: beta x 1000 / steps)."""
        scale = 1000.0 / self.steps
        betas = torch.linspace(self.beta_start * scale, min(self.beta_end * scale, 0.999), self.steps)
        return torch.cumprod(1.0 - betas, dim=0)


def diffusion_loss(model: ConditionalUNet, x0: torch.Tensor, cond: torch.Tensor, schedule: DiffusionSchedule,
                   generator: torch.Generator | None = None, cond_drop: float = 0.1) -> torch.Tensor:
    """DDPM's simple loss: || eps - eps_theta(sqrt(ab) x0 + sqrt(1 - ab) eps, t, c) ||^2, with the condition
    replaced by the null condition for a ``cond_drop`` share of the batch (classifier-free guidance)."""
    b = x0.shape[0]
    ab = schedule.alpha_bar().to(x0.device)
    t = torch.randint(0, schedule.steps, (b,), generator=generator).to(x0.device)
    eps = torch.randn(x0.shape, generator=generator).to(x0)
    a = ab[t][:, None, None, None]
    xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
    drop = (torch.rand(b, generator=generator) < cond_drop).to(x0.device)
    return F.mse_loss(model(xt, t, cond, drop), eps)


@torch.no_grad()
def ddim_sample(model: ConditionalUNet, cond: torch.Tensor, size: int, schedule: DiffusionSchedule,
                sample_steps: int = 25, guidance: float = 2.0, generator: torch.Generator | None = None
                ) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) from Gaussian noise, with classifier-free guidance
    eps = eps_uncond + w (eps_cond - eps_uncond); returns (B, 1, size, size) in the training scale ([-1, 1])."""
    model.eval()
    b = cond.shape[0]
    ab = schedule.alpha_bar()
    x = torch.randn((b, 1, size, size), generator=generator)
    times = torch.linspace(schedule.steps - 1, 0, sample_steps).round().long()
    off, on = torch.ones(b, dtype=torch.bool), torch.zeros(b, dtype=torch.bool)
    for i, t in enumerate(times):
        tt = torch.full((b,), int(t))
        e_c, e_u = model(x, tt, cond, on), model(x, tt, cond, off)
        eps = e_u + guidance * (e_c - e_u)
        a = ab[t]
        a_prev = ab[times[i + 1]] if i + 1 < len(times) else torch.tensor(1.0)
        x0 = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return x.clamp(-1, 1)
