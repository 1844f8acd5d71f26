"""RSNA Pneumonia Detection Challenge (2018): `stage_2_train_labels.csv` (also .zip / .gz) with one row per box
(`patientId, x, y, width, height, Target`; Target 0 rows have blank coordinates), DICOMs
`stage_2_train_images/<patientId>.dcm`, and optionally `stage_2_detailed_class_info.csv` (`patientId, class`).

Labels: Target 1 is "Lung Opacity" with its boxes; Target 0 is annotated absent. Without the detailed class
file, "Normal" is left unknown for Target 0 images (Target 0 also covers abnormal images without opacity).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from client.sources.base import Note, Record, Rejection, Source, TableError, read_table, require_columns

LABEL_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
OPACITY = "Lung Opacity"


@dataclass
class RSNAStudy:
    target: int
    boxes: list[tuple[str, float, float, float, float]] = field(default_factory=list)


def read_rsna_labels(path: Path, notes: list[Note] | None = None) -> tuple[dict[str, RSNAStudy], list[Rejection]]:
    """Studies by patientId from the stage-2 labels; a malformed row is a Rejection naming the file, line and
    field, and the other rows of the file are kept."""
    df = read_table(path, notes)
    require_columns(df, path, LABEL_COLUMNS)
    studies: dict[str, RSNAStudy] = {}
    bad: list[Rejection] = []
    for line, r in enumerate(df[list(LABEL_COLUMNS)].itertuples(index=False), start=2):
        pid, target = str(r[0]).strip(), str(r[5]).strip()
        where = f"{path}:{line}"
        if not pid:
            bad.append(Rejection(where, "blank patientId"))
            continue
        if target not in ("0", "1"):
            bad.append(Rejection(where, f"Target {target!r}; expected 0 or 1"))
            continue
        study = studies.setdefault(pid, RSNAStudy(int(target)))
        if int(target) != study.target:
            bad.append(Rejection(where, f"patientId {pid}: Target {target} contradicts an earlier row's "
                                        f"{study.target}; row skipped"))
            continue
        if target == "1":
            try:
                x, y, w, h = (float(v) for v in r[1:5])
            except ValueError:
                bad.append(Rejection(where, "Target 1 needs numeric x, y, width, height; box skipped, label kept"))
                continue
            if w <= 0 or h <= 0:
                bad.append(Rejection(where,
                                     f"box width {w:g} / height {h:g}; expected positive; box skipped, label kept"))
                continue
            study.boxes.append((OPACITY, x, y, w, h))
    return studies, bad


class RSNASource(Source):
    kind = "rsna"
    image_suffixes = (".dcm",)

    def scan(self) -> Iterator[Record | Rejection]:
        path = self.root / self.option("labels", "stage_2_train_labels.csv")
        for alt in (path, path.with_name(path.name + ".zip"), path.with_name(path.name + ".gz"),
                    path.with_name("kaggle_stage_2_train_labels.csv.zip")):
            if alt.exists():
                path = alt
                break
        try:
            studies, bad = read_rsna_labels(path, self.notes)
        except TableError as exc:
            yield Rejection(exc.path, exc.message)
            return
        yield from bad
        detailed = self._detailed()
        images = self.root / self.option("images", "stage_2_train_images")
        for pid, study in studies.items():
            positives = [OPACITY] if study.target else []
            kind = detailed.get(pid)
            if kind:
                positives.append(kind)
            target, mask = self.encode_study(positives, normal_known=kind is not None)
            yield Record(source=self.kind, boxes=list(study.boxes), key=pid, path=images / f"{pid}.dcm",
                         patient_key=pid, projection=None, projection_method="unknown", targets=target, mask=mask,
                         reader="dicom")

    def encode_study(self, positives: list[str], normal_known: bool):
        return self.encode(positives, uncertain=None if normal_known else ["Normal"])

    def _detailed(self) -> dict[str, str]:
        path = self.root / self.option("classes", "stage_2_detailed_class_info.csv")
        if not path.exists():
            return {}
        try:
            df = read_table(path, self.notes)
            self.require_columns(df, path, ("patientId", "class"))
        except TableError as exc:
            self.note(exc.path, exc.message + "; detailed classes ignored")
            return {}
        return {str(p).strip(): str(c).strip() for p, c in zip(df["patientId"], df["class"])}
