"""Bounded waiting for a round: per-site reply deadlines from measured reply times, and a quorum of connected nodes.

Flower's ``send_and_receive`` waits for every reply up to one timeout, and its node sampling waits forever for
``min_available_nodes``. Here each message gets its own deadline: ``factor`` x the site's expected reply time for
that stage (moving averages of its reported compute seconds and of its link's seconds per byte, times the bytes
of this message and of its recent replies), within [``floor``, ``ceiling``]; with no history yet, the ceiling (the
run's ``round-timeout``). The
round goes on once every message has replied or passed its deadline; a late reply is never pulled, so it cannot
reach a later round. ``DeadlineGrid`` wraps the ServerApp's grid with this; the strategy sees the same API.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from flwr.app import Message

from server.link_guard import prompt_object_pulls, retrying
from server.small_records import unpack_reply

POLL_FIRST, POLL_MAX = 0.05, 0.2  # a reply is picked up within 0.2 s of reaching the link (Flower's grid: 3 s). A
# link whose state is an SQLite file locked under this (3 nodes, 2 cores) when each poll was its own transaction
# next to the nodes' pushes; ``fedchest deploy local`` keeps the link's state in memory, and a busy answer is
# still tried again (``retrying``)


PULL_BUDGET_ENV, PULL_BUDGET_MB = "FEDCHEST_PULL_BUDGET_MB", 256  # replies one pull may bring in at once (estimate)

COMPUTE_KEYS = ("train_seconds", "eval_seconds")  # what a site reports of its own compute time


def message_bytes(msg: Message) -> int:
    """Bytes of the arrays a message carries (what crosses the site's link)."""
    return sum(len(a.data) for record in msg.content.array_records.values() for a in record.values())


def copy_message(msg: Message) -> Message:
    """The same content to the same node as a new message (a new id: ids are hashes that include the time)."""
    md = msg.metadata
    return Message(content=msg.content, dst_node_id=md.dst_node_id, message_type=md.message_type, ttl=md.ttl,
                   group_id=md.group_id)


def compute_seconds(reply: Message) -> float | None:
    """The site's own compute for a reply: its train or evaluate seconds, both when a train reply also carries
    an evaluation (evaluate-with-train)."""
    found = [next((float(record[k]) for k in COMPUTE_KEYS if k in record), None)
             for record in reply.content.metric_records.values()]
    found = [v for v in found if v is not None]
    return sum(found) if found else None


@dataclass
class ReplyTimer:
    """Reply deadlines per (node, stage). With what a site reports of its compute time and the bytes each way,
    the expected reply time is split into compute (an average per stage) and transfer (seconds per byte moved,
    per node: the link), so a bigger message gets proportionally more transfer time and a node's link speed learnt
    in one stage carries over to another. The transfer term is (reply time - compute) / bytes, which includes the
    link's fixed delays (the SuperNode's polling), so it errs long for messages larger than the ones measured."""

    factor: float = 3.0
    floor: float = 30.0
    ceiling: float = 600.0
    smoothing: float = 0.5  # weight of the newest measurement in the moving averages
    seen: dict[tuple[int, str], float] = field(default_factory=dict)  # (node, stage) -> reply seconds
    compute: dict[tuple[int, str], float] = field(default_factory=dict)  # (node, stage) -> site-reported seconds
    back: dict[tuple[int, str], float] = field(default_factory=dict)  # (node, stage) -> reply bytes
    link: dict[int, float] = field(default_factory=dict)  # node -> transfer seconds per byte moved

    def _mix(self, table: dict, key, value: float) -> None:
        past = table.get(key)
        table[key] = value if past is None else self.smoothing * value + (1 - self.smoothing) * past

    def expected(self, node: int, stage: str, bytes_out: int | None = None) -> float | None:
        """Seconds this node is expected to take to reply to a ``stage`` message of ``bytes_out`` bytes."""
        past = self.seen.get((node, stage))
        if past is None or bytes_out is None or (node, stage) not in self.compute or node not in self.link:
            return past
        return self.compute[(node, stage)] + self.link[node] * (bytes_out + self.back[(node, stage)])

    def deadline(self, node: int, stage: str, bytes_out: int | None = None) -> float:
        """Seconds this node gets to reply: ``factor`` x expected, within [floor, ceiling]; the ceiling (the run's
        round timeout) with no history."""
        expected = self.expected(node, stage, bytes_out)
        return self.ceiling if expected is None else min(self.ceiling, max(self.floor, self.factor * expected))

    def observe(self, node: int, stage: str, seconds: float, bytes_out: int | None = None,
                bytes_back: int | None = None, compute: float | None = None) -> None:
        self._mix(self.seen, (node, stage), seconds)
        if compute is not None and bytes_out is not None and bytes_back is not None:
            compute = min(compute, seconds)
            self._mix(self.compute, (node, stage), compute)
            self._mix(self.back, (node, stage), float(bytes_back))
            self._mix(self.link, node, (seconds - compute) / max(1, bytes_out + bytes_back))


class DeadlineGrid:
    """A grid whose ``send_and_receive`` gives each message its own deadline (``ReplyTimer``) and reports the
    nodes that missed theirs to ``on_late(node, stage, deadline, recent)``; everything else is the wrapped grid's."""

    def __init__(self, grid, timer: ReplyTimer, on_late: Callable[[int, str, float, float | None], None],
                 on_reply: Callable[[int, str, float, float, Message], None] | None = None) -> None:
        self._grid, self.timer, self.on_late, self.on_reply = grid, timer, on_late, on_reply
        self.pushed: tuple[float, float] | None = None  # Unix times the last push started and ended
        self.last_pull: float | None = None  # Unix time the last reply was pulled
        self.budget = pull_budget()  # read at the start: a bad value fails the run before its first round
        if hasattr(type(grid), "_runtime_client"):  # a deployed run's HTTP grid, not the simulation's
            prompt_object_pulls()

    def __getattr__(self, name: str):
        return getattr(self._grid, name)

    def get_node_ids(self) -> list[int]:
        return retrying(lambda: list(self._grid.get_node_ids()), "a node listing")

    def push_messages(self, messages: list[Message]) -> list[str]:
        """A push that failed part-way may have left some of its messages on the link: a retry sends fresh copies
        (new message ids), so nothing of the failed push is mistaken for this one's."""
        def push() -> list[str]:
            nonlocal messages
            try:
                return list(self._grid.push_messages(messages))
            except Exception:
                messages = [copy_message(m) for m in messages]
                raise
        return retrying(push, "a push of messages")

    def pull_messages(self, message_ids: list[str]) -> list[Message]:
        return retrying(lambda: list(self._grid.pull_messages(message_ids)), "a pull of replies")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterator[Message]:
        """Pushes now; the replies come as they are pulled, one message at a time, so a consumer that folds each
        reply in and lets it go holds at most one pull's replies (``pull_groups``: a budget of bytes), not the
        round's (``FedChestAvg.aggregate_train`` does)."""
        messages = list(messages)
        start, wall = time.monotonic(), time.time()
        ids = self.push_messages(messages) if messages else []
        self.pushed, self.last_pull = (wall, time.time()), None
        pending, sizes = {}, {}
        for mid, msg in zip(ids, messages):
            node, stage = msg.metadata.dst_node_id, str(msg.metadata.message_type)
            size = sizes.setdefault(id(msg.content), message_bytes(msg))  # one record is shared by every message
            limit = self.timer.deadline(node, stage, size)
            if timeout is not None:
                limit = min(limit, timeout)
            pending[mid] = (node, stage, limit, size)
        return self._replies(pending, dict(zip(ids, messages)), start)

    def _replies(self, pending: dict[str, tuple[int, str, float, int]], sent: dict[str, Message], start: float
                 ) -> Iterator[Message]:
        poll = POLL_FIRST
        while pending:
            elapsed = time.monotonic() - start
            for mid, (node, stage, limit, size) in list(pending.items()):  # past its deadline: never pulled
                if elapsed >= limit:
                    del pending[mid]
                    self.on_late(node, stage, limit, self.timer.expected(node, stage, size))
            for group in pull_groups(pending, self.budget):
                for reply in self.pull_messages(group):
                    mid = reply.metadata.reply_to_message_id
                    if mid not in pending:
                        continue
                    node, stage, limit, size = pending.pop(mid)
                    reply = unpack_reply(reply, sent.pop(mid))
                    took, self.last_pull = time.monotonic() - start, time.time()
                    if not reply.has_error():
                        self.timer.observe(node, stage, took, size, message_bytes(reply), compute_seconds(reply))
                    if self.on_reply:
                        self.on_reply(node, stage, took, limit, reply)
                    yield reply
            if pending:
                next_deadline = min(limit for _, _, limit, _ in pending.values()) - (time.monotonic() - start)
                time.sleep(max(0.01, min(poll, next_deadline)))
                poll = min(POLL_MAX, 2 * poll)


def pull_budget() -> int:
    """Bytes of replies one pull may bring in (``FEDCHEST_PULL_BUDGET_MB``, default 256 MiB)."""
    raw = os.environ.get(PULL_BUDGET_ENV, str(PULL_BUDGET_MB))
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"{PULL_BUDGET_ENV} = {raw!r}: expected a positive number of MiB (the replies one pull "
                         "of the ServerApp may hold in memory at once)")
    return int(value * (1 << 20))


def pull_groups(pending: dict[str, tuple[int, str, float, int]], budget: int) -> list[list[str]]:
    """The pending message ids in pulls of at most ``budget`` bytes of expected replies (each reply estimated at
    the size of the message it answers; a message bigger than the budget is a pull of its own). Small replies,
    such as a tiny model's or any evaluation summary, all come in one request per poll instead of one each; a
    large model's updates still arrive, and are folded in and let go, one at a time."""
    groups: list[list[str]] = []
    used = budget
    for mid, (_node, _stage, _limit, size) in pending.items():
        if not groups or used + size > budget:
            groups.append([])
            used = 0
        groups[-1].append(mid)
        used += size
    return groups


class TooFewNodes(RuntimeError):
    pass


def sample_nodes_bounded(grid, min_available: int, fraction: float, minimum: int, quorum: int, wait: float,
                         on_short: Callable[[int, int, float], None], sleep: float = 0.25) -> list[int]:
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
