"""The registry on SQLite and PostgreSQL: Alembic migrations from an empty database to head, the schema they
make equals the models, a pre-migration database is adopted, and the dashboard's queries read what the server
wrote."""

from __future__ import annotations

import math

import pytest
from sqlalchemy import create_engine, inspect

from server.registry import Base, Registry, migrate


def test_migrations_upgrade_an_empty_database_to_head(db_url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from server.registry import alembic_config

    engine = create_engine(db_url)
    assert not inspect(engine).get_table_names()
    rev = migrate(engine)
    assert rev == ScriptDirectory.from_config(alembic_config()).get_current_head()
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diffs == [], diffs  # the migrations make exactly the models' schema
    assert migrate(engine) == rev  # idempotent
    engine.dispose()


def test_registry_round_trip_and_dashboard_queries(db_url):
    from dashboards import queries

    reg = Registry(db_url)
    run = reg.create_run("r", "FedChestAvg", "experts", "cxrlt2026", 2, {"lr": 0.001}, synthetic=True)
    reg.upsert_site(run, "site-a", 11)
    reg.upsert_site(run, "site-a", 11)  # once
    for rnd in (1, 2):
        reg.start_round(run, rnd)
        reg.start_round(run, rnd)  # a round is recorded once
        reg.add_metrics(run, rnd, [(None, "all", None, "mAP", 0.1 * rnd, 100), ("site-a", "PA", "Effusion", "ap",
                                                                              float("nan"), 0)])
        reg.finish_round(run, rnd, 1, 1)
    reg.add_event(run, "site_error", "refused: policy", rnd=2, site="site-a")
    reg.add_checkpoint(run, 2, "/x/round-002.pt", "0" * 64, 123)
    reg.add_references(run, [("local:site-a", None, "all", "mAP", 0.05)])
    reg.finish_run(run, "completed")

    engine = queries.engine_for(db_url)
    runs = queries.runs(engine)
    assert list(runs["id"]) == [run] and runs.loc[0, "rounds_done"] == 2 and runs.loc[0, "sites"] == 1
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from server.registry import Metric, Round

    with Session(reg.engine) as s:
        assert s.query(Round).filter_by(run_id=run).count() == 2
        values = sorted((m.round, m.name, m.value) for m in s.scalars(select(Metric).where(Metric.run_id == run)))
    assert values[0][1] == "ap" and values[0][2] is None  # NaN stored as NULL on both backends
    assert math.isclose([v for v in values if v[1] == "mAP"][-1][2], 0.2)
    reg.engine.dispose()
    engine.dispose()


def test_a_registry_made_before_migrations_is_adopted(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    Base.metadata.create_all(engine)  # how registries were made before Alembic
    with engine.begin() as c:
        c.exec_driver_sql("INSERT INTO runs (id, name, status, strategy, heads, label_set, num_rounds, config_json, "
                          "synthetic, started_at) VALUES ('old', 'old run', 'completed', 's', 'h', 'l', 1, '{}', 1, "
                          "'2026-01-01 00:00:00')")
    Registry(url)
    with engine.connect() as c:
        assert c.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == "0001"
        assert c.exec_driver_sql("SELECT name FROM runs").scalar() == "old run"  # data kept


def test_postgres_url_reaches_the_server_app_registry(postgres, monkeypatch):
    """FEDCHEST_DB_URL overrides the default SQLite file for every writer."""
    from server.registry import resolve_db_url

    url = postgres.create_database("override")
    monkeypatch.setenv("FEDCHEST_DB_URL", url)
    assert resolve_db_url("/tmp/unused.db") == url
    reg = Registry(resolve_db_url("/tmp/unused.db"))
    assert reg.engine.dialect.name == "postgresql"
    reg.engine.dispose()


@pytest.mark.parametrize("bad", ["postgresql+psycopg://nobody@127.0.0.1:1/none"])
def test_unreachable_database_is_a_clear_error(bad):
    from server.registry import RegistryUnavailable

    with pytest.raises(RegistryUnavailable, match="127.0.0.1:1"):
        Registry(bad)


def test_resume_point_cuts_the_registry_back_to_the_last_intact_checkpoint(db_url, tmp_path):
    import numpy as np
    import torch

    from server.checkpoints import save_checkpoint
    from server.resume import ResumeError, resume_point

    reg = Registry(db_url)
    run = reg.create_run("r", "FedChestAvg", "experts", "cxrlt2026", 5, {"lr": 0.1, "out-dir": "/x"}, synthetic=True)
    state = {"train_pos": torch.tensor([1, 2]), "train_annotated": torch.tensor([4, 4])}
    for rnd in (1, 2, 3):
        reg.start_round(run, rnd)
        reg.add_metrics(run, rnd, [(None, "all", None, "mAP", 0.1, 10)])
        reg.add_event(run, "note", "x", rnd=rnd)
        if rnd < 3:
            reg.finish_round(run, rnd, 2, 2)
            path, digest, size = save_checkpoint(tmp_path, rnd, {"w": torch.full((2,), float(rnd))},
                                                 {"strategy_state": state})
            reg.add_checkpoint(run, rnd, str(path), digest, size)
    (tmp_path / "round-002.pt").write_bytes(b"corrupted")  # the newest checkpoint is damaged: fall back to 1
    point = resume_point(reg, run)
    assert point.round == 1 and float(point.state_dict["w"][0]) == 1.0 and point.config["lr"] == 0.1
    assert np.array_equal(point.strategy_state["train_pos"].numpy(), [1, 2])
    from sqlalchemy.orm import Session

    from server.registry import Checkpoint, Event, Metric, Round

    with Session(reg.engine) as s:
        for table in (Metric, Event, Round, Checkpoint):
            assert {r.round for r in s.query(table).filter_by(run_id=run)} == {1}, table.__name__
    assert reg.get_run(run)["status"] == "running"
    reg.finish_run(run, "completed")
    with pytest.raises(ResumeError, match="already completed"):
        resume_point(reg, run)
    with pytest.raises(ResumeError, match="not in the registry"):
        resume_point(reg, "no-such-run")
    reg.engine.dispose()
