"""Fifty sites (issue 10, scale): a tiny-preset simulation of 50 synthetic sites completes 2 rounds, the sites
train and evaluate in both, and the registry names all fifty. A small site whose small-count rule holds back its
whole update is a `nothing_sent` event, not a rejection."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from benchmarks.scale import simulate
from server.registry import Event, Registry, Round, Site


def test_fifty_sites_complete_two_rounds(tmp_path):
    out = simulate(tmp_path, 50, rounds=2, images=16, probe=False)
    summary = out["summary"]
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    with Session(Registry(summary["db_url"]).engine) as s:
        run = summary["run_id"]
        assert s.scalar(select(func.count(Site.id)).where(Site.run_id == run)) == 50
        rounds = s.execute(select(Round.round, Round.n_train, Round.n_evaluate).where(Round.run_id == run)).all()
        problems = s.execute(select(Event.kind, Event.site, Event.message).where(
            Event.run_id == run, Event.kind.in_(("train_error", "evaluate_error", "update_rejected", "dropout",
                                                "straggler")))).all()
        held_back = s.execute(select(Event.round, Event.site).where(Event.run_id == run,
                                                                    Event.kind == "nothing_sent")).all()
    assert [(r, e) for r, _, e in sorted(rounds)] == [(1, 50), (2, 50)], rounds
    for rnd, n_train, _ in rounds:
        assert n_train + sum(1 for r, _ in held_back if r == rnd) == 50 and n_train >= 45
    assert not problems, problems[:3]
