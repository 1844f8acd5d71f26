"""Image shifts for the box head, on (B, 1, H, W) images in [0, 1]:

* ``device_shift``: the training augmentation of the device-invariance term, drawn from the ranges of the site
  imaging chains the synthetic generator makes (client/synth/phantom.py ``DeviceProfile``): tone curve
  (gamma 0.75-1.35), contrast 0.85-1.15 and offset +-0.04, noise sigma 0.01-0.04, resolution 1/1 or 1/2.
* The three out-of-distribution kinds the radius score is evaluated against, none of them seen in training:
  ``held_out_device`` (an imaging chain outside those ranges: gamma 0.45 or 2.2, contrast 0.6, 1/4 resolution,
  noise 0.08), ``corrupt`` (occluding blocks, salt-and-pepper, line dropouts, clipping) and ``non_chest_images``
  (procedural radiographs of something other than a chest: a limb with long bones, an abdomen without lungs, a
  1/f texture).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

OOD_KINDS = ("device", "corrupt", "nonchest")


def _rand(shape, gen: torch.Generator, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=gen)


def _resample(x: torch.Tensor, factor: int) -> torch.Tensor:
    if factor <= 1:
        return x
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(h // factor, 2), max(w // factor, 2)), mode="area")
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


def _chain(x: torch.Tensor, gamma: torch.Tensor, contrast: torch.Tensor, offset: torch.Tensor, noise: torch.Tensor,
           factor: int, gen: torch.Generator) -> torch.Tensor:
    d = x.device
    y = x.clamp(0, 1).pow(gamma.to(d).view(-1, 1, 1, 1))
    y = (y - 0.5) * contrast.to(d).view(-1, 1, 1, 1) + 0.5 + offset.to(d).view(-1, 1, 1, 1)
    y = _resample(y, factor)
    y = y + noise.to(d).view(-1, 1, 1, 1) * torch.randn(y.shape, generator=gen).to(d)
    return y.clamp(0, 1)


def device_shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random imaging chain within the synthetic sites' ranges (one draw per image, one resolution per batch)."""
    b = x.shape[0]
    factor = int(torch.randint(1, 3, (1,), generator=gen))
    return _chain(x, _rand(b, gen, 0.75, 1.35), _rand(b, gen, 0.85, 1.15), _rand(b, gen, -0.04, 0.04),
                  _rand(b, gen, 0.01, 0.04), factor, gen)


def held_out_device(x: torch.Tensor, gen: torch.Generator, severity: float = 1.0) -> torch.Tensor:
    """An imaging chain outside the training ranges. At severity 1 (the OOD kind): a hard tone curve (gamma 0.45 or
    2.2), contrast 0.6, 1/4 resolution, noise 0.08; severity 0 is the edge of the training ranges (gamma 0.75 or
    1.35, contrast 0.85, 1/2 resolution, noise 0.04), values between interpolate (1/4 resolution from 0.5 on)."""
    b = x.shape[0]
    low = torch.rand(b, generator=gen) < 0.5
    gamma = torch.where(low, torch.tensor(0.75 - 0.30 * severity), torch.tensor(1.35 + 0.85 * severity))
    return _chain(x, gamma, torch.full((b,), 0.85 - 0.25 * severity), torch.zeros(b),
                  torch.full((b,), 0.04 + 0.04 * severity), 4 if severity >= 0.5 else 2, gen)


def corrupt(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Acquisition and transfer failures: two occluding blocks (black or white), 10 % salt-and-pepper, dropped
    rows, and a clipped window."""
    b, _, h, w = x.shape
    y = x.clone().cpu()
    for i in range(b):
        for _ in range(2):
            bh, bw = int(h * float(_rand(1, gen, 0.2, 0.4))), int(w * float(_rand(1, gen, 0.2, 0.4)))
            top, left = (int(torch.randint(0, h - bh + 1, (1,), generator=gen)),
                         int(torch.randint(0, w - bw + 1, (1,), generator=gen)))
            y[i, :, top:top + bh, left:left + bw] = float(torch.rand(1, generator=gen) < 0.5)
        rows = torch.rand(h, generator=gen) < 0.08
        y[i, :, rows] = 0.0
    salt = torch.rand(y.shape, generator=gen)
    y = torch.where(salt < 0.05, torch.zeros_like(y), torch.where(salt > 0.95, torch.ones_like(y), y))
    return ((y - 0.3) * 1.8).clamp(0, 1).to(x.device)


def non_chest_images(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """(n, 1, size, size) procedural radiographs that are not chests, cycling limb / abdomen / texture."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    out = torch.empty(n, 1, size, size)
    for i in range(n):
        kind = i % 3
        if kind == 0:  # a limb: soft tissue with two long bones along a random axis
            a = float(_rand(1, gen, -0.4, 0.4))
            u = xx * math.cos(a) + yy * math.sin(a)
            img = 0.15 + 0.25 * (u.abs() < 0.45).float()
            for off in (-0.15, 0.12):
                img = img + 0.45 * ((u - off).abs() < 0.06).float()
        elif kind == 1:  # an abdomen: a uniform soft-tissue ellipse, a spine, bowel-gas lucencies, no lungs
            img = 0.1 + 0.45 * ((xx / 0.85) ** 2 + (yy / 0.95) ** 2 < 1).float() + 0.3 * (xx.abs() < 0.07).float()
            for _ in range(6):
                cx, cy, r = (float(v) for v in _rand(3, gen, -0.5, 0.5))
                img = img - 0.25 * (((xx - cx) ** 2 + (yy - cy) ** 2) < (0.05 + abs(r) * 0.1) ** 2).float()
        else:  # a 1/f texture
            f = torch.fft.fftfreq(size)
            radius = torch.sqrt(f[None] ** 2 + f[:, None] ** 2).clamp(min=1.0 / size)
            spectrum = torch.randn(size, size, generator=gen) / radius
            img = torch.fft.ifft2(spectrum * torch.exp(2j * math.pi * torch.rand(size, size, generator=gen))).real
            img = (img - img.min()) / (img.max() - img.min() + 1e-8)
        out[i, 0] = (img + 0.02 * torch.randn(size, size, generator=gen)).clamp(0, 1)
    return out
