"""The registry under load (issue 10): a ServerApp-like writer process adds rounds of metrics and events while
reader threads run the dashboard's queries on one shared engine, as Streamlit sessions do. Used by the test
(no errors, no lost rows) and by the ``scale`` benchmark (write latency and read throughput).

    python -m benchmarks.registry_load write URL RUN_ID ROUNDS ROWS_PER_ROUND   # the writer, in its own process
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from sqlalchemy import func, select

SITES = ("alpha", "beta", "gamma", "delta")


def write_run(url: str, run_id: str, rounds: int, rows_per_round: int) -> list[float]:
    """Rounds as the ServerApp writes them: start, per-site and per-class metric rows, an event, finish. Returns
    the seconds each round's writes took."""
    from server.registry import Registry

    reg = Registry(url)
    took = []
    for rnd in range(1, rounds + 1):
        t0 = time.perf_counter()
        reg.start_round(run_id, rnd)
        rows = [(SITES[i % len(SITES)], "all", f"class{i % 40}", "AUROC", 0.5 + (i % 50) / 100, 10)
                for i in range(rows_per_round - 2)]
        rows += [(None, "all", None, "mAP", 0.1 + rnd / 1000, None), (None, "all", None, "mAUC", 0.6, None)]
        reg.add_metrics(run_id, rnd, rows)
        reg.add_event(run_id, "note", f"round {rnd} written", rnd)
        reg.finish_round(run_id, rnd, len(SITES), len(SITES))
        took.append(time.perf_counter() - t0)
    return took


@dataclass
class ReadStats:
    queries: int = 0
    errors: list[str] = field(default_factory=list)
    went_back: int = 0  # a reader saw fewer metric rows than it had seen before


def read_while(url: str, run_id: str, readers: int, running: threading.Event
               ) -> tuple[ReadStats, list[threading.Thread], object]:
    """``readers`` threads loop over the dashboard's queries on one engine while ``running`` is set; returns the
    shared stats, the threads and the engine (dispose it after joining them)."""
    from dashboards import queries
    from server.registry import Metric

    engine = queries.engine_for(url)
    stats, lock = ReadStats(), threading.Lock()

    def reader() -> None:
        seen = 0
        while running.is_set():
            try:
                queries.runs(engine)
                agg = queries.aggregate_metrics(engine, run_id)
                queries.events(engine, run_id)
                if not agg.empty:
                    queries.class_metrics(engine, run_id, int(agg["round"].max()))
                with engine.connect() as c:
                    n = c.scalar(select(func.count(Metric.id)).where(Metric.run_id == run_id))
                with lock:
                    stats.queries += 5
                    stats.went_back += n < seen
                seen = max(seen, n)
            except Exception as exc:  # noqa: BLE001 - every failure is the finding
                with lock:
                    stats.errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                time.sleep(0.05)

    threads = [threading.Thread(target=reader, daemon=True) for _ in range(readers)]
    for t in threads:
        t.start()
    return stats, threads, engine


def load(url: str, rounds: int = 30, rows_per_round: int = 200, readers: int = 20) -> dict:
    """Writer process + reader threads; the figures and what the registry holds afterwards."""
    from server.registry import Metric, Registry, Round

    reg = Registry(url)
    run_id = reg.create_run("load", "fedavg", "experts", "cxrlt2026", rounds, {}, True)
    running = threading.Event()
    running.set()
    stats, threads, engine = read_while(url, run_id, readers, running) if readers else (ReadStats(), [], None)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.registry_load", "write", url, run_id, str(rounds),
                           str(rows_per_round)], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    running.clear()
    for t in threads:
        t.join(timeout=120)
    if engine is not None:
        engine.dispose()
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if "Error" in ln] or proc.stderr.splitlines()[-1:]
        raise RuntimeError(f"registry writer failed: {lines[-1] if lines else proc.returncode}")
    took = json.loads(proc.stdout.strip().splitlines()[-1])
    with reg.engine.connect() as c:
        n_rows = c.scalar(select(func.count(Metric.id)).where(Metric.run_id == run_id))
        n_rounds = c.scalar(select(func.count(Round.id)).where(Round.run_id == run_id, Round.finished_at.is_not(None)))
    reg.engine.dispose()
    took.sort()
    return {"backend": reg.engine.dialect.name, "readers": readers, "rounds": rounds, "rows_per_round": rows_per_round,
            "rows": n_rows, "rounds_finished": n_rounds, "expected_rows": rounds * rows_per_round,
            "errors": stats.errors[:5], "n_errors": len(stats.errors), "went_back": stats.went_back,
            "reader_queries": stats.queries, "queries_per_s": stats.queries / wall, "wall_s": wall,
            "round_write_p50_ms": 1000 * took[len(took) // 2], "round_write_max_ms": 1000 * took[-1]}


if __name__ == "__main__" and sys.argv[1:2] == ["write"]:
    _, _, url, run_id, rounds, rows = sys.argv
    print(json.dumps(write_run(url, run_id, int(rounds), int(rows))))
