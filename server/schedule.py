"""The sites' learning rate over the rounds of a run: the server sends each round's rate in its train config.

``constant``: the run config's ``lr`` every round. ``cosine``: from ``lr`` in round 1 towards ``lr x lr-min-factor``
along half a cosine (Loshchilov & Hutter's annealing, one step per round), reaching the floor after the last round
(the last round still trains, at a small rate), so the late rounds make small corrections instead of undoing each
other's site-specific steps. The round count is the whole
run's (``num-server-rounds``), so a resumed run continues the same curve.
"""

from __future__ import annotations

import math

LR_SCHEDULES = ("constant", "cosine")


def check_schedule(schedule: str, min_factor: float) -> None:
    """A clear error for a schedule the run cannot follow (run config ``lr-schedule`` / ``lr-min-factor``)."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"run config lr-schedule = {schedule!r}; expected one of {', '.join(LR_SCHEDULES)}")
    if not 0.0 <= min_factor <= 1.0:
        raise ValueError(f"run config lr-min-factor = {min_factor!r}; expected a number in [0, 1]")


def round_lr(lr: float, schedule: str, server_round: int, num_rounds: int, min_factor: float = 0.0) -> float:
    """The sites' learning rate in ``server_round`` (1-based) of a run of ``num_rounds`` rounds."""
    check_schedule(schedule, min_factor)
    if schedule == "constant" or num_rounds <= 1:
        return lr
    progress = min(max(server_round - 1, 0), num_rounds) / num_rounds
    return lr * (min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress)))
