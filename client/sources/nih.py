"""NIH ChestX-ray14: `Data_Entry_2017` (original and 2020 layouts) + PNGs, optional bounding-box list.

Both layouts have the bracketed headers `OriginalImage[Width,Height]` that span two CSV columns (the original
one also has a trailing empty column); columns are picked by name, so either parses. Images are looked up
by file name anywhere under the root (the release splits them over images_001 ... images_012).

Option `patients`: a text file (relative to the root, or absolute) of NIH `Patient ID`s, one a line, when the
site holds only those patients' images of a shared folder: rows of other patients are not the site's (neither
indexed nor reported), and neither are their image files on disk.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from client.sources.base import Record, Rejection, Source, TableError, harmonise_view, read_table

if TYPE_CHECKING:
    import pandas as pd

REQUIRED = ("Image Index", "Finding Labels", "Patient ID", "View Position")


def read_nih_table(path: Path) -> pd.DataFrame:
    """The Data_Entry table with string columns; raises ValueError naming a missing column."""
    df = read_table(path)
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise TableError(path, f"missing column(s) {missing}; expected the NIH Data_Entry_2017 header")
    return df


def _patient_key(value: object) -> str:
    """The 2017 layout zero-pads patient ids, the 2020 layout does not: one key for both."""
    return str(value).strip().lstrip("0") or "0"


class NIHSource(Source):
    kind = "nih"
    image_suffixes = (".png",)
    listed: set[str] | None = None  # with `patients`: the image names of the site's patients

    def patients(self) -> set[str] | None:
        """The `patients` option's ids (None when absent); TableError naming the file when unreadable or empty."""
        if "patients" not in self.cfg.options:
            return None
        path = self.root / self.option("patients", "")
        try:
            ids = {_patient_key(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}
        except (OSError, UnicodeDecodeError) as exc:
            raise TableError(path, f"cannot read the `patients` list ({exc})") from None
        if not ids:
            raise TableError(path, "the `patients` list is empty (expected NIH Patient IDs, one a line)")
        return ids

    def candidates(self) -> Iterator[Path]:
        """Image files under the root; with `patients`, only those of the listed patients."""
        for path in super().candidates():
            if self.listed is None or path.name in self.listed:
                yield path

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
            keep = self.patients()
        except TableError as exc:
            yield Rejection(exc.path, exc.message)
            return
        if keep is not None:
            df = df[df["Patient ID"].map(_patient_key).isin(keep)]
            self.listed = set(df["Image Index"].str.strip())
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
                source=self.kind, boxes=boxes.get(name, []), box_frame=frame, key=name, path=path,
                patient_key=_patient_key(r["Patient ID"]),
                projection=projection, projection_method="metadata" if projection else "unknown",
                targets=target, mask=mask, reader="raster",
            )
