"""The global model and updates as Flower ArrayRecords in the packed wire format (shared_models/wire.py): a few
large Arrays per message, read back (``from_record``) as read-only views on the message bytes (the site copies them
into its model)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flwr.app import Array, ArrayRecord

from shared_models.wire import read_arrays as from_record  # noqa: F401 - this side's reader
from shared_models.wire import wire_arrays


def to_record(state: Mapping[str, Any], consume: bool = False) -> ArrayRecord:
    """``state`` packed one buffer per dtype (the fewest Flower objects: a tiny-preset train message is 10, against
    16 with a buffer per parameter group and 622 with an Array per tensor, and each object is a request at each of
    the link's hops); with ``consume`` each tensor leaves ``state`` once packed."""
    record = ArrayRecord()
    for name, fields in wire_arrays(state, None, consume):
        record[name] = Array(**fields)
    return record
