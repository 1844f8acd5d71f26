"""Data sources, one class per kind, selected by `kind` in site.toml."""

from __future__ import annotations

from client.site_config import SiteConfigError, SourceConfig
from client.sources.base import Note, Record, Rejection, Source, TableError, harmonise_view
from client.sources.dicom_folder import DicomFolderSource
from client.sources.mimic import MimicSource
from client.sources.nih import NIHSource
from client.sources.openi import OpenISource
from client.sources.padchest import PadChestSource
from client.sources.rsna import RSNASource

SOURCES: dict[str, type[Source]] = {
    s.kind: s for s in (PadChestSource, MimicSource, OpenISource, NIHSource, DicomFolderSource, RSNASource)
}


def make_source(cfg: SourceConfig, label_set: str) -> Source:
    try:
        cls = SOURCES[cfg.kind]
    except KeyError:
        raise SiteConfigError(f"unknown source kind {cfg.kind!r}; expected one of {', '.join(SOURCES)}") from None
    return cls(cfg, label_set)


__all__ = ["SOURCES", "Note", "Record", "Rejection", "Source", "TableError", "harmonise_view", "make_source"]
