"""The per-phase timeline of a round: the ClientApp's stamps and the server's phase durations."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest
import torch
from flwr.app import ConfigRecord, Context, Error, Message, Metadata, MetricRecord, RecordDict

from client import timeline
from server.timeline import phase_rows, site_phases


def _instruction(delivered_at: str) -> Message:
    meta = Metadata(run_id=1, message_id="m1", src_node_id=0, dst_node_id=1, reply_to_message_id="", group_id="1",
                    created_at=time.time(), ttl=60.0, message_type="train")
    msg = Message(content=RecordDict({"config": ConfigRecord({"x": 1})}), metadata=meta)
    msg.metadata.delivered_at = delivered_at  # as the link sets it (a new Message clears it)
    return msg


def _ctx() -> Context:
    return Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})


def test_the_mod_stamps_the_reply_in_order():
    delivered = datetime.now(timezone.utc)

    def handler(msg, ctx):
        time.sleep(0.02)
        timeline.mark_ready()
        time.sleep(0.02)
        return Message(RecordDict({"metrics": MetricRecord({"a": 1.0})}), reply_to=msg)

    reply = timeline.timeline_mod(_instruction(delivered.isoformat()), _ctx(), handler)
    stamps = dict(reply.content[timeline.RECORD])
    assert stamps["delivered"] == delivered.timestamp()
    assert stamps["delivered"] <= stamps["entered"] < stamps["ready"] < stamps["done"]
    assert stamps["ready"] - stamps["entered"] >= 0.02 and stamps["done"] - stamps["ready"] >= 0.02
    assert stamps["process"] <= stamps["loaded"] <= stamps["entered"]  # this process started, then imported client
    assert dict(reply.content["metrics"]) == {"a": 1.0}


def test_no_stamp_on_an_error_reply_and_no_delivery_in_simulation():
    def failing(msg, ctx):
        return Message(Error(code=0, reason="boom"), reply_to=msg)

    assert timeline.timeline_mod(_instruction(""), _ctx(), failing).has_error()

    def plain(msg, ctx):
        return Message(RecordDict({"metrics": MetricRecord({"a": 1.0})}), reply_to=msg)

    stamps = dict(timeline.timeline_mod(_instruction(""), _ctx(), plain).content[timeline.RECORD])
    assert "delivered" not in stamps and "ready" not in stamps  # a ready mark of an earlier call does not carry over


def test_phases_of_a_fresh_process_add_up_to_the_round_trip():
    pushed = 1000.0
    stamps = {"delivered": 1000.5, "process": 1001.0, "loaded": 1002.0, "entered": 1004.0, "ready": 1004.5,
              "done": 1010.0}
    phases = site_phases(stamps, pushed, pulled=1010.25)
    assert phases == {"to_site": 0.5, "dispatch": 0.5, "runtime": 1.0, "imports": 2.0, "setup": 0.5, "compute": 5.5,
                      "reply": 0.25}
    assert sum(phases.values()) == 1010.25 - pushed


def test_a_warm_process_has_no_dispatch_and_missing_stamps_leave_phases_out():
    warm = site_phases({"delivered": 10.0, "process": 1.0, "loaded": 1.5, "entered": 10.2, "done": 11.0}, pushed=9.0,
                       pulled=11.5)
    assert warm == pytest.approx({"to_site": 1.0, "imports": 0.2, "compute": 0.8, "reply": 0.5})
    simulated = site_phases({"entered": 10.0, "done": 12.0}, pushed=9.5, pulled=12.0)
    assert simulated == {"imports": 0.5, "compute": 2.0, "reply": 0.0}
    assert site_phases({"done": 3.0}, 1.0, 4.0) == {}
    assert site_phases({"entered": "x", "done": 3.0}, 1.0, 4.0) == {}


def test_rows_name_stage_and_phase():
    rows = phase_rows("site-a", "train", {"compute": 1.23456})
    assert rows == [("site-a", "all", None, "phase.train.compute", 1.2346, None)]


def test_the_strategy_records_each_replys_phases_and_its_own(tmp_path):
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from server.records import to_record
    from server.registry import Metric, Registry
    from server.rounds import DeadlineGrid, ReplyTimer
    from server.strategy import FedChestAvg
    from shared_models.metrics import HistogramSpec

    registry = Registry(f"sqlite:///{tmp_path / 'r.db'}")
    run = registry.create_run("t", "s", "h", "cxrlt2026", 1, {}, True)
    strat = FedChestAvg(registry=registry, run_id=run, classes=("A", "B"), spec=HistogramSpec(),
                        reference=to_record({"router.w": torch.zeros(2)}))
    strat.link = DeadlineGrid(object(), ReplyTimer(), lambda *a: None)
    now = time.time()
    strat.link.pushed, strat.link.last_pull = (now - 10.0, now - 9.0), now - 0.5
    reply = Message(RecordDict({"metrics": MetricRecord({"a": 1.0}), "timeline": ConfigRecord(
        {"delivered": now - 8.0, "process": now - 7.0, "entered": now - 4.0, "done": now - 1.0})}),
        reply_to=_instruction(""))
    strat._replied(1, "train", 9.0, 60.0, reply)
    phases = {name: value for _, _, _, name, value, _ in strat.phase_rows}
    assert phases.keys() == {"phase.train.to_site", "phase.train.dispatch", "phase.train.imports",
                             "phase.train.compute", "phase.train.reply"}
    assert phases["phase.train.imports"] == pytest.approx(3.0) and phases["phase.train.compute"] == pytest.approx(3.0)
    assert phases["phase.train.reply"] == pytest.approx(1.0, abs=0.5)
    rows = strat._timing_rows()
    assert {r[3] for r in rows} >= set(phases) and strat.phase_rows == []
    strat._phases_done("train", 1)
    with Session(registry.engine) as s:
        mine = {m.name: m.value for m in s.scalars(select(Metric).where(Metric.site.is_(None)))}
    assert mine["phase.train.push"] == pytest.approx(1.0)
    assert mine["phase.train.aggregate"] == pytest.approx(0.5, abs=0.5)
