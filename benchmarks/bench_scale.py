"""scale: how the coordinator behaves as sites are added (issue 10).

- Simulations of 10, 25 and 50 synthetic sites (tiny preset, 12 images each, 2 rounds; the sites take turns on this
  2-core machine): wall time, the ServerApp's own processing seconds per round (its time in the strategy minus the
  time waiting for replies), and in a second run with allocation tracing, the peak of traced allocations per round
  (in simulation this includes replies the link's in-process store holds).
- Aggregation of N updates of the tiny model (4.2 MB, 368 tensors) and of the paper preset (929 MB): the server's
  whole train aggregation (validation, norms, running mean, new record), the running mean alone, and Flower's
  ``aggregate_arrayrecords``, in GB/s of updates against this machine's memory-copy bandwidth, and the traced peak
  in model sizes (Flower's with every reply held at once, as its ``send_and_receive`` returns them).
- The registry under load: 20 dashboard readers while a run writes (SQLite in WAL mode; PostgreSQL when a server
  can be started here).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from benchmarks.common import record
from benchmarks.registry_load import load
from benchmarks.scale import aggregation, copy_bandwidth, simulate

SITES = (10, 25, 50)


def _model(preset: str) -> dict:
    from shared_models.networks import build_model

    return {k: v.numpy().copy() for k, v in build_model(preset, 40).state_dict().items()}


def _registry(work: Path) -> dict:
    out = {"sqlite": load(f"sqlite:///{work / 'registry.db'}", rounds=40, rows_per_round=400, readers=20)}
    try:
        from tests.pg import PostgresUnavailable, TempPostgres
    except ImportError:  # a checkout without the tests
        return out
    root = Path(f"/tmp/fedchest-bench-pg-{os.getpid()}")  # the server runs as `postgres`: not under a 0700 folder
    try:
        pg = TempPostgres(root)
        pg.start()
    except PostgresUnavailable as exc:
        out["postgresql"] = {"skipped": str(exc)}
        return out
    try:
        out["postgresql"] = load(pg.create_database("load"), rounds=40, rows_per_round=400, readers=20)
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)
    return out


def run(work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    copy = copy_bandwidth()
    sims = {}
    for n in SITES:
        timed = simulate(work, n)
        traced = simulate(work, n, memory=True)
        sims[n] = {"status": timed["summary"]["status"], "rounds_completed": timed["summary"]["rounds_completed"],
                   "wall_s": timed["wall_s"],
                   "server_s_per_round": [r["server_s"] for r in timed["rounds"]],
                   "wait_s_per_round": [r["wait_s"] for r in timed["rounds"]],
                   "traced_peak_MB_per_round": [r["peak_MB"] for r in traced["rounds"]]}
    tiny, agg = _model("tiny"), {"tiny": {}, "paper": {}}
    for n in SITES:
        agg["tiny"][n] = aggregation(tiny, n)
    del tiny
    paper = _model("paper")
    agg["paper"][10] = aggregation(paper, 10, flower_distinct=False)  # 10 distinct 929 MB replies: not on 24 GB
    del paper
    for size in agg.values():
        for r in size.values():
            for k in ("fedchest", "running_mean", "flower"):
                if f"{k}_GBps" in r:
                    r[f"{k}_vs_copy"] = r[f"{k}_GBps"] / copy
    reg = _registry(work)
    t50, p10 = agg["tiny"][50], agg["paper"][10]
    headline = {
        "rounds completed at 10 / 25 / 50 sites": " / ".join(str(sims[n]["rounds_completed"]) for n in SITES),
        **{f"server s in round 2, {n} sites": sims[n]["server_s_per_round"][-1] for n in SITES},
        **{f"traced server peak MB in round 2, {n} sites": sims[n]["traced_peak_MB_per_round"][-1] for n in SITES},
        "memory copy GB/s": copy,
        "tiny x50: whole aggregation GB/s": t50["fedchest_GBps"],
        "tiny x50: running mean GB/s": t50["running_mean_GBps"],
        "tiny x50: Flower aggregate_arrayrecords GB/s": t50["flower_GBps"],
        "tiny x50: peak x model, fedchest (above the global model)": t50["fedchest_peak_x_model"],
        "tiny x50: peak x model, Flower (replies held)": t50["flower_peak_x_model"],
        "paper x10: whole aggregation / copy bandwidth": p10["fedchest_vs_copy"],
        "paper x10: running mean / copy bandwidth": p10["running_mean_vs_copy"],
        "paper x10: Flower / copy bandwidth": p10["flower_vs_copy"],
        "paper x10: peak x model, fedchest (above the global model)": p10["fedchest_peak_x_model"],
        **{f"registry {db}, 20 readers: errors / lost rows": f"{r['n_errors']} / {r['expected_rows'] - r['rows']}"
           for db, r in reg.items() if "rows" in r},
    }
    figures = {
        "setup": "synthetic sites, tiny preset, 32 px, 12 images per site, 2 rounds x 1 local epoch; one machine",
        "copy_GBps": copy,
        "simulations": sims,
        "aggregation": agg,
        "registry_under_load": reg,
        "headline": headline,
        "targets": "server peak <= 3 x model + one update in flight (the global model is 1x of it); aggregation >= "
                   "0.5 x copy bandwidth",
    }
    return {"scale": record(figures, "make bench (python -m benchmarks.run --only scale)")}
