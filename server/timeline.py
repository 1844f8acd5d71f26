"""A deployed round, phase by phase (issue 22): where the seconds between the server's push and its pull of a
site's reply went, from the server's clock and the stamps a site's ClientApp puts on its reply (``timeline``
ConfigRecord, written by the client's timeline mod).

Per site and stage (train / evaluate), in seconds:

- ``to_site``: push done -> the SuperNode pulled the instruction (when the reply carries that time);
- ``dispatch``: -> the ClientApp process started (the link's queue, the SuperNode's and SuperExec's polling, the
  process start), when it started after the push; a process that was already running (simulation, a warm worker)
  has none;
- ``runtime``: -> the process began importing fedchest's code (Flower's runtime pulling the task and installing
  the FAB), when that happened after the push;
- ``imports``: -> the app was loaded and its handler called (the remaining start-up and imports; where the stamps
  before it are missing or earlier than the push, this phase holds everything from the push to the handler);
- ``setup``: -> model and data ready (when the handler marks it);
- ``compute``: -> the handler returned its reply;
- ``reply``: -> the ServerApp pulled the reply (the reply's way back and the server's polling).

Plus the server's own phases, per stage: ``push`` (pushing its messages) and ``aggregate`` (its work after the
last reply was pulled: validation left over, aggregation or pooling, registry rows), and per round ``checkpoint``.
Sites' clocks are their hosts'; on one host (``fedchest deploy local``) they are the server's, across hosts the
figures carry the hosts' clock offset (NTP keeps it to milliseconds).
"""

from __future__ import annotations

from collections.abc import Mapping

from shared_models.messages import MetricRow

TIMELINE = "timeline"  # the reply's ConfigRecord of stamps (client/timeline.py writes it)
SITE_PHASES = ("to_site", "dispatch", "runtime", "imports", "setup", "compute", "reply")
ROUND_PHASES = ("push", "aggregate", "checkpoint")


def site_phases(stamps: Mapping[str, float], pushed: float, pulled: float) -> dict[str, float]:
    """Phase durations for one reply. ``pushed`` and ``pulled`` are the server's Unix times; ``stamps`` the
    reply's timeline record (``entered`` and ``done`` always; ``delivered``, ``process``, ``loaded``, ``ready`` when
    known). A phase whose ends are not both known is left out."""
    try:
        entered, done = float(stamps["entered"]), float(stamps["done"])
    except (KeyError, TypeError, ValueError):
        return {}
    out: dict[str, float] = {}
    delivered = _get(stamps, "delivered")
    process = _get(stamps, "process")
    start = pushed
    if delivered is not None:
        out["to_site"] = delivered - pushed
        start = delivered
    for name, stamp in (("dispatch", process), ("runtime", _get(stamps, "loaded"))):
        if stamp is not None and start < stamp <= entered:
            out[name] = stamp - start
            start = stamp
    out["imports"] = entered - start
    ready = _get(stamps, "ready")
    if ready is not None and entered <= ready <= done:
        out["setup"] = ready - entered
        entered = ready
    out["compute"] = done - entered
    out["reply"] = pulled - done
    return out


def _get(stamps: Mapping[str, float], key: str) -> float | None:
    try:
        return float(stamps[key]) if key in stamps else None
    except (TypeError, ValueError):
        return None


def phase_rows(site: str, stage: str, phases: Mapping[str, float]) -> list[MetricRow]:
    """Registry metric rows ``phase.<stage>.<name>`` for one site."""
    return [MetricRow(site, "all", None, f"phase.{stage}.{name}", round(float(v), 4)) for name, v in phases.items()]


def round_rows(stage: str, phases: Mapping[str, float]) -> list[MetricRow]:
    """Registry metric rows ``phase.<stage>.<name>`` (no site) for the server's own phases."""
    return [MetricRow(None, "all", None, f"phase.{stage}.{name}", round(float(v), 4)) for name, v in phases.items()]

