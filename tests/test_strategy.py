"""FedChestAvg's bookkeeping on hand-made replies: a failed site, a silent site, a valid update."""

import time

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, Metadata, MetricRecord, RecordDict
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.registry import Event, Metric, Registry
from server.strategy import FedChestAvg
from shared_models.metrics import HistogramSpec


def _reply(node: int, content: RecordDict | None = None, error: Error | None = None) -> Message:
    meta = Metadata(run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0, reply_to_message_id="x",
                    group_id="1", created_at=time.time(), ttl=60.0, message_type="train")
    return Message(content=content, metadata=meta) if error is None else Message(error=error, metadata=meta)


def test_errors_dropouts_and_bytes_are_recorded(tmp_path):
    registry = Registry(f"sqlite:///{tmp_path / 'r.db'}")
    run = registry.create_run("t", "s", "h", "cxrlt2026", 1, {}, True)
    ref = ArrayRecord({"router.w": torch.zeros(2, 3)})
    strat = FedChestAvg(registry=registry, run_id=run, classes=("A", "B"), spec=HistogramSpec(), reference=ref)
    strat.asked["train"] = {1, 2, 3}
    good = RecordDict({
        "arrays": ArrayRecord({"router.w": torch.ones(2, 3)}),
        "metrics": MetricRecord({"num-examples": 10, "count.router": 10.0, "train_pos": [1, 0],
                                 "train_annotated": [10, 10], "train_seconds": 2.5}),
        "site": ConfigRecord({"name": "alpha", "synthetic": True}),
    })
    arrays, _ = strat.aggregate_train(1, [_reply(1, good), _reply(2, error=Error(0, "CUDA out of memory"))])
    assert np.allclose(arrays["router.w"].numpy(), 1.0)
    with Session(registry.engine) as s:
        events = {(e.kind, e.site) for e in s.scalars(select(Event))}
        sent = s.scalar(select(Metric.value).where(Metric.name == "update_bytes", Metric.site == "alpha"))
    assert events == {("train_error", "node-2"), ("dropout", "node-3")}
    assert 6 * 4 <= sent <= 6 * 4 + 256  # six float32 values plus the serialised array header


def test_error_line_keeps_what_went_wrong():
    from server.strategy import error_line

    ray = ("<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'\x1b[36mray::ClientAppActor.run()\x1b[39m\n"
           "  File \"x.py\", line 3, in f\n    raise SiteConfigError(msg)\n"
           "client.site_config.SiteConfigError: /s/site.toml: this run trains at image-size 64 px'>\n")
    assert error_line(ray) == "client.site_config.SiteConfigError: /s/site.toml: this run trains at image-size 64 px"
    assert error_line(None) == "unknown error"
