"""The overhead per round ``fedchest deploy local`` prints (server/deploy/overhead.py): each round's interval
minus its slowest site's own train + evaluate seconds, from the registry's rows."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import update

from server.deploy.overhead import describe, round_overheads
from server.registry import Registry
from server.registry.models import Round


def test_overhead_is_the_round_interval_minus_the_slowest_sites_compute(tmp_path):
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    reg = Registry(url)
    run = reg.create_run("r", "fedavg", "routed", "cxr", 3, {}, synthetic=True)
    other = reg.create_run("other", "fedavg", "routed", "cxr", 1, {}, synthetic=True)
    t0 = datetime(2026, 1, 1, 12, 0, 0)
    # round 1: 10 s from its start; round 2: 4 s after round 1's end; round 3 never finished
    bounds = {1: (t0, t0 + timedelta(seconds=10)), 2: (t0 + timedelta(seconds=11), t0 + timedelta(seconds=14)),
              3: (t0 + timedelta(seconds=15), None)}
    for rnd, (start, end) in bounds.items():
        reg.start_round(run, rnd)
        with reg.engine.begin() as c:
            c.execute(update(Round).where(Round.run_id == run, Round.round == rnd)
                      .values(started_at=start, finished_at=end))
    reg.add_metrics(run, 1, [("a", "all", None, "train_seconds", 3.0, 10),
                             ("a", "all", None, "eval_seconds", 1.0, 10),
                             ("b", "all", None, "train_seconds", 3.5, 10), ("b", "all", None, "eval_seconds", 0.25, 10),
                             ("b", "all", None, "train_loss", 99.0, 10), (None, "all", None, "eval_seconds", 50.0, 0)])
    reg.add_metrics(run, 2,
                    [("a", "all", None, "train_seconds", 1.0, 10), ("b", "all", None, "train_seconds", 2.5, 10)])
    reg.add_metrics(run, 3, [("a", "all", None, "train_seconds", 1.0, 10)])
    reg.add_metrics(other, 1, [("a", "all", None, "train_seconds", 100.0, 10)])
    rows = round_overheads(url, run)
    assert [(r.round, r.interval, r.compute, r.site) for r in rows] == [(1, 10.0, 4.0, "a"), (2, 4.0, 2.5, "b")]
    assert [r.overhead for r in rows] == [6.0, 1.5]
    text = describe(rows)
    assert text.splitlines()[0].endswith("median 3.75s over 2 round(s)")
    assert "round 2: 4.00s interval - 2.50s compute (b) = 1.50s" in text
    assert "no finished round" in describe(round_overheads(url, "no-such-run"))
