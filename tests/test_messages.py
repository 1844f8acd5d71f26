"""The typed wire format (shared_models/messages.py): each type to Flower records and back, through the small-records
packing a deployed reply travels in, with the keys the wire has always had; malformed records name their key."""

from __future__ import annotations

import math

import pytest
from flwr.app import ConfigRecord, MetricRecord

from client.reply import summary_record, train_record
from server.registry import Registry
from server.reply import read_summary, read_train
from shared_models.messages import (EvalSummary, MetricRow, ReplyError, ScopeSummary, TrainReply,
                                    pack_small_records, unpack_small_records)


def _train_reply() -> TrainReply:
    return TrainReply(
        12, {"router": 9.0, "experts.PA": 4.0}, {"experts.PA": [1.0, 0.0, 3.0]}, train_pos=[1, 0, 3],
        train_annotated=[12, 12, 10], views={"PA": 4, "AP": 5, "LAT": 3}, cooc=[1, 0, 0, 0, 0, 0, 0, 0, 3],
        cooc_den=[12] * 9, extra={"train_loss": 0.25, "train_seconds": 1.5, "dp_epsilon": 0.7})


def _through_the_wire(record: MetricRecord) -> MetricRecord:
    """The record as the ServerApp sees it: packed with the reply's other small records and unpacked."""
    packed = ConfigRecord(pack_small_records([("metric", "metrics", dict(record)),
                                              ("config", "site", {"name": "a"})]))
    (kind, name, items), _ = unpack_small_records(dict(packed))
    assert (kind, name) == ("metric", "metrics")
    return MetricRecord(items)


def test_a_train_reply_round_trips_with_the_keys_the_wire_always_had():
    reply = _train_reply()
    record = train_record(reply)
    assert dict(record) == {
        "num-examples": 12, "count.router": 9.0, "count.experts.PA": 4.0, "pos.experts.PA": [1.0, 0.0, 3.0],
        "train_pos": [1, 0, 3], "train_annotated": [12, 12, 10], "n.PA": 4, "n.AP": 5, "n.LAT": 3,
        "cooc": [1, 0, 0, 0, 0, 0, 0, 0, 3], "cooc_den": [12] * 9, "train_loss": 0.25, "train_seconds": 1.5,
        "dp_epsilon": 0.7}
    assert read_train(_through_the_wire(record)) == reply
    ct = TrainReply(3, {"ct.encoder": 3.0}, ct_train_pos=[0, 1], ct_train_annotated=[3, 3])
    assert read_train(train_record(ct)) == ct and read_train(train_record(ct)).train_pos is None


def test_a_train_reply_keeps_only_the_groups_it_sends():
    reply = _train_reply()
    reply.keep_groups({"router"})
    assert reply.group_counts == {"router": 9.0} and reply.group_positives == {}


@pytest.mark.parametrize("items, key", [
    ({"count.router": 1.0}, "num-examples"),
    ({"num-examples": "12"}, "num-examples"),
    ({"num-examples": 12, "count.router": [1.0]}, "count.router"),
    ({"num-examples": 12, "pos.router": 3.0}, "pos.router"),
    ({"num-examples": 12, "train_pos": [1, "x"]}, "train_pos"),
    ({"num-examples": 12, "cooc": 4}, "cooc"),
    ({"num-examples": 12, "n.PA": True}, "n.PA"),
])
def test_a_malformed_train_reply_names_its_key(items, key):
    with pytest.raises(ReplyError, match=f"train reply: '{key}'"):
        read_train(items)


def test_extra_keys_may_not_shadow_typed_fields():
    with pytest.raises(ReplyError, match="train_pos"):
        TrainReply(1, extra={"train_pos": [1]}).to_metrics()
    with pytest.raises(ReplyError, match="router_total"):
        EvalSummary(extra={"router_total": 3}).to_metrics()


def _scope(n: int) -> ScopeSummary:
    return ScopeSummary([n, 0, 1, 0], [0, 2, 0, n], [0.5, math.nan], [0.75, 1.0], [0.0, 0.5], n, 1)


def test_an_evaluation_summary_round_trips_with_its_families_as_sent():
    summary = EvalSummary(
        num_examples=7, scopes={"all": _scope(7), "PA": _scope(4), "AP": _scope(3), "LAT": _scope(0)},
        router_correct=5, router_total=7, eval_seconds=0.5,
        extra={"zs.descriptive.n.all": 7, "loc_images": 2})
    summary.scopes["all"].band_map = [0.5, math.nan, 0.25]
    record = summary_record(summary)
    items = dict(record)
    assert items["hist_pos.PA"] == [4, 0, 1, 0] and items["n.LAT"] == 0 and items["withheld.all"] == 1
    assert items["band_map.all"][0] == 0.5 and "band_map.PA" not in items
    assert items["router_total"] == 7 and items["eval_seconds"] == 0.5 and items["zs.descriptive.n.all"] == 7
    back = read_summary(_through_the_wire(record))
    assert back.to_metrics().keys() == items.keys()
    assert back.scopes["PA"] == summary.scopes["PA"] and back.extra == summary.extra
    assert (back.router_correct, back.router_total, back.num_examples) == (5, 7, 7)
    ct = EvalSummary(num_examples=2, eval_seconds=0.1, dp_evaluation=2, extra={"ct.r_n": 2, "ct.n.all": 2})
    assert read_summary(summary_record(ct)) == ct and read_summary(summary_record(ct)).scopes == {}


def test_a_withheld_summary_reads_with_nothing_but_its_mode():
    back = read_summary({"dp_evaluation": 0})
    assert back.dp_evaluation == 0 and back.num_examples is None and back.scopes == {}
    with pytest.raises(ReplyError, match="'num-examples' is missing"):
        back.require("num_examples")


@pytest.mark.parametrize("drop, bad, key", [
    ("hist_neg.PA", None, "hist_neg.PA"),
    (None, ("ap.all", 0.5), "ap.all"),
    (None, ("n.AP", [3]), "n.AP"),
    (None, ("router_total", "7"), "router_total"),
])
def test_a_malformed_evaluation_summary_names_its_key(drop, bad, key):
    items = summary_record(EvalSummary(num_examples=7, scopes={s: _scope(2) for s in ("all", "PA", "AP", "LAT")}))
    items = dict(items)
    items.pop(drop, None)
    if bad is not None:
        items[bad[0]] = bad[1]
    with pytest.raises(ReplyError, match=f"'{key}'"):
        read_summary(items)


def test_metric_rows_are_what_the_registry_stores(tmp_path):
    from sqlalchemy.orm import Session

    from server.registry import Metric

    registry = Registry(f"sqlite:///{tmp_path / 'r.db'}")
    run = registry.create_run("r", "FedChestAvg", "experts", "ls", 1, {}, synthetic=True)
    rows = [MetricRow("a", "all", None, "train_loss", 0.5, 10), MetricRow(None, "PA", "Effusion", "ap", math.nan),
            ("b", "all", None, "update_norm", 1.0, None)]  # a plain 6-tuple is still a row
    assert registry.add_metrics(run, 1, rows) == 3
    with Session(registry.engine) as s:
        stored = sorted((m.site or "", m.projection, m.class_name, m.name, m.value, m.n)
                        for m in s.query(Metric).filter_by(run_id=run))
    assert stored == [("", "PA", "Effusion", "ap", None, None), ("a", "all", None, "train_loss", 0.5, 10),
                      ("b", "all", None, "update_norm", 1.0, None)]
    assert MetricRow(*rows[2]) == rows[2] and rows[0]._replace(site="c").site == "c"
