"""A folder of DICOM files (recursive) with a labels CSV: `path` (relative to root), `labels` ('|'-separated)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pydicom
from pydicom.errors import InvalidDicomError

from client.sources.base import Record, Rejection, Source, harmonise_view


def read_header(path: Path):
    """The DICOM header without pixel data, or a Rejection saying why not."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
        return Rejection(str(path), f"not a readable DICOM file: {exc}")


class DicomFolderSource(Source):
    kind = "dicom"

    @property
    def synonym_map(self) -> str:
        return self.option("synonyms", "padchest")

    def encode(self, positives, uncertain=None):
        # Labels may be ontology class names or source terms: ontology names are tried first.
        ls = self.smap.label_set
        target, mask = super().encode([p for p in positives if not _in(ls, p)], uncertain)
        mask[:] = 1.0  # a labels sheet states every class: unlisted means negative
        for p in positives:
            if _in(ls, p):
                target[ls.index(p)] = 1.0
        return target, mask

    def scan(self) -> Iterator[Record | Rejection]:
        csv = self.root / self.option("labels", "labels.csv")
        try:
            df = pd.read_csv(csv, dtype=str, keep_default_na=False)
        except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
            yield Rejection(str(csv), f"cannot read labels CSV: {exc}")
            return
        for col in ("path", "labels"):
            if col not in df.columns:
                yield Rejection(str(csv), f"labels CSV lacks required column {col!r}")
                return
        for r in df.to_dict("records"):
            path = self.root / r["path"]
            hdr = read_header(path)
            if isinstance(hdr, Rejection):
                yield hdr
                continue
            projection = harmonise_view(getattr(hdr, "ViewPosition", None))
            target, mask = self.encode([t.strip() for t in str(r["labels"]).split("|") if t.strip()])
            yield Record(
                source=self.kind, key=str(r["path"]), path=path, patient_key=str(getattr(hdr, "PatientID", r["path"])),
                projection=projection, projection_method="metadata" if projection else "unknown",
                targets=target, mask=mask, reader="dicom",
            )


def _in(ls, name: str) -> bool:
    try:
        ls.index(name)
        return True
    except KeyError:
        return False
