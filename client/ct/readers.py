"""Reading CT volumes: NIfTI (CT-RATE; nibabel) and DICOM series (one folder of slices; pydicom), to HU on a
(Z, Y, X) grid with its spacing in mm. Every failure is a VolumeError naming the file and what was expected."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from client.ct.volume import Volume, VolumeError, to_hu
from client.file_errors import reason_for

MAX_VOLUME_BYTES = 4 << 30  # 4 GiB stored: 4096 slices of 512 x 512 int16; more is a corrupt header


def _load_nifti(path: Path) -> tuple[np.ndarray, float, float, tuple[float, ...]]:
    """Stored values, header rescale and zooms; a header claiming more than MAX_VOLUME_BYTES is refused before the
    data is read."""
    import nibabel as nib

    img = nib.load(str(path))
    shape = img.header.get_data_shape()
    claimed = int(np.prod(shape, dtype=np.float64) * img.header.get_data_dtype().itemsize)
    if claimed > MAX_VOLUME_BYTES:
        raise VolumeError(f"{path}: header claims a {'x'.join(map(str, shape))} volume ({claimed >> 20} MiB "
                          f"stored, more than {MAX_VOLUME_BYTES >> 30} GiB): a corrupt header?")
    raw = np.asarray(img.dataobj.get_unscaled() if hasattr(img.dataobj, "get_unscaled") else img.dataobj)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return raw, float(getattr(img.dataobj, "slope", np.nan)), float(getattr(img.dataobj, "inter", np.nan)), zooms


def read_nifti(path: Path, slope: float | None = None, intercept: float | None = None,
               spacing: tuple[float, float, float] | None = None) -> Volume:
    """A NIfTI volume to HU. CT-RATE stores raw values and gives the rescale in its metadata CSV (``slope``,
    ``intercept``); without them the header's scl_slope / scl_inter apply. ``spacing`` (z, y, x) from the metadata
    wins over the header's zooms. NIfTI's (i, j, k) array becomes (k, j, i) = (Z, Y, X); slice k of the file is
    Z index k."""
    try:
        raw, header_slope, header_inter, zooms = _load_nifti(path)
    except VolumeError:
        raise
    except FileNotFoundError:
        raise VolumeError(f"{path}: file not found") from None
    except Exception as exc:  # nibabel raises many kinds for damaged files
        raise VolumeError(f"{path}: not a readable NIfTI volume ({reason_for(exc)})") from None
    if raw.ndim == 4 and raw.shape[3] == 1:
        raw = raw[..., 0]
    if raw.ndim != 3:
        raise VolumeError(f"{path}: expected a 3D volume, got shape {raw.shape}")
    if slope is None or intercept is None:
        slope = float(header_slope) if np.isfinite(header_slope) and header_slope != 0 else 1.0
        intercept = float(header_inter) if np.isfinite(header_inter) else 0.0
    hu = to_hu(np.ascontiguousarray(np.transpose(raw, (2, 1, 0))), slope, intercept)
    try:
        return Volume(hu, spacing or (zooms[2], zooms[1], zooms[0]))
    except VolumeError as exc:
        raise VolumeError(f"{path}: {exc}") from None


@dataclass(frozen=True)
class SliceHeader:
    path: Path
    position: float  # along the slice normal, mm
    instance: int | None
    rows: int
    cols: int
    pixel_spacing: tuple[float, float]
    slope: float
    intercept: float
    thickness: float | None
    patient_id: str
    series_uid: str


def read_slice_header(path: Path) -> SliceHeader:
    """One slice's header; any error reading or converting it is a VolumeError naming the file (identifying
    values redacted from the message)."""
    from client.dicom_io import identifying_values, read_dataset

    try:
        ds = read_dataset(path, header_only=True)
    except Exception as exc:
        raise VolumeError(f"{path}: {reason_for(exc)}") from None
    try:
        return _slice_header(path, ds)
    except VolumeError:
        raise
    except Exception as exc:  # a header value that does not convert (a damaged or hand-made file)
        raise VolumeError(f"{path}: unusable DICOM header ({reason_for(exc, identifying_values(ds))})") from None


def _slice_header(path: Path, ds) -> SliceHeader:
    missing = [k for k in ("Rows", "Columns", "PixelSpacing") if k not in ds]
    if missing:
        raise VolumeError(f"{path}: DICOM header lacks {missing} (needed for a CT volume)")
    orient = [float(v) for v in ds.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0])]
    normal = np.cross(orient[:3], orient[3:])
    if "ImagePositionPatient" in ds:
        position = float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient]))
    elif "SliceLocation" in ds:
        position = float(ds.SliceLocation)
    else:
        raise VolumeError(f"{path}: DICOM header has neither ImagePositionPatient nor SliceLocation; the slice "
                          "cannot be placed in its series")
    thickness = ds.get("SpacingBetweenSlices") or ds.get("SliceThickness")
    return SliceHeader(
        path=path, position=position, instance=int(ds.InstanceNumber) if ds.get("InstanceNumber") is not None else None,
        rows=int(ds.Rows), cols=int(ds.Columns), pixel_spacing=(float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1])),
        slope=float(ds.get("RescaleSlope", 1) or 1), intercept=float(ds.get("RescaleIntercept", 0) or 0),
        thickness=float(thickness) if thickness else None, patient_id=str(ds.get("PatientID", "")),
        series_uid=str(ds.get("SeriesInstanceUID", "")))


def sort_series(headers: list[SliceHeader]) -> tuple[list[SliceHeader], float]:
    """Slices in order of position along the normal (feet to head), and the slice spacing: the median gap
    between positions, or the slice thickness for a single slice. Refuses mixed sizes, duplicate positions and
    mixed series."""
    if not headers:
        raise VolumeError("empty series")
    where = headers[0].path.parent
    if len({h.series_uid for h in headers}) > 1:
        raise VolumeError(f"{where}: slices of {len({h.series_uid for h in headers})} series in one folder "
                          "(expected one SeriesInstanceUID)")
    if len({(h.rows, h.cols) for h in headers}) > 1:
        raise VolumeError(f"{where}: slices of different sizes {sorted({(h.rows, h.cols) for h in headers})}")
    ordered = sorted(headers, key=lambda h: h.position)
    gaps = np.diff([h.position for h in ordered])
    if len(gaps) and np.min(gaps) <= 1e-3:
        raise VolumeError(f"{where}: two slices at the same position (a duplicate or a second series)")
    if len(gaps):
        spacing = float(np.median(gaps))
        if np.max(np.abs(gaps - spacing)) > 0.1 * spacing:
            raise VolumeError(f"{where}: uneven slice spacing (gaps from {np.min(gaps):.2f} to {np.max(gaps):.2f} mm; "
                              "a slice missing or unreadable?): depths would be wrong")
    elif ordered[0].thickness:
        spacing = ordered[0].thickness
    else:
        raise VolumeError(f"{where}: one slice without SliceThickness: its depth spacing is unknown")
    return ordered, spacing


def read_dicom_series(files: list[Path]) -> tuple[Volume, list[SliceHeader]]:
    """A DICOM series (its slice files) to HU, each slice with its own rescale; returns the volume and the
    slices in volume order (Z index i is ``ordered[i]``)."""
    from client.dicom_io import read_dataset, stored_pixels

    ordered, dz = sort_series([read_slice_header(p) for p in files])
    planes = []
    for h in ordered:
        try:
            pixels = stored_pixels(read_dataset(h.path), [])
        except Exception as exc:
            raise VolumeError(f"{h.path}: {reason_for(exc)}") from None
        if pixels.shape != (h.rows, h.cols):
            raise VolumeError(f"{h.path}: pixel array of shape {pixels.shape}; expected one {h.rows}x{h.cols} slice")
        planes.append(to_hu(pixels, h.slope, h.intercept))
    dy, dx = ordered[0].pixel_spacing
    return Volume(np.stack(planes), (dz, dy, dx)), ordered
