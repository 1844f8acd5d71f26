"""The run registry: SQLite by default, PostgreSQL (``postgresql+psycopg://...``) or any SQLAlchemy URL through
FEDCHEST_DB_URL. The schema is managed by Alembic (``migrations/``): opening a registry upgrades it to head; a
database made before migrations existed (same tables, no ``alembic_version``) is stamped at the first revision."""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Iterable
from typing import Any

from pathlib import Path

from sqlalchemy import create_engine, delete, insert, inspect, make_url, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from server.registry.models import Base, Checkpoint, Event, Metric, Reference, Round, Run, Site, utcnow
from shared_models.messages import MetricRow

__all__ = ["Registry", "RegistryUnavailable", "SQLITE_BUSY_MS", "migrate", "resolve_db_url", "Base", "Checkpoint",
           "Event", "Metric", "Reference", "Round", "Run", "Site"]


def resolve_db_url(default: str) -> str:
    """``FEDCHEST_DB_URL`` wins over the default (a SQLite URL or a path)."""
    url = os.environ.get("FEDCHEST_DB_URL") or default
    return url if "://" in url else f"sqlite:///{os.path.abspath(url)}"


MIGRATIONS = Path(__file__).resolve().parent / "migrations"
FIRST_REVISION = "0001"


def alembic_config(connection=None):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def migrate(engine) -> str:
    """Upgrade the database to the newest schema; returns the revision it is at."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    with engine.begin() as conn:
        tables = set(inspect(conn).get_table_names())
        cfg = alembic_config(conn)
        if "runs" in tables and "alembic_version" not in tables:
            command.stamp(cfg, FIRST_REVISION)
        command.upgrade(cfg, "head")
        return MigrationContext.configure(conn).get_current_revision()


SQLITE_BUSY_MS = 30_000  # a connection waits this long for another's write lock before failing


def sqlite_pragmas(engine, wal: bool) -> None:
    """Every connection waits for a busy database instead of failing at once; a file registry is switched to
    write-ahead logging (persistent in the file), so the dashboard's readers never block the ServerApp's writes
    and a write never fails a reader."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_MS}")
        if wal:
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = NORMAL")  # durable at checkpoints; a crash loses no committed round
        cur.close()


class RegistryUnavailable(RuntimeError):
    """The registry database cannot be reached or migrated (the message names it, without a password)."""


class Registry:
    def __init__(self, url: str) -> None:
        self.url = url
        u = make_url(url)
        if u.drivername.startswith("sqlite") and u.database and u.database != ":memory:":
            Path(u.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(url, future=True, pool_pre_ping=True)
        if u.drivername.startswith("sqlite"):
            sqlite_pragmas(self.engine, wal=u.database not in (None, "", ":memory:"))
        try:
            migrate(self.engine)
        except OperationalError as exc:
            safe = make_url(url).render_as_string(hide_password=True)
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
            raise RegistryUnavailable(f"registry database {safe}: {reason}") from None

    def create_run(self, name: str, strategy: str, heads: str, label_set: str, num_rounds: int,
                   config: dict[str, Any], synthetic: bool) -> str:
        run_id = str(uuid.uuid4())
        with Session(self.engine) as s, s.begin():
            s.add(Run(id=run_id, name=name, strategy=strategy, heads=heads, label_set=label_set,
                      num_rounds=num_rounds, config_json=json.dumps(config, default=str), synthetic=synthetic))
        return run_id

    def finish_run(self, run_id: str, status: str, synthetic: bool | None = None) -> None:
        with Session(self.engine) as s, s.begin():
            run = s.get(Run, run_id)
            run.status, run.finished_at = status, utcnow()
            if synthetic is not None:
                run.synthetic = synthetic

    def upsert_site(self, run_id: str, name: str, node_id: int) -> None:
        with Session(self.engine) as s, s.begin():
            hit = s.scalar(select(Site).where(Site.run_id == run_id, Site.name == name))
            if hit is None:
                s.add(Site(run_id=run_id, name=name, node_id=str(node_id)))

    def start_round(self, run_id: str, rnd: int) -> None:
        with Session(self.engine) as s, s.begin():
            if s.scalar(select(Round).where(Round.run_id == run_id, Round.round == rnd)) is None:
                s.add(Round(run_id=run_id, round=rnd))

    def finish_round(self, run_id: str, rnd: int, n_train: int, n_evaluate: int) -> None:
        with Session(self.engine) as s, s.begin():
            r = s.scalar(select(Round).where(Round.run_id == run_id, Round.round == rnd))
            r.finished_at, r.n_train, r.n_evaluate = utcnow(), n_train, n_evaluate

    def round_finished(self, run_id: str, rnd: int) -> bool:
        """Whether round ``rnd`` was finished (its evaluation pooled)."""
        with Session(self.engine) as s:
            return s.scalar(select(Round.finished_at).where(Round.run_id == run_id, Round.round == rnd)) is not None

    def add_metrics(self, run_id: str, rnd: int, rows: Iterable[MetricRow | tuple]) -> int:
        """rows: ``MetricRow`` (site or None, projection, class or None, name, value, n), or a tuple in its order.
        One executemany in one transaction
        (a 50-site round writes tens of thousands of rows; ORM objects made that take seconds)."""
        values = [
            {"run_id": run_id, "round": rnd, "site": site, "projection": proj, "class_name": cls, "name": name,
             "value": None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value),
             "n": None if n is None else int(n)}
            for site, proj, cls, name, value, n in rows
        ]
        if values:
            with self.engine.begin() as conn:
                conn.execute(insert(Metric), values)
        return len(values)

    def add_event(self, run_id: str, kind: str, message: str, rnd: int | None = None, site: str | None = None) -> None:
        with Session(self.engine) as s, s.begin():
            s.add(Event(run_id=run_id, round=rnd, site=site, kind=kind, message=message))

    def add_references(self, run_id: str, rows: Iterable[tuple]) -> int:
        """rows: (model, evaluating site or None, projection, name, value)."""
        objs = [Reference(run_id=run_id, model=model, site=site, projection=proj, name=name,
                          value=(None if value is None or (isinstance(value, float) and math.isnan(value))
                                 else float(value)))
                for model, site, proj, name, value in rows]
        with Session(self.engine) as s, s.begin():
            s.add_all(objs)
        return len(objs)

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        with Session(self.engine) as s:
            r = s.get(Run, run_id)
            return None if r is None else {"id": r.id, "name": r.name, "status": r.status, "num_rounds": r.num_rounds,
                                           "config_json": r.config_json}

    def checkpoints(self, run_id: str) -> list[tuple[int, str, str]]:
        """(round, path, sha256) of the run's checkpoints, newest round first."""
        with Session(self.engine) as s:
            rows = s.execute(select(Checkpoint.round, Checkpoint.path, Checkpoint.sha256)
                             .where(Checkpoint.run_id == run_id).order_by(Checkpoint.round.desc())).all()
        return [tuple(r) for r in rows]

    def truncate_after(self, run_id: str, rnd: int) -> None:
        """Remove everything recorded for rounds after ``rnd`` (a round interrupted by a crash) and mark the run
        running again: a resumed run records those rounds once."""
        with Session(self.engine) as s, s.begin():
            for table in (Metric, Event, Checkpoint, Round):
                s.execute(delete(table).where(table.run_id == run_id, table.round > rnd))
            run = s.get(Run, run_id)
            run.status, run.finished_at = "running", None

    def add_checkpoint(self, run_id: str, rnd: int, path: str, sha256: str, size: int) -> None:
        with Session(self.engine) as s, s.begin():
            s.add(Checkpoint(run_id=run_id, round=rnd, path=path, sha256=sha256, bytes=size))
