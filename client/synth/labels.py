"""Long-tailed, co-occurring label draws: a Gaussian copula over shared latent factors.

Each finding c has a latent z_c = sum_f l_cf F_f + sqrt(1 - sum_f l_cf^2) e_c with independent standard
normal factors F and noise e, so z_c is standard normal and the marginal rate is exactly the prevalence:
c is positive iff z_c > Phi^-1(1 - prevalence). Shared factors (cardiac, icu, copd, age, airleak) make
related findings co-occur. `implies` adds parent classes (a central venous catheter is a support device).

The ``nih`` label model keeps the copula for the classes NIH ChestX-ray14 cannot express and draws the others as
whole label sets from NIH's real joint distribution (client/synth/data/nih_label_sets.json: how many of the 112,120
NIH images carry each combination of consortium classes; scripts/nih_label_sets.py writes it), so those classes
co-occur as they do in real radiographs and keep NIH's real long tail. A site's ``prevalence_scale`` reweights the
label sets (a set's weight is its count times the product of its classes' scales). The two parts are drawn
independently of each other.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import numpy as np
from scipy.special import ndtri  # the standard normal quantile (scipy.stats' norm.ppf, without its import cost)

from client.synth.catalog import Catalog

FACTORS = ("cardiac", "icu", "copd", "age", "airleak")
LABEL_MODELS = ("copula", "nih")


@lru_cache(maxsize=None)
def nih_label_sets(label_set: str) -> tuple[tuple[tuple[str, ...], ...], np.ndarray, tuple[str, ...]]:
    """(label sets, their NIH image counts, the classes NIH annotates) for ``label_set``."""
    raw = json.loads(resources.files("client.synth").joinpath("data/nih_label_sets.json").read_text("utf-8"))
    if raw["label_set"] != label_set:
        raise ValueError(f"the nih label model has label sets for {raw['label_set']!r}, not {label_set!r} "
                         "(scripts/nih_label_sets.py --label-set writes them for another)")
    sets = tuple(tuple(names) for names, _ in raw["sets"])
    return sets, np.array([count for _, count in raw["sets"]], np.float64), tuple(raw["annotated"])


def draw_findings(
    catalog: Catalog,
    n: int,
    rng: np.random.Generator,
    prevalence_scale: dict[str, float] | None = None,
    min_prevalence: float = 0.0,
    label_model: str = "copula",
) -> np.ndarray:
    """Boolean (n, F) matrix over ``catalog.findings``."""
    if label_model not in LABEL_MODELS:
        raise ValueError(f"label model {label_model!r}: expected one of {', '.join(LABEL_MODELS)}")
    scale = prevalence_scale or {}
    specs = catalog.findings
    load = np.zeros((len(specs), len(FACTORS)))
    for i, s in enumerate(specs):
        for f, v in s.factors.items():
            load[i, FACTORS.index(f)] = v
    resid = np.sqrt(np.clip(1.0 - (load**2).sum(1), 0.05, 1.0))
    z = rng.standard_normal((n, len(FACTORS))) @ load.T + rng.standard_normal((n, len(specs))) * resid
    z /= np.sqrt((load**2).sum(1) + resid**2)  # unit variance even where the clip above engaged
    prev = np.array([min(0.95, max(min_prevalence, s.prevalence * scale.get(s.name, 1.0))) for s in specs])
    pos = z > ndtri(1.0 - prev)
    names = [s.name for s in specs]
    if label_model == "nih":
        sets, counts, annotated = nih_label_sets(catalog.label_set)
        pos[:, [names.index(c) for c in annotated if c in names]] = False
        weights = counts * np.array([np.prod([scale.get(c, 1.0) for c in members]) for members in sets])
        drawn = rng.choice(len(sets), size=n, p=weights / weights.sum())
        for k, members in enumerate(sets):
            rows = drawn == k
            for c in members:
                if c in names:  # the derived normal class is not a finding
                    pos[rows, names.index(c)] = True
    for i, s in enumerate(specs):
        for parent in s.implies:
            pos[:, names.index(parent)] |= pos[:, i]
    return pos
