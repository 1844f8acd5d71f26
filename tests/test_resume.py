"""Resume: the ServerApp's process is killed after round 2 of 4; `fedchest run resume` continues at round 3
under the same registry run. Every round is recorded once, and the result matches an uninterrupted run with the
same seeds. The uninterrupted run evaluates in stages of their own (evaluate-with-train = false), the killed one
inside the next round's train messages (the default): the figures and the model are the same either way, and the
evaluation of round 2's model, in flight when the run was killed, is made by the resumed run.
Marker: e2e (two Flower simulations and a half)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from sqlalchemy import create_engine, text

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent
RUN = "import json, sys; from consortium.simulation import run_in_process; run_in_process(json.loads(sys.argv[1]), 2)"


def _config(sites: Path, out: Path) -> dict:
    return {"num-server-rounds": 4, "local-epochs": 1, "lr": 0.003, "batch-size": 32, "model-preset": "tiny",
            "image-size": 32, "min-nodes": 2, "sim-sites-dir": str(sites), "out-dir": str(out), "seed": 5,
            "server-optimizer": "fedadam", "server-lr": 0.01, "round-timeout": 600.0, "run-name": "resume-test",
            "aggregation": "projection"}


def _env() -> dict:
    return {**os.environ, "FEDCHEST_THREADS": "1", "PATH": f"{BIN}:{os.environ['PATH']}"}


def _rows(url: str, sql: str, **params) -> list:
    engine = create_engine(url)
    try:
        with engine.connect() as c:
            return list(c.execute(text(sql), params))
    finally:
        engine.dispose()


def _last_checkpoint(url: str) -> int | None:
    """The last checkpointed round, None while the registry file exists but its tables are not created yet (the
    ServerApp's migration runs after SQLite has made the file)."""
    from sqlalchemy.exc import OperationalError

    try:
        return _rows(url, "SELECT max(round) FROM checkpoints")[0][0]
    except OperationalError:
        return None


def test_a_killed_run_resumes_after_its_last_complete_round(tmp_path):
    from client.index import prepare_site
    from client.site_config import load_site_config
    from client.synth import synthesize_site
    from tests.salts import pin_split_salt

    sites = tmp_path / "sites"
    for i, (folder, fmt) in enumerate((("a", "padchest"), ("b", "mimic")), 1):
        toml = synthesize_site(sites / folder, fmt, f"site-{folder}", n_images=80, image_size=32, seed=i)
        # indexed here, once: the two runs below start together, and each site's first use would otherwise make
        # its split secret twice at once (two different splits, so different figures)
        pin_split_salt(toml, 23 + i)
        prepare_site(load_site_config(toml))

    # the uninterrupted run goes on beside the one that is killed and resumed (their Ray start-ups and round waits
    # overlap; one after the other they took 207 s on a loaded machine)
    full, full_log = tmp_path / "full", tmp_path / "full.log"
    with full_log.open("w") as log:
        uninterrupted = subprocess.Popen(
            [sys.executable, "-c", RUN, json.dumps({**_config(sites, full), "evaluate-with-train": False})],
            stdout=log, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)
    try:
        _kill_and_resume(sites, tmp_path / "killed")
        uninterrupted.wait(900)
    finally:
        if uninterrupted.poll() is None:
            os.killpg(uninterrupted.pid, signal.SIGKILL)
            uninterrupted.wait(30)
    assert uninterrupted.returncode == 0, full_log.read_text(errors="replace")[-3000:]
    _compare(tmp_path / "killed", full)


def _kill_and_resume(sites: Path, out: Path) -> None:
    """A run killed (SIGKILL) once round 2 is checkpointed, then resumed with `fedchest run resume`."""
    url = f"sqlite:///{out / 'registry.db'}"
    proc = subprocess.Popen([sys.executable, "-c", RUN, json.dumps(_config(sites, out))], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        done = (out / "registry.db").exists() and _last_checkpoint(url)
        if done and done >= 2:
            break
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the ServerApp dies mid-run, as in a SuperLink crash
    proc.wait(30)
    # no `ray stop --force`: the run's Ray processes share its session and died with it (checked: gcs_server,
    # raylet and the actors are left defunct), while `ray stop` would kill every Ray on the machine, the other
    # test worker's simulation included
    (run_id, status), = _rows(url, "SELECT id, status FROM runs")
    assert status == "running"  # nothing finished it
    assert not (out / "checkpoints" / "round-004.pt").exists()

    r = subprocess.run([str(BIN / "fedchest"), "run", "resume", run_id, "--db", url], capture_output=True, text=True,
                       env=_env(), timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def _compare(out: Path, full: Path) -> None:
    """The resumed run against the uninterrupted one: every round once, the same figures and model."""
    url = f"sqlite:///{out / 'registry.db'}"
    (run_id,), = _rows(url, "SELECT id FROM runs")
    rounds = _rows(url, "SELECT round, finished_at IS NOT NULL FROM rounds WHERE run_id = :r ORDER BY round", r=run_id)
    assert rounds == [(1, 1), (2, 1), (3, 1), (4, 1)]  # each round once, all complete
    (status,), = _rows(url, "SELECT status FROM runs")
    assert status == "completed"
    resumed = _rows(url, "SELECT message FROM events WHERE kind = 'resumed'")
    assert len(resumed) == 1 and any(f"after round {k}" in resumed[0][0] for k in (2, 3))
    full_url = f"sqlite:///{full / 'registry.db'}"
    # nothing doubled, nothing missing (the timeline's phase rows depend on when each process started: a resumed
    # run starts new ones, so a first round after the resume has phases a warm process does not)
    # (nor do the per-stage timing rows: the uninterrupted run has an evaluation stage per round)
    per_round = ("SELECT round, count(*) FROM metrics WHERE name NOT LIKE 'phase.%' AND name NOT IN "
                 "('evaluate_reply_seconds', 'evaluate_deadline_seconds', 'link_seconds_per_MB') "
                 "GROUP BY round ORDER BY round")
    assert _rows(url, per_round) == _rows(full_url, per_round)
    stages = "SELECT DISTINCT round FROM metrics WHERE name = 'phase.evaluate.compute' ORDER BY round"
    assert _rows(full_url, stages) == [(1,), (2,), (3,), (4,)]
    assert _rows(url, stages) == [(4,)]  # one evaluation stage: the last round's model
    phases = "SELECT DISTINCT round FROM metrics WHERE name LIKE 'phase.train.compute' ORDER BY round"
    assert _rows(url, phases) == _rows(full_url, phases) == [(1,), (2,), (3,), (4,)]
    (count,), = _rows(url, "SELECT count(*) FROM checkpoints")
    assert count == 4

    final = "SELECT value FROM metrics WHERE round = 4 AND site IS NULL AND projection = 'all' AND name = 'mAP'"
    a, b = _rows(url, final)[0][0], _rows(full_url, final)[0][0]
    # splits come from each site's random salt: an 80-image site once drew a 12-image test split in which the
    # small-count rule (5) left no class countable, and every pooled metric of both runs was undefined
    assert (a is None and b is None) or abs(a - b) < 1e-3, (a, b)
    every = ("SELECT round, site, class_name, name, value FROM metrics WHERE projection = 'all' AND name IN "
             "('mAP', 'mAUC', 'ap', 'auroc') ORDER BY round, site, class_name, name")
    mine, theirs = _rows(url, every), _rows(full_url, every)  # every round's evaluation, round 2's after the resume
    assert [r[:4] for r in mine] == [r[:4] for r in theirs] and len(mine) > 4 * 20
    assert all((a is None and b is None) or abs(a - b) < 1e-6 for (*_, a), (*_, b) in zip(mine, theirs))
    wa = torch.load(out / "checkpoints" / "round-004.pt", weights_only=True)["state_dict"]
    wb = torch.load(full / "checkpoints" / "round-004.pt", weights_only=True)["state_dict"]
    diff = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa if wa[k].is_floating_point())
    scale = max(float(wb[k].float().abs().max()) for k in wb if wb[k].is_floating_point())
    # measured here: identical (same seeds, same round numbers; the server's sums do not depend on the order the
    # two replies arrive in, see test_streaming)
    assert diff < 1e-4 * scale, (diff, scale)
