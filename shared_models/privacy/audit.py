"""Empirical privacy audit of the site's DP-SGD, against the coordinator (issue 21).

One training run with ``m`` gradient canaries (Steinke, Nasr & Jagielski 2023, "Privacy auditing with one (1)
training run"). Each canary is included in the site's data independently with probability 1/2 (the auditor's
coins, never shown to the adversary). The site trains with the production mechanism's own pieces: Poisson
batches from ``secure_poisson_batches`` on a ``SecureStream``, per-sample clipping by ``clipped_gradient_sum``,
Gaussian noise by ``privatise`` from ``stream.torch`` after the step's re-seeding, plain SGD. Canary j's loss is
linear with an input of norm 10 C on coordinate j, so its clipped gradient is exactly C times a fixed unit
direction (orthogonal across canaries), whatever the parameters.

The adversary is the coordinator: it sees the released update (final parameters minus the start) and knows the
run config (seed, sample rate, steps, clipping norm, noise multiplier, learning rate, expected batch). It
replays the noise the site would draw if the site's seeds followed from the run seed (the bug issue 21 fixed:
generators seeded from the config seed and round; three derivations) by running the site's generator
construction again with those seeds, and subtracts the replay that explains the update (the residual is smaller
than the update), if one does;
canary j's score is the update's projection on j's direction. It guesses "in" for the highest scores and "out"
for the lowest, abstaining on the rest; the number of correct guesses gives a lower bound on epsilon at
95 % confidence by Steinke et al.'s bound for (epsilon, delta)-DP, with a Bonferroni correction over the grid
of guess counts tried. The accountant's upper bound (``accountant.epsilon``, RDP and PRV) for the same (sigma, q,
steps, delta) must not be below it; if it is, the mechanism leaks more than the ledger charges.

The accountant's bound assumes the adversary sees every step; here it sees only the round's final update, so
with q < 1 the empirical bound stays well below the upper one even for a correct mechanism. A lower bound above
the upper bound is a bug (predictable noise, clipping or noise scale wrong, sampling not as accounted); a lower
bound below it proves nothing more.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.stats import binom
from torch import nn

from shared_models.device import limit_threads
from shared_models.networks.experts import PROJECTIONS, RoutedExperts
from shared_models.privacy import randomness
from shared_models.privacy.accountant import epsilon
from shared_models.privacy.dpsgd import DPSettings, clipped_gradient_sum, privatise

# (in, out): guesses "in" for that fraction of the canaries with the highest scores and "out" for that fraction
# with the lowest; the bound is the best over the grid, each tried at (1 - confidence) / len(GUESSES)
GUESSES = ((0.01, 0.01), (0.025, 0.025), (0.05, 0.05), (0.1, 0.1), (0.25, 0.25), (0.5, 0.5),
           (0.1, 0.0), (0.25, 0.0), (0.45, 0.0))
CANARY_SCALE = 10.0  # a canary's gradient norm before clipping, in units of C: clipping always binds


@dataclass(frozen=True)
class AuditConfig:
    noise_multiplier: float
    sample_rate: float = 0.05
    steps: int = 100
    canaries: int = 1000
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    confidence: float = 0.95
    seed: int = 0  # the run config's seed (known to the coordinator) and the auditor's inclusion coins
    lr: float = 1.0

    def __post_init__(self) -> None:
        problems = []
        if self.noise_multiplier < 0:
            problems.append(f"noise_multiplier = {self.noise_multiplier}; expected >= 0")
        if not 0 < self.sample_rate <= 1:
            problems.append(f"sample_rate = {self.sample_rate}; expected 0 < q <= 1")
        if self.steps < 1:
            problems.append(f"steps = {self.steps}; expected >= 1")
        if self.canaries < 10:
            problems.append(f"canaries = {self.canaries}; expected >= 10")
        if not 0 < self.delta < 1 or not 0 < self.confidence < 1:
            problems.append(f"delta = {self.delta}, confidence = {self.confidence}; expected both in (0, 1)")
        if self.max_grad_norm <= 0 or self.lr <= 0:
            problems.append(f"max_grad_norm = {self.max_grad_norm}, lr = {self.lr}; expected both > 0")
        if problems:
            raise ValueError("privacy audit config: " + "; ".join(problems))


@dataclass(frozen=True)
class AuditResult:
    noise_multiplier: float
    sample_rate: float
    steps: int
    canaries: int
    delta: float
    confidence: float
    epsilon_upper_rdp: float
    epsilon_upper_prv: float
    epsilon_lower: float
    guesses: int  # r: canaries guessed (the rest abstained) in the guess count that gave the bound
    correct: int  # v: correct guesses among them
    rebuilt_from: str  # the seed derivation whose replay explained the update ("" if none did)

    @property
    def epsilon_upper(self) -> float:
        """The tighter of the two accountants (both are upper bounds)."""
        return min(self.epsilon_upper_rdp, self.epsilon_upper_prv)

    @property
    def noise_rebuilt(self) -> bool:
        return bool(self.rebuilt_from)

    @property
    def consistent(self) -> bool:
        return self.epsilon_lower <= self.epsilon_upper and not self.noise_rebuilt

    @property
    def verdict(self) -> str:
        rebuilt = f"the coordinator rebuilt the site's noise from the run config ({self.rebuilt_from} seeds)"
        if self.epsilon_lower > self.epsilon_upper:
            why = f"; {rebuilt}" if self.noise_rebuilt else ""
            return f"VIOLATION: empirical lower bound above the accountant's upper bound{why}"
        if self.noise_rebuilt:
            return f"VIOLATION: {rebuilt}"
        return "consistent: lower bound <= upper bound"

    def as_dict(self) -> dict:
        return {**asdict(self), "epsilon_upper": self.epsilon_upper, "noise_rebuilt": self.noise_rebuilt,
                "consistent": self.consistent, "verdict": self.verdict}


# --- the site: the production mechanism's pieces on a canary model -----------------------------------------

def canary_model(canaries: int) -> RoutedExperts:
    """Experts without bias on a canaries-long input: canary j (input 10 C e_j, PA view) touches only the PA
    expert's weight j."""
    experts = {p: nn.Linear(canaries, 1, bias=False) for p in PROJECTIONS}
    model = RoutedExperts(experts, num_classes=1)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model


def linear_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Minus the logit: the gradient is minus the input, whatever the parameters (the update is linear)."""
    return -(logits * targets * mask).sum() / logits.shape[0]


def dp_steps(n: int, cfg: AuditConfig) -> Iterator[tuple[np.ndarray, randomness.SecureStream]]:
    """The randomness of a DP-SGD round as client/dp_training.py builds it: one ``SecureStream``, the global
    generator re-seeded for the round, a Poisson batch per step from the freshly re-seeded stream; yields each
    step's batch and the stream to draw its noise from. The site's round and the coordinator's replay both run
    this, so the replay follows the site's exact order of seed draws."""
    stream = randomness.SecureStream()
    with randomness.secure_global_rng():
        for idx in randomness.secure_poisson_batches(n, cfg.sample_rate, cfg.steps, stream):
            yield idx, stream


def site_update(ids: np.ndarray, cfg: AuditConfig) -> dict[str, torch.Tensor]:
    """The site's DP-SGD round on the canaries ``ids`` (its data): the released update by parameter name."""
    model = canary_model(cfg.canaries)
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    settings = DPSettings(cfg.noise_multiplier, cfg.max_grad_norm)
    params = dict(model.named_parameters())
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    for idx, stream in dp_steps(len(ids), cfg):
        if len(idx):
            x = torch.zeros(len(idx), cfg.canaries)
            x[torch.arange(len(idx)), torch.from_numpy(ids[idx])] = CANARY_SCALE * cfg.max_grad_norm
            p = torch.full((len(idx),), PROJECTIONS.index("PA"))
            y = torch.ones(len(idx), 1)
            summed, _, _ = clipped_gradient_sum(model, x, p, y, y, linear_loss, cfg.max_grad_norm)
        else:  # an empty Poisson batch still takes a (pure-noise) step
            summed = {k: torch.zeros_like(v) for k, v in params.items()}
        grads = privatise(summed, settings, expected_batch=expected_batch(cfg), generator=stream.torch)
        for k, g in grads.items():
            params[k].grad = g
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {k: v.detach() - start[k] for k, v in model.named_parameters()}


def expected_batch(cfg: AuditConfig) -> float:
    """q times the released dataset size (half the canaries, the expected count): public, so the update's scale
    says nothing about how many canaries are in (the site's loop divides by q times its released size too)."""
    return cfg.sample_rate * (cfg.canaries // 2)


# --- the coordinator -----------------------------------------------------------------------------------------

SEED_DERIVATIONS = ("hashed", "counter", "constant")


def seeds_from_run(run_seed: int, derivation: str = "hashed") -> Callable[[], int]:
    """The seeds a site would use if it derived them from the run config, as the loops did before issue 21: the
    k-th seed of a round is a fixed function of (run seed, k): ``hashed`` (a SeedSequence of both), ``counter``
    (run seed + k) or ``constant`` (the run seed every time, as ``torch.Generator().manual_seed(seed)`` was). A
    stand-in for ``randomness.secure_seed``: the coordinator's hypotheses, and the bug the tests reintroduce."""
    if derivation not in SEED_DERIVATIONS:
        raise ValueError(f"seed derivation {derivation!r}; expected one of {SEED_DERIVATIONS}")
    counter = itertools.count()
    if derivation == "constant":
        return lambda: run_seed
    if derivation == "counter":
        return lambda: (run_seed + next(counter)) % 2**63
    return lambda: int(np.random.SeedSequence([run_seed, next(counter)]).generate_state(1, np.uint64)[0] >> 1)


@contextmanager
def seed_source(source: Callable[[], int]) -> Iterator[None]:
    """``randomness.secure_seed`` replaced by ``source`` for the block (the replay; the bug, reintroduced)."""
    saved = randomness.secure_seed
    randomness.secure_seed = source
    try:
        yield
    finally:
        randomness.secure_seed = saved


def replayed_noise(shapes: dict[str, torch.Size], cfg: AuditConfig, derivation: str) -> dict[str, torch.Tensor]:
    """The coordinator reruns the site's generator construction (``dp_steps``, noise from ``privatise``) with the
    seeds it expects from the run config, and returns the noise it predicts in the update (same scaling)."""
    settings = DPSettings(cfg.noise_multiplier, cfg.max_grad_norm)
    zeros = {k: torch.zeros(s) for k, s in shapes.items()}
    total = {k: torch.zeros(s) for k, s in shapes.items()}
    with seed_source(seeds_from_run(cfg.seed, derivation)):
        for _, stream in dp_steps(cfg.canaries // 2, cfg):
            for k, g in privatise(zeros, settings, expected_batch(cfg), stream.torch).items():
                total[k] -= cfg.lr * g
    return total


def coordinator_scores(update: dict[str, torch.Tensor], cfg: AuditConfig) -> tuple[np.ndarray, str]:
    """Canary j's score (in units of C per step taken): the update's projection on j's direction, after
    subtracting the replayed noise of the seed derivation that explains the update best, if any explains it (the
    residual is smaller than the update). Also which derivation did ("" if none)."""
    raw = torch.cat([v.flatten() for v in update.values()]).double()
    use, rebuilt = raw, ""
    for derivation in SEED_DERIVATIONS:
        replay = replayed_noise({k: v.shape for k, v in update.items()}, cfg, derivation)
        residual = raw - torch.cat([replay[k].flatten() for k in update]).double()
        if residual.norm() < use.norm():
            use, rebuilt = residual, derivation
    pa = dict(zip(update, torch.split(use, [v.numel() for v in update.values()])))
    weight = pa[f"experts.{PROJECTIONS[0]}.weight"]
    scale = cfg.lr * cfg.max_grad_norm / expected_batch(cfg)  # one step of one canary moves its weight by this
    return (weight / scale).numpy(), rebuilt


# --- from guesses to a lower bound ----------------------------------------------------------------------------

def p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """An upper bound on the probability of at least v correct guesses out of r, among m canaries each in with
    probability 1/2, under an (eps, delta)-DP mechanism (Steinke, Nasr & Jagielski 2023, their bound with the delta
    term): P[Bin(r, p) >= v] + 2 m delta max_i P[v - i <= Bin(r, p) < v] / i, with p = e^eps / (1 + e^eps)."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    p = 1 / (1 + math.exp(-eps))
    tail = float(binom.sf(v - 1, r, p))
    if v == 0 or delta == 0:
        return min(tail, 1.0)
    below = binom.pmf(np.arange(v - 1, -1, -1), r, p)  # P[Bin = v - i] for i = 1..v
    alpha = float(np.max(np.cumsum(below) / np.arange(1, v + 1)))
    return min(tail + 2 * m * delta * alpha, 1.0)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, beta: float) -> float:
    """The largest eps at which v correct guesses out of r still reject (eps, delta)-DP at level beta (0 if
    none does)."""
    if p_value(m, r, v, 0.0, delta) >= beta:
        return 0.0
    lo, hi = 0.0, 1.0
    while p_value(m, r, v, hi, delta) < beta:
        lo, hi = hi, 2 * hi
        if hi > 1e3:
            return math.inf
    for _ in range(40):  # to about 1e-12 of hi
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if p_value(m, r, v, mid, delta) < beta else (lo, mid)
    return lo


def lower_bound_from_scores(scores: np.ndarray, included: np.ndarray, delta: float,
                            confidence: float) -> tuple[float, int, int]:
    """(eps lower bound, guesses, correct): for each (in, out) of ``GUESSES``, guess in for the highest scores and
    out for the lowest; the best bound over the grid, at ``confidence`` after a Bonferroni correction."""
    m = len(scores)
    order = np.argsort(-scores, kind="stable")
    beta = (1 - confidence) / len(GUESSES)
    best = (0.0, 0, 0)
    for f_in, f_out in GUESSES:
        k_in, k_out = int(f_in * m), int(f_out * m)
        if k_in + k_out == 0:
            continue
        v = int(included[order[:k_in]].sum() + (~included[order[m - k_out:]]).sum())
        eps = epsilon_lower_bound(m, k_in + k_out, v, delta, beta)
        if eps > best[0] or best[1] == 0:
            best = (eps, k_in + k_out, v)
    return best


def run_audit(cfg: AuditConfig) -> AuditResult:
    """One audited round: canaries in by the auditor's coins, the site's DP-SGD, the coordinator's guesses."""
    coins = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0xA0D17]))
    included = coins.random(cfg.canaries) < 0.5
    ids = np.flatnonzero(included)
    threads = torch.get_num_threads()
    limit_threads(1)  # tensors this small run several times faster on one thread than on two busy cores
    try:
        update = site_update(ids, cfg)
    finally:
        limit_threads(threads)
    scores, rebuilt = coordinator_scores(update, cfg)
    lower, r, v = lower_bound_from_scores(scores, included, cfg.delta, cfg.confidence)
    history = [(cfg.noise_multiplier, cfg.sample_rate, cfg.steps)]
    return AuditResult(cfg.noise_multiplier, cfg.sample_rate, cfg.steps, cfg.canaries, cfg.delta, cfg.confidence,
                       epsilon(history, cfg.delta, "rdp"), epsilon(history, cfg.delta, "prv"), lower, r, v, rebuilt)


def table(results: list[AuditResult]) -> str:
    """The audit as a text table: one row per noise multiplier."""
    head = (f"{'sigma':>6} {'q':>6} {'steps':>5} {'canaries':>8} {'eps upper (RDP / PRV)':>22} "
            f"{'eps lower':>14} {'guesses':>9}  verdict")
    rows = [head, "-" * len(head)]
    for r in results:
        upper = f"{r.epsilon_upper_rdp:.3f} / {r.epsilon_upper_prv:.3f}"
        lower = f"{r.epsilon_lower:.3f} ({r.confidence:.0%})"
        rows.append(f"{r.noise_multiplier:>6g} {r.sample_rate:>6g} {r.steps:>5} {r.canaries:>8} {upper:>22} "
                    f"{lower:>14} {f'{r.correct}/{r.guesses}':>9}  {r.verdict}")
    return "\n".join(rows)
