"""Chest-CT sources, one class per kind (selected by ``kind`` in site.toml), yielding one record per volume or a
rejection naming the file and the reason.

- ``ct-rate``: the CT-RATE layout (Hamamci et al. 2024): ``<split>_fixed/.../<name>.nii.gz`` volumes; the reports,
  metadata and 18-label CSVs found under the root by their columns (``VolumeName`` plus ``Findings_EN`` /
  ``RescaleSlope`` / the label names), so the published folder names and a flat export both work; a skip list of
  known bad volumes.
- ``dicom-ct``: a folder per series of DICOM slices, with a labels CSV: ``series`` (folder relative to the root),
  ``labels`` ('|'-separated CT-RATE-18 names, ``Normal`` for none) and optionally ``report``.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from client.ct.readers import SliceHeader, read_slice_header, sort_series
from client.ct.volume import VolumeError
from client.site_config import SiteConfigError, SourceConfig
from client.sources.base import Note, Rejection, TableError, read_table, require_columns, walk_files
from shared_models.ontology import load_label_set

# CT-RATE's known bad volumes: SVD failures, a tiny volume, a broken patient
KNOWN_BAD = ("train_11755_a_2", "train_11755_a_3", "train_11755_a_4", "train_1267_a_4", "train_3821_a_5",
             "train_9792_a_*")


@dataclass
class CTRecord:
    source: str
    key: str  # volume name (CT-RATE) or series folder (DICOM)
    paths: tuple[Path, ...]  # one NIfTI file, or the series' slices in volume order
    patient_key: str  # raw identifier: only ever hashed with the site's salt
    targets: np.ndarray
    mask: np.ndarray
    report: str = ""
    split: str | None = None  # "test" for CT-RATE's valid split; else the site's hashed split
    slope: float | None = None
    intercept: float | None = None
    spacing: tuple[float, float, float] | None = None  # (z, y, x) mm, when the source states it
    instances: tuple[int | None, ...] = field(default_factory=tuple)  # DICOM InstanceNumber per Z index


class CTSource:
    kind = ""

    def __init__(self, cfg: SourceConfig, label_set: str = "ctrate18") -> None:
        self.cfg, self.root = cfg, cfg.root
        self.classes = load_label_set(label_set).classes
        self.by_name = {c.casefold(): i for i, c in enumerate(self.classes)}
        self.notes: list[Note] = []

    def option(self, key: str, default):
        return self.cfg.options.get(key, default)

    def note(self, path: str, message: str) -> None:
        self.notes.append(Note(path, message))

    def scan(self) -> Iterator[CTRecord | Rejection]:
        raise NotImplementedError


def _split_of(path: Path) -> str | None:
    parts = {p.lower() for p in path.parts}
    return "test" if parts & {"valid_fixed", "valid", "validation"} else None


class CTRateSource(CTSource):
    kind = "ct-rate"

    def _tables(self) -> tuple[dict[str, dict], dict[str, dict], dict[str, dict]]:
        """Reports, metadata and labels rows by volume name (``.nii.gz`` dropped), from every CSV under the root
        recognised by its columns."""
        reports, meta, labels = {}, {}, {}
        for csv in sorted(walk_files(self.root, (".csv",))):
            try:
                df = read_table(csv, self.notes)
            except TableError as exc:
                self.note(exc.path, exc.message + "; ignored")
                continue
            if "VolumeName" not in df.columns:
                continue
            label_cols = [c for c in df.columns if c.casefold() in self.by_name]
            if {"Findings_EN", "Impressions_EN"} & set(df.columns):
                target = reports
            elif {"RescaleSlope", "RescaleIntercept"} <= set(df.columns):
                target = meta
            elif label_cols:
                target = labels
            else:
                self.note(str(csv), "has VolumeName but no report, metadata or label columns; ignored")
                continue
            for row in df.to_dict("records"):
                target[_stem(str(row["VolumeName"]))] = {**row, "_file": str(csv)}
        return reports, meta, labels

    def _skip(self) -> list[str]:
        skip = list(self.option("skip", KNOWN_BAD))
        for listed in walk_files(self.root, (".txt",)):
            if listed.name.startswith("no_chest"):
                skip += [_stem(line.strip()) for line in listed.read_text(errors="replace").splitlines()
                         if line.strip()]
        return skip

    def scan(self) -> Iterator[CTRecord | Rejection]:
        reports, meta, labels = self._tables()
        skip = self._skip()
        for path in sorted(walk_files(self.root, (".nii.gz", ".nii"))):
            name = _stem(path.name)
            if any(fnmatch.fnmatch(name, pattern) for pattern in skip):
                yield Rejection(str(path), "on the skip list (known bad or non-chest volume)")
                continue
            study = name.rsplit("_", 1)[0]
            report_row = reports.get(name) or reports.get(study)
            if report_row is None:
                yield Rejection(str(path), "no report row (VolumeName) in the reports CSV")
                continue
            report = " ".join(str(report_row.get(c, "")).strip() for c in ("Findings_EN", "Impressions_EN")
                              if str(report_row.get(c, "")).strip())
            target, mask = self._labels(labels.get(name) or labels.get(study), path)
            slope = intercept = spacing = None
            m = meta.get(name)
            if m is None:
                self.note(str(path), "no metadata row: the NIfTI header's rescale and spacing are used")
            else:
                try:
                    slope, intercept = float(m["RescaleSlope"]), float(m["RescaleIntercept"])
                    spacing = _spacing(m)
                except (KeyError, ValueError) as exc:
                    yield Rejection(str(path), f"{m['_file']}: metadata row for {name}: {exc} (expected numbers in "
                                               "RescaleSlope, RescaleIntercept, XYSpacing like '[0.75, 0.75]', "
                                               "ZSpacing)")
                    continue
            yield CTRecord(self.kind, name, (path,), name.split("_")[0] + "_" + name.split("_")[1]
                           if name.count("_") >= 2 else name, target, mask, report, _split_of(path),
                           slope, intercept, spacing)

    def _labels(self, row: dict | None, path: Path) -> tuple[np.ndarray, np.ndarray]:
        c = len(self.classes)
        target, mask = np.zeros(c, np.float32), np.zeros(c, np.float32)
        if row is None:
            self.note(str(path), "no label row: its classes are unknown (masked)")
            return target, mask
        for col, value in row.items():
            i = self.by_name.get(str(col).casefold())
            v = str(value).strip()
            if i is None or v == "":
                continue
            if v in ("0", "1", "0.0", "1.0"):
                target[i], mask[i] = float(v), 1.0
            else:
                self.note(row["_file"], f"{col} = {v!r} for {_stem(path.name)}: expected 0 or 1; masked")
        return target, mask


def _stem(name: str) -> str:
    return re.sub(r"\.nii(\.gz)?$", "", name.strip())


def _spacing(row: dict) -> tuple[float, float, float]:
    xy = [float(v) for v in re.findall(r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?", str(row["XYSpacing"]))]
    if len(xy) != 2:
        raise ValueError(f"XYSpacing {row['XYSpacing']!r}")
    z = float(row["ZSpacing"])
    if min(z, *xy) <= 0:
        raise ValueError("non-positive spacing")
    return (z, xy[1], xy[0])  # XYSpacing is (row, column) spacing as DICOM's PixelSpacing: y, x


class DicomCTSource(CTSource):
    kind = "dicom-ct"

    def scan(self) -> Iterator[CTRecord | Rejection]:
        csv = self.root / str(self.option("labels", "labels.csv"))
        try:
            df = read_table(csv, self.notes)
            require_columns(df, csv, ("series", "labels"))
        except TableError as exc:
            yield Rejection(exc.path, exc.message)
            return
        for line, row in enumerate(df.to_dict("records"), start=2):
            rel = str(row["series"]).strip()
            folder = self.root / rel
            if not rel or not folder.is_dir():
                yield Rejection(f"{csv}:{line}", f"series folder {rel!r} not found under {self.root}")
                continue
            names = [t.strip() for t in str(row["labels"]).split("|") if t.strip()]
            unknown = [t for t in names if t.casefold() not in self.by_name and t.casefold() != "normal"]
            if not names or unknown:
                yield Rejection(f"{csv}:{line}", f"labels {row['labels']!r}: expected '|'-separated names from "
                                                 f"{self.classes[:3]}... or Normal"
                                                 + (f"; unknown {unknown}" if unknown else ""))
                continue
            headers: list[SliceHeader] = []
            bad = []
            for f in sorted(walk_files(folder, None)):
                try:
                    headers.append(read_slice_header(f))
                except VolumeError as exc:
                    bad.append(str(exc))
            for reason in bad[:3]:
                self.note(rel, f"slice skipped: {reason}")
            try:
                ordered, dz = sort_series(headers)
            except VolumeError as exc:
                yield Rejection(str(folder), str(exc))
                continue
            target = np.zeros(len(self.classes), np.float32)
            for t in names:
                if t.casefold() in self.by_name:
                    target[self.by_name[t.casefold()]] = 1.0
            dy, dx = ordered[0].pixel_spacing
            report = str(row.get("report", "") or "").strip()
            yield CTRecord(self.kind, rel, tuple(h.path for h in ordered), ordered[0].patient_id or rel, target,
                           np.ones(len(self.classes), np.float32), report, None, None, None, (dz, dy, dx),
                           tuple(h.instance for h in ordered))


CT_SOURCES: dict[str, type[CTSource]] = {s.kind: s for s in (CTRateSource, DicomCTSource)}


def make_ct_source(cfg: SourceConfig, label_set: str = "ctrate18") -> CTSource:
    try:
        return CT_SOURCES[cfg.kind](cfg, label_set)
    except KeyError:
        raise SiteConfigError(f"unknown CT source kind {cfg.kind!r}; expected one of {', '.join(CT_SOURCES)}") from None
