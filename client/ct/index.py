"""A CT site's volumes: every CT source scanned, patient-level splits from the site's salted hash (CT-RATE's
valid split is kept as test), each volume brought once to the run's grid through the cache. A volume that cannot
be read is a rejection naming the file and the reason (any error while reading it: client.file_errors); the others
are kept."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from client.ct.cache import CTCache, snippet_targets
from client.ct.sources import CT_SOURCES, CTRecord, make_ct_source
from client.ct.volume import CTSpec
from client.file_errors import GuardedScan, quiet_reader_warnings, reason_for
from client.index import patient_split, require_roots
from client.privacy import suppress_counts
from client.site_config import SiteConfig, SiteConfigError
from client.sources.base import Note, Rejection
from shared_models.ct.config import CT_LABEL_SET
from shared_models.ontology import load_label_set



def is_ct_site(cfg: SiteConfig) -> bool:
    kinds = {s.kind for s in cfg.sources}
    if kinds & set(CT_SOURCES) and kinds - set(CT_SOURCES):
        raise SiteConfigError(f"{cfg.path}: a site holds CT sources or radiograph sources, not both "
                              f"(found {sorted(kinds)}); run two SuperNodes with one site.toml each")
    return bool(kinds & set(CT_SOURCES))


def site_ct_spec(cfg: SiteConfig) -> CTSpec:
    """The [ct] table of site.toml (spacing, size, window as [z, y, x] / [low, high]); defaults for the rest."""
    raw = cfg.ct or {}
    try:
        return CTSpec(**{k: tuple(float(v) if k != "size" else int(v) for v in raw[k])
                         for k in ("spacing", "size", "window") if k in raw})
    except (TypeError, ValueError) as exc:
        raise SiteConfigError(f"{cfg.path}: [ct] {exc}") from None


@dataclass
class CTVolume:
    record: CTRecord
    split: str
    x: np.ndarray  # (Z, Y, X) float32 in [-1, 1]
    snippets: list[tuple[str, int]]  # (sentence without its reference, grid depth position)


@dataclass
class CTIndex:
    classes: tuple[str, ...] = ()
    volumes: list[CTVolume] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    decoded: int = 0
    reused: int = 0

    def split(self, name: str) -> list[CTVolume]:
        return [v for v in self.volumes if v.split == name]

    def summary(self, k: int) -> dict:
        """Counts for `fedchest-site check`; counts below ``k`` are shown as '<k'."""
        labels = Counter()
        for v in self.volumes:
            labels.update(c for c, t, m in zip(self.classes, v.record.targets, v.record.mask) if t and m)
        return {"indexed": len(self.volumes), "decoded": self.decoded, "reused_from_cache": self.reused,
                "by_split": suppress_counts(dict(Counter(v.split for v in self.volumes)), k),
                "by_source": suppress_counts(dict(Counter(v.record.source for v in self.volumes)), k),
                "by_label": suppress_counts(dict(labels.most_common()), k),
                "snippets": sum(len(v.snippets) for v in self.volumes),
                "rejected": [{"path": r.path, "reason": r.reason} for r in self.rejected],
                "notes": [{"path": n.path, "note": n.message} for n in self.notes]}


def prepare_ct_site(cfg: SiteConfig, spec: CTSpec | None = None) -> CTIndex:
    if cfg.label_set != CT_LABEL_SET:
        raise SiteConfigError(f"{cfg.path}: site.label_set is {cfg.label_set!r}; CT sources are labelled with "
                              f"{CT_LABEL_SET!r} (CT-RATE's 18 classes)")
    spec = spec or site_ct_spec(cfg)
    cache = CTCache(cfg.work_dir / "ct-cache")
    salt = cfg.secret_salt()
    out = CTIndex(classes=load_label_set(CT_LABEL_SET).classes)
    require_roots(cfg)
    with quiet_reader_warnings():
        for src_cfg in cfg.sources:
            _index_source(cfg, src_cfg, spec, cache, salt, out)
    out.decoded, out.reused = cache.misses, cache.hits
    return out


def _index_source(cfg: SiteConfig, src_cfg, spec: CTSpec, cache: CTCache, salt: bytes, out: CTIndex) -> None:
    """One source's volumes into ``out``: records read through the cache, rejections with their reasons."""
    source = make_ct_source(src_cfg, cfg.label_set)
    scan = GuardedScan(source.scan(), str(src_cfg.root))
    for item in scan:
        if isinstance(item, Rejection):
            out.rejected.append(item)
            continue
        try:  # the per-volume guard: any error reading this volume's files is its rejection
            x, depth = cache.get(item, spec)
        except Exception as exc:
            out.rejected.append(Rejection(str(item.paths[0]), reason_for(exc)))
            continue
        if not math.isfinite(float(x.mean())):
            out.rejected.append(Rejection(str(item.paths[0]), "non-finite voxel values after preprocessing"))
            continue
        split = item.split or patient_split(salt, item.patient_key, cfg.val_fraction, cfg.test_fraction)
        out.volumes.append(CTVolume(item, split, x, snippet_targets(item, depth)))
    if scan.failure:
        out.rejected.append(Rejection(scan.where, scan.failure))
    out.notes += source.notes
