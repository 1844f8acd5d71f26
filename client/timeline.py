"""When each phase of a site's message happened, for the server's per-phase timeline of a round (issue 22).

A Flower mod stamps every reply with a ``timeline`` ConfigRecord of Unix times taken in this process:

- ``delivered``: when the SuperNode pulled the instruction from the SuperLink (the link's ``delivered_at``, when
  the message carries it; Flower 1.41 does not pass it on to the ClientApp process);
- ``process``: when this ClientApp process started (``/proc/self/stat``; absent off Linux);
- ``loaded``: when the process began importing fedchest's client code (after Flower's runtime pulled the task and
  installed the FAB);
- ``entered``: when the app had loaded (imports done) and the handler was called;
- ``ready``: when the handler had its model and data (``mark_ready``; absent if the handler never says);
- ``done``: when the handler returned its reply.

The server turns them into durations against its own clock (``server/timeline.py``); on one host, as in
``fedchest deploy local``, the clocks are the same. Nothing here depends on the site's data beyond how long its
compute took, which the coordinator sees anyway from when the reply arrives.
"""

from __future__ import annotations

import os
import time
from datetime import datetime

from flwr.app import ConfigRecord, Context, Message

from client import LOAD_STARTED

RECORD = "timeline"
_marks: dict[str, float] = {}


def _process_start() -> float | None:
    """This process's start time (Unix seconds) from /proc, or None where /proc is not Linux's."""
    try:
        stat = open(f"/proc/{os.getpid()}/stat", encoding="ascii").read()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime, in clock ticks after boot
        boot = next(int(line.split()[1]) for line in open("/proc/stat", encoding="ascii") if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


PROCESS_START = _process_start()


def _unix(iso: str) -> float | None:
    try:
        return datetime.fromisoformat(iso).timestamp() if iso else None
    except ValueError:
        return None


def mark_ready() -> None:
    """Called by a handler once its model and data are loaded: splits set-up from compute."""
    _marks.setdefault("ready", time.time())


def timeline_mod(msg: Message, context: Context, call_next) -> Message:
    _marks.clear()
    entered = time.time()
    reply = call_next(msg, context)
    stamps = {"entered": entered, **_marks, "done": time.time()}
    delivered = _unix(msg.metadata.delivered_at)
    if delivered is not None:
        stamps["delivered"] = delivered
    if PROCESS_START is not None:
        stamps["process"] = PROCESS_START
    stamps["loaded"] = LOAD_STARTED
    if not reply.has_error():
        reply.content[RECORD] = ConfigRecord(stamps)
    return reply
