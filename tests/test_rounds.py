"""Bounded waiting (issue 10): per-site reply deadlines from measured reply times, late replies never reaching a
later round, and rounds that go on with a quorum of connected nodes instead of waiting forever."""

from __future__ import annotations

import time

import pytest
import torch
from flwr.app import ConfigRecord, Message, Metadata, RecordDict
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.records import to_record
from server.registry import Event, Registry
from server.rounds import DeadlineGrid, ReplyTimer, TooFewNodes, pull_budget, pull_groups, sample_nodes_bounded
from server.strategy import FedChestAvg
from shared_models.metrics import HistogramSpec


def _msg(node: int, mid: str = "", reply_to: str = "", src: int = 0, kind: str = "train") -> Message:
    meta = Metadata(run_id=1, message_id=mid, src_node_id=src, dst_node_id=node, reply_to_message_id=reply_to,
                    group_id="1", created_at=time.time(), ttl=60.0, message_type=kind)
    return Message(content=RecordDict(), metadata=meta)


class FakeGrid:
    """Nodes reply after their delay (None: never); pulls return only the asked ids' replies, once."""

    def __init__(self, delays: dict[int, float | None]) -> None:
        self.delays, self.pushed, self.count = delays, {}, 0

    def get_node_ids(self):
        return list(self.delays)

    def push_messages(self, messages):
        ids = []
        for m in messages:
            self.count += 1
            mid = f"m{self.count}"
            self.pushed[mid] = (m.metadata.dst_node_id, time.monotonic())
            ids.append(mid)
        return ids

    def pull_messages(self, ids):
        out = []
        for mid in ids:
            node, t0 = self.pushed.get(mid, (None, 0))
            delay = self.delays.get(node)
            if node is not None and delay is not None and time.monotonic() - t0 >= delay:
                out.append(_msg(0, reply_to=mid, src=node))
                del self.pushed[mid]
        return out


def test_reply_timer():
    t = ReplyTimer(factor=3, floor=1.0, ceiling=10.0, smoothing=0.5)
    assert t.deadline(1, "train") == 10.0  # no history: the round timeout
    t.observe(1, "train", 2.0)
    assert t.deadline(1, "train") == 6.0 and t.deadline(1, "evaluate") == 10.0
    t.observe(1, "train", 0.1)
    assert t.seen[(1, "train")] == pytest.approx(1.05) and t.deadline(1, "train") == pytest.approx(3.15)
    t.observe(1, "train", 100.0)
    assert t.deadline(1, "train") == 10.0
    t.observe(2, "train", 0.01)
    assert t.deadline(2, "train") == 1.0  # the floor


def test_deadlines_split_compute_from_transfer_so_bigger_messages_get_more_time():
    t = ReplyTimer(factor=2, floor=1.0, ceiling=1000.0, smoothing=1.0)
    t.observe(1, "train", 30.0, bytes_out=80_000_000, bytes_back=20_000_000, compute=10.0)  # 20 s for 100 MB
    assert t.expected(1, "train", 80_000_000) == pytest.approx(30.0)
    assert t.deadline(1, "train", 180_000_000) == pytest.approx(2 * (10.0 + 20.0 * 2))  # twice the bytes moved
    assert t.deadline(1, "train") == pytest.approx(60.0)  # size unknown: the measured reply time
    assert t.deadline(1, "evaluate", 1000) == 1000.0  # no evaluate history: the ceiling
    t.observe(1, "evaluate", 4.0, bytes_out=80_000_000, bytes_back=1000, compute=3.0)
    assert t.expected(1, "evaluate", 80_000_000) == pytest.approx(4.0)
    assert t.expected(1, "train", 80_000_000) == pytest.approx(10.0 + 1.0 / 80_001_000 * 100e6)  # one link per node
    t.observe(2, "train", 5.0)  # a site that reports no compute time: the whole reply time
    assert t.deadline(2, "train", 10**9) == 10.0 and 2 not in t.link


def test_replies_within_the_pull_budget_come_in_one_request_and_big_ones_one_at_a_time(monkeypatch):
    grid = FakeGrid({1: 0.0, 2: 0.0, 3: 0.0})
    asked = []
    pull = grid.pull_messages
    grid.pull_messages = lambda ids: (asked.append(list(ids)), pull(ids))[1]
    dg = DeadlineGrid(grid, ReplyTimer(), lambda *a: None)
    replies = dg.send_and_receive([_msg(n) for n in (1, 2, 3)])
    assert sorted(r.metadata.src_node_id for r in replies) == [1, 2, 3] and asked == [["m1", "m2", "m3"]]

    monkeypatch.setattr("server.rounds.message_bytes", lambda msg: 3 << 20)  # each reply ~3 MiB, budget 5 MiB
    monkeypatch.setenv("FEDCHEST_PULL_BUDGET_MB", "5")
    asked.clear()
    dg = DeadlineGrid(grid, ReplyTimer(), lambda *a: None)
    replies = dg.send_and_receive([_msg(n) for n in (1, 2, 3)])
    first = next(replies)
    assert first.metadata.src_node_id == 1 and asked == [["m4"]]  # nothing else pulled yet
    assert sorted(r.metadata.src_node_id for r in replies) == [2, 3] and asked == [["m4"], ["m5"], ["m6"]]


def test_pull_groups_fill_the_budget_in_order(monkeypatch):
    pending = {f"m{i}": (i, "train", 9.0, size) for i, size in enumerate([4, 4, 2, 9, 0, 1, 30, 1])}
    assert pull_groups(pending, 10) == [["m0", "m1", "m2"], ["m3", "m4", "m5"], ["m6"], ["m7"]]
    assert pull_groups({"a": (1, "train", 1.0, 0)}, 10) == [["a"]]
    for bad in ("0", "-1", "lots"):
        monkeypatch.setenv("FEDCHEST_PULL_BUDGET_MB", bad)
        with pytest.raises(ValueError, match="FEDCHEST_PULL_BUDGET_MB"):
            pull_budget()


def test_a_silent_node_costs_its_deadline_not_the_round_timeout_and_its_late_reply_never_returns():
    late = []
    grid = DeadlineGrid(FakeGrid({1: 0.02, 2: 0.05, 3: 0.8}), ReplyTimer(factor=3, floor=0.3, ceiling=0.5),
                        lambda *a: late.append(a))
    t0 = time.monotonic()
    replies = list(grid.send_and_receive([_msg(n) for n in (1, 2, 3)], timeout=60.0))
    assert time.monotonic() - t0 < 60.0
    assert sorted(r.metadata.src_node_id for r in replies) == [1, 2]
    assert late == [(3, "train", 0.5, None)]
    time.sleep(0.5)  # node 3's reply to round 1 is now waiting at the link
    replies = list(grid.send_and_receive([_msg(n) for n in (1, 2)], timeout=60.0))
    assert sorted(r.metadata.src_node_id for r in replies) == [1, 2]  # nothing from round 1
    seen = grid.timer.seen[(1, "train")]  # push to reply, at the polls' resolution
    assert grid.timer.deadline(1, "train") == min(0.5, max(0.3, 3 * seen)) and grid.get_node_ids() == [1, 2, 3]


def test_sampling_waits_a_bounded_time_then_goes_on_with_a_quorum():
    grid = FakeGrid({1: 0.0, 2: 0.0})
    short = []
    nodes = sample_nodes_bounded(grid, 3, 1.0, 3, quorum=2, wait=0.2, on_short=lambda *a: short.append(a), sleep=0.05)
    assert sorted(nodes) == [1, 2] and short[0][:2] == (2, 3)
    with pytest.raises(TooFewNodes, match="only 2 node\\(s\\) connected .* at least 3 \\(quorum\\) of its 3"):
        sample_nodes_bounded(grid, 3, 1.0, 3, quorum=3, wait=0.1, on_short=lambda *a: None, sleep=0.05)
    assert len(sample_nodes_bounded(FakeGrid({i: 0.0 for i in range(10)}), 2, 0.5, 2, 1, 0.1, print)) == 5


def test_strategy_records_stragglers_once_and_missing_nodes(tmp_path, monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)  # messages are made inside a run
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    registry = Registry(f"sqlite:///{tmp_path / 'r.db'}")
    run = registry.create_run("t", "s", "h", "cxrlt2026", 1, {}, True)
    strat = FedChestAvg(registry=registry, run_id=run, classes=("A", "B"), spec=HistogramSpec(),
                        reference=to_record({"router.w": torch.zeros(2)}), min_available_nodes=3, quorum=1,
                        node_wait=0.1)
    msgs = strat.configure_train(1, to_record({"router.w": torch.zeros(2)}), ConfigRecord({}), FakeGrid({1: 0, 2: 0}))
    assert sorted(m.metadata.dst_node_id for m in msgs) == [1, 2]
    strat._late(2, "train", 30.0, 10.0)
    strat._record_dropouts("train", 1, {1})
    with Session(registry.engine) as s:
        events = [(e.kind, e.site, e.message) for e in s.scalars(select(Event))]
    kinds = [e[0] for e in events]
    assert kinds.count("straggler") == 1 and "dropout" not in kinds and "nodes_missing" in kinds
    straggler = next(e for e in events if e[0] == "straggler")
    assert straggler[1] == "node-2" and "deadline of 30s (3 x its expected 10.0s)" in straggler[2]
