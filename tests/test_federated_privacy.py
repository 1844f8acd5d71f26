"""A federated DP run where each site's policy differs: one site's budget is too small (it declines), one
demands more noise than the run asks (it refuses), one withholds its router. The run goes on with the site
that may train; its ledger and the registry record epsilon; nothing the sites send carries planted PHI."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.phi import leaked, planted_phi

POLICIES = {  # appended to each site.toml, in the demo's site order
    0: "[privacy]\nepsilon_budget = 0.5\n",
    1: "[privacy]\nrequire_dp = true\nmin_noise_multiplier = 2.0\n",
    2: "[privacy]\nwithhold = [\"router\"]\nepsilon_budget = 1000.0\nmin_count = 5\n",
}


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory):
    from consortium.sites import make_sites

    out = tmp_path_factory.mktemp("dp-run")
    sites = sorted(make_sites(out, 3, 90, 32, seed=7).glob("*/site.toml"))
    for i, toml in enumerate(sites):
        toml.write_text(toml.read_text() + "\n" + POLICIES[i])
    env = {**os.environ, "FEDCHEST_AUDIT_DIR": str(out / "audit")}
    r = subprocess.run([sys.executable, "-m", "consortium.cli", "demo", "--out", str(out), "--rounds", "2",
                        "--images-per-site", "90", "--image-size", "32", "--preset", "tiny", "--local-epochs", "1",
                        "--seed", "7", "--dp"], capture_output=True, text=True, cwd=REPO, env=env, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return out, [t.parent for t in sites], r.stdout + r.stderr


def _events(out):
    con = sqlite3.connect(out / "registry.db")
    rows = con.execute("SELECT round, site, kind, message FROM events").fetchall()
    con.close()
    return rows


def test_declining_and_refusing_sites_do_not_stop_the_run(dp_run):
    out, sites, _ = dp_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    names = [d.name.split("-", 1)[1] for d in sites]
    errors = [(site, msg) for _, site, kind, msg in _events(out) if kind == "train_error"]
    budget = [m for s, m in errors if "privacy budget" in m]
    noise = [m for s, m in errors if "noise multiplier 1; site policy requires at least 2" in m]
    assert len(budget) == 2 and len(noise) == 2, errors  # both rounds, each with its reason
    # only the third site trained; the second released noised evaluation summaries only (its policy's minimum noise
    # is met by dp-eval-noise-multiplier 2); the first spent nothing. Their epsilons are in the summary and registry
    assert set(summary["privacy"]) == {"1", "2"}
    assert all(set(v) == {names[1], names[2]} for v in summary["privacy"].values())
    eps = [summary["privacy"][r][names[2]]["epsilon"] for r in ("1", "2")]
    assert 0 < eps[0] < eps[1]
    con = sqlite3.connect(out / "registry.db")
    reg = con.execute("SELECT round, value FROM metrics WHERE name = 'dp_epsilon' AND site = ? ORDER BY round",
                      (names[2],)).fetchall()
    assert [r for r, _ in reg] == [1, 2] and reg[1][1] <= eps[1]
    after_eval = con.execute("SELECT value FROM metrics WHERE name = 'dp_epsilon_after_evaluation' AND site = ? "
                             "AND round = 2", (names[2],)).fetchall()
    assert eps[1] == pytest.approx(max(reg[1][1], *(v for v, in after_eval)))  # every charged release counted


def test_ledgers_at_the_sites(dp_run):
    from client.privacy import PrivacyLedger

    _, sites, _ = dp_run
    ledgers = [PrivacyLedger(d / "work" / "privacy-ledger.sqlite").entries() for d in sites]
    assert ledgers[0] == []  # its budget covers nothing: no release, no training, no evaluation summary
    assert [e["head"] for e in ledgers[1]] == ["evaluation", "evaluation"]  # refused to train, evaluated under noise
    assert [(e["round"], e["head"]) for e in ledgers[2]] == [
        (1, "site-statistics"), (1, "routed-experts"), (1, "evaluation"), (2, "routed-experts"), (2, "evaluation")]
    after = [e["epsilon_after"] for e in ledgers[2]]
    assert after == sorted(after) and len(set(after)) == len(after)


def test_withheld_router_never_left(dp_run):
    out, _, _ = dp_run
    sent = [json.loads(line) for f in (out / "audit").glob("outbound-*.jsonl") for line in f.read_text().splitlines()]
    trained = [e for e in sent if e["type"] == "train" and e.get("arrays")]  # refusals carry no arrays
    assert len(trained) == 2  # the one site that trained, twice
    for e in trained:
        keys = [k for rec in e["arrays"].values() for k in rec]
        assert keys and not any(k.startswith("router.") for k in keys)
    # an error reply, or a stage's refusal in a train reply that also evaluated (evaluate-with-train)
    refusals = [e["error"] for e in sent if "error" in e]
    refusals += [r for e in sent for r in e.get("configs", {}).get("stage-errors", {}).values()]
    # 4 refused rounds of training, 2 evaluation releases over site 0's budget; redacted: no local paths
    assert len(refusals) == 6 and all("/" not in r for r in refusals)


def test_no_planted_phi_in_anything_sent(dp_run):
    out, sites, log = dp_run
    phi = planted_phi(out)
    assert len(phi) > 50
    sent = [*sorted((out / "audit").glob("*.jsonl")), out / "registry.db", out / "summary.json",
            *sorted((out / "checkpoints").glob("*.pt"))]
    blobs = [p.read_bytes() for p in sent] + [log.encode()]
    found = leaked(phi, blobs)
    assert not found, found[:5]


def test_dashboard_privacy_page_shows_epsilon_against_budget(dp_run, monkeypatch):
    from streamlit.testing.v1 import AppTest

    out, sites, _ = dp_run
    summary = json.loads((out / "summary.json").read_text())
    monkeypatch.setenv("FEDCHEST_DB_URL", f"sqlite:///{out / 'registry.db'}")
    at = AppTest.from_file(str(REPO / "dashboards" / "app.py"), default_timeout=120)
    at.query_params["page"], at.query_params["run"] = "privacy", summary["run_id"]
    at.run()
    assert not at.exception and at.header[0].value == "Privacy"
    table = at.dataframe[0].value
    site = sites[2].name.split("-", 1)[1]
    # the site that trained (with its budget) and the one that only released noised evaluation summaries
    assert sorted(table.index) == sorted([site, sites[1].name.split("-", 1)[1]]) and table.loc[site, "budget"] == 1000.0
    assert table.loc[site, "epsilon spent"] == pytest.approx(summary["privacy"]["2"][site]["epsilon"], rel=1e-3)
    health = AppTest.from_file(str(REPO / "dashboards" / "app.py"), default_timeout=120)
    health.query_params["page"], health.query_params["run"] = "health", summary["run_id"]
    health.run()
    assert any("privacy budget" in str(m) for m in health.dataframe[-1].value["message"])
