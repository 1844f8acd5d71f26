"""The privacy accountant pinned (issue 21, item 4): shared_models.privacy.accountant.epsilon and the site's
PrivacyLedger against Opacus's RDP and PRV accountants driven step by step through their own API, against
hand-written formulas where one exists (q = 1), and against literal values computed once (Opacus 1.6), so that a
change of Opacus, of our composition, of a sample rate or of a step count fails a test."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from opacus.accountants import PRVAccountant, RDPAccountant
from scipy.optimize import brentq
from scipy.stats import norm

from client.privacy import PrivacyLedger
from shared_models.privacy.accountant import epsilon

REL = 1e-6

# (noise multiplier, sample rate, steps, delta) -> epsilon, computed once with Opacus 1.6 (RDP, PRV)
PINNED = {
    (1.0, 0.01, 1000, 1e-5): (2.1013652716430564, 1.838371637017295),
    (0.5, 1.0, 1, 1e-5): (10.725509696418232, 10.007715590581038),
    (2.0, 1.0, 1, 1e-5): (2.1657156590294435, 2.0032177725933606),
    (1.1, 0.05, 200, 1e-6): (5.0431380506058, 4.56601113693949),
    (0.8, 0.1, 50, 1e-5): (9.233989368735447, 8.073031036503425),
    (2.0, 0.02, 3000, 1e-5): (2.6292266688564303, 2.425162505186482),
}
CASES = sorted(PINNED)


def stepped(accountant, sigma: float, q: float, steps: int, delta: float) -> float:
    """Epsilon from an Opacus accountant driven one step at a time, as Opacus's own optimizer hook drives it."""
    with np.errstate(divide="ignore"):  # PRV at q = 1 takes log(1 - q) on a branch np.where then discards
        acc = accountant()
        for _ in range(steps):
            acc.step(noise_multiplier=sigma, sample_rate=q)
        return float(acc.get_epsilon(delta=delta))


def rdp_gaussian_epsilon(sigma: float, steps: int, delta: float) -> float:
    """q = 1 by hand: the Gaussian mechanism has RDP alpha / (2 sigma^2) per step, composed additively, converted
    to (epsilon, delta) with the conversion Opacus uses (Balle et al. 2020, Prop. 12), minimised over Opacus's
    default orders."""
    best = math.inf
    for a in RDPAccountant.DEFAULT_ALPHAS:
        rdp = steps * a / (2 * sigma**2)
        best = min(best, rdp - (math.log(delta) + math.log(a)) / (a - 1) + math.log((a - 1) / a))
    return best


def gaussian_epsilon(mu: float, delta: float) -> float:
    """Exact epsilon of a mu-GDP (Gaussian) mechanism at delta (Balle & Wang 2018)."""
    def excess(eps: float) -> float:
        return norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2) - delta
    return brentq(excess, 0.0, 200.0)


@pytest.mark.parametrize("case", CASES)
def test_rdp_matches_opacus_stepped_and_pinned(case):
    sigma, q, steps, delta = case
    ours = epsilon([(sigma, q, steps)], delta, "rdp")
    assert ours == pytest.approx(stepped(RDPAccountant, sigma, q, steps, delta), rel=REL)
    assert ours == pytest.approx(PINNED[case][0], rel=REL)


@pytest.mark.parametrize("case", [c for c in CASES if c[2] <= 200])  # PRV's cost grows with distinct steps
def test_prv_matches_opacus_stepped_and_pinned(case):
    sigma, q, steps, delta = case
    with np.errstate(divide="ignore"):
        ours = epsilon([(sigma, q, steps)], delta, "prv")
    assert ours == pytest.approx(stepped(PRVAccountant, sigma, q, steps, delta), rel=REL)
    assert ours == pytest.approx(PINNED[case][1], rel=REL)


def test_prv_pinned_long_histories():
    for case in CASES:
        if case[2] > 200:
            sigma, q, steps, delta = case
            assert epsilon([(sigma, q, steps)], delta, "prv") == pytest.approx(PINNED[case][1], rel=REL)


@pytest.mark.parametrize("sigma,steps", [(0.5, 1), (1.0, 1), (2.0, 1), (1.0, 4), (2.0, 10)])
def test_full_batch_gaussian_by_hand(sigma, steps):
    """q = 1: RDP equals the hand-written formula; PRV is an upper bound on the exact Gaussian mechanism's epsilon
    (mu = sqrt(steps) / sigma) within its default eps_error of 0.01, and RDP is above both."""
    rdp = epsilon([(sigma, 1.0, steps)], 1e-5, "rdp")
    assert rdp == pytest.approx(rdp_gaussian_epsilon(sigma, steps, 1e-5), rel=REL)
    exact = gaussian_epsilon(math.sqrt(steps) / sigma, 1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a Gaussian release charged as (sigma, 1.0, 1) works without warnings
        prv = epsilon([(sigma, 1.0, steps)], 1e-5, "prv")
    assert exact <= prv <= exact + 0.0105
    assert rdp > prv


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_a_wrong_sample_rate_or_step_count_fails_the_pin(accountant):
    """The pins can fail: 1 % more sample rate, or one more step, moves epsilon far beyond the tolerance."""
    sigma, q, steps, delta = 1.1, 0.05, 200, 1e-6
    pinned = PINNED[(sigma, q, steps, delta)][0 if accountant == "rdp" else 1]
    for wrong in [(sigma, q * 1.01, steps), (sigma, q, steps + 1), (sigma * 0.99, q, steps)]:
        off = epsilon([wrong], delta, accountant)
        assert abs(off - pinned) / pinned > 100 * REL, wrong
        assert off != pytest.approx(pinned, rel=REL)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_ledger_composes_as_one_accountant_over_its_history(tmp_path, accountant):
    """Rounds appended one by one (different runs, sample rates, noise) compose exactly as one Opacus accountant
    stepped through the concatenated history; each entry's epsilon_after is the prefix's epsilon."""
    rounds = [(1.0, 0.05, 40), (1.0, 0.05, 40), (1.5, 0.02, 100), (0.9, 0.1, 20)]
    if accountant == "prv":  # each PRV evaluation of a mixed history takes seconds on a busy machine
        rounds = rounds[1:]
    delta = 1e-5
    ledger = PrivacyLedger(tmp_path / "privacy-ledger.sqlite")
    afters = [ledger.append("run-a" if i < 2 else "run-b", i + 1, "routed-experts", s, q, n, delta, accountant)
              for i, (s, q, n) in enumerate(rounds)]
    acc = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    for i, (s, q, n) in enumerate(rounds):
        for _ in range(n):
            acc.step(noise_multiplier=s, sample_rate=q)
        if accountant == "rdp" or i == len(rounds) - 1:
            assert afters[i] == pytest.approx(float(acc.get_epsilon(delta=delta)), rel=REL)
    assert ledger.history() == rounds
    assert [e["epsilon_after"] for e in ledger.entries()] == afters
    assert ledger.spent(delta, accountant) == pytest.approx(afters[-1], rel=REL)
    assert afters[0] < afters[1] < afters[2]
    if accountant == "rdp":  # composition is not the sum of the rounds' epsilons, nor the largest alone
        alone = [epsilon([r], delta, accountant) for r in rounds]
        assert max(alone) < afters[-1] < sum(alone)
