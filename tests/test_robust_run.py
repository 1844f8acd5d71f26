"""Robust aggregation in a real federated simulation (issue 10): five synthetic sites, one of them sending its
update sign-flipped and scaled; Multi-Krum leaves that site out of every group it can judge, says so in the
registry, and the run completes."""

from __future__ import annotations

import json

from sqlalchemy import select
from sqlalchemy.orm import Session

from consortium.sites import make_sites
from server.registry import Event, Registry
from consortium.simulation import SERVER_APP, run_in_process


def test_multi_krum_leaves_out_the_sign_flipping_site(tmp_path, monkeypatch):
    sites_dir = make_sites(tmp_path, 5, 60, 32, 7)
    attacker = sorted(sites_dir.glob("*/site.toml"))[2].parent.name.split("-", 1)[1]
    monkeypatch.setenv("FEDCHEST_ATTACK", "sign-flip:2:4")
    cfg = {"num-server-rounds": 2, "local-epochs": 1, "lr": 1e-3, "batch-size": 16, "model-preset": "tiny",
           "image-size": 32, "min-nodes": 5, "out-dir": str(tmp_path / "run"), "sim-sites-dir": str(sites_dir),
           "robust-aggregation": "multi-krum", "robust-byzantine": 1, "round-timeout": 600.0}
    run_in_process(cfg, num_supernodes=5, apps=(SERVER_APP, "benchmarks.attacks:app"))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    with Session(Registry(summary["db_url"]).engine) as s:
        events = [(e.kind, e.site, e.message, e.round) for e in s.scalars(select(Event))]
    excluded = [e for e in events if e[0] == "update_excluded"]
    assert {e[3] for e in excluded if e[1] == attacker} == {1, 2}
    assert all("router" in e[2] for e in excluded if e[1] == attacker)  # every site sends the router
    assert not [e for e in excluded if e[1] != attacker and "router" in e[2]]
    assert summary["run_id"] and "multi-krum" in json.dumps(summary["config"])
