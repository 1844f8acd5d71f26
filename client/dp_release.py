"""The counts a DP site releases, through a Gaussian mechanism charged to its privacy ledger.

Under ``dp = true`` nothing leaves the site that the accountant has not paid for. Aggregation still needs counts
(how many images behind each expert group, positives per class for the class rows, the consortium's prevalence),
and DP-SGD itself needs a dataset size for its sampling rate and step count. All of them come from ONE release of
the training split's statistics, made once and re-sent unchanged in every later round and run (post-processing of
a DP release costs nothing more):

    s = [images, images per trusted view (PA, AP, LAT), positives per class per view row (PA, AP, LAT, unknown),
         annotated images per class]

One image adds 1 to ``images``, at most 1 to one view count, at most L positives to one view row (an image with
more than L = ``dp-stats-max-labels`` positive classes keeps a random L of them, drawn from the OS CSPRNG) and at
most C annotated classes, so the L2 sensitivity of s is sqrt(2 + L + C). Gaussian noise of standard deviation
z x sqrt(2 + L + C), z = ``dp-stats-noise-multiplier``, is added to every coordinate (OS CSPRNG), and the release
is charged as one Gaussian mechanism step (z, sampling rate 1, 1 step) to the ledger under the head
``site-statistics``. Everything the site derives from it (rounded, clipped at 0, group counts, prevalence, the
DP-SGD sampling rate) is post-processing.

The record is one image (as in DP-SGD here). A CT site releases the same vector over its volumes with every view
unknown. The release lives in ``<work_dir>/dp-release/`` keyed by the data and the mechanism's settings: new data
or other settings make (and charge) a new release.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from client.privacy import PolicyRefusal
from client.site_config import SiteConfig
from shared_models.messages import DP_DELTA, DP_EPSILON, DP_EVALUATION
from shared_models.metrics import HistogramSpec
from shared_models.networks import PROJECTIONS
from shared_models.privacy.randomness import secure_numpy_generator

HEAD = "site-statistics"  # the privacy ledger's name for this release
EVAL_HEAD = "evaluation"  # ... and for a noised evaluation summary
DEFAULT_EVAL_BINS = 12
DEFAULT_NOISE = 4.0
DEFAULT_MAX_LABELS = 6
ROWS = PROJECTIONS + ("unknown",)


def bounded_labels(y: np.ndarray, max_labels: int, rng: np.random.Generator) -> np.ndarray:
    """0/1 labels (n, C) with at most ``max_labels`` positives per image (a random subset where there are more)."""
    out = y.copy()
    for i in np.flatnonzero(out.sum(1) > max_labels):
        pos = np.flatnonzero(out[i])
        out[i, rng.choice(pos, len(pos) - max_labels, replace=False)] = 0
    return out


def sensitivity(num_classes: int, max_labels: int) -> float:
    """L2 sensitivity of the statistics vector to one image."""
    return math.sqrt(2 + max_labels + num_classes)


def positives_and_annotated(targets: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, C) 0/1 annotated positives and (n, C) 0/1 annotated, from soft targets and a mask."""
    annotated = (np.asarray(mask) > 0).astype(np.int64)
    return ((np.asarray(targets) > 0.5) & (annotated > 0)).astype(np.int64), annotated


@dataclass(frozen=True)
class ReleasedCounts:
    """A site's released (noised, post-processed) training-split statistics."""

    examples: float
    views: np.ndarray  # (3,) images per trusted view, PROJECTIONS order
    positives: np.ndarray  # (4, C) positives per view row (PROJECTIONS + unknown)
    annotated: np.ndarray  # (C,)
    noise_multiplier: float
    max_labels: int

    @property
    def public_size(self) -> int:
        """The dataset size DP-SGD uses for its sampling rate and step count (never below 1)."""
        return max(1, int(round(self.examples)))

    def class_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """(positives, annotated) per class, as non-negative integers with positives <= annotated."""
        ann = np.rint(self.annotated).astype(np.int64)
        return np.minimum(np.rint(self.positives.sum(0)).astype(np.int64), ann), ann

    def group_statistics(self, groups: set[str] | None = None) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """Samples and per-class positives behind each expert group, as ``client_app.group_statistics`` counts them
        from exact data (an image of unknown view counts a third for each expert), from the released values."""
        unknown = max(0.0, self.examples - float(self.views.sum()))
        counts: dict[str, float] = {}
        positives: dict[str, np.ndarray] = {}
        for i, p in enumerate(PROJECTIONS):
            counts[f"experts.{p}"] = float(self.views[i]) + unknown / len(PROJECTIONS)
            positives[f"experts.{p}"] = self.positives[i] + self.positives[-1] / len(PROJECTIONS)
        counts["router"] = float(self.views.sum())
        counts["generalist"] = float(self.examples)
        positives["generalist"] = self.positives.sum(0)
        for g in sorted(groups or ()):
            if g.startswith("zeroshot."):
                counts[g] = counts.get(f"experts.{g.rsplit('.', 1)[-1]}", float(self.examples))
        return counts, positives

    def to_json(self) -> dict[str, Any]:
        return {"examples": self.examples, "views": self.views.tolist(), "positives": self.positives.tolist(),
                "annotated": self.annotated.tolist(), "noise_multiplier": self.noise_multiplier,
                "max_labels": self.max_labels}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "ReleasedCounts":
        return cls(float(d["examples"]), np.asarray(d["views"], np.float64), np.asarray(d["positives"], np.float64),
                   np.asarray(d["annotated"], np.float64), float(d["noise_multiplier"]), int(d["max_labels"]))


def exact_statistics(targets: np.ndarray, mask: np.ndarray, projection: np.ndarray, max_labels: int,
                     rng: np.random.Generator) -> np.ndarray:
    """The statistics vector s (before noise) with each image's positives bounded to ``max_labels``."""
    y, annotated = positives_and_annotated(targets, mask)
    y = bounded_labels(y, max_labels, rng)
    projection = np.asarray(projection)
    views = np.array([(projection == i).sum() for i in range(len(PROJECTIONS))], np.float64)
    rows = np.stack([y[projection == i].sum(0) for i in range(len(PROJECTIONS))] + [y[projection < 0].sum(0)])
    return np.concatenate([[float(len(projection))], views, rows.reshape(-1), annotated.sum(0)]).astype(np.float64)


def gaussian_release(targets: np.ndarray, mask: np.ndarray, projection: np.ndarray, noise_multiplier: float,
                     max_labels: int, rng: np.random.Generator | None = None) -> ReleasedCounts:
    """The Gaussian mechanism on the statistics vector, post-processed (clipped at 0). ``rng`` defaults to a
    fresh OS-CSPRNG generator; a seeded one is for tests of the arithmetic only."""
    rng = rng or secure_numpy_generator()
    c = np.asarray(targets).shape[1]
    s = exact_statistics(targets, mask, projection, max_labels, rng)
    s = s + rng.normal(0.0, noise_multiplier * sensitivity(c, max_labels), s.shape)
    s = np.clip(s, 0.0, None)
    v = len(PROJECTIONS)
    return ReleasedCounts(float(s[0]), s[1:1 + v], s[1 + v:1 + v + len(ROWS) * c].reshape(len(ROWS), c),
                          s[1 + v + len(ROWS) * c:], noise_multiplier, max_labels)


def release_settings(config: Mapping[str, Any], site: SiteConfig) -> tuple[float, int]:
    """(noise multiplier, max labels) for the release, checked against the site policy."""
    z = float(config.get("dp-stats-noise-multiplier", DEFAULT_NOISE))
    max_labels = int(config.get("dp-stats-max-labels", DEFAULT_MAX_LABELS))
    if z <= 0:
        raise PolicyRefusal("a DP run releases the site's counts only through the Gaussian mechanism: "
                            f"dp-stats-noise-multiplier must be > 0 (got {z:g})")
    if z < site.privacy.min_noise_multiplier:
        raise PolicyRefusal(f"dp-stats-noise-multiplier {z:g} is below the site policy's minimum noise multiplier "
                            f"{site.privacy.min_noise_multiplier:g}")
    if max_labels < 1:
        raise PolicyRefusal(f"dp-stats-max-labels must be >= 1 (got {max_labels})")
    return z, max_labels


def _fingerprint(kind: str, targets: np.ndarray, mask: np.ndarray, projection: np.ndarray, z: float, k: int) -> str:
    h = hashlib.sha256(f"{kind}|{z!r}|{k}|{np.asarray(targets).shape}".encode())
    for a in (targets, mask, projection):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:32]


def released_counts(site: SiteConfig, config: Mapping[str, Any], targets: np.ndarray, mask: np.ndarray,
                    projection: np.ndarray, kind: str = "radiograph") -> ReleasedCounts:
    """This site's release for the data (made and charged on first use, then re-read from the site's work dir)."""
    from client.local_round import charged

    z, max_labels = release_settings(config, site)
    path = site.work_dir / "dp-release" / f"{kind}-{_fingerprint(kind, targets, mask, projection, z, max_labels)}.json"
    if path.exists():
        return ReleasedCounts.from_json(json.loads(path.read_text()))
    release, _ = charged(site, config, z, 1.0, 1, HEAD,
                         lambda: gaussian_release(targets, mask, projection, z, max_labels),
                         what="releasing the site's counts", declines="train")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(release.to_json()))
    return release


def evaluation_release(config: Mapping[str, Any], site: SiteConfig, exact: dict[str, Any], probs: np.ndarray,
                       targets: np.ndarray, mask: np.ndarray, projection: np.ndarray, spec: HistogramSpec,
                       families: bool) -> dict[str, Any]:
    """What a DP site's evaluation reply carries instead of ``exact`` (client/evaluation.py: WITHHELD by default,
    NOISED with ``dp-eval-noise-multiplier`` > 0, charged every round, EXACT by the site's explicit policy).
    ``families``: the summary has zero-shot, box-latent or localiser keys, which have no noised release."""
    from client.evaluation import EXACT, NOISED, WITHHELD, dp_release_summary, evaluation_summary
    from client.local_round import charged

    if site.privacy.dp_exact_evaluation:
        return {**exact, DP_EVALUATION: EXACT}
    z = float(config.get("dp-eval-noise-multiplier", 0.0))
    c = targets.shape[1]
    if z <= 0:
        empty = np.zeros((0, c))
        return {**evaluation_summary(empty, empty, empty, np.zeros(0, np.int64), spec), DP_EVALUATION: WITHHELD}
    if families:
        raise PolicyRefusal("zero-shot, box-latent and localiser evaluation summaries have no noised release: a DP "
                            "site sends them only with [privacy] dp_exact_evaluation = true (or run without "
                            "dp-eval-noise-multiplier to withhold the evaluation)")
    if z < site.privacy.min_noise_multiplier:
        raise PolicyRefusal(f"dp-eval-noise-multiplier {z:g} is below the site policy's minimum noise multiplier "
                            f"{site.privacy.min_noise_multiplier:g}")
    coarse = int(config.get("dp-eval-bins", DEFAULT_EVAL_BINS))
    summary, eps = charged(site, config, z, 1.0, 1, EVAL_HEAD,
                           lambda: dp_release_summary(probs, targets, mask, projection, spec, z, coarse,
                                                      secure_numpy_generator()),
                           what="releasing this round's evaluation summary", declines="send it")
    return {**summary, DP_EVALUATION: NOISED, DP_EPSILON: eps, DP_DELTA: site.privacy.delta}
