"""The label co-occurrence counts a site sends for the consortium's label graph (TRCGL-Net's ML-GCN part; the server
sums them: server/label_graph.py).

Without noise: the training split's pair counts M_ij (images where classes i and j are both annotated positive),
each below the site's min_count sent as 0.

With ``label-graph-noise = z`` (> 0): a Gaussian-mechanism release. Each image's contribution is bounded first:
an image with more than ``label-graph-max-labels`` (L) positive classes keeps a random L of them for these counts,
so one image changes at most L(L-1)/2 off-diagonal pairs by 1 and the L2 sensitivity of the upper triangle is
sqrt(L(L-1)/2). Gaussian noise of standard deviation z x that sensitivity is added to each upper-triangle pair
count, which is mirrored, rounded and clipped at 0 (post-processing); the diagonal (per-class positives) is the
site's positive count, which leaves anyway as ``train_pos``. The release is drawn once per run and re-sent
unchanged in later rounds, so it is charged to the site's privacy ledger once: as one step of the Gaussian
mechanism at noise multiplier z and sampling rate 1, under the site's epsilon budget. The noise is drawn from the
operating system's entropy, never from the run's seed, so nobody outside the site can subtract it.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from typing import Any

import numpy as np

from client.index import SiteData
from client.local_round import charged
from client.privacy import PolicyRefusal
from client.site_config import SiteConfig
from shared_models.labelgraph import cooccurrence

HEAD = "label-graph-counts"  # the privacy ledger's name for this release
DEFAULT_MAX_LABELS = 6


def bounded_labels(y: np.ndarray, max_labels: int, rng: np.random.Generator) -> np.ndarray:
    """0/1 labels (n, C) with at most ``max_labels`` positives per image (a random subset where there are more)."""
    out = y.copy()
    for i in np.flatnonzero(out.sum(1) > max_labels):
        pos = np.flatnonzero(out[i])
        out[i, rng.choice(pos, len(pos) - max_labels, replace=False)] = 0
    return out


def pair_sensitivity(max_labels: int) -> float:
    """L2 sensitivity of the upper-triangle pair counts to one image with at most ``max_labels`` positives."""
    return math.sqrt(max_labels * (max_labels - 1) / 2)


def noisy_pairs(y: np.ndarray, noise_multiplier: float, max_labels: int, rng: np.random.Generator) -> np.ndarray:
    """The Gaussian-mechanism release of the pair counts (C, C), diagonal = per-class positives (not noised)."""
    positives = y.sum(0)
    yb = bounded_labels(y, max_labels, rng)
    m = (yb.T @ yb).astype(np.float64)
    c = m.shape[0]
    iu = np.triu_indices(c, k=1)
    m[iu] += rng.normal(0.0, noise_multiplier * pair_sensitivity(max_labels), len(iu[0]))
    upper = np.clip(np.rint(m[iu]), 0, None)
    out = np.zeros((c, c), np.int64)
    out[iu] = upper
    out = out + out.T
    np.fill_diagonal(out, positives)
    return out


def site_pair_counts(site: SiteConfig, data: SiteData, num_classes: int, config: Mapping[str, Any]) -> list[int]:
    """The flattened (C x C) counts this site sends this round, under its small-count rule and policy."""
    k = site.privacy.suppress
    noise = float(config.get("label-graph-noise", 0.0))
    if noise <= 0:
        if site.privacy.require_dp:
            raise PolicyRefusal("site policy requires differential privacy (require_dp = true) and this run sends "
                                "label co-occurrence counts without noise; set label-graph-noise > 0")
        pairs, _ = cooccurrence(data.targets[:, :num_classes], data.mask[:, :num_classes])
        return [int(k(float(v))) for v in pairs.reshape(-1)]
    if noise < site.privacy.min_noise_multiplier:
        raise PolicyRefusal(f"label-graph-noise {noise:g} is below the site policy's minimum noise multiplier "
                            f"{site.privacy.min_noise_multiplier:g}")
    max_labels = int(config.get("label-graph-max-labels", DEFAULT_MAX_LABELS))
    run = str(config.get("run-id", ""))
    cache = site.work_dir / "label-graph" / f"{run or 'no-run-id'}-z{noise:g}-L{max_labels}.npy"
    if cache.exists():  # the same release every round: no further privacy cost
        return [int(k(float(v))) for v in np.load(cache).reshape(-1)]
    y = ((data.targets[:, :num_classes] > 0.5) & (data.mask[:, :num_classes] > 0)).astype(np.int64)
    release, _ = charged(site, config, noise, 1.0, 1, HEAD,
                         lambda: noisy_pairs(y, noise, max_labels, np.random.default_rng(secrets.randbits(128))),
                         what="releasing the label co-occurrence counts", declines="send them")
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, release)
    return [int(k(float(v))) for v in release.reshape(-1)]
