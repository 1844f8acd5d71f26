"""CT volumes in Hounsfield units and the fixed grid a model trains on: HU conversion, windowing, resampling to a
configured spacing, centre crop or pad to a configured size, and the depth map that carries an axial position
(a report's "image Y") through those steps.

Arrays are (Z, Y, X), Z the axial (feet-to-head) axis, spacings in mm in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from client.file_errors import FileProblem

MIN_SPACING_MM, MAX_SPACING_MM = 0.01, 50.0


class VolumeError(FileProblem):
    """A volume that cannot be used; the message names the file and what was expected."""


@dataclass(frozen=True)
class CTSpec:
    """The grid every volume of a run is brought to. CT-CLIP: 1.5 x 0.75 x 0.75 mm, 240 x 480 x 480, HU window
    [-1000, 1000]; RadFinder: 3 mm slices. The CPU presets use coarse grids (``tiny``: 6 x 6 x 6 mm, 32^3)."""

    spacing: tuple[float, float, float] = (6.0, 6.0, 6.0)
    size: tuple[int, int, int] = (32, 32, 32)
    window: tuple[float, float] = (-1000.0, 1000.0)

    def __post_init__(self) -> None:
        if len(self.spacing) != 3 or any(not s > 0 for s in self.spacing):
            raise ValueError(f"ct spacing {self.spacing}: expected three positive mm values (z, y, x)")
        if len(self.size) != 3 or any(int(s) < 4 for s in self.size):
            raise ValueError(f"ct size {self.size}: expected three voxel counts >= 4 (z, y, x)")
        if not self.window[0] < self.window[1]:
            raise ValueError(f"ct window {self.window}: expected [low, high] HU with low < high")

    def key(self) -> str:
        return (f"s{'x'.join(f'{v:g}' for v in self.spacing)}-n{'x'.join(str(v) for v in self.size)}"
                f"-w{self.window[0]:g}_{self.window[1]:g}")


@dataclass
class Volume:
    hu: np.ndarray  # float32 (Z, Y, X) Hounsfield units
    spacing: tuple[float, float, float]  # mm (z, y, x)

    def __post_init__(self) -> None:
        if self.hu.ndim != 3:
            raise VolumeError(f"expected a 3D volume (Z, Y, X), got shape {self.hu.shape}")
        if any(not (s > 0 and np.isfinite(s)) for s in self.spacing):
            raise VolumeError(f"voxel spacing {self.spacing} mm: expected three positive values")
        if any(not MIN_SPACING_MM <= s <= MAX_SPACING_MM for s in self.spacing):  # resampling would explode
            raise VolumeError(f"voxel spacing {self.spacing} mm: implausible for a CT (expected {MIN_SPACING_MM:g} to "
                              f"{MAX_SPACING_MM:g} mm; a damaged header?)")


def to_hu(raw: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """HU = slope x stored value + intercept (DICOM RescaleSlope / RescaleIntercept; CT-RATE's metadata CSV)."""
    return (raw.astype(np.float32) * np.float32(slope) + np.float32(intercept)).astype(np.float32)


def window(hu: np.ndarray, low: float = -1000.0, high: float = 1000.0) -> np.ndarray:
    """HU clipped to [low, high] and mapped linearly to [-1, 1] (CT-CLIP's clip to +-1000 then / 1000)."""
    mid, half = (high + low) / 2, (high - low) / 2
    return ((np.clip(hu, low, high) - mid) / half).astype(np.float32)


def resample(x: np.ndarray, spacing: tuple[float, float, float], target: tuple[float, float, float]
             ) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Trilinear resampling to ``target`` spacing; returns the array and the exact spacing reached (sizes are whole
    voxels, so the spacing is the extent divided by the new count)."""
    shape = x.shape
    new = tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target))
    if new == shape:
        return x, tuple(float(s) for s in spacing)
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None]
    out = F.interpolate(t, size=new, mode="trilinear", align_corners=False)[0, 0].numpy()
    return out, tuple(n * s / m for n, s, m in zip(shape, spacing, new))


def crop_or_pad(x: np.ndarray, size: tuple[int, int, int], fill: float) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Centre crop or pad (with ``fill``) to ``size``; returns the array and, per axis, the input index that lands
    at output index 0 (negative when padded)."""
    out = np.full(size, fill, np.float32)
    src, dst, origin = [], [], []
    for n, m in zip(x.shape, size):
        start = (n - m) // 2  # > 0: crop, < 0: pad
        origin.append(start)
        lo, hi = max(0, start), min(n, start + m)
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[tuple(dst)] = x[tuple(src)]
    return out, tuple(origin)


@dataclass(frozen=True)
class DepthMap:
    """Where an axial slice of the original volume lands on the model's grid: grid index = (z x ``scale``) -
    ``origin`` (continuous; z is the 0-based slice index along the stored Z axis)."""

    scale: float  # original spacing / grid spacing along z
    origin: int  # the resampled index at grid index 0
    grid_spacing: float  # mm per grid position
    size: int

    def to_grid(self, z: float) -> float:
        return (z + 0.5) * self.scale - 0.5 - self.origin

    def inside(self, z: float) -> bool:
        return 0 <= round(self.to_grid(z)) < self.size


def preprocess(vol: Volume, spec: CTSpec) -> tuple[np.ndarray, DepthMap]:
    """Windowed to [-1, 1], resampled to the spec's spacing, cropped or padded to its size (air: -1)."""
    x = window(vol.hu, *spec.window)
    x, reached = resample(x, vol.spacing, spec.spacing)
    scale = x.shape[0] / vol.hu.shape[0]
    x, origin = crop_or_pad(x, spec.size, fill=-1.0)
    return x, DepthMap(scale=scale, origin=origin[0], grid_spacing=reached[0], size=spec.size[0])
