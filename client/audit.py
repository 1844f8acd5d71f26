"""What leaves the site, guarded and on record (a Flower client mod around every handler).

* Errors: the full exception stays in the site's log; what is sent to the server is its type and message with
  local paths replaced by ``<local path>`` (paths can carry patient identifiers, e.g. MIMIC's p10/p10000032/).
* Audit: with ``FEDCHEST_AUDIT_DIR`` set (or ``audit-dir`` in the SuperNode's node config), every reply is
  appended to ``outbound-<node>.jsonl`` there: message type, metric and config records in full, and for arrays
  the names, dtypes and shapes of the tensors in the pack (shared_models/wire.py; never values). A site's privacy
  officer can read exactly what left.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path

from flwr.app import Context, Message

from client.records import from_record
from shared_models.wire import BUNDLE

log = logging.getLogger("fedchest.site")
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\s'\"\\/:,;]+){2,}[\\/]?")


class SiteError(RuntimeError):
    """An error at the site, as it may be sent to the server."""


def redact(text: str) -> str:
    """Local paths (two or more components) replaced by ``<local path>``."""
    return _PATH.sub("<local path>", text)


def _describe(reply: Message) -> dict:
    content = reply.content
    return {
        "metrics": {name: dict(rec) for name, rec in content.metric_records.items()},
        "configs": {name: dict(rec) for name, rec in content.config_records.items()},
        "arrays": {name: _tensors(rec) for name, rec in content.array_records.items()},
    }


def _tensors(record) -> dict[str, list]:
    """Name -> [dtype, shape] of each tensor a record carries: those in its pack (shared_models/wire.py), or the
    record's own Arrays when it is not a pack (SecAgg+'s legacy messages)."""
    if BUNDLE not in record:
        return {k: [a.dtype, list(a.shape)] for k, a in record.items()}
    return {k: [str(v.dtype), list(v.shape)] for k, v in from_record(record).items()}


def _audit_dir(context: Context) -> Path | None:
    where = str(context.node_config.get("audit-dir", "") or os.environ.get("FEDCHEST_AUDIT_DIR", ""))
    return Path(where) if where else None


def _record(context: Context, msg: Message, entry: dict) -> None:
    folder = _audit_dir(context)
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    line = {"time": time.time(), "type": msg.metadata.message_type, "run": msg.metadata.run_id, **entry}
    with open(folder / f"outbound-{context.node_id}.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(line, default=str) + "\n")


def refusal(exc: BaseException) -> str:
    """What the server may read of a failure at this site: its class and message, redacted. The full error,
    traceback included, stays in the site's log."""
    log.error("site handler failed (full error kept here, redacted one sent): %s", exc, exc_info=exc)
    return redact(f"{type(exc).__name__}: {exc}")


def outbound_guard(msg: Message, context: Context, call_next) -> Message:
    try:
        reply = call_next(msg, context)
    except Exception as exc:  # noqa: BLE001 - every failure is reported, redacted
        text = refusal(exc)
        _record(context, msg, {"error": text})
        raise SiteError(text) from None
    if reply.has_error():
        _record(context, msg, {"error": redact(str(reply.error.reason))})
    else:
        _record(context, msg, _describe(reply))
    return reply
