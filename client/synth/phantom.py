"""Chest-radiograph phantoms: PA / AP / lateral anatomy, planted lesion signatures, device shift.

Coordinates are normalised (x to the image's right, y down). Frontal views follow the radiological
convention: the patient's right is on the image's left.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from client.synth.catalog import ClassSpec

SIZE_RADIUS = {"small": 0.05, "medium": 0.075, "large": 0.12}
DENSITY_DELTA = {"dense": 0.22, "lucent": -0.22, "calcified": 0.42}
# View-dependent appearance (``render(view_dependent=True)``): (contrast, size) factors of a finding per view. A
# lateral view superimposes both lungs, so a lesion shows with less contrast and spread over more of the image; a
# portable AP view magnifies (the source is closer) and is noisier in contrast.
VIEW_APPEARANCE = {"PA": (1.0, 1.0), "AP": (0.85, 1.12), "LAT": (0.55, 1.3)}


@dataclass(frozen=True)
class DeviceProfile:
    """A site's imaging chain: tone curve, noise, effective resolution, contrast."""

    gamma: float = 1.0
    noise: float = 0.02
    blur_factor: int = 1  # render at 1/blur_factor resolution then upsample
    contrast: float = 1.0
    offset: float = 0.0

    @classmethod
    def random(cls, rng: np.random.Generator) -> DeviceProfile:
        return cls(
            gamma=float(rng.uniform(0.75, 1.35)),
            noise=float(rng.uniform(0.01, 0.04)),
            blur_factor=int(rng.choice([1, 1, 2])),
            contrast=float(rng.uniform(0.85, 1.15)),
            offset=float(rng.uniform(-0.04, 0.04)),
        )


def _ellipse(xx, yy, cx, cy, rx, ry, angle=0.0):
    c, s = np.cos(angle), np.sin(angle)
    dx, dy = xx - cx, yy - cy
    u, v = (c * dx + s * dy) / rx, (-s * dx + c * dy) / ry
    return u * u + v * v


def _soft(d2, edge=0.15):
    """Soft inside-mask from a squared normalised distance (1 inside, 0 outside, smooth rim)."""
    return np.clip((1.0 - d2) / edge, 0.0, 1.0)


class Anatomy:
    """Zone centres and the base phantom for one projection."""

    def __init__(self, projection: str, rng: np.random.Generator) -> None:
        self.projection = projection
        self.rng = rng
        self.scale = float(rng.uniform(0.92, 1.06))
        self.heart_scale = 1.18 if projection == "AP" else 1.0

    def base(self, n: int, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
        rng, s = self.rng, self.scale
        img = np.full((n, n), 0.06)
        if self.projection == "LAT":
            img += 0.30 * _soft(_ellipse(xx, yy, 0.5, 0.52, 0.40 * s, 0.46 * s), 0.3)
            img -= 0.20 * _soft(_ellipse(xx, yy, 0.52, 0.44, 0.27 * s, 0.30 * s), 0.4)  # lung field
            img += 0.25 * _soft(_ellipse(xx, yy, 0.38, 0.62, 0.13 * s, 0.14 * s), 0.3)  # heart (anterior)
            img += 0.28 * ((np.abs(xx - 0.80) < 0.045) & (yy > 0.12) & (yy < 0.9))  # spine (posterior)
            img += 0.15 * ((np.abs(xx - 0.16) < 0.015) & (yy > 0.25) & (yy < 0.7))  # sternum
            img += 0.30 * _soft(_ellipse(xx, yy, 0.5, 0.95, 0.40, 0.14), 0.3)  # diaphragm / abdomen
        else:
            img += 0.30 * _soft(_ellipse(xx, yy, 0.5, 0.55, 0.46 * s, 0.50 * s), 0.3)  # body
            for cx in (0.31, 0.69):  # lungs
                img -= 0.20 * _soft(_ellipse(xx, yy, cx, 0.47, 0.16 * s, 0.30 * s), 0.3)
            hs = self.heart_scale * s
            img += 0.28 * _soft(_ellipse(xx, yy, 0.55, 0.63, 0.13 * hs, 0.11 * hs), 0.3)  # heart
            img += 0.20 * ((np.abs(xx - 0.5) < 0.035) & (yy > 0.05))  # spine / mediastinum
            img += 0.30 * _soft(_ellipse(xx, yy, 0.5, 0.98, 0.45, 0.17), 0.3)  # diaphragm / abdomen
            clav_y = 0.15 if self.projection == "AP" else 0.20
            for sign in (-1, 1):  # clavicles
                img += 0.12 * (np.abs(yy - clav_y - 0.08 * np.abs(xx - 0.5)) < 0.012) * (np.abs(xx - 0.5) < 0.3) * (
                    np.sign(xx - 0.5) == sign)
            for k in range(6):  # ribs: faint arcs
                y0 = 0.24 + 0.085 * k + rng.normal(0, 0.004)
                img += 0.05 * (np.abs(yy - y0 - 0.25 * (xx - 0.5) ** 2) < 0.008) * (np.abs(xx - 0.5) > 0.05) * (
                    np.abs(xx - 0.5) < 0.35)
        return img

    def zone_centre(self, zone: str) -> tuple[float, float]:
        rng = self.rng
        side = rng.choice([0.31, 0.69])
        if self.projection == "LAT":
            table = {
                "right upper": (0.50, 0.33), "left upper": (0.55, 0.33), "right lower": (0.48, 0.60),
                "left lower": (0.55, 0.60), "upper lung": (0.52, 0.32), "lower lung": (0.50, 0.60),
                "apex": (0.52, 0.20), "base": (0.55, 0.76), "mediastinum": (0.38, 0.55), "hilum": (0.52, 0.45),
                "spine": (0.80, 0.55), "periphery": (0.26, 0.40), "subdiaphragm": (0.45, 0.88),
                "soft tissue": (0.10, 0.50), "neck": (0.45, 0.07),
            }
            if zone == "lung":
                return (float(rng.uniform(0.35, 0.65)), float(rng.uniform(0.28, 0.65)))
        else:
            table = {
                "right upper": (0.31, 0.33), "left upper": (0.69, 0.33), "right lower": (0.30, 0.62),
                "left lower": (0.70, 0.62), "upper lung": (side, 0.32), "lower lung": (side, 0.62),
                "apex": (side, 0.20), "base": (side, 0.75), "mediastinum": (0.52, 0.52),
                "hilum": (0.5 + (side - 0.5) * 0.4, 0.45), "spine": (0.50, 0.55),
                "periphery": (0.5 + (side - 0.5) * 1.55, 0.45), "subdiaphragm": (side, 0.86),
                "soft tissue": (0.5 + (side - 0.5) * 2.5, 0.55), "neck": (0.50, 0.07),
            }
            if zone == "lung":
                return (float(side + rng.uniform(-0.07, 0.07)), float(rng.uniform(0.28, 0.66)))
        cx, cy = table[zone]
        return (float(cx + rng.normal(0, 0.015)), float(cy + rng.normal(0, 0.015)))


def _shape_mask(shape: str, xx, yy, cx, cy, r, rng: np.random.Generator) -> np.ndarray:
    if shape == "round":
        return _soft(_ellipse(xx, yy, cx, cy, r, r * rng.uniform(0.85, 1.15)), 0.4)
    if shape == "ring":
        d = np.sqrt(_ellipse(xx, yy, cx, cy, r, r))
        return np.clip(1.0 - np.abs(d - 0.8) / 0.22, 0.0, 1.0)
    if shape == "linear":
        ang = rng.uniform(-0.4, 0.4)
        return _soft(_ellipse(xx, yy, cx, cy, 1.6 * r, 0.18 * r, ang), 0.5)
    if shape == "wedge":
        inside = (yy > cy - r) & (yy < cy + r) & (np.abs(xx - cx) < (yy - (cy - r)) * 0.9)
        return inside.astype(float)
    if shape == "reticular":
        region = _soft(_ellipse(xx, yy, cx, cy, r, 1.3 * r), 0.4)
        period = 0.028
        grid = (np.abs(((xx - cx) / period) % 1 - 0.5) < 0.17) | (np.abs(((yy - cy) / period) % 1 - 0.5) < 0.17)
        return region * grid
    if shape == "tubular":
        t = np.linspace(-1, 1, 60)
        px = cx + 0.35 * r * np.sin(2.2 * t + rng.uniform(0, 3))
        py = cy + 1.8 * r * t
        m = np.zeros_like(xx)
        w = max(0.006, 0.09 * r)
        for x0, y0 in zip(px, py):
            m = np.maximum(m, ((xx - x0) ** 2 + (yy - y0) ** 2) < w * w)
        return m
    if shape == "crescent":
        outer = _soft(_ellipse(xx, yy, cx, cy, 1.2 * r, 0.8 * r), 0.3)
        inner = _soft(_ellipse(xx, yy, cx, cy - 0.45 * r, 1.1 * r, 0.7 * r), 0.3)
        return np.clip(outer - inner, 0.0, 1.0)
    if shape == "cluster":
        m = np.zeros_like(xx)
        for _ in range(7):
            ox, oy = rng.normal(0, 0.6 * r, 2)
            m = np.maximum(m, _soft(_ellipse(xx, yy, cx + ox, cy + oy, 0.28 * r, 0.28 * r), 0.5))
        return m
    raise ValueError(f"unknown shape {shape!r}")


def render(
    projection: str,
    findings: list[ClassSpec],
    size: int,
    device: DeviceProfile,
    rng: np.random.Generator,
    view_dependent: bool = False,
) -> tuple[np.ndarray, list[tuple[str, float, float, float, float]]]:
    """A float image in [0, 1] (larger = more attenuating, MONOCHROME2 sense) and ground-truth boxes
    ``(class, x, y, w, h)`` in pixels of the returned image; with ``view_dependent``, findings take the view's
    contrast and size (``VIEW_APPEARANCE``)."""
    contrast, spread = VIEW_APPEARANCE[projection] if view_dependent else (1.0, 1.0)
    n = max(8, size // device.blur_factor)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64) / n
    anatomy = Anatomy(projection, rng)
    img = anatomy.base(n, xx, yy)
    boxes = []
    for spec in findings:
        cx, cy = anatomy.zone_centre(spec.zone)
        r = SIZE_RADIUS[spec.size] * float(rng.uniform(0.85, 1.15)) * spread
        m = _shape_mask(spec.shape, xx, yy, cx, cy, r, rng)
        img = img + DENSITY_DELTA[spec.density] * contrast * m
        ys, xs = np.nonzero(m > 0.2)
        if len(xs):
            f = size / n
            boxes.append((spec.name, xs.min() * f, ys.min() * f, (xs.max() - xs.min() + 1) * f,
                          (ys.max() - ys.min() + 1) * f))
    img = np.clip(img, 0.0, 1.0)
    if device.blur_factor > 1:
        img = np.kron(img, np.ones((device.blur_factor, device.blur_factor)))[:size, :size]
        if img.shape[0] < size:
            img = np.pad(img, ((0, size - img.shape[0]), (0, size - img.shape[1])), mode="edge")
    img = np.clip(img * device.contrast + device.offset, 0.0, 1.0) ** device.gamma
    img = img + rng.normal(0.0, device.noise, img.shape)
    return np.clip(img, 0.0, 1.0).astype(np.float32), boxes
