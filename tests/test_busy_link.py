"""A busy SuperLink does not end a run. The SuperLink keeps its state in SQLite; Flower 1.41 lets a request wait 5 s
for another's write and then answers HTTP 500 ("database is locked"), and one such answer stops a SuperNode, fails
the ServerApp's grid call or ends its heartbeat thread. CI saw a run fail in round 1 of the dropout test; here the
same deployment on plain ``flower-superlink`` ended ``finished:failed`` each time the lock below was held (both
SuperNodes exited on a 500 to ``pull-messages``). ``fedchest-superlink`` waits up to 60 s instead
(server/deploy/superlink.py), and the ServerApp retries its own calls (server/link_guard.py, tested on its own in
test_link_guard.py). The test holds the link's write lock for 8 s (beyond Flower's 5 s) while round 1 runs; the run
must complete both rounds with both sites training in each, and no request may have failed on the lock. ``fedchest
deploy local`` keeps the link's state in memory; this test asks for the state file, as the coordinator image keeps
it. Marker: e2e."""

from __future__ import annotations

import sqlite3
import time

import pytest

from consortium.sites import make_sites
from consortium.deploy_local import LocalConsortium
from tests.deployments import submit_in_background
from tests.test_resume import _rows

pytestmark = pytest.mark.e2e
HOLD = 8.0  # > Flower 1.41's 5 s busy timeout: a plain flower-superlink answers 500 within it


def _round_started(url: str, rnd: int) -> bool:
    try:
        return _rows(url, "SELECT count(*) FROM rounds WHERE round = :r", r=rnd)[0][0] > 0
    except Exception:  # noqa: BLE001  (the registry file or its tables are not there yet)
        return False


def test_a_run_survives_a_superlink_whose_state_is_locked_beyond_flowers_busy_timeout(tmp_path):
    sites = sorted(make_sites(tmp_path, 2, 60, 32, 4).glob("*/site.toml"))
    run_dir = tmp_path / "run"
    url = f"sqlite:///{run_dir / 'registry.db'}"
    with LocalConsortium(tmp_path / "deployment", insecure=True, persistent_state=True) as c:
        c.start_superlink()
        c.start_sites(sites)
        config = {"num-server-rounds": 2, "local-epochs": 1, "model-preset": "tiny", "image-size": 32,
                  "min-nodes": 2, "out-dir": str(run_dir), "seed": 1, "run-name": "busy-link",
                  "round-timeout": 600.0}

        runner, result = submit_in_background(c, config, timeout=1200)
        end = time.monotonic() + 300
        while not _round_started(url, 1):
            assert runner.is_alive(), f"the run ended before round 1: {result}"
            assert time.monotonic() < end, "round 1 did not start within 300 s"
            time.sleep(0.5)
        link = sqlite3.connect(c.out / "superlink.db", timeout=30)
        try:
            link.execute("BEGIN EXCLUSIVE")  # every writer now waits, and fails after the link's 5 s
            time.sleep(HOLD)
        finally:
            link.rollback()
            link.close()
        runner.join(1200)
        assert not runner.is_alive(), "the run did not end within 20 minutes"
        assert "error" not in result, result.get("error")
    log = (c.logs / "superlink.log").read_text(errors="replace")
    assert "database is locked" not in log  # requests waited for the lock instead of failing
    assert _rows(url, "SELECT max(round) FROM checkpoints")[0][0] == 2
    assert _rows(url, "SELECT status FROM runs")[0][0] == "completed"
    trained = _rows(url, "SELECT round, count(DISTINCT site) FROM metrics WHERE name = 'train_loss' GROUP BY round")
    assert trained == [(1, 2), (2, 2)], trained
