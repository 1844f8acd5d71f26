"""DICOM at a site: header checks that keep non-radiographs out, and pixel decoding done right.

Decoding goes through pydicom's pixel handlers with pylibjpeg (openjpeg for JPEG 2000, libjpeg for JPEG
and JPEG-LS). Order of operations: modality LUT (RescaleSlope / RescaleIntercept), VOI LUT or window
(when the header has one), MONOCHROME1 inversion, scaling to [0, 1].
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.uid import (ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000TransferSyntaxes,
                         JPEGLSTransferSyntaxes, JPEGTransferSyntaxes)

from client.file_errors import reason_for
from client.imaging import ImageReadError, Pixels

RADIOGRAPH_MODALITIES = {"CR", "DX", "DR", "RG", "PX", "OT"}
CHEST_BODY_PARTS = ("CHEST", "THORAX", "LUNG", "TORAX", "THORAX_CHEST", "PORT CHEST")
JPEG_FAMILY = frozenset(JPEGTransferSyntaxes + JPEGLSTransferSyntaxes + JPEG2000TransferSyntaxes)  # end with FFD9
CODE_STRING = re.compile(r"[A-Z0-9 _]{1,16}")
UID_TEXT = re.compile(r"\d+(\.\d+)*")
MAX_DECODED_BYTES = 1 << 30  # 1 GiB: far above any radiograph (4k x 4k x 16 bit is 32 MiB); more is a corrupt header
IDENTIFYING = ("PatientName", "PatientID", "OtherPatientIDs", "PatientBirthDate", "AccessionNumber", "StudyID",
               "InstitutionName", "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName")


def identifying_values(ds: Dataset | None) -> list[str]:
    """The header's identifying values as text, for redacting them from an error message."""
    values = []
    for keyword in IDENTIFYING:
        try:
            value = ds.get(keyword) if ds is not None else None
        except Exception:  # a value that does not even convert cannot be listed; the reason is redacted anyway
            continue
        if value:
            values += [str(value), *str(value).replace("^", " ").split()]
    return sorted({v for v in values if len(v) > 2}, key=len, reverse=True)


def shown(value: object, vr: str = "CS") -> str:
    """A header value as a reason or note may quote it: a code string (CS) or UID (UI) that conforms to its VR, else a
    placeholder. In a damaged header a value can run on into the elements after it (a patient's name)."""
    text = str(value).strip()
    ok = CODE_STRING.fullmatch(text.upper()) if vr == "CS" else (len(text) <= 64 and UID_TEXT.fullmatch(text))
    return text if ok else f"<{vr} value that does not conform, not shown>"


def uid_name(uid: object) -> str:
    """A UID's name from the DICOM dictionary, or the UID itself when well formed."""
    name = getattr(uid, "name", "")
    return name if name and name != str(uid) else shown(uid, "UI")


def read_dataset(path: Path, header_only: bool = False) -> Dataset:
    """Read a DICOM file; raises ImageReadError with the reason for an unreadable or non-DICOM file. A file
    without the 128-byte preamble and DICM prefix (older or hand-made files) is read by its elements, if it has
    the elements of a DICOM object."""
    try:
        if path.stat().st_size == 0:
            raise ImageReadError("empty file (0 bytes)")
        try:
            return pydicom.dcmread(path, stop_before_pixels=header_only)
        except InvalidDicomError as exc:
            ds = pydicom.dcmread(path, stop_before_pixels=header_only, force=True)
            if "SOPClassUID" not in ds and not ("PixelData" in ds and "Rows" in ds):
                raise ImageReadError(f"not a DICOM file ({reason_for(exc)})") from None
            return ds
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError("listed image is missing on disk") from None
    except PermissionError:
        raise ImageReadError("no read permission") from None
    except Exception as exc:
        raise ImageReadError(f"not a readable DICOM file ({reason_for(exc)})") from None


def radiograph_problem(ds: Dataset, min_size: int = 32, has_pixels: bool | None = None) -> str | None:
    """Why a header is not a chest radiograph this site can use, or None."""
    sop = ds.get("SOPClassUID")
    sop_name = getattr(sop, "name", str(sop)) if sop else ""
    if sop and "Image Storage" not in sop_name:
        return f"non-image SOP class ({uid_name(sop)})"
    modality = str(ds.get("Modality", "") or "").upper()
    if modality and modality not in RADIOGRAPH_MODALITIES:
        return f"modality {shown(modality)} is not a radiograph (CT, MR, ... do not belong in a chest X-ray source)"
    body = str(ds.get("BodyPartExamined", "") or "").upper().strip()
    if body and not any(b in body for b in CHEST_BODY_PARTS):
        return f"BodyPartExamined {shown(body)} is not a chest examination"
    if has_pixels is False:
        return "no pixel data (PixelData element missing)"
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows and cols and min(rows, cols) < min_size:
        return f"image too small ({rows}x{cols}; expected at least {min_size} px)"
    if int(ds.get("SamplesPerPixel", 1) or 1) not in (1, 3):
        return f"unsupported SamplesPerPixel {ds.get('SamplesPerPixel')}"
    return None


def decode(path: Path, min_size: int = 32) -> tuple[Pixels, Dataset]:
    """Full read, checks and decoding; raises ImageReadError with the reason. Whatever else goes wrong in
    decoding this file (a codec's error on damaged data, a header value that does not convert) is an
    ImageReadError too, with the header's identifying values redacted from the message."""
    ds = read_dataset(path)
    try:
        problem = radiograph_problem(ds, min_size, has_pixels="PixelData" in ds)
        if problem:
            raise ImageReadError(problem)
        return to_pixels(ds), ds
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(f"cannot decode ({reason_for(exc, identifying_values(ds))})") from None


def assume_transfer_syntax(ds: Dataset) -> str | None:
    """A file meta without (0002,0010) Transfer Syntax UID: native pixel data is read as the dataset itself is
    encoded (implicit / explicit VR, little / big endian; pydicom found that while reading). Returns a note, or
    None when the file states its transfer syntax; raises ImageReadError for compressed (encapsulated) pixel
    data, whose codec cannot be known."""
    if "TransferSyntaxUID" in ds.file_meta:
        return None
    if ds["PixelData"].is_undefined_length:
        raise ImageReadError("compressed (encapsulated) pixel data but no Transfer Syntax UID in the file meta: "
                             "its codec cannot be known")
    implicit, little = ds.original_encoding
    uid = ImplicitVRLittleEndian if implicit and little else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    ds.file_meta.TransferSyntaxUID = uid
    return f"no Transfer Syntax UID in the file meta; {uid.name} inferred from the dataset's encoding"


def _check_size(ds: Dataset) -> None:
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageReadError(f"multi-frame image ({frames} frames); expected one frame per file")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    samples, bits = int(ds.get("SamplesPerPixel", 1) or 1), int(ds.get("BitsAllocated", 16) or 16)
    if rows * cols * samples * max(1, bits // 8) > MAX_DECODED_BYTES:
        raise ImageReadError(f"header claims a {rows}x{cols} image of {samples} x {bits}-bit samples, more than "
                             f"{MAX_DECODED_BYTES >> 20} MiB decoded: a corrupt header?")


def _has_decoder(ts) -> bool:
    from pydicom.pixels import get_decoder

    try:
        return get_decoder(ts).is_available
    except NotImplementedError:  # MPEG, a private transfer syntax, ...
        return False


def _check_codestream_end(ds: Dataset) -> None:
    """JPEG, JPEG-LS and JPEG 2000 codestreams end with an end-of-image marker (FFD9); libjpeg decodes a truncated
    one without complaint, filling the missing lines, so a frame without it is refused here."""
    ts = ds.file_meta.get("TransferSyntaxUID")
    if not (ts in JPEG_FAMILY and ds["PixelData"].is_undefined_length):
        return
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    if b"\xff\xd9" not in frame.rstrip(b"\x00")[-16:]:
        raise ImageReadError(f"{uid_name(ts)} frame ends without its end-of-image marker (FFD9): truncated")


def stored_pixels(ds: Dataset, notes: list[str]) -> np.ndarray:
    """The stored values of a one-frame image (radiograph or CT slice), after the checks that keep a damaged file
    from reaching a decoder: transfer syntax (inferred when missing, noted), one frame, a plausible size, a complete
    JPEG-family codestream, a decoder installed. Raises ImageReadError with the reason."""
    assumed = assume_transfer_syntax(ds)
    if assumed:
        notes.append(assumed)
    _check_size(ds)
    _check_codestream_end(ds)
    ts = ds.file_meta.TransferSyntaxUID
    if not _has_decoder(ts):
        raise ImageReadError(f"no decoder for transfer syntax {uid_name(ts)} installed")
    try:
        return ds.pixel_array
    except Exception as exc:  # the decoder's error on this file's data (site errors re-raise in reason_for)
        raise ImageReadError(f"pixel data cannot be decoded (truncated or corrupt: {reason_for(exc)})") from None


def to_pixels(ds: Dataset) -> Pixels:
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

    notes: list[str] = []
    arr = stored_pixels(ds, notes)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    bits = int(ds.get("BitsStored", 16) or 16)
    palette = photometric == "PALETTE COLOR"
    if palette:
        arr = apply_color_lut(arr, ds)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        notes.append("PALETTE COLOR mapped through its colour LUT; RGB converted to greyscale")
    if arr.ndim == 3 and arr.shape[-1] == 3:
        arr = arr.astype(np.float32).mean(-1)
        if not palette:
            notes.append("RGB converted to greyscale")
    if arr.ndim != 2:
        raise ImageReadError(f"expected one greyscale frame, got pixel array shape {arr.shape}")
    out = (arr if palette else apply_modality_lut(arr, ds)).astype(np.float32)
    has_voi = not palette and ("VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds))
    if has_voi:
        out = np.asarray(apply_voi_lut(out, ds, prefer_lut=True), dtype=np.float32)
        notes.append("VOI LUT / window applied")
    if not np.isfinite(out).all():
        raise ImageReadError("non-finite pixel values after the modality / VOI LUT (RescaleSlope, RescaleIntercept "
                             "or window out of range)")
    lo, hi = float(out.min()), float(out.max())
    stored_max = float((1 << max(bits, 1)) - 1)
    if not has_voi and lo >= 0 and hi <= stored_max:
        out = out / stored_max
    else:
        out = (out - lo) / max(hi - lo, 1e-6)
    if photometric == "MONOCHROME1":
        out = 1.0 - out
        notes.append("MONOCHROME1 inverted")
    return Pixels(np.clip(out, 0, 1).astype(np.float32), bits, photometric, notes,
                  vendor=str(ds.get("Manufacturer", "") or ""))
