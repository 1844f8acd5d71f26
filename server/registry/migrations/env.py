"""Alembic environment for the fedchest registry. Migrations run from ``Registry`` (``migrate()``) on the
connection it opens; ``alembic`` on the command line works too (``-x url=...``)."""

from alembic import context
from sqlalchemy import create_engine

from server.registry.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True,
                      compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    with create_engine(url).connect() as conn:
        _run(conn)
