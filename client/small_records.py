"""A Flower mod that sends a reply's small records as one ConfigRecord (``shared_models.messages.SMALL_RECORDS``).

A deployed reply moves every record as its own object, one HTTP request per object at each of its three hops
(ClientApp -> SuperNode -> SuperLink -> ServerApp). A train reply's metrics, evaluation summary, site name, timeline
stamps and stage errors are a few kilobytes together but were four or five requests per hop; packed, they are one.
The values are the same values (a MetricRecord's numbers are valid ConfigRecord values), so nothing more or less
leaves the site; the ServerApp unpacks them when it pulls the reply (server/small_records.py). Arrays are left as
they are: SecAgg+ and the packed wire format (shared_models/wire.py) work on the ArrayRecord.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from shared_models.messages import SMALL_RECORDS, pack_small_records


def small_records_mod(msg: Message, context: Context, call_next) -> Message:
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    content = reply.content
    small = [(("metric" if isinstance(r, MetricRecord) else "config"), name, dict(r))
             for name, r in content.items() if isinstance(r, (MetricRecord, ConfigRecord))]
    if len(small) < 2:  # nothing to gain
        return reply
    packed = RecordDict({name: r for name, r in content.items() if not isinstance(r, (MetricRecord, ConfigRecord))})
    packed[SMALL_RECORDS] = ConfigRecord(pack_small_records(small))
    reply.content = packed
    return reply
