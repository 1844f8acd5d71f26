"""What a site sends back from federated evaluation: aggregate summaries only, never per-patient rows.

Per projection ('all', 'PA', 'AP', 'LAT') and class: exact local AP / AUROC / F1 (NaN where undefined) and
binned score histograms of positives and negatives (shared_models.metrics.HistogramSpec), from which the
server computes pooled consortium metrics. Everything is a fixed-length list so that every site's reply has
the same keys.

Small counts (the site's ``[privacy] min_count`` k): a scope with fewer than k images sends nothing but zeros /
NaN; within a scope, a class with fewer than k annotated positives or fewer than k negatives sends neither its
histograms nor its local AP / AUROC / F1 (both would describe fewer than k patients). ``withheld.<scope>`` says
how many classes were withheld, so the server and the dashboard can tell withheld from absent. Within a released
class, no bin holds fewer than k positives or k negatives: adjacent bins are merged (the same boundaries for both
histograms, never across p = 0.5) and the merged counts sit in the segment's middle bin.

Head / medium / tail bands are summarised here, before that suppression: with the consortium's bands in the
evaluate config (``class-bands``, from the released training counts), ``band_map.<scope>`` is the site's exact
mean AP over the band's classes (those with at least one positive), small ones included, released when the band's
classes hold at least k positives and k negatives in all (NaN otherwise). A tail class with two positives is
withheld on its own but still counts in the site's tail mAP, so the tail figure is not biased toward the classes
that happen to be common at the site.

Under DP (``dp = true``) a site's evaluation summary is, by its policy and the run config, one of
(``dp_evaluation``): ``WITHHELD`` (the default: zeros, nothing about the test split leaves), ``NOISED``
(``dp-eval-noise-multiplier`` z > 0: a Gaussian-mechanism release of the histograms and image counts, charged to the
ledger every round; ``dp_release_summary``) or ``EXACT`` (the site's ``[privacy] dp_exact_evaluation = true``: the
summary above, outside the accountant, by the site's explicit choice).
"""

from __future__ import annotations

import numpy as np

from shared_models.messages import EXACT, NOISED, WITHHELD  # noqa: F401 - ``dp_evaluation`` values, used from here
from shared_models.messages import NUM_EXAMPLES, ScopeSummary, scope_key
from shared_models.metrics import GROUPS, HistogramSpec, band_means, per_class_metrics
from shared_models.networks import PROJECTIONS

SCOPES = ("all",) + PROJECTIONS


def band_summary(ap: np.ndarray, pos: np.ndarray, neg: np.ndarray, bands: np.ndarray, min_count: int) -> list[float]:
    """Per band (head, medium, tail): the mean exact AP over its classes with a positive, or NaN where those
    classes hold fewer than ``min_count`` positives or negatives in all."""
    bands = np.where(np.isfinite(ap), np.asarray(bands), -1)
    means = band_means(ap, bands)
    for i in range(len(GROUPS)):
        sel = bands == i
        if pos[sel].sum() < max(min_count, 1) or neg[sel].sum() < max(min_count, 1):
            means[i] = float("nan")
    return means


def scope_summary(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, spec: HistogramSpec, min_count: int = 0,
                  scope: str = "all", prefix: str = "", bands: np.ndarray | None = None
                  ) -> dict[str, list[float] | list[int] | int]:
    """One scope's keys (``<prefix>ap.<scope>`` ... ``<prefix>withheld.<scope>``) under the small-count rule; with
    ``bands`` (a group code per class), ``<prefix>band_map.<scope>`` computed before it."""
    c, n = probs.shape[1], int(len(probs))
    if n and n >= min_count:
        pc = per_class_metrics(targets, probs, mask)
        pos, neg = spec.histograms(targets, probs, mask)
    else:
        n = 0
        pc = {k: np.full(c, np.nan) for k in ("ap", "auroc", "f1")}
        pos = neg = np.zeros((c, spec.bins), np.int64)
    band_map = None if bands is None else band_summary(pc["ap"], pos.sum(1), neg.sum(1), bands, min_count)
    small = ((pos.sum(1) < min_count) | (neg.sum(1) < min_count)) & ((pos.sum(1) + neg.sum(1)) > 0)
    pos, neg = np.where(small[:, None], 0, pos), np.where(small[:, None], 0, neg)
    pos, neg = merge_small_bins(pos, neg, min_count)
    ap, auroc, f1 = ([float("nan") if s else float(v) for v, s in zip(pc[k], small)] for k in ("ap", "auroc", "f1"))
    return ScopeSummary(pos.reshape(-1).astype(int).tolist(), neg.reshape(-1).astype(int).tolist(), ap, auroc, f1,
                        n, int(small.sum()), band_map).to_metrics(scope, prefix)


def evaluation_summary(
    probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, projection: np.ndarray, spec: HistogramSpec,
    min_count: int = 0, bands: np.ndarray | None = None,
) -> dict[str, list[float] | list[int] | int]:
    out: dict[str, list[float] | list[int] | int | float] = {NUM_EXAMPLES: int(len(probs))}
    for scope in SCOPES:
        sel = np.ones(len(probs), bool) if scope == "all" else projection == PROJECTIONS.index(scope)
        out.update(scope_summary(probs[sel], targets[sel], mask[sel], spec, min_count, scope, bands=bands))
    return out


def _segments(p: np.ndarray, n: np.ndarray, k: int) -> list[tuple[int, int]]:
    """[start, end) bin ranges covering one half-histogram, each with 0 or >= k positives and 0 or >= k negatives
    (where the half's totals allow it)."""
    ok = lambda a, b: (a == 0 or a >= k) and (b == 0 or b >= k)  # noqa: E731
    segs: list[list[int]] = []
    start, sp, sn = 0, 0, 0
    for b in range(len(p)):
        sp, sn = sp + int(p[b]), sn + int(n[b])
        if sp + sn > 0 and ok(sp, sn):
            segs.append([start, b + 1, sp, sn])
            start, sp, sn = b + 1, 0, 0
    if sp + sn > 0 or not segs:  # a remainder that never reached k joins the segments before it
        segs.append([start, len(p), sp, sn])
    while len(segs) > 1 and not ok(segs[-1][2], segs[-1][3]):
        last = segs.pop()
        segs[-1] = [segs[-1][0], last[1], segs[-1][2] + last[2], segs[-1][3] + last[3]]
    segs[-1][1] = len(p)
    return [(a, b) for a, b, _, _ in segs]


def merge_small_bins(pos: np.ndarray, neg: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(C, B) histograms in which no bin holds fewer than ``k`` (and more than 0) positives or negatives: adjacent
    bins merged per class, with the same boundaries for both and never across the middle edge (p = 0.5, so F1 at
    0.5 stays exact); a merged count sits in its segment's middle bin. A class whose totals are below k is left as
    it is here (``scope_summary`` withholds it)."""
    if k <= 1:
        return pos, neg
    out_p, out_n = np.zeros_like(pos), np.zeros_like(neg)
    half = pos.shape[1] // 2
    for c in range(pos.shape[0]):
        for lo, hi in ((0, half), (half, pos.shape[1])):
            for a, b in _segments(pos[c, lo:hi], neg[c, lo:hi], k):
                mid = lo + (a + b - 1) // 2
                out_p[c, mid], out_n[c, mid] = pos[c, lo + a:lo + b].sum(), neg[c, lo + a:lo + b].sum()
    return out_p, out_n



def release_sensitivity(num_classes: int) -> float:
    """L2 sensitivity of a DP evaluation release to one image: one bin (positive or negative) per annotated class
    in scope 'all' and in its view's scope, and 1 in both scopes' image counts."""
    return float(np.sqrt(2 * num_classes + 2))


def dp_release_summary(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, projection: np.ndarray,
                       spec: HistogramSpec, noise_multiplier: float, coarse: int,
                       rng: np.random.Generator) -> dict[str, list[float] | list[int] | int]:
    """The Gaussian-mechanism release of an evaluation summary: per scope the histograms (summed into ``coarse``
    bins, where the noise costs less per bin) and the image count, each entry + N(0, (z x sqrt(2C + 2))^2), then
    rounded and clipped at 0. Local AP / AUROC / F1 are not released (NaN): the server pools the histograms."""
    if coarse < 2 or coarse % 2 or spec.bins % coarse:
        raise ValueError(f"dp-eval-bins = {coarse}: expected an even number of bins dividing hist-bins = {spec.bins}")
    c = probs.shape[1]
    std = noise_multiplier * release_sensitivity(c)
    noisy = lambda v: np.clip(np.rint(v + rng.normal(0.0, std, np.shape(v))), 0, None).astype(np.int64)  # noqa: E731
    out: dict = {}
    for scope in SCOPES:
        sel = np.ones(len(probs), bool) if scope == "all" else projection == PROJECTIONS.index(scope)
        pos, neg = spec.histograms(targets[sel], probs[sel], mask[sel])
        width = spec.bins // coarse
        hists = []
        for h in (pos, neg):
            released = np.zeros_like(h)
            released[:, width // 2::width] = noisy(h.reshape(c, coarse, width).sum(2))
            hists.append(released.reshape(-1).astype(int).tolist())
        nan = [float("nan")] * c
        out.update(ScopeSummary(*hists, nan, nan, nan, int(noisy(float(sel.sum()))), 0).to_metrics(scope))
    out[NUM_EXAMPLES] = out[scope_key("n", "all")]
    return out
