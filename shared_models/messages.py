"""Names both sides of a fedchest message agree on (the ServerApp in server/, the ClientApp in client/): the
records and config keys that are not Flower's own. One place, so neither side spells them from memory."""

from __future__ import annotations

EVALUATE_FIRST = "evaluate-first"
"""Train config key: the round of the model the message carries, to be evaluated before training on it (the run's
``evaluate-with-train``; 0 or absent: no evaluation): a round is one exchange instead of two."""

EVALUATION = "evaluation"
"""The train reply's MetricRecord holding that evaluation: the same summary an evaluate reply carries."""

STAGE_ERRORS = "stage-errors"
"""A train reply's ConfigRecord of the stages that failed when it also evaluated: ``train`` and / or ``evaluate``
-> the site's redacted reason (what an error reply of that stage would have said)."""

SMALL_RECORDS = "small-records"
"""A reply's one ConfigRecord holding all its small records (metrics, evaluation, site, timeline, stage errors):
each an object, that is an HTTP request, at every hop of a deployed run, so a reply travels with one instead of
four or five (``pack_small_records``). The ServerApp unpacks it when it pulls the reply; the apps on either side
see the records as written."""

_KINDS = {"metric": "m", "config": "c"}
_INDEX = "index"  # list of "<kind>:<record name>", in the reply's order: empty records and the order survive


class SmallRecordsError(ValueError):
    """A reply's small-records ConfigRecord is not what ``pack_small_records`` writes."""


def pack_small_records(records: list[tuple[str, str, dict]]) -> dict:
    """``(kind, name, items)`` per record (kind ``metric`` or ``config``) -> the items of one ConfigRecord: an
    index of the records, then ``<kind>:<name>:<key>`` -> value."""
    out: dict = {_INDEX: [f"{_KINDS[kind]}:{name}" for kind, name, _ in records]}
    for kind, name, items in records:
        if ":" in name or not name:
            raise SmallRecordsError(f"record name {name!r}: expected a non-empty name without ':'")
        for key, value in items.items():
            out[f"{_KINDS[kind]}:{name}:{key}"] = value
    return out


def unpack_small_records(items: dict) -> list[tuple[str, str, dict]]:
    """The inverse of ``pack_small_records``; a malformed record raises ``SmallRecordsError`` naming what is
    wrong."""
    kinds = {v: k for k, v in _KINDS.items()}
    index = items.get(_INDEX)
    if not isinstance(index, list) or not all(isinstance(e, str) for e in index):
        raise SmallRecordsError(f"{SMALL_RECORDS}: field {_INDEX!r} must be a list of '<kind>:<name>' strings, "
                                f"got {type(index).__name__}")
    records: dict[str, tuple[str, str, dict]] = {}
    for entry in index:
        tag, _, name = entry.partition(":")
        if tag not in kinds or not name or entry in records:
            raise SmallRecordsError(f"{SMALL_RECORDS}: index entry {entry!r}: expected a unique 'm:<name>' or "
                                    "'c:<name>'")
        records[entry] = (kinds[tag], name, {})
    for key, value in items.items():
        if key == _INDEX:
            continue
        tag, _, rest = key.partition(":")
        name, sep, field = rest.partition(":")
        record = records.get(f"{tag}:{name}")
        if record is None or not sep or not field:
            raise SmallRecordsError(f"{SMALL_RECORDS}: key {key!r} names no record of the index {index}")
        record[2][field] = value
    return list(records.values())
