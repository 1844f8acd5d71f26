"""A deployed run's overhead per round, from the registry: what a round took beyond its slowest site's compute.

A round's interval runs from its start to the next round's start (the last round: to its end, its evaluation
included), so it holds everything the run spends on it: pushes and pulls, pickup at the sites, ClientApp start-up,
the server's validation, aggregation, registry and checkpoint writes. Its compute is the slowest site's own
handler seconds in that interval: the set-up and compute phases of its train and evaluate replies of that round
(``phase.<stage>.setup`` / ``.compute`` rows, server/timeline.py), which with evaluate-with-train include the
evaluation of the previous round's model the train reply carries; for runs without phase rows, the
``train_seconds`` + ``eval_seconds`` the sites report. The difference is the overhead a faster link, faster polling
or a warm ClientApp can remove; the sites' compute cannot be.

``link_faults`` counts what a healthy deployment never shows: HTTP 5xx answers in the SuperLink's log, retries the
ServerApp needed (server/link_guard.py), ERROR lines of the SuperNodes, and site misses in the registry (dropout,
straggler, error or skipped-round events).
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, func, select

from server.link_guard import RETRY_WORDS
from server.registry.models import Event, Metric, Round

COMPUTE_METRICS = ("train_seconds", "eval_seconds")
HANDLER_PHASES = tuple(f"phase.{stage}.{part}" for stage in ("train", "evaluate") for part in ("setup", "compute"))
HTTP_5XX = re.compile(r'" 5\d\d\b')  # uvicorn's access line: "POST /... HTTP/1.1" 500
MISS_EVENTS = ("dropout", "straggler", "train_error", "evaluate_error", "round_skipped")


@dataclass(frozen=True)
class RoundOverhead:
    round: int
    interval: float  # seconds from this round's start to the next one's (the last round: to its end)
    compute: float  # the slowest site's handler seconds in that interval
    site: str  # that site

    @property
    def overhead(self) -> float:
        return self.interval - self.compute


def round_overheads(db_url: str, run_id: str) -> list[RoundOverhead]:
    """Every round of ``run_id`` whose interval is complete (the next round started, or it finished) with the
    sites' compute recorded, in round order."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as c:
            rounds = c.execute(select(Round.round, Round.started_at, Round.finished_at)
                               .where(Round.run_id == run_id).order_by(Round.round)).all()
            rows = c.execute(select(Metric.round, Metric.site, Metric.name, Metric.value)
                             .where(Metric.run_id == run_id, Metric.name.in_(COMPUTE_METRICS + HANDLER_PHASES),
                                    Metric.site.is_not(None), Metric.value.is_not(None))).all()
    finally:
        engine.dispose()
    phases: dict[int, dict[str, float]] = {}
    reported: dict[int, dict[str, float]] = {}
    for rnd, site, name, value in rows:
        table = phases if name in HANDLER_PHASES else reported
        per_site = table.setdefault(rnd, {})
        per_site[site] = per_site.get(site, 0.0) + value
    out = []
    for i, (rnd, started, finished) in enumerate(rounds):
        end = rounds[i + 1][1] if i + 1 < len(rounds) else finished
        compute = phases.get(rnd) or reported.get(rnd)
        if end is not None and compute:
            site, seconds = max(compute.items(), key=lambda kv: kv[1])
            out.append(RoundOverhead(rnd, (end - started).total_seconds(), seconds, site))
    return out


def median_overhead(rows: list[RoundOverhead]) -> float | None:
    return statistics.median(r.overhead for r in rows) if rows else None


def describe(rows: list[RoundOverhead]) -> str:
    """The figures ``fedchest deploy local`` prints: the median, then each round."""
    if not rows:
        return "overhead per round: no finished round with the sites' compute seconds in the registry"
    lines = [f"overhead per round (round interval - slowest site's compute): median "
             f"{median_overhead(rows):.2f}s over {len(rows)} round(s)"]
    lines += [f"  round {r.round}: {r.interval:.2f}s interval - {r.compute:.2f}s compute ({r.site}) = "
              f"{r.overhead:.2f}s" for r in rows]
    return "\n".join(lines)


def link_faults(logs: Path, db_url: str, run_id: str) -> dict[str, int]:
    """Counts of what a healthy deployment never shows (see the module docstring), from a deployment's log folder
    (``superlink.log``, ``flwr-run.log``, ``supernode-*.log``) and the run's registry events."""
    def read(name: str) -> str:
        path = logs / name
        return path.read_text(errors="replace") if path.exists() else ""

    nodes = "".join(p.read_text(errors="replace") for p in sorted(logs.glob("supernode-*.log")))
    engine = create_engine(db_url)
    try:
        with engine.connect() as c:
            misses = c.execute(select(func.count()).select_from(Event)
                               .where(Event.run_id == run_id, Event.kind.in_(MISS_EVENTS))).scalar()
    finally:
        engine.dispose()
    return {"http_5xx_answers": len(HTTP_5XX.findall(read("superlink.log"))),
            "serverapp_retries": read("flwr-run.log").count(RETRY_WORDS), "supernode_errors": nodes.count("ERROR"),
            "site_misses": int(misses or 0)}


def describe_faults(faults: dict[str, int]) -> str:
    return ("link faults: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in faults.items())
            + ("" if any(faults.values()) else " (none)"))
