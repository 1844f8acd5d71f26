"""The site's local index (SQLite) and decode-once pixel cache.

`prepare_site` scans every source, assigns leak-free patient-level splits from a salted hash of the
patient id (or takes a source's official split), decodes each image once into a uint8 cache at the site's
image size, and records everything it could not use with the reason. A file whose size or mtime changed
(or, with `verify_content`, whose bytes changed) is decoded again; unchanged files come from the cache.
Bad files never stop a scan: any error while reading, parsing or decoding one file is a rejection of that file
with its reason (client.file_errors draws the line), and every valid file around it is still indexed; only errors of
the site itself (site.toml, a missing data root, a full disk) stop it. The index and cache never leave the site.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from client.file_errors import GuardedScan, quiet_reader_warnings, reason_for
from client.imaging import ImageReadError, read_raster, resize_square
from client.site_config import SiteConfig, SiteConfigError
from client.sources import Note, Record, Rejection, harmonise_view, make_source
from shared_models.ontology import PROJECTIONS, load_label_set
from shared_models.progress import Progress

SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
  row INTEGER NOT NULL, sample_id TEXT PRIMARY KEY, source TEXT, key TEXT, path TEXT, fingerprint TEXT,
  projection TEXT, projection_method TEXT, split TEXT, targets BLOB, mask BLOB,
  bit_depth INTEGER, photometric TEXT, height INTEGER, width INTEGER, vendor TEXT
);
CREATE TABLE IF NOT EXISTS rejections (path TEXT, reason TEXT);
CREATE TABLE IF NOT EXISTS boxes (sample_id TEXT, label TEXT, x REAL, y REAL, w REAL, h REAL);
CREATE TABLE IF NOT EXISTS reports (sample_id TEXT PRIMARY KEY, text TEXT);
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
    boxes: int = 0  # ground-truth boxes joined to indexed images
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


@dataclass
class Decoded:
    pixels: np.ndarray  # (S, S) uint8
    meta: tuple  # bit depth, photometric, height, width, vendor
    notes: list[str]
    view: object = None  # DICOM ViewPosition, when the record defers its projection to the header
    patient: str | None = None  # DICOM PatientID, when the record defers its patient key to the header


def decode(record: Record, size: int, min_size: int = 32) -> Decoded:
    """Decode and resize one image; raises ImageReadError with the reason."""
    if record.reader == "dicom":
        from client import dicom_io  # pydicom: imported when a site has DICOM to read

        px, ds = dicom_io.decode(record.path, min_size)
        view, patient = ds.get("ViewPosition"), str(ds.get("PatientID", "") or "") or None
    else:
        px, view, patient = read_raster(record.path, record.bits_stored, min_size), None, None
    meta = (px.bit_depth, px.photometric, *px.array.shape, px.vendor or record.vendor)
    notes = [n for n in px.notes if "inferred" in n or "RGB" in n]
    return Decoded(resize_square(px.array, size), meta, notes, view, patient)


def file_boxes(item: Record, height: int, width: int) -> list[tuple[str, float, float, float, float]]:
    """The record's boxes in pixels of the decoded file (NIH's box list refers to the 1024 px release PNGs, which
    sites often keep downsampled)."""
    if item.box_frame is None or not (height and width):
        return list(item.boxes)
    fy, fx = height / item.box_frame[0], width / item.box_frame[1]
    return [(label, x * fx, y * fy, w * fx, h * fy) for label, x, y, w, h in item.boxes]


def _connect(cfg: SiteConfig) -> sqlite3.Connection:
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(cfg.index_path)
    cols = {r[1] for r in con.execute("PRAGMA table_info(samples)")}
    if cols and "vendor" not in cols:  # index from an older fedchest: rebuild it (the cache is keyed separately)
        con.executescript("DROP TABLE samples; DROP TABLE IF EXISTS rejections; DROP TABLE IF EXISTS boxes;")
    con.executescript(SCHEMA)
    return con


def require_roots(cfg: SiteConfig) -> None:
    """A source whose data root is not a folder is an error of the site (a wrong path, an unmounted share),
    not a rejection: the scan stops before anything is indexed."""
    for i, src in enumerate(cfg.sources):
        if not src.root.is_dir():
            raise SiteConfigError(f"{cfg.path}: sources[{i}].root {src.root} is not a folder (data root missing or "
                                  "not mounted?)")


def _mapping_report(source, classes: tuple[str, ...]) -> dict:
    annotated = source.smap.annotated
    return {
        "mapped": {t: [classes[i] for i in idx] for t, idx in sorted(source.mapped.items())},
        "unmapped": dict(sorted(source.unmapped.items(), key=lambda kv: -kv[1])),
        "annotated_classes": [c for c, a in zip(classes, annotated) if a] if source.kind != "dicom" else list(classes),
        "not_annotated": [c for c, a in zip(classes, annotated) if not a] if source.kind != "dicom" else [],
    }


def prepare_site(cfg: SiteConfig, workers: int = 1) -> IndexReport:
    """Scan, split, decode (once) and index every source of the site.

    ``workers`` > 1 decodes in threads: measured here, that helps large PNGs and hurts DICOM (pydicom holds
    the GIL), so the default is sequential."""
    salt = cfg.secret_salt()
    classes = load_label_set(cfg.label_set).classes
    report = IndexReport()
    con = _connect(cfg)
    old = {r[0]: r[1:] for r in con.execute(
        f"SELECT sample_id, fingerprint, row, projection, projection_method, split, {', '.join(META_COLUMNS)} "
        "FROM samples")}
    pixels_path = cfg.cache_dir / "pixels.npy"
    old_pixels = np.load(pixels_path, mmap_mode="r") if pixels_path.exists() and old else None

    # 1. scan: tables, labels, fingerprints (cheap, sequential)
    entries: list[tuple[Record, str, str, tuple | None]] = []
    seen_ids: set[str] = set()
    require_roots(cfg)
    scanning = Progress(f"check {cfg.name}: scan", None, "files")  # local stderr only (shared_models/progress.py)
    for src_cfg in cfg.sources:
        source = make_source(src_cfg, cfg.label_set)
        listed: set[str] = set()
        scan = GuardedScan(source.scan(), str(src_cfg.root))
        for item in scan:
            scanning.update(1, rejected=len(report.rejected))
            listed.add(os.path.normpath(item.path))
            if isinstance(item, Rejection):
                report.rejected.append(item)
                continue
            sample_id = hashlib.sha256(salt + f"{item.source}/{item.key}".encode()).hexdigest()[:20]
            if sample_id in seen_ids:
                report.rejected.append(Rejection(str(item.path),
                                                 f"duplicate image id {item.key!r} in source {item.source}"))
                continue
            try:
                fp = fingerprint(item.path, cfg.verify_content)
            except Exception as exc:
                report.rejected.append(Rejection(str(item.path), reason_for(exc)))
                continue
            seen_ids.add(sample_id)
            prev = old.get(sample_id)
            reuse = prev is not None and prev[0] == fp and old_pixels is not None and prev[1] < len(old_pixels)
            entries.append((item, sample_id, fp, prev if reuse else None))
        if scan.failure:
            report.rejected.append(Rejection(scan.where, scan.failure))
        unlisted = (f"image on disk that no {source.kind} table lists (not indexed)" if not scan.failure else
                    f"not indexed: the scan of its {source.kind} source stopped early (see {scan.where})")
        for path in source.candidates():
            if os.path.normpath(path) not in listed:
                report.rejected.append(Rejection(str(path), unlisted))
        report.notes += source.notes
        report.label_mapping[f"{source.kind}:{src_cfg.root.name}"] = _mapping_report(source, classes)
    scanning.close()

    # 2. decode what is new or changed, in threads (Pillow and the JPEG decoders release the GIL)
    def work(entry) -> Decoded | str:
        item, _sid, _fp, prev = entry
        if prev is not None:
            return Decoded(np.asarray(old_pixels[prev[1]]), tuple(prev[5:]), [])
        try:
            return decode(item, cfg.image_size, cfg.min_image_size)
        except Exception as exc:  # the per-file guard: any error of this file is its rejection
            return reason_for(exc)

    pixels = np.empty((len(entries), cfg.image_size, cfg.image_size), np.uint8)
    rows = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, quiet_reader_warnings():
        results = map(work, entries) if workers <= 1 else pool.map(work, entries)
        decoding = Progress(f"check {cfg.name}: decode", len(entries), "files")
        for (item, sample_id, fp, prev), result in zip(entries, results):
            decoding.update(1, rejected=len(report.rejected) + isinstance(result, str))
            if isinstance(result, str):
                report.rejected.append(Rejection(str(item.path), result))
                continue
            if prev is not None:
                projection, method, split = prev[2], prev[3], prev[4]
                report.reused += 1
            else:
                projection, method = item.projection, item.projection_method
                if projection is None and result.view:
                    projection = harmonise_view(result.view)
                    method = "metadata" if projection else method
                    if projection is None:
                        from client.dicom_io import shown

                        view = shown(result.view)
                        report.notes.append(Note(str(item.path), f"ViewPosition {view!r} has no PA/AP/lateral meaning; "
                                                                  "routed as unknown"))
                patient = item.patient_key or result.patient or item.key
                split = item.split or patient_split(salt, patient, cfg.val_fraction, cfg.test_fraction)
                report.decoded += 1
                report.notes += [Note(str(item.path), n) for n in result.notes]
            pixels[len(rows)] = result.pixels
            rows.append((item, sample_id, fp, projection, method, split, result.meta))
        decoding.close()

    # 3. write the index and the cache
    with con:
        for table in ("samples", "rejections", "boxes", "reports"):
            con.execute(f"DELETE FROM {table}")
        con.executemany("INSERT INTO boxes VALUES (?,?,?,?,?,?)",
                        [(r[1], *b) for r in rows for b in file_boxes(r[0], r[6][2], r[6][3])])
        con.executemany(
            "INSERT INTO samples VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [(i, sid, it.source, it.key, str(it.path), fp, proj, method, split,
              it.targets.astype(np.float32).tobytes(), it.mask.astype(np.float32).tobytes(), *meta)
             for i, (it, sid, fp, proj, method, split, meta) in enumerate(rows)],
        )
        con.executemany("INSERT INTO rejections VALUES (?,?)", [(r.path, r.reason) for r in report.rejected])
        con.executemany("INSERT INTO reports VALUES (?,?)", [(r[1], r[0].report) for r in rows if r[0].report])
    con.close()
    old_pixels = None  # close the memory map (work() holds it in its closure) before pixels.npy is replaced
    cfg.cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cfg.cache_dir / "pixels.tmp.npy"
    np.save(tmp, pixels[: len(rows)])
    tmp.replace(pixels_path)
    (cfg.cache_dir / "cache.json").write_text(json.dumps({"n": len(rows), "image_size": cfg.image_size}))
    report.indexed = len(rows)
    for item, _sid, _fp, projection, method, split, meta in rows:
        report.by_source[item.source] += 1
        report.by_projection[projection or "unknown"] += 1
        report.by_projection_method[method] += 1
        report.by_split[split] += 1
        report.bit_depths[str(meta[0])] += 1
        report.photometric[meta[1]] += 1
        report.vendors[meta[4] or "unknown"] += 1
        report.sizes.append((meta[2], meta[3]))
        report.boxes += len(item.boxes)
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
    reports: tuple[str, ...] = ()  # per image, the source's report text ('' where none); stays at the site
    rows: np.ndarray | None = None  # per image, its row in the site index (a local case number, not an identifier)

    def __len__(self) -> int:
        return len(self.projection)

    def class_counts(self, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-class annotated positives and annotated images over the first ``num_classes`` classes."""
        mask = self.mask[:, :num_classes]
        return (self.targets[:, :num_classes] * mask).sum(0), mask.sum(0)


def load_split(cfg: SiteConfig, split: str | None) -> SiteData:
    """Rows of one split ('train', 'val', 'test' or None for all) from the index and cache. Projections the
    site does not trust (CNN-inferred ones unless `trust_cnn_projection`, and every projection of a source
    with `trust_projection = false`) come back as unknown (-1), for the router to decide."""
    if not cfg.index_path.exists():
        raise FileNotFoundError(f"{cfg.path}: site not indexed yet; run `fedchest-site check --config {cfg.path}`")
    con = sqlite3.connect(cfg.index_path)
    has_reports = con.execute("SELECT 1 FROM sqlite_master WHERE name = 'reports'").fetchone() is not None
    q = ("SELECT row, projection, targets, mask, projection_method, source, "
         + ("COALESCE(reports.text, '')" if has_reports else "''")
         + " FROM samples" + (" LEFT JOIN reports USING (sample_id)" if has_reports else "")
         + (" WHERE split = ?" if split else "") + " ORDER BY row")
    rows = con.execute(q, (split,) if split else ()).fetchall()
    con.close()
    all_px = np.load(cfg.cache_dir / "pixels.npy", mmap_mode="r")
    n_classes = len(load_label_set(cfg.label_set))
    idx = np.array([r[0] for r in rows], dtype=np.int64)
    def trusted(method: str, source: str) -> bool:
        return (method != "cnn" or cfg.trust_cnn_projection) and source not in cfg.untrusted_projection_sources

    proj = np.array([PROJECTIONS.index(r[1]) if r[1] in PROJECTIONS and trusted(r[4], r[5]) else -1 for r in rows],
                    dtype=np.int64)
    tg = np.stack([np.frombuffer(r[2], np.float32) for r in rows]) if rows else np.zeros((0, n_classes), np.float32)
    mk = np.stack([np.frombuffer(r[3], np.float32) for r in rows]) if rows else np.zeros((0, n_classes), np.float32)
    return SiteData(np.ascontiguousarray(all_px[idx]), proj, tg, mk, tuple(r[6] for r in rows), idx)


def sample_paths(cfg: SiteConfig, rows: np.ndarray | None) -> list[str]:
    """The image path of each index row in ``rows`` (as ``SiteData.rows``), in that order; stays at the site."""
    con = sqlite3.connect(cfg.index_path)
    paths = dict(con.execute("SELECT row, path FROM samples").fetchall())
    con.close()
    return [paths[int(r)] for r in (rows if rows is not None else ())]
