"""Helpers shared by benchmarks: result records, synthetic consortia, centralised training and evaluation."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from client.index import SiteData
from client.site_config import load_site_config
from client.training import predict, train_local
from shared_models.device import select_device
from shared_models.metrics import per_class_metrics, summarise
from shared_models.networks import build_model

RESULTS = Path(__file__).resolve().parent / "results"
REPO = RESULTS.parents[1]


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise RuntimeError(f"benchmarks record the commit they measured: `git {' '.join(args)}` failed in {REPO} "
                           f"({exc}); run them from a git checkout") from exc


def tree_changes() -> list[str]:
    """Tracked files changed against HEAD, outside benchmarks/results/ (which a benchmark run itself writes)."""
    lines = _git("status", "--porcelain", "--untracked-files=no").splitlines()
    return [x[3:] for x in lines if not x[3:].startswith("benchmarks/results/")]


def head_commit() -> str:
    """The commit checked out (what a record says it measured)."""
    return _git("rev-parse", "HEAD").strip()


def record(figures: dict, command: str, seeds: list[int] | None = None) -> dict:
    """A benchmark's record: its figures, the command, date, machine, and the commit it measured (``tree_dirty``
    when tracked files differed from it: ``make bench`` refuses that unless ``--allow-dirty``)."""
    out = {
        **figures,
        "command": command,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "synthetic": figures.get("synthetic", True),
        "commit": head_commit(),
        "tree_dirty": bool(tree_changes()),
    }
    if seeds is not None:
        out["seeds"] = [int(s) for s in seeds]
    return out


def seed_interval(values: list[float]) -> dict:
    """Mean over seeds and its two-sided 95 % Student-t interval (``None`` with one seed), and the values."""
    from scipy import stats

    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("seed_interval: no values (one per seed expected)")
    mean = float(np.mean(vals))
    if len(vals) < 2:
        return {"mean": mean, "ci95": None, "values": vals}
    half = float(stats.t.ppf(0.975, len(vals) - 1) * np.std(vals, ddof=1) / np.sqrt(len(vals)))
    return {"mean": mean, "ci95": [mean - half, mean + half], "values": vals}


def fmt_interval(summary: dict, digits: int = 3) -> str:
    """``mean [low, high] (n seeds)`` for the markdown table; ``mean (1 seed)`` without an interval."""
    n = len(summary["values"])
    if summary["ci95"] is None:
        return f"{summary['mean']:.{digits}f} (1 seed)"
    lo, hi = summary["ci95"]
    return f"{summary['mean']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}] ({n} seeds)"


def site_configs(sites_dir: Path) -> list:
    return [load_site_config(p) for p in sorted(Path(sites_dir).glob("*/site.toml"))]


def concat(parts: list[SiteData]) -> SiteData:
    fields = ("pixels", "projection", "targets", "mask")
    return SiteData(*[np.concatenate([getattr(p, k) for p in parts]) for k in fields])


def train_model(data: SiteData, epochs: int, preset: str, num_classes: int, lr: float, seed: int = 0,
                lr_at=None, image_size: int | None = None):
    """A centralised model, one ``train_local`` call (a fresh AdamW) per epoch as a site's round; ``lr_at(epoch)``
    (0-based) gives each epoch's learning rate when the compared federated run follows a schedule."""
    torch.manual_seed(seed)
    model = build_model(preset, num_classes, image_size=image_size)
    t0 = time.perf_counter()
    for e in range(epochs):
        train_local(model, data, 1, lr if lr_at is None else lr_at(e), 32, select_device(), seed=seed * 1000 + e)
    return model, time.perf_counter() - t0


def evaluate(model, data: SiteData) -> dict[str, float]:
    c = model.num_classes
    probs, _ = predict(model, data, select_device())
    return summarise(per_class_metrics(data.targets[:, :c], probs, data.mask[:, :c]))


def write_results(updates: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "latest.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results.update(updates)
    path.write_text(json.dumps(results, indent=1, default=float))
    (RESULTS / "latest.md").write_text(markdown(results))
    return path


def markdown(results: dict) -> str:
    lines = ["# fedchest benchmarks (latest run)", "",
             "Synthetic data unless a benchmark is marked (small real data): these figures measure the machinery on "
             "this machine; none of them is a clinical result.", "",
             "| benchmark | figure | value | command | date | cores | commit |", "|---|---|---|---|---|---|---|"]
    for key, res in sorted(results.items()):
        name = key if res.get("synthetic", True) else f"{key} (small real data)"
        commit = str(res.get("commit") or "not recorded")[:10] + (" (dirty)" if res.get("tree_dirty") else "")
        for k, v in res.get("headline", {}).items():
            val = f"{v:.4g}" if isinstance(v, float) else str(v)
            lines.append(f"| {name} | {k} | {val} | `{res['command']}` | {res['date']} | {res['cores']} | {commit} |")
    return "\n".join(lines) + "\n"
