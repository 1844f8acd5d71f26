"""Planted-PHI scanning shared by the privacy tests."""

from __future__ import annotations

import csv
import re
from pathlib import Path


def planted_phi(root: Path) -> set[str]:
    """The identifiers the synthetic generator planted under ``root``: DICOM header PHI and the patient ids of
    the PadChest and MIMIC tables."""
    import pydicom

    phi: set[str] = set()
    for dcm in root.rglob("*.dcm"):
        ds = pydicom.dcmread(dcm, stop_before_pixels=True)
        phi |= {str(ds.PatientName), ds.PatientID, ds.PatientBirthDate, ds.AccessionNumber}
    for f in root.rglob("PADCHEST_*.csv"):
        phi |= {r["PatientID"] for r in csv.DictReader(open(f))}
    for f in root.rglob("mimic-cxr-2.0.0-metadata.csv"):
        phi |= {r["subject_id"] for r in csv.DictReader(open(f))}
    return phi


def leaked(values: set[str], blobs: list[bytes]) -> list[str]:
    """Planted values found in any blob as whole tokens: a numeric identifier must not sit inside a longer run
    of digits (a float's mantissa or torch's 40-digit serialization id can contain any 8 digits by chance)."""
    hits = []
    for v in sorted(values):
        pattern = re.compile(rb"(?<![0-9])" + re.escape(v.encode()) + rb"(?![0-9])")
        if any(pattern.search(b) for b in blobs):
            hits.append(v)
    return hits
