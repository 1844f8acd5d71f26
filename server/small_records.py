"""Unpacks a reply's small records (client/small_records.py packs them into one ConfigRecord for the trip) back
into the records the ClientApp wrote, as the reply is pulled: the strategy, validation and registry see the reply
as the site's handler made it."""

from __future__ import annotations

from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict

from shared_models.messages import SMALL_RECORDS, SmallRecordsError, unpack_small_records

MALFORMED_REPLY = 1001  # an Error code of fedchest's own (Flower's are below 1000)


def unpack_reply(reply: Message, sent: Message) -> Message:
    """``reply`` with its small records unpacked; a reply whose packed record is malformed becomes an error reply
    to ``sent`` saying why (the round goes on without it, as with any failed site)."""
    if reply.has_error() or SMALL_RECORDS not in reply.content.config_records:
        return reply
    content = reply.content
    try:
        records = unpack_small_records(dict(content.config_records[SMALL_RECORDS]))
        unpacked = RecordDict({name: r for name, r in content.items() if name != SMALL_RECORDS})
        for kind, name, items in records:
            if name in unpacked:
                raise SmallRecordsError(f"{SMALL_RECORDS}: record {name!r} is also in the reply itself")
            unpacked[name] = MetricRecord(items) if kind == "metric" else ConfigRecord(items)
    except (SmallRecordsError, TypeError, ValueError) as exc:
        error = Message(Error(code=MALFORMED_REPLY, reason=f"malformed reply from the site: {exc}"), reply_to=sent)
        return error
    reply.content = unpacked
    return reply
