"""data_path: raw decode rate, first-pass index + cache rate, and cached epoch rate (samples/s), for
PadChest-style 16-bit PNGs and Open-i-style DICOMs, at the demo image size and at 224 px.

raw decode   = read + decode + resize each listed file, nothing else (the floor for a first pass), in one
               thread like prepare_site's default; `raw_decode_2_threads_per_s` shows what threads would give
first pass   = `prepare_site` on an empty work dir: scan tables, split, decode, resize, write index and cache
cached epoch = one epoch of training batches (uint8 cache -> normalised float tensors, batch 32) from the cache
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import record
from client.index import decode, load_split, prepare_site
from client.site_config import load_site_config
from client.sources import Record, make_source
from client.synth import synthesize_site
from client.training import _batch


def _records(cfg) -> list[Record]:
    return [r for s in cfg.sources for r in make_source(s, cfg.label_set).scan() if isinstance(r, Record)]


def _rates(toml: Path, repeats: int = 3) -> dict[str, float]:
    """Best of ``repeats`` for each phase (the machine is noisy); dirty pages are flushed before each timing
    so that one phase's writes are not paid by the next."""
    cfg = load_site_config(toml)
    records = _records(cfg)
    n = len(records)
    workers = 1  # prepare_site's default; threads are measured separately below
    raw, raw_threads = [], []
    for _ in range(repeats):
        os.sync()
        t0 = time.perf_counter()
        for r in records:
            decode(r, cfg.image_size, cfg.min_image_size)
        raw.append(n / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda r: decode(r, cfg.image_size, cfg.min_image_size), records))
        raw_threads.append(n / (time.perf_counter() - t0))
    first = []
    for _ in range(repeats):
        shutil.rmtree(cfg.work_dir / "cache", ignore_errors=True)
        cfg.index_path.unlink(missing_ok=True)
        os.sync()
        t0 = time.perf_counter()
        report = prepare_site(cfg, workers)
        first.append(report.indexed / (time.perf_counter() - t0))
    os.sync()
    t0 = time.perf_counter()
    again = prepare_site(cfg, workers)
    rescan = again.indexed / (time.perf_counter() - t0)
    epochs = []
    for _ in range(3):
        t0 = time.perf_counter()
        data = load_split(cfg, None)
        order = np.random.default_rng(0).permutation(len(data))
        for s in range(0, len(data), 32):
            x, p, y, m = _batch(data, order[s:s + 32], torch.device("cpu"), 30)
        epochs.append(len(data) / (time.perf_counter() - t0))
    raw_rate, first_rate = max(raw), max(first)
    return {
        "images": n, "workers": workers, "raw_decode_per_s": raw_rate, "raw_decode_2_threads_per_s": max(raw_threads),
        "first_pass_per_s": first_rate,
        "first_pass_slowdown": raw_rate / first_rate - 1.0, "unchanged_rescan_per_s": rescan,
        "cached_epoch_per_s": max(epochs),
    }


def run(out: Path, images: int = 600, sizes: tuple[int, ...] = (64, 224)) -> dict:
    sites = {}
    for size in sizes:
        for fmt in ("padchest", "openi"):
            toml = out / f"{fmt}-{size}" / "site.toml"
            if not toml.exists():
                synthesize_site(toml.parent, fmt, f"bench-{fmt}", n_images=images, image_size=size, seed=0)
            sites[f"{fmt}@{size}px"] = toml
    os.sync()  # the generator's writes must not be flushed to disk while we time reads
    time.sleep(2)
    figures = {name: _rates(toml) for name, toml in sites.items()}
    worst_slowdown = max(v["first_pass_slowdown"] for v in figures.values())
    min_cached = min(v["cached_epoch_per_s"] for v in figures.values())
    headline = {f"{k} {m}": v[m] for k, v in figures.items() for m in ("raw_decode_per_s", "first_pass_per_s",
                                                                       "cached_epoch_per_s")}
    headline["worst first-pass slowdown vs raw decode"] = worst_slowdown
    return {"data_path": record({"by_site": figures, "worst_first_pass_slowdown": worst_slowdown,
                                 "min_cached_epoch_per_s": min_cached, "headline": headline},
                                f"python -m benchmarks.run --only data_path ({images} images per site)")}
