"""Read-only queries on the registry for the dashboard. Aggregates only: the registry holds no patient-level
row, and nothing here asks for one.

A SQLite registry is opened read-only (``mode=ro``), so the dashboard can watch a run while the ServerApp
writes it; for PostgreSQL and other servers, give the dashboard a read-only database role.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from sqlalchemy import create_engine, func, inspect, select
from sqlalchemy.engine import Engine, make_url

from server.registry import SQLITE_BUSY_MS, Checkpoint, Event, Metric, Reference, Round, Run, Site

CLASS_GROUPS = {0: "head", 1: "medium", 2: "tail"}


class RegistryMissing(FileNotFoundError):
    """The SQLite file the dashboard was pointed at does not exist."""


POOL = {"pool_size": 5, "max_overflow": 25, "pool_timeout": 60}  # one engine serves every browser session


def engine_for(url: str) -> Engine:
    """An engine that cannot write: SQLite files are opened with ``mode=ro`` (the ServerApp's registry is in WAL
    mode, so reading never blocks its writes), waiting for a busy database rather than failing."""
    u = make_url(url)
    if u.drivername.startswith("sqlite") and u.database and u.database != ":memory:":
        path = Path(u.database).expanduser().resolve()
        if not path.exists():
            raise RegistryMissing(f"no registry at {path}")
        return create_engine(f"sqlite:///file:{path}?mode=ro&uri=true", future=True, **POOL,
                             connect_args={"timeout": SQLITE_BUSY_MS / 1000})
    return create_engine(url, future=True, pool_pre_ping=True, **POOL)


def has_tables(engine: Engine) -> bool:
    return inspect(engine).has_table("runs")


def _read(engine: Engine, stmt) -> pd.DataFrame:
    with engine.connect() as c:
        return pd.read_sql(stmt, c)


def runs(engine: Engine) -> pd.DataFrame:
    """Every run with its status, heads, strategy, sites, rounds done and duration, newest first."""
    df = _read(engine, select(Run.id, Run.name, Run.status, Run.heads, Run.strategy, Run.label_set, Run.num_rounds,
                              Run.synthetic, Run.started_at, Run.finished_at).order_by(Run.started_at.desc()))
    if df.empty:
        return df
    sites = _read(engine, select(Site.run_id, func.count(Site.id).label("sites")).group_by(Site.run_id))
    done = _read(engine, select(Round.run_id, func.count(Round.id).label("rounds_done"))
                 .where(Round.finished_at.is_not(None)).group_by(Round.run_id))
    df = df.merge(sites, left_on="id", right_on="run_id", how="left").drop(columns="run_id")
    df = df.merge(done, left_on="id", right_on="run_id", how="left").drop(columns="run_id")
    df[["sites", "rounds_done"]] = df[["sites", "rounds_done"]].fillna(0).astype(int)
    # every run still going: finished_at is all None (object dtype), so both columns go through to_datetime
    end = pd.to_datetime(df["finished_at"]).fillna(pd.Timestamp.now("UTC").tz_localize(None))
    df["duration_min"] = ((end - pd.to_datetime(df["started_at"])).dt.total_seconds() / 60).round(1)
    return df


def aggregate_metrics(engine: Engine, run_id: str) -> pd.DataFrame:
    """Class-aggregate rows (mAP, mAUC, timings, ...): round, site (None = pooled), projection, name, value, n."""
    return _read(engine, select(Metric.round, Metric.site, Metric.projection, Metric.name, Metric.value, Metric.n)
                 .where(Metric.run_id == run_id, Metric.class_name.is_(None)))


def class_metrics(engine: Engine, run_id: str, rnd: int) -> pd.DataFrame:
    """Per-class rows of one round: site, projection, class_name, name (ap, auroc, f1, eval_prevalence,
    train_prevalence, class_group), value, n."""
    return _read(engine, select(Metric.site, Metric.projection, Metric.class_name, Metric.name, Metric.value, Metric.n)
                 .where(Metric.run_id == run_id, Metric.round == rnd, Metric.class_name.is_not(None)))


def events(engine: Engine, run_id: str) -> pd.DataFrame:
    return _read(engine, select(Event.round, Event.site, Event.kind, Event.message, Event.created_at)
                 .where(Event.run_id == run_id).order_by(Event.id))


def references(engine: Engine, run_id: str) -> pd.DataFrame:
    """Reference results recorded next to a run (local-only and pooled training, by a benchmark or a user)."""
    return _read(engine, select(Reference.model, Reference.site, Reference.projection, Reference.name,
                                Reference.value).where(Reference.run_id == run_id))


def checkpoints(engine: Engine, run_id: str) -> pd.DataFrame:
    return _read(engine, select(Checkpoint.round, Checkpoint.sha256, Checkpoint.bytes, Checkpoint.created_at)
                 .where(Checkpoint.run_id == run_id).order_by(Checkpoint.round))
