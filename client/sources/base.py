"""What every data source yields: records (one image each) or rejections (a path and a reason)."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from client.file_errors import FileProblem, reason_for
from client.site_config import SourceConfig
from shared_models.ontology import SourceMap, load_source_map

if TYPE_CHECKING:
    import pandas as pd

# Harmonised projection names from the many spellings sources use (ViewPosition, PadChest Projection, ...).
VIEW_TO_PROJECTION = {
    "PA": "PA", "POSTERO-ANTERIOR": "PA",
    "AP": "AP", "AP_HORIZONTAL": "AP", "AP SUPINE": "AP", "AP AXIAL": "AP",
    "L": "LAT", "LL": "LAT", "RL": "LAT", "LATERAL": "LAT", "LARGE LATERAL": "LAT", "XTABLE LATERAL": "LAT",
}


def harmonise_view(value: object) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return VIEW_TO_PROJECTION.get(str(value).strip().upper())


@dataclass
class Record:
    source: str
    key: str  # unique within the source (image id or relative path)
    path: Path
    patient_key: str  # raw patient identifier: only ever hashed with the site's secret salt
    projection: str | None
    projection_method: str  # "metadata", "cnn", "unknown"
    targets: np.ndarray
    mask: np.ndarray
    reader: str  # "raster" or "dicom"
    bits_stored: int | None = None
    report: str | None = None
    split: str | None = None  # an official split from the source (e.g. MIMIC's split CSV), else hashed
    vendor: str = ""
    boxes: list[tuple[str, float, float, float, float]] = field(default_factory=list)  # label, x, y, w, h (px)
    box_frame: tuple[int, int] | None = None  # (height, width) the box pixels refer to; None: the file as read


@dataclass(frozen=True)
class Rejection:
    path: str
    reason: str


@dataclass(frozen=True)
class Note:
    """Something accepted but worth telling the site engineer (a fallback taken, a field left empty)."""

    path: str
    message: str


class TableError(FileProblem):
    """A metadata or label table that cannot be used; the message names the file and what was expected."""

    def __init__(self, path: Path | str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path, self.message = str(path), message


def require_columns(df: pd.DataFrame, path: Path, columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise TableError(path, f"missing required column(s) {missing}; found {list(df.columns)[:12]}")


def read_table(path: Path, notes: list[Note] | None = None) -> pd.DataFrame:
    """A CSV (optionally .gz/.zip) with every column as text, blanks kept as ''. Text that is not UTF-8 is
    decoded as Latin-1 and noted; an unreadable or malformed file raises TableError naming it."""
    import pandas as pd  # imported by the sites that read tables (index preparation), not by every round

    for encoding in ("utf-8", "latin-1"):
        try:
            df = pd.read_csv(path, dtype=object, keep_default_na=False, encoding=encoding)
        except UnicodeDecodeError:
            continue
        except FileNotFoundError:
            raise TableError(path, "file not found") from None
        except Exception as exc:  # a parser error, a damaged .gz / .zip, ... (an error of the site re-raises)
            raise TableError(path, f"cannot read as CSV ({reason_for(exc)})") from None
        if encoding != "utf-8" and notes is not None:
            notes.append(Note(str(path), "not UTF-8; decoded as Latin-1"))
        df.columns = [str(c).strip() for c in df.columns]
        return df
    raise TableError(path, "undecodable text")


class Source(ABC):
    kind: str = ""

    def __init__(self, cfg: SourceConfig, label_set: str) -> None:
        self.cfg = cfg
        self.root = cfg.root
        self.label_set = label_set
        self.smap: SourceMap = load_source_map(self.synonym_map, label_set)
        self.unmapped: dict[str, int] = {}
        self.mapped: dict[str, tuple[int, ...]] = {}  # source term -> class indices, as met in this scan
        self.notes: list[Note] = []

    def note(self, path: str, message: str) -> None:
        self.notes.append(Note(path, message))

    def table(self, path: Path) -> pd.DataFrame:
        return read_table(path, self.notes)

    def require_columns(self, df: pd.DataFrame, path: Path, columns: tuple[str, ...]) -> None:
        require_columns(df, path, columns)

    @property
    def synonym_map(self) -> str:
        return self.kind

    def load_boxes(self, default: str = "boxes.csv") -> dict[str, list[tuple[str, float, float, float, float]]]:
        """Ground-truth boxes by image key from an optional side file (`boxes` option): columns image, label,
        x, y, w, h by position, so both fedchest's boxes.csv and NIH's BBox_List_2017.csv read."""
        path = self.root / self.option("boxes", default)
        if not path.exists() and path.with_name(path.name + ".gz").exists():
            path = path.with_name(path.name + ".gz")
        if not path.exists():
            return {}
        try:
            df = self.table(path)
        except TableError as exc:
            self.note(exc.path, exc.message + "; boxes ignored")
            return {}
        out: dict[str, list[tuple[str, float, float, float, float]]] = {}
        for line, row in enumerate(df.itertuples(index=False), start=2):
            try:
                box = (str(row[1]).strip(), *(float(v) for v in row[2:6]))
            except (ValueError, IndexError):
                self.note(f"{path}:{line}", "box row is not image, label, x, y, w, h; skipped")
                continue
            out.setdefault(str(row[0]).strip(), []).append(box)
        return out

    def option(self, key: str, default: str) -> str:
        return str(self.cfg.options.get(key, default))

    def encode(self, positives: list[str], uncertain: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        target, mask, unmapped = self.smap.encode(positives, uncertain=uncertain)
        for t in unmapped:
            self.unmapped[t] = self.unmapped.get(t, 0) + 1
        for t in positives:
            if t not in self.mapped and t not in unmapped:
                self.mapped[t] = self.smap.lookup(t) or ()
        return target, mask

    @abstractmethod
    def scan(self) -> Iterator[Record | Rejection]:
        """Every image the source lists, as a Record, or a Rejection naming the path and the reason."""

    image_suffixes: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".dcm")

    def candidates(self) -> Iterator[Path]:
        """Image files on disk under the root (symlinks not followed into folders), to find unlisted ones."""
        yield from walk_files(self.root, self.image_suffixes)


def walk_files(root: Path, suffixes: tuple[str, ...] | None) -> Iterator[Path]:
    """Files under ``root`` with one of ``suffixes`` (None = any); never follows directory symlinks, so
    symlink loops cannot hang a scan."""
    for folder, _dirs, files in os.walk(root, followlinks=False):
        for f in files:
            if suffixes is None or f.lower().endswith(suffixes):
                yield Path(folder) / f
