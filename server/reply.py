"""This side of the typed wire format (shared_models/messages.py): the MetricRecords of a site's reply read as a
typed train reply or evaluation summary; a malformed record raises ``ReplyError`` naming the key."""

from __future__ import annotations

from collections.abc import Mapping

from flwr.app import MetricRecord

from shared_models.messages import EvalSummary, TrainReply


def read_train(record: MetricRecord | Mapping) -> TrainReply:
    """A train reply's ``metrics`` record."""
    return TrainReply.from_metrics(dict(record))


def read_summary(record: MetricRecord | Mapping) -> EvalSummary:
    """An evaluation summary's record."""
    return EvalSummary.from_metrics(dict(record))
