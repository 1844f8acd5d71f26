"""Privacy accounting (Opacus's RDP or PRV accountant) over a site's whole history of DP-SGD steps."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

ACCOUNTANTS = ("rdp", "prv")


def epsilon(history: Iterable[tuple[float, float, int]], delta: float, accountant: str = "rdp") -> float:
    """Epsilon at ``delta`` after every (noise multiplier, sample rate, steps) entry of ``history``."""
    from opacus.accountants import PRVAccountant, RDPAccountant

    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant {accountant!r}; expected one of {ACCOUNTANTS}")
    entries = [(float(s), float(q), int(n)) for s, q, n in history if int(n) > 0]
    if not entries:
        return 0.0
    if any(s <= 0 for s, _, _ in entries):
        return float("inf")  # a step without noise has no finite privacy guarantee
    acc = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    acc.history = entries
    with np.errstate(divide="ignore"):  # PRV at q = 1 (a Gaussian release) takes log(1 - q) on a discarded branch
        return float(acc.get_epsilon(delta=delta))
