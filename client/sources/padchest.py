"""PadChest (BIMCV): the master CSV (columns by name) and 16-bit PNGs under numbered folders."""

from __future__ import annotations

import ast
from collections.abc import Iterator

import pandas as pd

from client.sources.base import Record, Rejection, Source, harmonise_view

SKIPPED_PROJECTIONS = {"COSTAL", "EXCLUDE", "UNK"}
REQUIRED = ("ImageID", "ImageDir", "PatientID", "Projection", "Labels")


class PadChestSource(Source):
    kind = "padchest"

    def scan(self) -> Iterator[Record | Rejection]:
        csv = self.root / self.option("csv", "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv")
        try:
            df = pd.read_csv(csv, dtype=str, keep_default_na=False)
        except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
            yield Rejection(str(csv), f"cannot read PadChest CSV: {exc}")
            return
        missing = [c for c in REQUIRED if c not in df.columns]
        if missing:
            yield Rejection(str(csv), f"PadChest CSV lacks required column(s) {missing}")
            return
        for row in df.itertuples(index=False):
            r = row._asdict()
            path = self.root / str(r["ImageDir"]).strip() / str(r["ImageID"]).strip()
            proj_raw = str(r["Projection"]).strip()
            if proj_raw.upper() in SKIPPED_PROJECTIONS:
                yield Rejection(str(path), f"Projection {proj_raw} is not a PA/AP/lateral chest view")
                continue
            projection = harmonise_view(proj_raw)
            if projection is None:
                yield Rejection(str(path), f"unknown Projection value {proj_raw!r}")
                continue
            try:
                terms = ast.literal_eval(r["Labels"]) if r["Labels"].strip() else []
                if not isinstance(terms, list):
                    raise ValueError("not a list")
            except (ValueError, SyntaxError):
                yield Rejection(str(path), f"Labels is not a Python list literal: {r['Labels'][:60]!r}")
                continue
            target, mask = self.encode([str(t).strip() for t in terms if str(t).strip()])
            bits = r.get("BitsStored_DICOM", "").strip()
            method = r.get("MethodProjection", "")
            yield Record(
                source=self.kind, key=str(r["ImageID"]).strip(), path=path, patient_key=str(r["PatientID"]),
                projection=projection, projection_method="cnn" if "resnet" in method.lower() else "metadata",
                targets=target, mask=mask, reader="raster", bits_stored=int(float(bits)) if bits else None,
                report=r.get("Report") or None,
            )
