"""``fedchest-supernode``: Flower's ``flower-supernode``, polling within tenths of a second instead of seconds.

Flower 1.41's SuperNode (``flwr.supernode.start_client_internal``) waits in fixed steps that dominate a short
deployed round on an idle link:

- 3 s after every pull that found no message, so a message waits up to 3 s before the site picks it up;
- 0.5 s between checks for the ClientApp's reply (and for a reply object's content), so a finished reply waits up
  to 0.5 s before it is pushed;
- object pulls retried from 1 s, doubling to 10 s, while the ServerApp is still pushing the message's objects.

Here each of these waits is at most ``FEDCHEST_NODE_POLL_S`` seconds (default 0.1): the sleeps of that module are
capped and its object pulls back off from half that to that, with Flower's own time budget for a pull
(``PULL_MAX_TIME``) instead of a count of tries that a short back-off would use up in seconds. The SuperExec the
SuperNode starts polls at the same interval (``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``, Flower's own variable, unless
already set). A SuperNode polling ten times a second costs the SuperLink ten light requests a second; with the
link's state in memory (``fedchest deploy local``'s default) that does not contend with anything.

Everything else, options included, is ``flower-supernode``'s. A Flower whose SuperNode is not shaped as patched
here (other sleeps, no ``pull_objects`` with the back-off parameters) is refused with a clear error rather than run
half-patched. Imports neither torch nor fedchest's models: the site's ClientApps are separate processes.
"""

from __future__ import annotations

import ast
import functools
import inspect
import math
import os
import sys
import time
from types import ModuleType

POLL_ENV = "FEDCHEST_NODE_POLL_S"
DEFAULT_POLL_S = 0.1
POLL_RANGE = (0.01, 3.0)  # 3 s is Flower's longest wait: a cap above it changes nothing
SUPEREXEC_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
# the waits of flwr.supernode.start_client_internal this wrapper caps: (function, seconds) of each time.sleep call
EXPECTED_SLEEPS = sorted([("start_client_internal", 3.0), ("_push_messages", 0.5), ("yield_object_contents", 0.5)])
BACKOFF_PARAMETERS = ("initial_backoff", "backoff_cap", "max_tries_per_object", "max_time")


class FlowerShapeError(RuntimeError):
    """Flower's SuperNode is not shaped as this wrapper expects (another Flower version)."""


def poll_seconds() -> float:
    raw = os.environ.get(POLL_ENV, str(DEFAULT_POLL_S))
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    low, high = POLL_RANGE
    if not (math.isfinite(value) and low <= value <= high):
        raise SystemExit(f"{POLL_ENV} = {raw!r}: expected a number of seconds between {low:g} and {high:g} "
                         "(the longest a SuperNode waits between looking for work)")
    return value


class _Sleeps(ast.NodeVisitor):
    """(innermost enclosing function, seconds) of every ``time.sleep(...)`` call; a wait that is not a number
    literal is recorded as NaN, which matches nothing."""

    def __init__(self) -> None:
        self.where, self.calls = ["<module>"], []

    def visit_FunctionDef(self, node: ast.AST) -> None:
        self.where.append(node.name)
        self.generic_visit(node)
        self.where.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Call(self, node: ast.Call) -> None:
        f = node.func
        if (isinstance(f, ast.Attribute) and f.attr == "sleep" and isinstance(f.value, ast.Name)
                and f.value.id == "time"):
            arg = node.args[0] if len(node.args) == 1 and not node.keywords else None
            number = isinstance(arg, ast.Constant) and isinstance(arg.value, (int, float))
            self.calls.append((self.where[-1], float(arg.value) if number else math.nan))
        self.generic_visit(node)


def sleep_calls(module: ModuleType) -> list[tuple[str, float]]:
    visitor = _Sleeps()
    visitor.visit(ast.parse(inspect.getsource(module)))
    return sorted(visitor.calls)


class CappedTime:
    """The ``time`` module as one Flower module sees it, with ``sleep`` capped at ``cap`` seconds."""

    def __init__(self, cap: float) -> None:
        self.cap = cap

    def __getattr__(self, name: str):
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.cap))


def check_shape(sic: ModuleType) -> None:
    """Refuse a Flower whose SuperNode loop is not the one patched here."""
    from flwr.supercore.inflatable import inflatable_utils

    where = f"flwr {_flwr_version()}: {sic.__name__}"
    if getattr(sic, "time", None) is not time:
        raise FlowerShapeError(f"{where} does not use the time module for its waits")
    found = sleep_calls(sic)
    if found != EXPECTED_SLEEPS:
        raise FlowerShapeError(f"{where} waits with time.sleep at {found}, expected {EXPECTED_SLEEPS}")
    if getattr(sic, "pull_objects", None) is not inflatable_utils.pull_objects:
        raise FlowerShapeError(f"{where} does not pull objects with flwr.supercore.inflatable's pull_objects")
    missing = [p for p in BACKOFF_PARAMETERS if p not in inspect.signature(inflatable_utils.pull_objects).parameters]
    if missing:
        raise FlowerShapeError(f"flwr {_flwr_version()}: pull_objects has no parameter {', '.join(missing)}")


def prompt_pulls(pull, poll: float) -> functools.partial:
    """``pull`` (Flower's ``pull_objects`` or a function that passes its back-off on) backing off from ``poll`` / 2
    to ``poll``, within Flower's own time budget (``PULL_MAX_TIME``) rather than a count of tries."""
    from flwr.supercore.constant import PULL_MAX_TIME

    return functools.partial(pull, initial_backoff=poll / 2, backoff_cap=poll, max_tries_per_object=None,
                             max_time=PULL_MAX_TIME)


def patch(poll: float) -> None:
    """Cap the SuperNode loop's sleeps at ``poll`` seconds and its object pulls' back-off between ``poll`` / 2
    and ``poll`` (within Flower's own ``PULL_MAX_TIME``)."""
    from flwr.supernode import start_client_internal as sic

    check_shape(sic)
    sic.time = CappedTime(poll)
    sic.pull_objects = prompt_pulls(sic.pull_objects, poll)


def superexec_poll(poll: float) -> None:
    """The SuperExec the SuperNode starts inherits this environment: poll at ``poll`` unless the variable is set,
    and refuse a bad value here, before any process starts, with Flower's own check."""
    from flwr.supercore.superexec.run_superexec import _get_task_poll_interval

    os.environ.setdefault(SUPEREXEC_POLL_ENV, f"{poll:g}")
    try:
        _get_task_poll_interval()
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


def _flwr_version() -> str:
    from flwr.supercore.version import package_version

    return package_version


def main() -> None:
    poll = poll_seconds()
    superexec_poll(poll)
    try:
        patch(poll)
    except FlowerShapeError as exc:
        raise SystemExit(f"fedchest-supernode: {exc}; this wrapper is made for Flower 1.41's SuperNode: run "
                         "flower-supernode instead, or a fedchest made for this Flower") from None
    from flwr.supernode.cli import flower_supernode

    sys.argv[0] = "flower-supernode"
    sys.exit(flower_supernode())


if __name__ == "__main__":
    main()
