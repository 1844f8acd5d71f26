"""The global model and updates as Flower ArrayRecords in the packed wire format (shared_models/wire.py): one
large Array per message, read back (``from_record``) as read-only views on the message bytes (the site copies them
into its model)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flwr.app import Array, ArrayRecord

from shared_models.wire import read_arrays as from_record  # noqa: F401 - this side's reader
from shared_models.wire import wire_arrays


def to_record(state: Mapping[str, Any], consume: bool = False) -> ArrayRecord:
    """``state`` packed one buffer per dtype, the buffers and the index bundled into one Array (the fewest Flower
    objects, and each is a request at each of the link's hops: a tiny-preset global-model message is 6, a train
    reply with its metrics, evaluation, site and timeline records 9, against 8 / 13 with an Array per buffer and
    ~620 with an Array per tensor); with ``consume`` each tensor leaves ``state`` once packed."""
    record = ArrayRecord()
    for name, fields in wire_arrays(state, None, consume):
        record[name] = Array(**fields)
    return record
