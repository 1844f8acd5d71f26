"""PadChest (BIMCV): the master CSV (columns by name) and 16-bit PNGs under numbered folders."""

from __future__ import annotations

import ast
from functools import lru_cache
from collections.abc import Iterator

from client.sources.base import Record, Rejection, Source, TableError, harmonise_view

SKIPPED_PROJECTIONS = {"COSTAL", "EXCLUDE", "UNK"}
REQUIRED = ("ImageID", "ImageDir", "PatientID", "Projection", "Labels")
MASTER_CSV = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"


@lru_cache(maxsize=65536)  # label strings repeat a lot: parse each distinct one once
def parse_labels(text: str) -> tuple[str, ...]:
    """PadChest's `Labels` cell: a Python list literal of strings with stray spaces; raises ValueError."""
    if not text.strip() or text.strip().lower() == "nan":
        raise ValueError("blank Labels (expected a Python list literal such as ['normal'])")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ValueError(f"Labels is not a Python list literal: {text[:60]!r}") from None
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise ValueError(f"Labels is not a list of strings: {text[:60]!r}")
    return tuple(t.strip() for t in value if t.strip())


class PadChestSource(Source):
    kind = "padchest"
    image_suffixes = (".png",)

    def scan(self) -> Iterator[Record | Rejection]:
        boxes = self.load_boxes("boxes.csv")
        csv = self.root / self.option("csv", MASTER_CSV)
        if not csv.exists() and csv.with_suffix(".csv.gz").exists():
            csv = csv.with_suffix(".csv.gz")
        try:
            df = self.table(csv)
            self.require_columns(df, csv, REQUIRED)
        except TableError as exc:
            yield Rejection(exc.path, exc.message)
            return
        for line, r in enumerate(df.to_dict("records"), start=2):
            image_id, image_dir = str(r["ImageID"]).strip(), str(r["ImageDir"]).strip()
            if not image_id:
                yield Rejection(f"{csv}:{line}", "blank ImageID")
                continue
            path = self.root / image_dir / image_id
            proj_raw = str(r["Projection"]).strip()
            if proj_raw.upper() in SKIPPED_PROJECTIONS:
                yield Rejection(str(path), f"Projection {proj_raw} is not a PA/AP/lateral chest view")
                continue
            projection = harmonise_view(proj_raw)
            if projection is None:
                yield Rejection(str(path),
                                f"unknown Projection value {proj_raw!r} (expected PA, AP, AP_horizontal or L)")
                continue
            try:
                terms = parse_labels(str(r["Labels"]))
            except ValueError as exc:
                yield Rejection(str(path), str(exc))
                continue
            target, mask = self.encode(list(terms))
            bits = str(r.get("BitsStored_DICOM", "")).strip()
            method = str(r.get("MethodProjection", ""))
            yield Record(
                source=self.kind, boxes=boxes.get(image_id, []), key=image_id, path=path,
                patient_key=str(r["PatientID"]),
                projection=projection, projection_method="cnn" if "resnet" in method.lower() else "metadata",
                targets=target, mask=mask, reader="raster",
                bits_stored=int(float(bits)) if bits.replace(".", "", 1).isdigit() else None,
                report=str(r.get("Report", "")) or None, vendor=str(r.get("Manufacturer_DICOM", "")),
            )
