"""A reply's small records travel as one ConfigRecord and come back as the handler wrote them."""

from __future__ import annotations

import time

import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from client.small_records import small_records_mod
from server.small_records import MALFORMED_REPLY, unpack_reply
from shared_models.messages import SMALL_RECORDS, SmallRecordsError, pack_small_records, unpack_small_records


def _sent() -> Message:
    meta = Metadata(run_id=1, message_id="m1", src_node_id=0, dst_node_id=7, reply_to_message_id="", group_id="2",
                    created_at=time.time(), ttl=60.0, message_type="train")
    return Message(content=RecordDict({"config": ConfigRecord({"server-round": 2})}), metadata=meta)


def _handler_reply(sent: Message) -> Message:
    import numpy as np

    content = RecordDict({
        "arrays": ArrayRecord({"pack/bundle": Array(np.arange(16, dtype=np.uint8))}),
        "metrics": MetricRecord({"train_seconds": 1.5, "n": 120, "pos.experts": [1, 2, 3], "hist.x": [0.5, 0.25]}),
        "site": ConfigRecord({"name": "site-a", "synthetic": True}),
        "evaluation": MetricRecord({}),
        "timeline": ConfigRecord({"entered": 1.0, "done": 2.0}),
    })
    return Message(content, reply_to=sent)


def _records(msg: Message) -> dict:
    return {name: (type(r).__name__, dict(r)) for name, r in msg.content.items() if not isinstance(r, ArrayRecord)}


def test_a_reply_travels_with_one_small_record_and_unpacks_to_what_the_handler_wrote():
    sent = _sent()
    wrote = _records(_handler_reply(sent))
    reply = small_records_mod(sent, None, lambda m, c: _handler_reply(m))
    assert set(reply.content) == {"arrays", SMALL_RECORDS}
    # message, record dict, array record, array, chunk and one record, against five records before
    assert len(get_all_nested_objects(reply)) == 6 < len(get_all_nested_objects(_handler_reply(sent)))
    back = unpack_reply(reply, sent)
    assert _records(back) == wrote  # names, record types, keys, values and value types
    assert [type(v) for v in back.content["metrics"].values()] == [float, int, list, list]
    assert list(back.content) == ["arrays", "metrics", "site", "evaluation", "timeline"]
    assert back.content["arrays"]["pack/bundle"].numpy().tolist() == list(range(16))


def test_replies_with_an_error_or_one_record_pass_unchanged():
    sent = _sent()
    one = Message(RecordDict({"metrics": MetricRecord({"a": 1.0})}), reply_to=sent)
    assert small_records_mod(sent, None, lambda m, c: one).content.metric_records["metrics"]["a"] == 1.0
    assert unpack_reply(one, sent) is one


@pytest.mark.parametrize("items, words", [
    ({"m:metrics:a": 1.0}, "must be a list"),
    ({"index": ["x:metrics"]}, "index entry 'x:metrics'"),
    ({"index": ["m:metrics", "m:metrics"]}, "unique"),
    ({"index": ["m:metrics"], "m:other:a": 1.0}, "names no record"),
    ({"index": ["m:metrics"], "m:metrics": 1.0}, "names no record"),
    ({"index": ["m:metrics"], "m:metrics:a": "text"}, "MetricRecord"),
])
def test_a_malformed_packed_record_becomes_an_error_reply_naming_the_problem(items, words):
    sent = _sent()
    reply = Message(RecordDict({SMALL_RECORDS: ConfigRecord(items)}), reply_to=sent)
    out = unpack_reply(reply, sent)
    assert out.has_error() and out.error.code == MALFORMED_REPLY
    assert out.metadata.reply_to_message_id == "m1" and out.metadata.src_node_id == 7
    if words != "MetricRecord":
        assert words in out.error.reason


def test_pack_refuses_names_it_could_not_unpack():
    with pytest.raises(SmallRecordsError, match="without ':'"):
        pack_small_records([("metric", "a:b", {})])
    assert unpack_small_records(pack_small_records([("config", "x", {"k:v": "w"})])) == [("config", "x", {"k:v": "w"})]
