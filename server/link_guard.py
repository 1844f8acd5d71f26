"""The ServerApp's calls to a busy SuperLink (Flower 1.41 deployment runtime).

The SuperLink keeps its state in SQLite with a 5 s busy timeout, and serves every party from one process. On a
loaded machine (two cores, ClientApps training) a request can wait longer than that for the write lock and come
back as HTTP 500 ("database is locked" in the SuperLink's log). Flower 1.41's grid retries transport errors and
HTTP 502-504 but not 500, so such an answer ends the run in two ways:

- a 500 to a push, pull or node listing raises in the ServerApp: the run fails;
- a 500 to a task heartbeat stops Flower's heartbeat thread for good (it retries only 503/504), and the link
  expires the run a minute later (``finished:failed``) while the rounds are still going.

Here a grid call that meets a transient answer is tried again with backoff for up to ``patience`` seconds, each
retry logged (a push is retried with fresh copies of its messages: ``DeadlineGrid.push_messages``; a reply the
link handed out before failing is lost, and its site misses that round's deadline), and a second heartbeat sender
that treats every transient answer as "try again" keeps the run's lease while Flower's is gone. A run the link
has stopped (403) is not kept alive. Neither applies in simulation (an in-memory grid has no HTTP client). Flower
fixes its side upstream (dedicated heartbeat channel, flwrlabs/flower#7391); this module goes when fedchest moves
past 1.41.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from logging import WARNING
from typing import TypeVar

import httpx
from flwr.common.logger import log
from flwr.supercore.inflatable.inflatable_utils import ObjectPushError

T = TypeVar("T")
RETRY_STATUS = frozenset({500, 502, 503, 504})
RETRY_WORDS = "trying again"  # in every retry's log line; server/deploy/overhead.py counts them
PULL_BACKOFF = (0.05, 0.2)  # a reply object's pull tried again after 0.05 s, doubling to 0.2 s (Flower: 1 s to 10 s)


def transient(exc: BaseException) -> bool:
    """An answer worth trying again: the link was busy or the connection dropped, not a refusal. Flower reports a
    busy link's failure to store one of a push's objects as ``ObjectPushError``."""
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code in RETRY_STATUS
    return isinstance(exc, (httpx.TransportError, ObjectPushError))


def retrying(call: Callable[[], T], what: str, patience: float = 180.0, first_wait: float = 1.0,
             max_wait: float = 15.0) -> T:
    """``call()``, tried again on transient answers for up to ``patience`` seconds (waits doubling from
    ``first_wait`` to ``max_wait``); the last error is raised once patience runs out, any other error at once."""
    start, wait, tries = time.monotonic(), first_wait, 1
    while True:
        try:
            return call()
        except Exception as exc:  # noqa: BLE001  (only transient answers are retried; the rest re-raised)
            waited = time.monotonic() - start
            if not transient(exc) or waited + wait > patience:
                raise
            log(WARNING, "the SuperLink answered %s with %s (try %d, %.0fs so far); " + RETRY_WORDS + " in %.0fs",
                what, _short(exc), tries, waited, wait)
        time.sleep(wait)
        wait, tries = min(max_wait, 2 * wait), tries + 1


def _short(exc: BaseException) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    return type(exc).__name__


def prompt_object_pulls() -> None:
    """The ServerApp's pulls of a reply's objects (``flwr.superlink.grid.http_grid``) back off from 0.05 s to 0.2 s
    instead of Flower's 1 s to 10 s. The link lists a reply as soon as the SuperNode announces it, before the
    SuperNode has pushed its objects, so the first pull of an object often finds it missing; with Flower's back-off
    the reply then waits a second or more for nothing. Flower's time budget for a pull (``PULL_MAX_TIME``) is kept,
    not its count of tries, which the short back-off would use up in seconds. Patched once per process; a Flower
    whose grid pulls objects otherwise is refused."""
    from flwr.supercore.constant import PULL_MAX_TIME
    from flwr.supercore.inflatable import inflatable_utils
    from flwr.superlink.grid import http_grid

    current = getattr(http_grid, "pull_objects", None)
    if isinstance(current, functools.partial) and current.func is inflatable_utils.pull_objects:
        return
    if current is not inflatable_utils.pull_objects:
        raise RuntimeError("flwr.superlink.grid.http_grid does not pull objects with flwr.supercore.inflatable's "
                           "pull_objects: this Flower is not the 1.41 that fedchest's ServerApp is made for")
    first, cap = PULL_BACKOFF
    http_grid.pull_objects = functools.partial(current, initial_backoff=first, backoff_cap=cap,
                                               max_tries_per_object=None, max_time=PULL_MAX_TIME)


class LinkKeeper:
    """A task heartbeat that survives transient answers, next to Flower's own (see the module docstring).
    ``start()`` does nothing on a grid without a Runtime HTTP client (simulation)."""

    def __init__(self, grid) -> None:
        self.grid, self.sender = grid, None

    def start(self) -> LinkKeeper:
        if not hasattr(type(self.grid), "_runtime_client"):  # the simulation's in-memory grid has no lease
            return self
        from flwr.proto.runtime_pb2 import SendTaskHeartbeatRequest  # pylint: disable=no-name-in-module
        from flwr.supercore.heartbeat import HeartbeatSender

        client = self.grid._runtime_client  # noqa: SLF001  (the client Flower's own heartbeat uses)

        def beat() -> bool:
            try:
                ok = client.SendTaskHeartbeat(SendTaskHeartbeatRequest()).success
            except Exception as exc:  # noqa: BLE001
                if transient(exc):
                    return False  # HeartbeatSender tries again with backoff
                ok = False
            if not ok:  # the link has stopped or expired the run: the ServerApp's next call ends it, not this
                log(WARNING, "fedchest heartbeat stops: the SuperLink no longer keeps this run")
                self.sender._stop_event.set()  # noqa: SLF001
            return True

        self.sender = HeartbeatSender(beat)
        self.sender.start()
        return self

    def stop(self) -> None:
        if self.sender is not None and self.sender.is_running:
            self.sender.stop()
