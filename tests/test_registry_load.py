"""The registry under load (issue 10): 20 dashboard readers while a run writes, on SQLite (WAL) and PostgreSQL:
no errors, no lost rows, and no reader ever sees the row count go back."""

from __future__ import annotations

from sqlalchemy import create_engine, text

from benchmarks.registry_load import load
from server.registry import Registry


def test_twenty_readers_while_a_run_writes(db_url):
    out = load(db_url, rounds=20, rows_per_round=150, readers=20)
    assert out["n_errors"] == 0, out["errors"]
    assert out["rows"] == out["expected_rows"] == 3000 and out["rounds_finished"] == 20
    assert out["went_back"] == 0 and out["reader_queries"] > 20  # the readers did read while it wrote


def test_a_file_registry_is_in_wal_mode(tmp_path):
    url = f"sqlite:///{tmp_path / 'sub' / 'r.db'}"  # the folder is made
    Registry(url).engine.dispose()
    with create_engine(url).connect() as c:
        assert c.execute(text("PRAGMA journal_mode")).scalar() == "wal"  # persistent in the file
