"""``fedchest-superlink``: Flower's ``flower-superlink``, with a longer SQLite busy timeout for its state.

The SuperLink serves every party from one process and keeps its state in one SQLite file; a request waits at most
5 s (Flower 1.41's ``busy_timeout``) for another request's write to finish and then fails with HTTP 500
("database is locked"). On a loaded machine (two cores, ClientApps training next to the link) writes take longer
than that, and in Flower 1.41 one 500 stops a SuperNode (it exits after ``pull-messages`` fails), fails the
ServerApp's grid call, or ends the ServerApp's heartbeat thread: a run is lost to a moment of load. Here the link
waits up to ``FEDCHEST_LINK_BUSY_MS`` (default 60 000 ms) instead, so a busy moment costs time, not the run.
The SuperExec the link starts (which starts the ServerApp) looks for tasks every 0.1 s instead of Flower's 1 s,
unless ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL`` is set. Everything else, options included, is ``flower-superlink``'s;
the ServerApp guards its own calls as well (``server/link_guard.py``).
"""

from __future__ import annotations

import os
import sys

DEFAULT_BUSY_MS = 60_000
SUPEREXEC_POLL_ENV, SUPEREXEC_POLL_S = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.1"  # Flower's default: 1 s


def busy_ms() -> int:
    raw = os.environ.get("FEDCHEST_LINK_BUSY_MS", str(DEFAULT_BUSY_MS))
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise SystemExit(f"FEDCHEST_LINK_BUSY_MS = {raw!r}: expected a whole number of milliseconds (0 or more)")
    return value


def patch_busy_timeout(ms: int) -> None:
    """Flower's SQLite pragmas, with ``busy_timeout`` = ``ms``, for every state database opened after this."""
    from flwr.supercore import sql_mixin

    pragmas = tuple((name, str(ms) if name == "busy_timeout" else value) for name, value in sql_mixin.SQLITE_PRAGMAS)
    if "busy_timeout" not in dict(pragmas):
        raise RuntimeError("flwr.supercore.sql_mixin.SQLITE_PRAGMAS has no busy_timeout: this Flower version "
                           "sets its SQLite pragmas differently; run flower-superlink instead")
    sql_mixin.SQLITE_PRAGMAS = pragmas


def main() -> None:
    patch_busy_timeout(busy_ms())
    os.environ.setdefault(SUPEREXEC_POLL_ENV, SUPEREXEC_POLL_S)  # the SuperExec this link starts inherits it
    from flwr.superlink.cli import flower_superlink

    sys.argv[0] = "flower-superlink"
    sys.exit(flower_superlink())


if __name__ == "__main__":
    main()
