"""DICOM at a site: header checks that keep non-radiographs out, and pixel decoding done right.

Decoding goes through pydicom's pixel handlers with pylibjpeg (openjpeg for JPEG 2000, libjpeg for JPEG
and JPEG-LS). Order of operations: modality LUT (RescaleSlope / RescaleIntercept), VOI LUT or window
(when the header has one), MONOCHROME1 inversion, scaling to [0, 1].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from client.imaging import ImageReadError, Pixels

RADIOGRAPH_MODALITIES = {"CR", "DX", "DR", "RG", "PX", "OT"}
CHEST_BODY_PARTS = ("CHEST", "THORAX", "LUNG", "TORAX", "THORAX_CHEST", "PORT CHEST")


def read_dataset(path: Path, header_only: bool = False) -> Dataset:
    """Read a DICOM file; raises ImageReadError with the reason for an unreadable or non-DICOM file."""
    try:
        if path.stat().st_size == 0:
            raise ImageReadError("empty file (0 bytes)")
        return pydicom.dcmread(path, stop_before_pixels=header_only)
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError("listed image is missing on disk") from None
    except PermissionError:
        raise ImageReadError("no read permission") from None
    except OSError as exc:
        raise ImageReadError(f"cannot open ({exc.strerror or exc})") from None
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise ImageReadError(f"not a readable DICOM file ({type(exc).__name__}: {exc})") from None


def radiograph_problem(ds: Dataset, min_size: int = 32, has_pixels: bool | None = None) -> str | None:
    """Why a header is not a chest radiograph this site can use, or None."""
    sop = ds.get("SOPClassUID")
    sop_name = getattr(sop, "name", str(sop)) if sop else ""
    if sop and "Image Storage" not in sop_name:
        return f"non-image SOP class ({sop_name or sop})"
    modality = str(ds.get("Modality", "") or "").upper()
    if modality and modality not in RADIOGRAPH_MODALITIES:
        return f"modality {modality} is not a radiograph (CT, MR, ... do not belong in a chest X-ray source)"
    body = str(ds.get("BodyPartExamined", "") or "").upper().strip()
    if body and not any(b in body for b in CHEST_BODY_PARTS):
        return f"BodyPartExamined {body} is not a chest examination"
    if has_pixels is False:
        return "no pixel data (PixelData element missing)"
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows and cols and min(rows, cols) < min_size:
        return f"image too small ({rows}x{cols}; expected at least {min_size} px)"
    if int(ds.get("SamplesPerPixel", 1) or 1) not in (1, 3):
        return f"unsupported SamplesPerPixel {ds.get('SamplesPerPixel')}"
    return None


def decode(path: Path, min_size: int = 32) -> tuple[Pixels, Dataset]:
    """Full read, checks and decoding; raises ImageReadError with the reason."""
    ds = read_dataset(path)
    problem = radiograph_problem(ds, min_size, has_pixels="PixelData" in ds)
    if problem:
        raise ImageReadError(problem)
    return to_pixels(ds), ds


def to_pixels(ds: Dataset) -> Pixels:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    try:
        arr = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        name = getattr(ts, "name", ts)
        raise ImageReadError(f"no decoder for transfer syntax {name} ({exc.__class__.__name__})") from None
    except (ValueError, EOFError, OSError, TypeError) as exc:
        raise ImageReadError(f"pixel data cannot be decoded (truncated or corrupt: {exc})") from None
    notes: list[str] = []
    if arr.ndim == 3 and arr.shape[-1] == 3:
        arr = arr.astype(np.float32).mean(-1)
        notes.append("RGB converted to greyscale")
    if arr.ndim != 2:
        raise ImageReadError(f"expected one greyscale frame, got pixel array shape {arr.shape}")
    bits = int(ds.get("BitsStored", 16) or 16)
    out = apply_modality_lut(arr, ds).astype(np.float32)
    has_voi = "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)
    if has_voi:
        out = np.asarray(apply_voi_lut(out, ds, prefer_lut=True), dtype=np.float32)
        notes.append("VOI LUT / window applied")
    lo, hi = float(out.min()), float(out.max())
    stored_max = float((1 << bits) - 1)
    if not has_voi and lo >= 0 and hi <= stored_max:
        out = out / stored_max
    else:
        out = (out - lo) / max(hi - lo, 1e-6)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric == "MONOCHROME1":
        out = 1.0 - out
        notes.append("MONOCHROME1 inverted")
    return Pixels(np.clip(out, 0, 1).astype(np.float32), bits, photometric, notes,
                  vendor=str(ds.get("Manufacturer", "") or ""))
