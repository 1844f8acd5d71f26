"""A busy SuperLink (HTTP 500 "database is locked") must not end a run: grid calls are tried again, and the run's
lease is kept by a heartbeat that survives such answers (server/link_guard.py). Flower's own pieces are faked
here at their HTTP boundary; the deployment tests run the guard against a real SuperLink."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from server.link_guard import LinkKeeper, retrying, transient
from server.rounds import DeadlineGrid, ReplyTimer


def _status(code: int) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "http://link/v1/runtime/pull-messages")
    return httpx.HTTPStatusError(f"{code}", request=request, response=httpx.Response(code, request=request))


def _flaky(answers: list):
    """A call that raises or returns the next of ``answers``; counts its calls."""
    calls = []

    def call():
        calls.append(1)
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer
    return call, calls


def test_busy_and_dropped_answers_are_transient_refusals_are_not():
    assert transient(_status(500)) and transient(_status(503)) and transient(httpx.ReadTimeout("slow"))
    assert not transient(_status(403)) and not transient(_status(400)) and not transient(ValueError("bad"))


def test_a_call_is_tried_again_after_busy_answers_and_returns_its_value():
    call, calls = _flaky([_status(500), _status(500), ["reply"]])
    assert retrying(call, "a pull", first_wait=0.01) == ["reply"]
    assert len(calls) == 3


def test_a_refusal_is_raised_at_once():
    call, calls = _flaky([_status(403), ["never"]])
    with pytest.raises(httpx.HTTPStatusError):
        retrying(call, "a pull", first_wait=0.01)
    assert len(calls) == 1


def test_a_link_busy_for_longer_than_the_patience_raises_its_last_answer():
    call, calls = _flaky([_status(500)] * 100)
    t0 = time.monotonic()
    with pytest.raises(httpx.HTTPStatusError):
        retrying(call, "a pull", patience=0.2, first_wait=0.02, max_wait=0.05)
    assert 2 <= len(calls) < 100 and time.monotonic() - t0 < 5


class _BusyGrid:
    """A grid whose link answers the first push, listing and pull with HTTP 500, and answers each pushed
    message with a reply."""

    def __init__(self) -> None:
        self.busy = {"push": 1, "nodes": 1, "pull": 1}
        self.pushes: list[list[str]] = []
        self.replies: dict[str, Message] = {}

    def _maybe_busy(self, what: str) -> None:
        if self.busy[what]:
            self.busy[what] -= 1
            raise _status(500)

    def get_node_ids(self):
        self._maybe_busy("nodes")
        return [7]

    def push_messages(self, messages):
        self.pushes.append([m.object_id for m in messages])
        self._maybe_busy("push")
        for m in messages:
            m.metadata.__dict__["_message_id"] = m.object_id  # as Flower's HttpGrid does on a push
            self.replies[m.object_id] = Message(RecordDict({"m": MetricRecord({"num-examples": 1})}), reply_to=m)
        return [m.object_id for m in messages]

    def pull_messages(self, ids):
        self._maybe_busy("pull")
        return [self.replies.pop(i) for i in ids if i in self.replies]


@pytest.fixture
def task_identity(monkeypatch):
    """What the ServerApp process has: the run a message belongs to."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 3)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def test_a_round_goes_on_through_busy_answers_to_push_list_and_pull(monkeypatch, task_identity):
    monkeypatch.setattr("server.link_guard.time.sleep", lambda s: None)
    inner = _BusyGrid()
    grid = DeadlineGrid(inner, ReplyTimer(floor=5, ceiling=60), on_late=lambda *a: pytest.fail("no reply is late"))
    assert grid.get_node_ids() == [7]
    sent = Message(RecordDict({"c": ConfigRecord({"server-round": 1})}), dst_node_id=7, message_type="train")
    replies = list(grid.send_and_receive([sent]))
    assert inner.busy == {"push": 0, "nodes": 0, "pull": 0}
    first, second = inner.pushes
    assert first == [sent.object_id] and second != first  # the retry pushed a fresh copy, with a new id
    assert [r.metadata.reply_to_message_id for r in replies] == second


class _Client:
    """Flower's Runtime HTTP client at its heartbeat call: busy twice, then accepted."""

    def __init__(self, answers: list) -> None:
        self.answers, self.calls = answers, 0
        self.done = threading.Event()

    def SendTaskHeartbeat(self, _request):  # noqa: N802  (Flower's name)
        self.calls += 1
        answer = self.answers.pop(0) if self.answers else True
        if not self.answers:
            self.done.set()
        if isinstance(answer, BaseException):
            raise answer
        return type("Res", (), {"success": answer})()


def _http_grid(client: _Client):
    class HttpGrid:  # what LinkKeeper looks for: a grid with a Runtime HTTP client (Flower's deployment grid)
        @property
        def _runtime_client(self):
            return client
    return HttpGrid()


def test_the_heartbeat_keeps_beating_through_busy_answers(monkeypatch):
    monkeypatch.setattr("flwr.supercore.heartbeat.exponential", lambda **kw: iter([0.01] * 100))
    client = _Client([_status(500), _status(500), True])
    keeper = LinkKeeper(_http_grid(client)).start()
    try:
        assert client.done.wait(10), f"{client.calls} heartbeat call(s)"
        assert keeper.sender.is_running  # Flower's own sender would have stopped at the first 500
    finally:
        keeper.stop()
    assert client.calls == 3 and not keeper.sender.is_running


def test_the_heartbeat_stops_once_the_link_no_longer_keeps_the_run():
    client = _Client([False])
    keeper = LinkKeeper(_http_grid(client)).start()
    assert client.done.wait(10)
    keeper.sender._thread.join(10)
    assert not keeper.sender.is_running and client.calls == 1


def test_no_heartbeat_on_the_simulation_grid():
    keeper = LinkKeeper(object()).start()
    assert keeper.sender is None
    keeper.stop()


def test_fedchest_superlink_sets_a_longer_busy_timeout_on_flowers_state_database(monkeypatch, tmp_path):
    from flwr.supercore import sql_mixin
    from sqlalchemy import create_engine, event, text

    from server.deploy.superlink import DEFAULT_BUSY_MS, busy_ms, patch_busy_timeout

    monkeypatch.setattr(sql_mixin, "SQLITE_PRAGMAS", sql_mixin.SQLITE_PRAGMAS)  # restored after the test
    monkeypatch.delenv("FEDCHEST_LINK_BUSY_MS", raising=False)
    assert busy_ms() == DEFAULT_BUSY_MS
    patch_busy_timeout(busy_ms())
    engine = create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    event.listen(engine, "connect", sql_mixin._set_sqlite_pragmas)  # as Flower's SqlMixin does
    with engine.connect() as c:
        assert c.execute(text("PRAGMA busy_timeout")).scalar() == DEFAULT_BUSY_MS
        assert c.execute(text("PRAGMA journal_mode")).scalar() == "wal"  # Flower's other pragmas are kept
    engine.dispose()
    monkeypatch.setenv("FEDCHEST_LINK_BUSY_MS", "soon")
    with pytest.raises(SystemExit, match="FEDCHEST_LINK_BUSY_MS = 'soon'"):
        busy_ms()


def test_a_deployed_grid_pulls_reply_objects_with_a_short_back_off(monkeypatch):
    """The link lists a reply before its objects are all pushed; the ServerApp's pulls of them back off from
    0.05 s to 0.2 s (Flower: 1 s to 10 s), within Flower's time budget, once a deployed (HTTP) grid is wrapped."""
    import functools

    from flwr.supercore.constant import PULL_MAX_TIME
    from flwr.supercore.inflatable import inflatable_utils
    from flwr.superlink.grid import http_grid

    from server.link_guard import PULL_BACKOFF, prompt_object_pulls

    monkeypatch.setattr(http_grid, "pull_objects", inflatable_utils.pull_objects)  # restored after the test
    DeadlineGrid(object(), ReplyTimer(), lambda *a: None)  # the simulation's grid: Flower's pulls untouched
    assert http_grid.pull_objects is inflatable_utils.pull_objects

    class HttpLike:
        _runtime_client = None

    DeadlineGrid(HttpLike(), ReplyTimer(), lambda *a: None)
    pull = http_grid.pull_objects
    assert isinstance(pull, functools.partial) and pull.func is inflatable_utils.pull_objects
    assert pull.keywords == {"initial_backoff": PULL_BACKOFF[0], "backoff_cap": PULL_BACKOFF[1],
                             "max_tries_per_object": None, "max_time": PULL_MAX_TIME}
    prompt_object_pulls()  # once per process: not wrapped twice
    assert http_grid.pull_objects is pull
    monkeypatch.setattr(http_grid, "pull_objects", print)
    with pytest.raises(RuntimeError, match="does not pull objects with"):
        prompt_object_pulls()
