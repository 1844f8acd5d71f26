"""This side of the typed wire format (shared_models/messages.py): a site's train reply and evaluation summary as
the Flower MetricRecords its replies carry."""

from __future__ import annotations

from flwr.app import MetricRecord

from shared_models.messages import EvalSummary, TrainReply


def train_record(reply: TrainReply) -> MetricRecord:
    """A train reply's ``metrics`` record."""
    return MetricRecord(reply.to_metrics())


def summary_record(summary: EvalSummary) -> MetricRecord:
    """An evaluation summary's record (an evaluate reply's ``metrics``, a train reply's ``evaluation``)."""
    return MetricRecord(summary.to_metrics())
