"""Bounded waiting for a round: per-site reply deadlines from measured reply times, and a quorum of connected nodes.

Flower's ``send_and_receive`` waits for every reply up to one timeout, and its node sampling waits forever for
``min_available_nodes``. Here each message gets its own deadline: ``factor`` x the site's recent reply time for
that stage (an exponential moving average of the seconds from push to reply, which includes its compute and its
transfer), within [``floor``, ``ceiling``]; with no history yet, the ceiling (the run's ``round-timeout``). The
round goes on once every message has replied or passed its deadline; a late reply is never pulled, so it cannot
reach a later round. ``DeadlineGrid`` wraps the ServerApp's grid with this; the strategy sees the same API.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from flwr.app import Message

POLL_FIRST, POLL_MAX = 0.1, 3.0  # poll the link quickly at first, then every 3 s as Flower does (its SQLite state
# is shared with every SuperNode's pushes; polling it five times a second locked it in a 3-node deployment)


@dataclass
class ReplyTimer:
    factor: float = 3.0
    floor: float = 30.0
    ceiling: float = 600.0
    smoothing: float = 0.5  # weight of the newest reply time in the moving average
    seen: dict[tuple[int, str], float] = field(default_factory=dict)  # (node, stage) -> seconds

    def deadline(self, node: int, stage: str) -> float:
        """Seconds this node gets to reply to a ``stage`` ("train" / "evaluate") message."""
        past = self.seen.get((node, stage))
        return self.ceiling if past is None else min(self.ceiling, max(self.floor, self.factor * past))

    def observe(self, node: int, stage: str, seconds: float) -> None:
        past = self.seen.get((node, stage))
        self.seen[(node, stage)] = seconds if past is None else self.smoothing * seconds + (1 - self.smoothing) * past


class DeadlineGrid:
    """A grid whose ``send_and_receive`` gives each message its own deadline (``ReplyTimer``) and reports the
    nodes that missed theirs to ``on_late(node, stage, deadline, recent)``; everything else is the wrapped grid's."""

    def __init__(self, grid, timer: ReplyTimer, on_late: Callable[[int, str, float, float | None], None],
                 on_reply: Callable[[int, str, float, float, Message], None] | None = None) -> None:
        self._grid, self.timer, self.on_late, self.on_reply = grid, timer, on_late, on_reply

    def __getattr__(self, name: str):
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        if not messages:
            return []
        start = time.monotonic()
        ids = list(self._grid.push_messages(messages))
        pending = {}
        for mid, msg in zip(ids, messages):
            node, stage = msg.metadata.dst_node_id, str(msg.metadata.message_type)
            limit = self.timer.deadline(node, stage)
            if timeout is not None:
                limit = min(limit, timeout)
            pending[mid] = (node, stage, limit)
        replies: list[Message] = []
        poll = POLL_FIRST
        while pending:
            for reply in self._grid.pull_messages(list(pending)):
                mid = reply.metadata.reply_to_message_id
                if mid not in pending:
                    continue
                node, stage, limit = pending.pop(mid)
                took = time.monotonic() - start
                if not reply.has_error():
                    self.timer.observe(node, stage, took)
                if self.on_reply:
                    self.on_reply(node, stage, took, limit, reply)
                replies.append(reply)
            elapsed = time.monotonic() - start
            for mid, (node, stage, limit) in list(pending.items()):
                if elapsed >= limit:
                    del pending[mid]
                    self.on_late(node, stage, limit, self.timer.seen.get((node, stage)))
            if pending:
                time.sleep(poll)
                poll = min(POLL_MAX, 2 * poll)
        return replies


class TooFewNodes(RuntimeError):
    pass


def sample_nodes_bounded(grid, min_available: int, fraction: float, minimum: int, quorum: int, wait: float,
                         on_short: Callable[[int, int, float], None], sleep: float = 1.0) -> list[int]:
    """Node ids for a round: a ``fraction`` of the connected nodes (at least ``minimum``). Waits up to ``wait``
    seconds for ``min_available`` nodes; after that a round goes on with the connected ones if there are at least
    ``quorum`` (``on_short(connected, wanted, waited)`` is told), and stops the run with a clear error if not."""
    import random

    start = time.monotonic()
    while True:
        nodes = list(grid.get_node_ids())
        waited = time.monotonic() - start
        if len(nodes) >= min_available:
            break
        if waited >= wait:
            if len(nodes) < quorum:
                raise TooFewNodes(f"only {len(nodes)} node(s) connected after waiting {waited:.0f}s; this run needs at "
                                  f"least {quorum} (quorum) of its {min_available} (min-nodes). Resume it with "
                                  "`fedchest run resume` once the sites are back")
            on_short(len(nodes), min_available, waited)
            break
        time.sleep(sleep)
    size = min(len(nodes), max(int(len(nodes) * fraction), minimum))
    return random.sample(nodes, size)
