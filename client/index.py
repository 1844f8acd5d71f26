"""The site's local index (SQLite) and decode-once pixel cache.

`prepare_site` scans every source, assigns leak-free patient-level splits from a salted hash of the
patient id (or takes a source's official split), decodes each image once into a uint8 cache at the site's
image size, and records everything it could not use with the reason. A file whose size or mtime changed
(or, with `verify_content`, whose bytes changed) is decoded again; unchanged files come from the cache.
Bad files never stop a scan: every valid file around them is still indexed. The index and cache never
leave the site.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from client import dicom_io
from client.imaging import ImageReadError, Pixels, read_raster, resize_square
from client.site_config import SiteConfig
from client.sources import Note, Record, Rejection, make_source
from shared_models.networks import PROJECTIONS
from shared_models.ontology import load_label_set

SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
  row INTEGER NOT NULL, sample_id TEXT PRIMARY KEY, source TEXT, key TEXT, path TEXT, fingerprint TEXT,
  projection TEXT, projection_method TEXT, split TEXT, targets BLOB, mask BLOB,
  bit_depth INTEGER, photometric TEXT, height INTEGER, width INTEGER, vendor TEXT
);
CREATE TABLE IF NOT EXISTS rejections (path TEXT, reason TEXT);
"""
META_COLUMNS = ("bit_depth", "photometric", "height", "width", "vendor")


@dataclass
class IndexReport:
    indexed: int = 0
    reused: int = 0
    decoded: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    by_source: Counter = field(default_factory=Counter)
    by_projection: Counter = field(default_factory=Counter)
    by_projection_method: Counter = field(default_factory=Counter)
    by_split: Counter = field(default_factory=Counter)
    by_label: Counter = field(default_factory=Counter)
    bit_depths: Counter = field(default_factory=Counter)
    photometric: Counter = field(default_factory=Counter)
    vendors: Counter = field(default_factory=Counter)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    label_mapping: dict[str, dict] = field(default_factory=dict)


def patient_split(salt: bytes, patient_key: str, val: float, test: float) -> str:
    """Deterministic patient-level split: every image of a patient lands in the same split."""
    u = int.from_bytes(hashlib.sha256(salt + patient_key.encode()).digest()[:8], "big") / 2**64
    return "test" if u < test else ("val" if u < test + val else "train")


def fingerprint(path: Path, content: bool = False) -> str:
    """size:mtime (and a content digest when asked); raises ImageReadError for a missing or looping path."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ImageReadError("listed image is missing on disk") from None
    except OSError as exc:  # ELOOP, EACCES, ...
        raise ImageReadError(f"cannot stat file ({exc.strerror or exc})") from None
    fp = f"{st.st_size}:{st.st_mtime_ns}"
    if content:
        fp += ":" + hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
    return fp


def decode(record: Record, min_size: int = 32) -> Pixels:
    if record.reader == "dicom":
        return dicom_io.decode(record.path, min_size)[0]
    return read_raster(record.path, record.bits_stored, min_size)


def _connect(cfg: SiteConfig) -> sqlite3.Connection:
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(cfg.index_path)
    cols = {r[1] for r in con.execute("PRAGMA table_info(samples)")}
    if cols and "vendor" not in cols:  # index from an older fedchest: rebuild it (the cache is keyed separately)
        con.executescript("DROP TABLE samples; DROP TABLE IF EXISTS rejections;")
    con.executescript(SCHEMA)
    return con


def _mapping_report(source, classes: tuple[str, ...]) -> dict:
    annotated = source.smap.annotated
    return {
        "mapped": {t: [classes[i] for i in idx] for t, idx in sorted(source.mapped.items())},
        "unmapped": dict(sorted(source.unmapped.items(), key=lambda kv: -kv[1])),
        "annotated_classes": [c for c, a in zip(classes, annotated) if a] if source.kind != "dicom" else list(classes),
        "not_annotated": [c for c, a in zip(classes, annotated) if not a] if source.kind != "dicom" else [],
    }


def prepare_site(cfg: SiteConfig) -> IndexReport:
    """Scan, split, decode (once) and index every source of the site."""
    salt = cfg.secret_salt()
    classes = load_label_set(cfg.label_set).classes
    report = IndexReport()
    con = _connect(cfg)
    old = {r[0]: (r[1], r[2], r[3:]) for r in con.execute(
        f"SELECT sample_id, fingerprint, row, {', '.join(META_COLUMNS)} FROM samples")}
    pixels_path = cfg.cache_dir / "pixels.npy"
    old_pixels = np.load(pixels_path, mmap_mode="r") if pixels_path.exists() and old else None
    rows, pixels, seen_ids = [], [], set()
    for src_cfg in cfg.sources:
        source = make_source(src_cfg, cfg.label_set)
        listed: set[str] = set()
        for item in source.scan():
            if isinstance(item, Rejection):
                report.rejected.append(item)
                listed.add(os.path.normpath(item.path))
                continue
            listed.add(os.path.normpath(item.path))
            sample_id = hashlib.sha256(salt + f"{item.source}/{item.key}".encode()).hexdigest()[:20]
            if sample_id in seen_ids:
                report.rejected.append(Rejection(str(item.path), f"duplicate image id {item.key!r} in source {item.source}"))
                continue
            try:
                fp = fingerprint(item.path, cfg.verify_content)
                prev = old.get(sample_id)
                if prev and prev[0] == fp and old_pixels is not None and prev[1] < len(old_pixels):
                    px, meta = np.asarray(old_pixels[prev[1]]), prev[2]
                    report.reused += 1
                else:
                    decoded = decode(item, cfg.min_image_size)
                    px = resize_square(decoded.array, cfg.image_size)
                    meta = (decoded.bit_depth, decoded.photometric, *decoded.array.shape, decoded.vendor or item.vendor)
                    report.decoded += 1
                    report.notes += [Note(str(item.path), n) for n in decoded.notes if "inferred" in n or "RGB" in n]
            except ImageReadError as exc:
                report.rejected.append(Rejection(str(item.path), str(exc)))
                continue
            seen_ids.add(sample_id)
            split = item.split or patient_split(salt, item.patient_key, cfg.val_fraction, cfg.test_fraction)
            rows.append((item, sample_id, fp, split, meta))
            pixels.append(px)
        for path in source.candidates():
            if os.path.normpath(path) not in listed:
                report.rejected.append(Rejection(str(path), f"image on disk that no {source.kind} table lists (not indexed)"))
        report.notes += source.notes
        report.label_mapping[f"{source.kind}:{src_cfg.root.name}"] = _mapping_report(source, classes)
    with con:
        con.execute("DELETE FROM samples")
        con.execute("DELETE FROM rejections")
        con.executemany(
            "INSERT INTO samples VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [(i, sid, it.source, it.key, str(it.path), fp, it.projection, it.projection_method, split,
              it.targets.astype(np.float32).tobytes(), it.mask.astype(np.float32).tobytes(), *meta)
             for i, (it, sid, fp, split, meta) in enumerate(rows)],
        )
        con.executemany("INSERT INTO rejections VALUES (?,?)", [(r.path, r.reason) for r in report.rejected])
    con.close()
    del old_pixels
    cfg.cache_dir.mkdir(parents=True, exist_ok=True)
    arr = np.stack(pixels) if pixels else np.zeros((0, cfg.image_size, cfg.image_size), np.uint8)
    tmp = cfg.cache_dir / "pixels.tmp.npy"
    np.save(tmp, arr)
    tmp.replace(pixels_path)
    (cfg.cache_dir / "cache.json").write_text(json.dumps({"n": len(arr), "image_size": cfg.image_size}))
    report.indexed = len(rows)
    for item, _sid, _fp, split, meta in rows:
        report.by_source[item.source] += 1
        report.by_projection[item.projection or "unknown"] += 1
        report.by_projection_method[item.projection_method] += 1
        report.by_split[split] += 1
        report.bit_depths[str(meta[0])] += 1
        report.photometric[meta[1]] += 1
        report.vendors[meta[4] or "unknown"] += 1
        report.sizes.append((meta[2], meta[3]))
        for j in np.flatnonzero(item.targets * item.mask > 0):
            report.by_label[classes[j]] += 1
    return report


@dataclass
class SiteData:
    """One split of a site, ready for training: uint8 pixels, projection indices, targets, masks."""

    pixels: np.ndarray  # (N, S, S) uint8
    projection: np.ndarray  # (N,) int64, -1 = unknown
    targets: np.ndarray  # (N, C) float32
    mask: np.ndarray  # (N, C) float32

    def __len__(self) -> int:
        return len(self.projection)


def load_split(cfg: SiteConfig, split: str | None) -> SiteData:
    """Rows of one split ('train', 'val', 'test' or None for all) from the index and cache."""
    if not cfg.index_path.exists():
        raise FileNotFoundError(f"{cfg.path}: site not indexed yet; run `fedchest-site check --config {cfg.path}`")
    con = sqlite3.connect(cfg.index_path)
    q = "SELECT row, projection, targets, mask FROM samples" + (" WHERE split = ?" if split else "") + " ORDER BY row"
    rows = con.execute(q, (split,) if split else ()).fetchall()
    con.close()
    all_px = np.load(cfg.cache_dir / "pixels.npy", mmap_mode="r")
    n_classes = len(load_label_set(cfg.label_set))
    idx = np.array([r[0] for r in rows], dtype=np.int64)
    proj = np.array([PROJECTIONS.index(r[1]) if r[1] in PROJECTIONS else -1 for r in rows], dtype=np.int64)
    tg = np.stack([np.frombuffer(r[2], np.float32) for r in rows]) if rows else np.zeros((0, n_classes), np.float32)
    mk = np.stack([np.frombuffer(r[3], np.float32) for r in rows]) if rows else np.zeros((0, n_classes), np.float32)
    return SiteData(np.ascontiguousarray(all_px[idx]), proj, tg, mk)
