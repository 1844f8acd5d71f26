"""MIMIC-CXR-JPG: files/p1X/p<subject>/s<study>/<dicom_id>.jpg, the metadata CSV (ViewPosition) and a
study-level CheXpert or NegBio label CSV (1.0 / 0.0 / -1.0 uncertain / blank = not mentioned, read as
negative). The uncertain-label policy is configurable; the official split CSV is honoured when present."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from client.sources.base import Record, Rejection, Source, TableError, harmonise_view

UNCERTAIN_POLICIES = ("ignore", "ones", "zeros")
SPLIT_NAMES = {"train": "train", "validate": "val", "val": "val", "test": "test"}
LABEL_VALUES = {"1", "1.0", "0", "0.0", "-1", "-1.0", ""}


class MimicSource(Source):
    kind = "mimic"
    image_suffixes = (".jpg", ".jpeg")

    def _path(self, name: str) -> Path:
        path = self.root / name
        return path if path.exists() or not (self.root / f"{name}.gz").exists() else self.root / f"{name}.gz"

    def scan(self) -> Iterator[Record | Rejection]:
        boxes = self.load_boxes("boxes.csv")
        policy = self.option("uncertain", "ignore")
        if policy not in UNCERTAIN_POLICIES:
            yield Rejection(str(self.root), f"site.toml: uncertain = {policy!r}; expected one of {UNCERTAIN_POLICIES}")
            return
        meta_path = self._path(self.option("metadata", "mimic-cxr-2.0.0-metadata.csv"))
        labels_path = self._path(self.option("labels", "mimic-cxr-2.0.0-chexpert.csv"))
        split_path = self._path(self.option("split", "mimic-cxr-2.0.0-split.csv"))
        try:
            meta = self.table(meta_path)
            self.require_columns(meta, meta_path, ("dicom_id", "subject_id", "study_id", "ViewPosition"))
            labels = self.table(labels_path)
            self.require_columns(labels, labels_path, ("subject_id", "study_id"))
            splits = {}
            if split_path.exists():
                st = self.table(split_path)
                self.require_columns(st, split_path, ("dicom_id", "split"))
                splits = {str(r["dicom_id"]): SPLIT_NAMES.get(str(r["split"]).strip().lower())
                          for r in st.to_dict("records")}
        except TableError as exc:
            yield Rejection(exc.path, exc.message)
            return
        label_cols = [c for c in labels.columns if c not in ("subject_id", "study_id")]
        by_study = {str(r["study_id"]).strip(): r for r in labels.to_dict("records")}
        for r in meta.to_dict("records"):
            subject, study, dicom_id = (str(r[k]).strip() for k in ("subject_id", "study_id", "dicom_id"))
            path = self.root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom_id}.jpg"
            lab = by_study.get(study)
            if lab is None:
                yield Rejection(str(path), f"study {study} has no row in {labels_path.name}")
                continue
            bad = {c: lab[c] for c in label_cols if str(lab[c]).strip() not in LABEL_VALUES}
            if bad:
                yield Rejection(str(path), f"{labels_path.name}: unexpected label value(s) {bad} (expected 1.0, 0.0, "
                                           f"-1.0 or blank)")
                continue
            positives, uncertain = [], []
            for col in label_cols:
                v = str(lab[col]).strip()
                if v in ("1", "1.0") or (v in ("-1", "-1.0") and policy == "ones"):
                    positives.append(col)
                elif v in ("-1", "-1.0") and policy == "ignore":
                    uncertain.append(col)
            target, mask = self.encode(positives, uncertain)
            view = str(r["ViewPosition"]).strip()
            projection = harmonise_view(view)
            if projection is None and view:
                self.note(str(path), f"ViewPosition {view!r} has no PA/AP/lateral meaning; routed as unknown")
            yield Record(
                source=self.kind, boxes=boxes.get(dicom_id, []), key=dicom_id, path=path, patient_key=subject,
                projection=projection,
                projection_method="metadata" if projection else "unknown", targets=target, mask=mask,
                reader="raster", split=splits.get(dicom_id),
            )
