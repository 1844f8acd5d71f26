"""What every data source yields: records (one image each) or rejections (a path and a reason)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from client.site_config import SourceConfig
from shared_models.ontology import SourceMap, load_source_map

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


@dataclass(frozen=True)
class Rejection:
    path: str
    reason: str


class Source(ABC):
    kind: str = ""

    def __init__(self, cfg: SourceConfig, label_set: str) -> None:
        self.cfg = cfg
        self.root = cfg.root
        self.label_set = label_set
        self.smap: SourceMap = load_source_map(self.synonym_map, label_set)
        self.unmapped: dict[str, int] = {}

    @property
    def synonym_map(self) -> str:
        return self.kind

    def option(self, key: str, default: str) -> str:
        return str(self.cfg.options.get(key, default))

    def encode(self, positives: list[str], uncertain: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        target, mask, unmapped = self.smap.encode(positives, uncertain=uncertain)
        for t in unmapped:
            self.unmapped[t] = self.unmapped.get(t, 0) + 1
        return target, mask

    @abstractmethod
    def scan(self) -> Iterator[Record | Rejection]:
        """Every image the source lists, as a Record, or a Rejection naming the path and the reason."""
