"""FedChestAvg's bookkeeping on hand-made replies: a failed site, a silent site, a valid update."""

import time

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, Metadata, MetricRecord, RecordDict
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.records import from_record, to_record
from server.registry import Event, Metric, Registry
from server.strategy import FedChestAvg
from shared_models.metrics import HistogramSpec
from shared_models.npy import npy_fields
from shared_models.wire import BUNDLE, bundle, pack


def _reply(node: int, content: RecordDict | None = None, error: Error | None = None) -> Message:
    meta = Metadata(run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0, reply_to_message_id="x",
                    group_id="1", created_at=time.time(), ttl=60.0, message_type="train")
    return Message(content=content, metadata=meta) if error is None else Message(error=error, metadata=meta)


def test_errors_dropouts_and_bytes_are_recorded(tmp_path):
    registry = Registry(f"sqlite:///{tmp_path / 'r.db'}")
    run = registry.create_run("t", "s", "h", "cxrlt2026", 1, {}, True)
    ref = to_record({"router.w": torch.zeros(2, 3)})
    strat = FedChestAvg(registry=registry, run_id=run, classes=("A", "B"), spec=HistogramSpec(), reference=ref)
    strat.asked["train"] = {1, 2, 3}
    update = to_record({"router.w": torch.ones(2, 3)})
    good = RecordDict({
        "arrays": update,
        "metrics": MetricRecord({"num-examples": 10, "count.router": 10.0, "train_pos": [1, 0],
                                 "train_annotated": [10, 10], "train_seconds": 2.5}),
        "site": ConfigRecord({"name": "alpha", "synthetic": True}),
    })
    arrays, _ = strat.aggregate_train(1, [_reply(1, good), _reply(2, error=Error(0, "CUDA out of memory"))])
    assert np.allclose(from_record(arrays)["router.w"], 1.0)
    with Session(registry.engine) as s:
        events = {(e.kind, e.site) for e in s.scalars(select(Event))}
        sent = s.scalar(select(Metric.value).where(Metric.name == "update_bytes", Metric.site == "alpha"))
    assert events == {("train_error", "node-2"), ("dropout", "node-3")}
    assert sent == sum(len(a.data) for a in update.values()) > 6 * 4  # six float32 values, headers and the index


def test_a_malformed_pack_is_rejected_and_the_round_goes_on(tmp_path):
    registry = Registry(f"sqlite:///{tmp_path / 'r.db'}")
    run = registry.create_run("t", "s", "h", "cxrlt2026", 1, {}, True)
    strat = FedChestAvg(registry=registry, run_id=run, classes=("A", "B"), spec=HistogramSpec(),
                        reference=to_record({"router.w": torch.zeros(2, 3)}))
    metrics = {"num-examples": 10, "count.router": 10.0, "train_pos": [1, 0], "train_annotated": [10, 10]}

    def reply(node: int, name: str, arrays) -> Message:
        return _reply(node, RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics),
                                        "site": ConfigRecord({"name": name})}))

    buffers = pack({"router.w": torch.ones(2, 3)})
    buffers["pack/index"] = np.frombuffer(b'{"format": "fedchest-pack", "version": 7}', np.uint8)
    bad = ArrayRecord({BUNDLE: Array(**npy_fields(bundle(buffers)))})
    no_index = to_record({"router.w": torch.ones(2, 3)})
    no_index["pack/stray"] = no_index[BUNDLE]  # a pack travels as its bundle alone
    arrays, _ = strat.aggregate_train(1, [reply(1, "alpha", bad), reply(2, "beta", no_index),
                                          reply(3, "gamma", to_record({"router.w": torch.full((2, 3), 2.0)})),
                                          reply(4, "delta", to_record({}))])  # an empty pack: nothing to send
    assert np.allclose(from_record(arrays)["router.w"], 2.0)  # gamma's update alone
    with Session(registry.engine) as s:
        events = sorted((e.kind, e.site, e.message) for e in s.scalars(select(Event)))
    assert [(k, site) for k, site, _ in events] == [("nothing_sent", "delta"), ("update_rejected", "alpha"),
                                                    ("update_rejected", "beta")]
    assert "malformed update: pack/index: format version 7; this side reads version 1" in events[1][2]
    assert "malformed update: a pack travels as the one array pack/bundle" in events[2][2]



def test_error_line_keeps_what_went_wrong():
    from server.strategy import error_line

    ray = ("<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'\x1b[36mray::ClientAppActor.run()\x1b[39m\n"
           "  File \"x.py\", line 3, in f\n    raise SiteConfigError(msg)\n"
           "client.site_config.SiteConfigError: /s/site.toml: this run trains at image-size 64 px'>\n")
    assert error_line(ray) == "client.site_config.SiteConfigError: /s/site.toml: this run trains at image-size 64 px"
    assert error_line(None) == "unknown error"
