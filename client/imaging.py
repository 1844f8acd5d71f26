"""Reading radiograph pixels: PNG (8/16-bit, 12-bit values in 16-bit containers), JPEG and DICOM.

Every reader returns a float32 2-D array in [0, 1] where larger means more attenuating (MONOCHROME2
sense), plus notes on what was done. DICOM: modality LUT (rescale), MONOCHROME1 inverted, BitsStored
respected. Issue 3 hardens this layer (VOI LUT / windows, compressed transfer syntaxes, rejections).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image


class ImageReadError(ValueError):
    """A file that cannot be read as a chest radiograph; the message says why."""


@dataclass
class Pixels:
    array: np.ndarray  # float32 (H, W) in [0, 1]
    bit_depth: int
    photometric: str = "MONOCHROME2"
    notes: list[str] = field(default_factory=list)


def _normalise(arr: np.ndarray, maxval: float) -> np.ndarray:
    return np.clip(arr.astype(np.float32) / float(maxval), 0.0, 1.0)


def read_raster(path: Path, bits_stored: int | None = None) -> Pixels:
    """PNG or JPEG through Pillow; ``bits_stored`` (e.g. PadChest's BitsStored_DICOM) sets the 16-bit scale."""
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            notes = []
            if mode in ("RGB", "RGBA", "P", "LA"):
                notes.append(f"converted {mode} to greyscale")
                im = im.convert("L")
                mode = "L"
            arr = np.asarray(im)
    except (OSError, SyntaxError) as exc:
        raise ImageReadError(f"cannot decode image ({exc})") from None
    if arr.ndim != 2:
        raise ImageReadError(f"expected a greyscale image, got shape {arr.shape}")
    if mode in ("L", "1"):
        return Pixels(_normalise(arr, 255), 8, notes=notes)
    if bits_stored is None:
        bits_stored = 12 if int(arr.max(initial=0)) < 4096 else 16
        notes.append(f"bit depth {bits_stored} inferred from content")
    return Pixels(_normalise(arr, (1 << int(bits_stored)) - 1), int(bits_stored), notes=notes)


def read_dicom_pixels(ds) -> Pixels:  # ds: pydicom Dataset with pixel data
    """Pixels of a pydicom dataset: modality LUT, MONOCHROME1 inversion, BitsStored scaling."""
    from pydicom.pixels import apply_modality_lut

    arr = ds.pixel_array
    if arr.ndim != 2:
        raise ImageReadError(f"expected one greyscale frame, got pixel array shape {arr.shape}")
    bits = int(getattr(ds, "BitsStored", 16) or 16)
    arr = apply_modality_lut(arr, ds).astype(np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    stored_max = float((1 << bits) - 1)
    if lo >= 0 and hi <= stored_max:
        out = arr / stored_max
    else:  # rescaled values (e.g. signed) -> min-max
        out = (arr - lo) / max(hi - lo, 1e-6)
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    notes = []
    if photometric == "MONOCHROME1":
        out = 1.0 - out
        notes.append("MONOCHROME1 inverted")
    return Pixels(np.clip(out, 0, 1).astype(np.float32), bits, photometric, notes)


def resize_square(arr: np.ndarray, size: int) -> np.ndarray:
    """Aspect-preserving resize onto a ``size`` x ``size`` canvas (zero padding), as uint8."""
    h, w = arr.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    im = Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8))
    if (nh, nw) != (h, w):
        im = im.resize((nw, nh), Image.BILINEAR)
    out = np.zeros((size, size), dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top:top + nh, left:left + nw] = np.asarray(im)
    return out
