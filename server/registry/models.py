"""Registry tables (SQLAlchemy 2): runs, sites, rounds, metrics, events, references, checkpoints.

Only aggregates live here: no patient-level row ever reaches the registry.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Run(Base):
    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), default="running")
    strategy: Mapped[str] = mapped_column(String(50))
    heads: Mapped[str] = mapped_column(String(200))
    label_set: Mapped[str] = mapped_column(String(50))
    num_rounds: Mapped[int] = mapped_column(Integer)
    config_json: Mapped[str] = mapped_column(Text)
    synthetic: Mapped[bool] = mapped_column(default=False)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class Site(Base):
    __tablename__ = "sites"
    __table_args__ = (UniqueConstraint("run_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    node_id: Mapped[str] = mapped_column(String(40))


class Round(Base):
    __tablename__ = "rounds"
    __table_args__ = (UniqueConstraint("run_id", "round"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    round: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    n_train: Mapped[int] = mapped_column(Integer, default=0)
    n_evaluate: Mapped[int] = mapped_column(Integer, default=0)


class Metric(Base):
    """One figure: (run, round, site or pooled, projection, class or aggregate, metric name) -> value, n."""

    __tablename__ = "metrics"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    round: Mapped[int] = mapped_column(Integer, index=True)
    site: Mapped[str | None] = mapped_column(String(200), default=None)  # None = pooled over the consortium
    projection: Mapped[str] = mapped_column(String(10))  # all / PA / AP / LAT
    class_name: Mapped[str | None] = mapped_column(String(100), default=None)  # None = aggregate over classes
    name: Mapped[str] = mapped_column(String(50))
    value: Mapped[float | None] = mapped_column(Float, default=None)  # None = undefined (e.g. no positives)
    n: Mapped[int | None] = mapped_column(Integer, default=None)


class Event(Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    round: Mapped[int | None] = mapped_column(Integer, default=None)
    site: Mapped[str | None] = mapped_column(String(200), default=None)
    kind: Mapped[str] = mapped_column(String(40))
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Reference(Base):
    """A reference result recorded next to a run: a model trained another way (``local-only:<site>``,
    ``pooled``) evaluated on a site's test split (``site``; None = pooled over the sites)."""

    __tablename__ = "references"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    model: Mapped[str] = mapped_column(String(200))
    site: Mapped[str | None] = mapped_column(String(200), default=None)
    projection: Mapped[str] = mapped_column(String(10), default="all")
    name: Mapped[str] = mapped_column(String(50))
    value: Mapped[float | None] = mapped_column(Float, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    round: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
