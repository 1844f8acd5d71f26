"""NIH ChestX-ray14: `Data_Entry_2017` (original and 2020 layouts) + PNGs, optional bounding-box list.

Both layouts have the bracketed headers `OriginalImage[Width,Height]` that span two CSV columns (the original
one also has a trailing empty column); columns are picked by name, so either parses. Images are looked up
by file name anywhere under the root (the release splits them over images_001 ... images_012).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from client.sources.base import Record, Rejection, Source, TableError, harmonise_view, read_table

REQUIRED = ("Image Index", "Finding Labels", "Patient ID", "View Position")


def read_nih_table(path: Path) -> pd.DataFrame:
    """The Data_Entry table with string columns; raises ValueError naming a missing column."""
    df = read_table(path)
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise TableError(path, f"missing column(s) {missing}; expected the NIH Data_Entry_2017 header")
    return df


class NIHSource(Source):
    kind = "nih"
    image_suffixes = (".png",)

    def scan(self) -> Iterator[Record | Rejection]:
        boxes = self.load_boxes("BBox_List_2017.csv")
        table = self.root / self.option("table", "Data_Entry_2017_v2020.csv")
        if not table.exists():
            for alt in ("Data_Entry_2017_v2020.csv.gz", "Data_Entry_2017.csv", "Data_Entry_2017.csv.gz"):
                if (self.root / alt).exists():
                    table = self.root / alt
                    break
        try:
            df = read_nih_table(table)
        except TableError as exc:
            yield Rejection(exc.path, exc.message)
            return
        images = {p.name: p for p in self.candidates()}
        side = int(self.option("box_frame", "1024"))  # BBox_List_2017 is in pixels of the 1024 x 1024 release PNGs
        frame = (side, side)
        for r in df.to_dict("records"):
            name = str(r["Image Index"]).strip()
            path = images.get(name, self.root / "images" / name)
            terms = [t.strip() for t in str(r["Finding Labels"]).split("|") if t.strip()]
            if not terms:
                yield Rejection(str(path), "blank Finding Labels (expected '|'-separated NIH labels or 'No Finding')")
                continue
            target, mask = self.encode(terms)
            projection = harmonise_view(r["View Position"])
            yield Record(
                source=self.kind, boxes=boxes.get(name, []), box_frame=frame, key=name, path=path, patient_key=str(r["Patient ID"]).lstrip("0") or "0",
                projection=projection, projection_method="metadata" if projection else "unknown",
                targets=target, mask=mask, reader="raster",
            )
