"""Dropouts in a real deployment (issue 10): a SuperLink and three SuperNodes as processes; one SuperNode is
killed (SIGKILL) after round 1 and started again after round 3. The run does not stall: the killed site costs
rounds their contribution only (the link's "node unavailable" error or its reply deadline, then a missing node once
the SuperLink drops it), every absence is an event naming the site, the site rejoins, and the run completes.

Each message starts a ClientApp task at the SuperNode (forked from the warm worker, or a fresh process with
--cold), so on 2 loaded cores a reply's time varies widely: after rejoining, the site may still miss a round's deadline
(CI once saw it train in round 4 and 5 and miss round 6). That is the deadline working, so the test asks that it
trained again after rejoining and that every round it missed names it in an event (or, for a round sampled
before it rejoined, is that round's nodes_missing event). CI also saw the run fail in
round 1 on a busy SuperLink (HTTP 500 on its locked state); that is what test_busy_link.py covers. Marker: e2e."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from consortium.sites import make_sites, site_plan
from consortium.deploy_local import LocalConsortium
from tests.deployments import submit_in_background
from tests.test_resume import _last_checkpoint, _rows

pytestmark = pytest.mark.e2e


def _wait_round(url: str, rnd: int, runner: threading.Thread, result: dict, timeout: float = 1100.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        done = _last_checkpoint(url) if url.split("///")[1] and os.path.exists(url.split("///")[1]) else None
        if done and done >= rnd:
            return
        assert runner.is_alive(), f"the run ended early: {result}"
        time.sleep(0.5)
    raise AssertionError(f"round {rnd} did not complete within {timeout:.0f}s")


def test_a_killed_supernode_costs_rounds_not_the_run_and_rejoins(tmp_path):
    run_dir = tmp_path / "run"
    url = f"sqlite:///{run_dir / 'registry.db'}"
    with LocalConsortium(tmp_path / "deployment", insecure=True) as c:
        # the warm workers preload (~40 s on a loaded machine) and the link starts while the sites are made
        c.start_workers([folder for _, _, folder in site_plan(3)])
        c.start_superlink()
        sites = sorted(make_sites(tmp_path, 3, 80, 32, 4).glob("*/site.toml"))  # in this process
        procs = c.start_sites(sites)
        config = {"num-server-rounds": 5, "local-epochs": 1, "model-preset": "tiny", "image-size": 32,
                  "min-nodes": 3, "out-dir": str(run_dir), "seed": 1, "run-name": "dropout-test",
                  "round-timeout": 900.0, "deadline-floor": 5.0, "node-wait": 10.0, "quorum": 2}

        runner, result = submit_in_background(c, config, timeout=1500)
        victim, cfg = sites[1].parent.name, sites[1]
        _wait_round(url, 1, runner, result)
        os.killpg(procs[victim].popen.pid, signal.SIGKILL)
        procs[victim].popen.wait(10)
        c.procs.remove(procs[victim])
        _wait_round(url, 3, runner, result)
        c.start_supernode(victim, cfg)
        runner.join(1500)
        assert "error" not in result, result.get("error")
        assert c.status(result["run"]) == "finished:completed"
        c.close()  # every process signalled at once, the link last
    name = victim.split("-", 1)[1]
    events = _rows(url, "SELECT kind, site, round, message FROM events")
    # the link reports the dead node (no heartbeat) or its deadline passes: either way an event names the site,
    # then the node is gone and rounds go on with the quorum
    named = {(k, r) for k, s, r, _ in events if s == name and k in ("straggler", "dropout", "train_error")}
    assert {r for _, r in named} & {2, 3}, events
    assert not any(k in ("straggler", "dropout", "train_error") and s and s.startswith("node-")
                   for k, s, _, _ in events)
    # every round it was down is accounted for: an event naming it, or (once the link has dropped it) the round's
    # nodes_missing event; with rounds of seconds the link may still list the dead node for both
    missing = {r for k, _, r, _ in events if k == "nodes_missing"}
    assert {2, 3} <= {r for _, r in named} | missing, events
    trained = {r for (r,) in _rows(url, "SELECT round FROM metrics WHERE name = 'train_loss' AND site = :s", s=name)}
    assert 1 in trained and not {2, 3} <= trained and trained & {4, 5}, (trained, events)  # it left and came back
    absent = {r for k, s, r, _ in events if s == name and k in ("straggler", "dropout", "train_error")}
    # every later miss is accounted for: an event naming it (connected, but late or failed), or the round's
    # nodes_missing event (its nodes were sampled before it rejoined: rounds overlap, so under load round 4 was
    # often sampled before round 3's checkpoint, the moment the test restarts it; seen with the old and new test)
    assert set(range(1, 6)) - trained <= absent | missing | {2, 3}, (trained, events)
    assert _rows(url, "SELECT max(round) FROM checkpoints")[0][0] == 5
