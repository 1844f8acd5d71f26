"""Reading raster radiographs: PNG (8/16-bit, 12-bit values in 16-bit containers) and JPEG (DICOM is in
client.dicom_io). Every reader returns a float32 2-D array in [0, 1] where larger means more attenuating
(MONOCHROME2 sense), plus notes on what was done."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from client.file_errors import FileProblem, reason_for


class ImageReadError(FileProblem):
    """A file that cannot be read as a chest radiograph; the message says why."""


@dataclass
class Pixels:
    array: np.ndarray  # float32 (H, W) in [0, 1]
    bit_depth: int
    photometric: str = "MONOCHROME2"
    notes: list[str] = field(default_factory=list)
    vendor: str = ""


def _normalise(arr: np.ndarray, maxval: float) -> np.ndarray:
    return np.clip(arr.astype(np.float32) / float(maxval), 0.0, 1.0)


def read_raster(path: Path, bits_stored: int | None = None, min_size: int = 32) -> Pixels:
    """PNG or JPEG through Pillow; ``bits_stored`` (e.g. PadChest's BitsStored_DICOM) sets the 16-bit scale."""
    try:
        if path.stat().st_size == 0:
            raise ImageReadError("empty file (0 bytes)")
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            notes = []
            if mode in ("RGB", "RGBA", "P", "LA"):
                notes.append(f"converted {mode} to greyscale")
                im = im.convert("L")
                mode = "L"
            arr = np.asarray(im)
    except PermissionError:
        raise ImageReadError("no read permission") from None
    except FileNotFoundError:
        raise ImageReadError("listed image is missing on disk") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"cannot decode image (corrupt or truncated: {reason_for(exc)})") from None
    if arr.ndim != 2:
        raise ImageReadError(f"expected a greyscale image, got shape {arr.shape}")
    if min(arr.shape) < min_size:
        raise ImageReadError(f"image too small ({arr.shape[0]}x{arr.shape[1]}; expected at least {min_size} px)")
    if mode in ("L", "1"):
        return Pixels(_normalise(arr, 255), 8, notes=notes)
    if bits_stored is None:
        bits_stored = 12 if int(arr.max(initial=0)) < 4096 else 16
        notes.append(f"bit depth {bits_stored} inferred from content")
    return Pixels(_normalise(arr, (1 << int(bits_stored)) - 1), int(bits_stored), notes=notes)


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
