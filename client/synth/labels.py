"""Long-tailed, co-occurring label draws: a Gaussian copula over shared latent factors.

Each finding c has a latent z_c = sum_f l_cf F_f + sqrt(1 - sum_f l_cf^2) e_c with independent standard
normal factors F and noise e, so z_c is standard normal and the marginal rate is exactly the prevalence:
c is positive iff z_c > Phi^-1(1 - prevalence). Shared factors (cardiac, icu, copd, age, airleak) make
related findings co-occur. `implies` adds parent classes (a central venous catheter is a support device).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

from client.synth.catalog import Catalog

FACTORS = ("cardiac", "icu", "copd", "age", "airleak")


def draw_findings(
    catalog: Catalog,
    n: int,
    rng: np.random.Generator,
    prevalence_scale: dict[str, float] | None = None,
    min_prevalence: float = 0.0,
) -> np.ndarray:
    """Boolean (n, F) matrix over ``catalog.findings``."""
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
    pos = z > norm.ppf(1.0 - prev)
    names = [s.name for s in specs]
    for i, s in enumerate(specs):
        for parent in s.implies:
            pos[:, names.index(parent)] |= pos[:, i]
    return pos
