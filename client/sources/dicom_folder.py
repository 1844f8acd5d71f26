"""A folder of DICOM files (recursive) with a labels CSV: `path` (relative to root) and `labels`
('|'-separated ontology class names or source terms; `Normal` for no finding). The projection comes
from ViewPosition and the patient from PatientID (both read when the file is decoded); without a view
the image is routed as unknown."""

from __future__ import annotations

from collections.abc import Iterator

from client.sources.base import Record, Rejection, Source, TableError


class DicomFolderSource(Source):
    kind = "dicom"
    image_suffixes = (".dcm", ".dicom")

    @property
    def synonym_map(self) -> str:
        return self.option("synonyms", "padchest")

    def encode(self, positives, uncertain=None):
        """Ontology class names first, then source terms; a labels sheet states every class, so an
        unlisted class is negative (mask 1)."""
        ls = self.smap.label_set
        names = {n.casefold(): i for i, n in enumerate(ls.classes)}
        target, mask = super().encode([p for p in positives if p.casefold() not in names], uncertain)
        mask[:] = 1.0
        for p in positives:
            if p.casefold() in names:
                target[names[p.casefold()]] = 1.0
        return target, mask

    def scan(self) -> Iterator[Record | Rejection]:
        boxes = self.load_boxes("boxes.csv")
        csv = self.root / self.option("labels", "labels.csv")
        try:
            df = self.table(csv)
            self.require_columns(df, csv, ("path", "labels"))
        except TableError as exc:
            yield Rejection(exc.path, exc.message)
            return
        for line, r in enumerate(df.to_dict("records"), start=2):
            rel = str(r["path"]).strip()
            if not rel:
                yield Rejection(f"{csv}:{line}", "blank path")
                continue
            path = self.root / rel
            labels = str(r["labels"]).strip()
            if not labels or labels.lower() in ("nan", "none", "null"):
                yield Rejection(str(path), f"{csv.name} line {line}: blank labels (expected '|'-separated names; "
                                           "write Normal for no finding)")
                continue
            target, mask = self.encode([t.strip() for t in labels.split("|") if t.strip()])
            # projection (ViewPosition) and patient (PatientID) come from the header when the index decodes
            # the file, so each DICOM is read once
            yield Record(
                source=self.kind, boxes=boxes.get(rel, []), key=rel, path=path, patient_key="",
                projection=None, projection_method="unknown", targets=target, mask=mask, reader="dicom",
            )
