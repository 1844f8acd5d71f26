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
    of digits (a float's mantissa or torch's 40-digit serialization id can contain any 8 digits by chance).

    A numeric value is found exactly when it is one of the blobs' maximal digit runs (one pass per blob); the
    others by bytes.find with the digit check at each occurrence."""
    numeric = {v for v in values if v.isdigit()}
    lengths = {len(v) for v in numeric}
    runs: set[bytes] = set()
    for b in blobs:
        runs.update(r for r in re.findall(rb"[0-9]+", b) if len(r) in lengths)
    hits = {v for v in numeric if v.encode() in runs}
    for v in values - numeric:
        if v and any(_whole(v.encode(), b) for b in blobs):
            hits.add(v)
    return sorted(hits)


def _whole(needle: bytes, blob: bytes) -> bool:
    """``needle`` occurs in ``blob`` with no digit right before or after it."""
    at = blob.find(needle)
    while at != -1:
        end = at + len(needle)
        if not (at and blob[at - 1:at].isdigit()) and not blob[end:end + 1].isdigit():
            return True
        at = blob.find(needle, at + 1)
    return False
