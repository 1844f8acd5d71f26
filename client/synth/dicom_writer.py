"""Write synthetic radiographs as DICOM CR files, with planted PHI for privacy tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
VIEW_POSITION = {"PA": "PA", "AP": "AP", "LAT": "LL"}


def planted_phi(patient: int, site: str, rng: np.random.Generator) -> dict[str, str]:
    """Fake identifiers that look real: tests assert none of them ever leaves the site."""
    first = str(rng.choice(["ANNA", "JOHN", "MARIA", "LI", "AHMED", "SOFIA", "PETER", "ZOE"]))
    last = str(rng.choice(["SMITH", "GARCIA", "MULLER", "CHEN", "OKAFOR", "ROSSI", "NOVAK", "KIM"]))
    return {
        "PatientName": f"{last}^{first}^{patient:05d}",
        "PatientID": f"MRN{rng.integers(10**6, 10**7)}{patient:04d}",
        "PatientBirthDate": f"19{rng.integers(30, 99)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}",
        "AccessionNumber": f"ACC{rng.integers(10**7, 10**8)}",
        "InstitutionName": f"{site.replace('-', ' ').title()} General Hospital",
    }


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    projection: str | None,
    phi: dict[str, str],
    monochrome1: bool,
    bits_stored: int = 12,
    view_position: str | None = None,
    study_uid: str | None = None,
) -> None:
    """Save ``pixels`` (float [0, 1], larger = more attenuating) as an uncompressed CR image."""
    maxval = (1 << bits_stored) - 1
    values = pixels if not monochrome1 else 1.0 - pixels
    arr = np.round(values * maxval).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CR_IMAGE_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view_position if view_position is not None else VIEW_POSITION.get(projection or "", "")
    for k, v in phi.items():
        setattr(ds, k, v)
    ds.Manufacturer = "SYNTHETIC"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = arr.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.WindowCenter = maxval // 2
    ds.WindowWidth = maxval + 1
    ds.PixelData = arr.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
