"""The label co-occurrence counts a site sends for the consortium's label graph (TRCGL-Net's ML-GCN part; the server
sums them: server/label_graph.py).

Two (C, C) matrices over the training split (shared_models/labelgraph.py ``cooccurrence``): M_ij, images positive
for both i and j, and D_ij, images positive for i on which j is annotated (diagonals: N_i, positives of i). The
server's adjacency is M / D, so a pair is estimated over the same images (both classes annotated) even where sites
annotate different classes.

Without noise (a run without DP): the exact counts, each below the site's min_count sent as 0.

With ``label-graph-noise = z`` (> 0; required under DP): ONE Gaussian-mechanism release of both matrices. Each
image's contribution is bounded first: an image with more than ``label-graph-max-labels`` (L) positive classes keeps
a random L of them. One image then changes at most L(L-1)/2 pairs of M's upper triangle, L(C-1) off-diagonal entries
of D and L diagonal entries, each by 1, so the released vector [M upper triangle, D off the diagonal, N] has L2
sensitivity sqrt(L(L-1)/2 + L(C-1) + L), and every entry gets Gaussian noise of standard deviation z x that
sensitivity; M is mirrored, both are rounded and clipped at 0 and M_ij <= D_ij is restored (post-processing). The
release is drawn once per run and re-sent unchanged in later rounds, so it is charged to the site's privacy ledger
once: as one step of the Gaussian mechanism at noise multiplier z and sampling rate 1. The noise and the label
subsets come from the operating system's CSPRNG, never from the run's seed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from client.dp_release import bounded_labels, positives_and_annotated
from client.index import SiteData
from client.local_round import charged
from client.privacy import PolicyRefusal
from client.site_config import SiteConfig
from shared_models.labelgraph import cooccurrence
from shared_models.privacy.randomness import secure_numpy_generator

HEAD = "label-graph-counts"  # the privacy ledger's name for this release
DEFAULT_MAX_LABELS = 6


def pair_sensitivity(max_labels: int, num_classes: int) -> float:
    """L2 sensitivity of [M upper triangle, D off-diagonal, N] to one image with at most ``max_labels`` positives."""
    return math.sqrt(max_labels * (max_labels - 1) / 2 + max_labels * (num_classes - 1) + max_labels)


def noisy_pairs(y: np.ndarray, annotated: np.ndarray, noise_multiplier: float, max_labels: int,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The Gaussian-mechanism release (M, D) of 0/1 annotated positives ``y`` and 0/1 ``annotated`` (n, C)."""
    yb = bounded_labels(y, max_labels, rng)
    m, d = (a.astype(np.float64) for a in cooccurrence(yb, annotated))
    c = m.shape[0]
    std = noise_multiplier * pair_sensitivity(max_labels, c)
    iu = np.triu_indices(c, k=1)
    off = ~np.eye(c, dtype=bool)
    diag = np.diag(d) + rng.normal(0.0, std, c)
    upper = m[iu] + rng.normal(0.0, std, len(iu[0]))
    d[off] += rng.normal(0.0, std, int(off.sum()))
    out_m = np.zeros((c, c))
    out_m[iu] = upper
    out_m = out_m + out_m.T
    np.fill_diagonal(out_m, diag)
    np.fill_diagonal(d, diag)
    out_d = np.clip(np.rint(d), 0, None).astype(np.int64)
    out_m = np.minimum(np.clip(np.rint(out_m), 0, None).astype(np.int64), np.minimum(out_d, out_d.T))
    return out_m, out_d


def site_pair_counts(site: SiteConfig, data: SiteData, num_classes: int, config: Mapping[str, Any]
                     ) -> tuple[list[int], list[int]]:
    """The flattened (C x C) M and D this site sends this round, under its small-count rule and policy."""
    k = site.privacy.suppress
    noise = float(config.get("label-graph-noise", 0.0))
    y, annotated = positives_and_annotated(data.targets[:, :num_classes], data.mask[:, :num_classes])
    if noise <= 0:
        if site.privacy.require_dp or bool(config.get("dp", False)):
            raise PolicyRefusal("this run sends label co-occurrence counts without noise and the site trains under "
                                "differential privacy; set label-graph-noise > 0")
        m, d = cooccurrence(y, annotated)
        return [int(k(float(v))) for v in m.reshape(-1)], [int(k(float(v))) for v in d.reshape(-1)]
    if noise < site.privacy.min_noise_multiplier:
        raise PolicyRefusal(f"label-graph-noise {noise:g} is below the site policy's minimum noise multiplier "
                            f"{site.privacy.min_noise_multiplier:g}")
    max_labels = int(config.get("label-graph-max-labels", DEFAULT_MAX_LABELS))
    run = str(config.get("run-id", ""))
    cache = site.work_dir / "label-graph" / f"{run or 'no-run-id'}-z{noise:g}-L{max_labels}.npz"
    if not cache.exists():  # the same release every round: no further privacy cost
        (m, d), _ = charged(site, config, noise, 1.0, 1, HEAD,
                            lambda: noisy_pairs(y, annotated, noise, max_labels, secure_numpy_generator()),
                            what="releasing the label co-occurrence counts", declines="send them")
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, m=m, d=d)
    with np.load(cache) as saved:
        return [int(v) for v in saved["m"].reshape(-1)], [int(v) for v in saved["d"].reshape(-1)]
