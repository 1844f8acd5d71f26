"""Read-only queries on the registry for the dashboard (aggregates only)."""

from __future__ import annotations

import pandas as pd
from sqlalchemy import create_engine, select
from sqlalchemy.engine import Engine

from server.registry import Metric, Run


def engine_for(url: str) -> Engine:
    return create_engine(url, future=True)


def runs(engine: Engine) -> pd.DataFrame:
    with engine.connect() as c:
        return pd.read_sql(select(Run.id, Run.name, Run.status, Run.strategy, Run.heads, Run.num_rounds,
                                  Run.synthetic, Run.started_at, Run.finished_at).order_by(Run.started_at.desc()), c)


def aggregate_metrics(engine: Engine, run_id: str) -> pd.DataFrame:
    """Class-aggregate rows (mAP, mAUC, ...) of a run: round, site (None = pooled), projection, name, value."""
    with engine.connect() as c:
        return pd.read_sql(select(Metric.round, Metric.site, Metric.projection, Metric.name, Metric.value, Metric.n)
                           .where(Metric.run_id == run_id, Metric.class_name.is_(None)), c)


def class_metrics(engine: Engine, run_id: str, rnd: int) -> pd.DataFrame:
    with engine.connect() as c:
        return pd.read_sql(select(Metric.site, Metric.projection, Metric.class_name, Metric.name, Metric.value, Metric.n)
                           .where(Metric.run_id == run_id, Metric.round == rnd, Metric.class_name.is_not(None)), c)
