"""Decode once: a CT record read, converted to HU, windowed, resampled and cropped to a run's grid is stored in the
site's work dir (``ct-cache/<key>.npz``, float16) with its depth map, keyed by the files' paths, sizes and
modification times, the record's rescale and spacing, and the grid. A changed file or grid makes a new entry."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from client.ct.readers import read_dicom_series, read_nifti
from client.ct.snippets import find_snippets
from client.ct.sources import CTRecord
from client.ct.volume import CTSpec, DepthMap, Volume, VolumeError, preprocess


def read_record(rec: CTRecord) -> Volume:
    if len(rec.paths) == 1 and rec.paths[0].name.endswith((".nii", ".nii.gz")):
        return read_nifti(rec.paths[0], rec.slope, rec.intercept, rec.spacing)
    vol, _ = read_dicom_series(list(rec.paths))
    return vol


def cache_key(rec: CTRecord, spec: CTSpec) -> str:
    files = []
    for p in rec.paths:
        try:
            st = p.stat()
        except FileNotFoundError:
            raise VolumeError(f"{p}: file not found") from None
        files.append((str(p), st.st_size, st.st_mtime_ns))
    blob = json.dumps([files, rec.slope, rec.intercept, rec.spacing, spec.key()], default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class CTCache:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.hits = self.misses = 0

    def get(self, rec: CTRecord, spec: CTSpec) -> tuple[np.ndarray, DepthMap]:
        """The record on ``spec``'s grid (float32, [-1, 1]) and its depth map."""
        path = self.folder / f"{cache_key(rec, spec)}.npz"
        if path.exists():
            try:
                with np.load(path) as z:
                    scale, origin, grid_spacing, size = z["depth"]
                    x = z["x"].astype(np.float32)
                self.hits += 1
                return x, DepthMap(float(scale), int(origin), float(grid_spacing), int(size))
            except (OSError, ValueError, KeyError):
                path.unlink(missing_ok=True)  # a damaged entry is made again
        self.misses += 1
        x, depth = preprocess(read_record(rec), spec)
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, x=x.astype(np.float16),
                 depth=np.array([depth.scale, depth.origin, depth.grid_spacing, depth.size], np.float64))
        tmp.replace(path)
        return x, depth


def slice_index(rec: CTRecord, image: int, base: int = 1) -> int | None:
    """The Z index a report's "image ``image``" refers to: for a DICOM series the slice with that InstanceNumber;
    for a NIfTI volume the ``image - base``-th slice as stored."""
    if rec.instances:
        return rec.instances.index(image) if image in rec.instances else None
    z = image - base
    return z if z >= 0 else None


def snippet_targets(rec: CTRecord, depth: DepthMap) -> list[tuple[str, int]]:
    """(sentence, grid depth position) for each referenced sentence whose slice lands on the grid."""
    out = []
    for s in find_snippets(rec.report):
        z = slice_index(rec, s.image)
        if z is not None and depth.inside(z):
            out.append((s.text, int(round(depth.to_grid(z)))))
    return out
