"""MIMIC-CXR-JPG: files/p1X/p<subject>/s<study>/<dicom_id>.jpg, metadata CSV and study-level labels."""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd

from client.sources.base import Record, Rejection, Source, harmonise_view

UNCERTAIN_POLICIES = ("ignore", "ones", "zeros")


class MimicSource(Source):
    kind = "mimic"

    def _read(self, name: str) -> pd.DataFrame | Rejection:
        path = self.root / name
        if not path.exists() and (self.root / f"{name}.gz").exists():
            path = self.root / f"{name}.gz"
        try:
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
            return Rejection(str(path), f"cannot read CSV: {exc}")

    def scan(self) -> Iterator[Record | Rejection]:
        policy = self.option("uncertain", "ignore")
        if policy not in UNCERTAIN_POLICIES:
            yield Rejection(str(self.root), f"uncertain = {policy!r}; expected one of {UNCERTAIN_POLICIES}")
            return
        meta = self._read(self.option("metadata", "mimic-cxr-2.0.0-metadata.csv"))
        labels = self._read(self.option("labels", "mimic-cxr-2.0.0-chexpert.csv"))
        for t in (meta, labels):
            if isinstance(t, Rejection):
                yield t
                return
        label_cols = [c for c in labels.columns if c not in ("subject_id", "study_id")]
        by_study = {str(r["study_id"]): r for r in labels.to_dict("records")}
        for r in meta.to_dict("records"):
            subject, study, dicom_id = str(r["subject_id"]), str(r["study_id"]), str(r["dicom_id"])
            path = self.root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom_id}.jpg"
            lab = by_study.get(study)
            if lab is None:
                yield Rejection(str(path), f"study {study} has no row in the label CSV")
                continue
            positives, uncertain = [], []
            for col in label_cols:
                v = str(lab[col]).strip()
                if v in ("1", "1.0") or (v in ("-1", "-1.0") and policy == "ones"):
                    positives.append(col)
                elif v in ("-1", "-1.0") and policy == "ignore":
                    uncertain.append(col)
            target, mask = self.encode(positives, uncertain)
            projection = harmonise_view(r.get("ViewPosition"))
            yield Record(
                source=self.kind, key=dicom_id, path=path, patient_key=subject, projection=projection,
                projection_method="metadata" if projection else "unknown", targets=target, mask=mask,
                reader="raster",
            )
