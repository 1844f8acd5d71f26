"""Corrupted files for the scan fuzz test: truncation at a random offset, bit flips, header mangling (random bytes
written into a file's header), all from one seeded generator, and the bookkeeping that checks every file of a
scanned site was either indexed or rejected with a reason."""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np

from client import cli

OPERATIONS = ("truncate", "bitflip", "header")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")


def header_span(name: str, data: bytes) -> int:
    """Bytes from the start of a file that hold its header: DICOM up to Pixel Data, PNG its signature and IHDR,
    JPEG its first segments, NIfTI-1 its 348-byte header, a CSV its column line, an XML its declaration and root."""
    if name.endswith(".dcm"):
        at = data.find(b"\xe0\x7f\x10\x00")  # (7FE0,0010) Pixel Data, little endian
        return at if at > 0 else min(len(data), 1024)
    if name.endswith(".csv"):
        return max(8, data.find(b"\n"))
    return {".png": 33, ".jpg": 600, ".nii": 348, ".xml": 200}.get(Path(name).suffix, 256)


def mutate(data: bytes, name: str, rng: np.random.Generator) -> tuple[str, bytes]:
    """One corruption of ``data`` (the operation and the bytes). ``name`` picks the header span."""
    op = OPERATIONS[int(rng.integers(len(OPERATIONS)))]
    b = bytearray(data)
    if op == "truncate" or not b:
        return "truncate", bytes(b[: int(rng.integers(0, max(1, len(b))))])
    if op == "bitflip":
        for _ in range(int(rng.integers(1, 9))):
            i = int(rng.integers(len(b)))
            b[i] ^= 1 << int(rng.integers(8))
        return op, bytes(b)
    span = max(1, min(header_span(name, data), len(b)))
    for _ in range(int(rng.integers(1, 9))):
        i = int(rng.integers(span))
        n = min(int(rng.integers(1, 9)), len(b) - i)
        b[i:i + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    return op, bytes(b)


def corrupt_file(path: Path, rng: np.random.Generator, source: Path | None = None) -> str:
    """Write a corrupted copy of ``source`` (default: the file itself) at ``path``; a gzipped NIfTI has its header
    mangled inside the compression (truncation and bit flips hit the compressed bytes). Returns the operation."""
    data = (source or path).read_bytes()
    if path.name.endswith(".nii.gz") and rng.random() < 0.5:
        op, raw = mutate(gzip.decompress(data), "x.nii", rng)
        out = gzip.compress(raw)
    else:
        op, out = mutate(data, path.name, rng)
    path.write_bytes(out)
    return op


def variants(seeds: list[Path], folder: Path, per_seed: int, rng: np.random.Generator) -> tuple[list[Path], list[Path]]:
    """Each seed copied into ``folder`` unchanged, and ``per_seed`` corrupted variants of it beside it.
    Returns (valid copies, variants)."""
    folder.mkdir(parents=True, exist_ok=True)
    valid, bad = [], []
    for seed in seeds:
        suffix = "".join(seed.suffixes[-2:]) if seed.name.endswith(".nii.gz") else seed.suffix
        stem = seed.name[: -len(suffix)]
        shutil.copy(seed, folder / seed.name)
        valid.append(folder / seed.name)
        for k in range(per_seed):
            path = folder / f"{stem}_fz{k:03d}{suffix}"
            corrupt_file(path, rng, seed)
            bad.append(path)
    return valid, bad


def check(toml: Path, capsys, caplog) -> dict:
    """`fedchest-site check --json` in-process: it must end (0 or 2), print nothing on stderr and log no warning (no
    traceback; no reader's complaint, which can quote a header value) and print JSON."""
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        code = cli.main(["check", "--config", str(toml), "--json"])
    logged = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.WARNING]
    assert not logged, logged[:5]
    captured = capsys.readouterr()
    assert code in (0, 2), captured.err[-2000:]
    assert "Traceback" not in captured.err, captured.err[-3000:]
    assert not captured.err.strip(), captured.err[-3000:]  # no reader logs its complaints past the rejections
    return json.loads(captured.out)


def norm(path: Path | str) -> str:
    return os.path.normpath(str(path))


def indexed_paths(cfg) -> set[str]:
    con = sqlite3.connect(cfg.index_path)
    paths = {norm(p) for (p,) in con.execute("SELECT path FROM samples")}
    con.close()
    return paths


def image_files(roots: list[Path]) -> set[str]:
    return {norm(p) for root in roots for p in root.rglob("*")
            if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)}


def assert_accounted(files: set[str], indexed: set[str], rejected: dict[str, str]) -> None:
    """Every file is indexed or rejected with a non-empty reason."""
    lost = sorted(files - indexed - set(rejected))
    assert not lost, f"{len(lost)} files neither indexed nor rejected, e.g. {lost[:5]}"
    assert all(r.strip() for r in rejected.values())


def rejections(out: dict) -> dict[str, str]:
    reasons: dict[str, str] = {}
    for r in out["rejected"]:
        reasons[norm(r["path"])] = reasons.get(norm(r["path"]), "") + r["reason"]
    return reasons
