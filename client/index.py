"""The site's local index (SQLite) and decode-once pixel cache.

`prepare_site` scans every source, assigns leak-free patient-level splits from a salted hash of the
patient id, decodes each image once into a uint8 cache at the site's image size, and records what it
could not read. A file whose size or mtime changed is decoded again; unchanged files are reused.
The index and cache never leave the site.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from client.imaging import ImageReadError, Pixels, read_dicom_pixels, read_raster, resize_square
from client.site_config import SiteConfig
from client.sources import Record, Rejection, make_source
from shared_models.networks import PROJECTIONS

SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
  row INTEGER NOT NULL, sample_id TEXT PRIMARY KEY, source TEXT, key TEXT, path TEXT, fingerprint TEXT,
  projection TEXT, projection_method TEXT, split TEXT, targets BLOB, mask BLOB,
  bit_depth INTEGER, photometric TEXT, height INTEGER, width INTEGER
);
CREATE TABLE IF NOT EXISTS rejections (path TEXT, reason TEXT);
"""


@dataclass
class IndexReport:
    indexed: int = 0
    reused: int = 0
    decoded: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    by_projection: Counter = field(default_factory=Counter)
    by_split: Counter = field(default_factory=Counter)
    by_label: Counter = field(default_factory=Counter)
    unmapped: Counter = field(default_factory=Counter)


def patient_split(salt: bytes, patient_key: str, val: float, test: float) -> str:
    """Deterministic patient-level split: every image of a patient lands in the same split."""
    u = int.from_bytes(hashlib.sha256(salt + patient_key.encode()).digest()[:8], "big") / 2**64
    return "test" if u < test else ("val" if u < test + val else "train")


def _fingerprint(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def decode(record: Record) -> Pixels:
    if record.reader == "dicom":
        import pydicom

        try:
            ds = pydicom.dcmread(record.path)
            return read_dicom_pixels(ds)
        except ImageReadError:
            raise
        except Exception as exc:  # pydicom raises many types for broken pixel data
            raise ImageReadError(f"cannot decode DICOM pixel data ({type(exc).__name__}: {exc})") from None
    return read_raster(record.path, record.bits_stored)


def _connect(cfg: SiteConfig) -> sqlite3.Connection:
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(cfg.index_path)
    con.executescript(SCHEMA)
    return con


def prepare_site(cfg: SiteConfig) -> IndexReport:
    """Scan, split, decode (once) and index every source of the site."""
    salt = cfg.secret_salt()
    report = IndexReport()
    con = _connect(cfg)
    old = {r[0]: (r[1], r[2]) for r in con.execute("SELECT sample_id, fingerprint, row FROM samples")}
    old_pixels_path = cfg.cache_dir / "pixels.npy"
    old_pixels = np.load(old_pixels_path, mmap_mode="r") if old_pixels_path.exists() and old else None
    rows, pixels, seen = [], [], set()
    for src_cfg in cfg.sources:
        source = make_source(src_cfg, cfg.label_set)
        for item in source.scan():
            if isinstance(item, Rejection):
                report.rejected.append(item)
                continue
            sample_id = hashlib.sha256(salt + f"{item.source}/{item.key}".encode()).hexdigest()[:20]
            if sample_id in seen:
                report.rejected.append(Rejection(str(item.path), f"duplicate image id {item.key!r} in source {item.source}"))
                continue
            try:
                fp = _fingerprint(item.path)
            except OSError as exc:
                report.rejected.append(Rejection(str(item.path), f"listed image cannot be opened: {exc.strerror or exc}"))
                continue
            prev = old.get(sample_id)
            if prev and prev[0] == fp and old_pixels is not None and prev[1] < len(old_pixels):
                px, meta = np.asarray(old_pixels[prev[1]]), None
                report.reused += 1
            else:
                try:
                    decoded = decode(item)
                except ImageReadError as exc:
                    report.rejected.append(Rejection(str(item.path), str(exc)))
                    continue
                px, meta = resize_square(decoded.array, cfg.image_size), decoded
                report.decoded += 1
            seen.add(sample_id)
            split = patient_split(salt, item.patient_key, cfg.val_fraction, cfg.test_fraction)
            rows.append((item, sample_id, fp, split, meta))
            pixels.append(px)
        report.unmapped.update(source.unmapped)
    old_meta = {r[0]: r[1:] for r in con.execute("SELECT sample_id, bit_depth, photometric, height, width FROM samples")}
    with con:
        con.execute("DELETE FROM samples")
        con.execute("DELETE FROM rejections")
        for i, (item, sample_id, fp, split, meta) in enumerate(rows):
            bd, ph, h, w = (meta.bit_depth, meta.photometric, *meta.array.shape) if meta else old_meta[sample_id]
            con.execute(
                "INSERT INTO samples VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (i, sample_id, item.source, item.key, str(item.path), fp, item.projection, item.projection_method,
                 split, item.targets.astype(np.float32).tobytes(), item.mask.astype(np.float32).tobytes(),
                 bd, ph, h, w),
            )
            report.by_projection[item.projection or "unknown"] += 1
            report.by_split[split] += 1
        con.executemany("INSERT INTO rejections VALUES (?,?)", [(r.path, r.reason) for r in report.rejected])
    con.close()
    del old_pixels
    cfg.cache_dir.mkdir(parents=True, exist_ok=True)
    arr = np.stack(pixels) if pixels else np.zeros((0, cfg.image_size, cfg.image_size), np.uint8)
    tmp = cfg.cache_dir / "pixels.tmp.npy"
    np.save(tmp, arr)
    tmp.replace(old_pixels_path)
    (cfg.cache_dir / "cache.json").write_text(json.dumps({"n": len(arr), "image_size": cfg.image_size}))
    report.indexed = len(rows)
    from shared_models.ontology import load_label_set

    classes = load_label_set(cfg.label_set).classes
    for item, *_ in rows:
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
    idx = np.array([r[0] for r in rows], dtype=np.int64)
    proj = np.array([PROJECTIONS.index(r[1]) if r[1] in PROJECTIONS else -1 for r in rows], dtype=np.int64)
    tg = np.stack([np.frombuffer(r[2], np.float32) for r in rows]) if rows else np.zeros((0, 0), np.float32)
    mk = np.stack([np.frombuffer(r[3], np.float32) for r in rows]) if rows else np.zeros((0, 0), np.float32)
    return SiteData(np.ascontiguousarray(all_px[idx]), proj, tg, mk)
