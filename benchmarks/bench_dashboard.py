"""dashboard: time to render each page against a large registry (50 rounds x 10 sites x 3 projections x 36
classes, the rows a real run writes), cold cache, through Streamlit's AppTest (the server-side render: queries,
pandas and chart specs; the browser's drawing is not included). Target: under 2 s per page."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from benchmarks.common import record
from server.registry import Registry

ROUNDS, SITES, CLASSES = 50, 10, 36
SCOPES = ("all", "PA", "AP", "LAT")


def fill(url: str, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    reg = Registry(url)
    run = reg.create_run("bench-dashboard", "FedChestAvg[projection]", "routed-experts", "cxrlt2026", ROUNDS, {}, True)
    sites = [f"site-{i:02d}" for i in range(SITES)]
    classes = [f"class-{j:02d}" for j in range(CLASSES)]
    for i, s in enumerate(sites):
        reg.upsert_site(run, s, i)
    prev = np.sort(rng.beta(0.3, 4, CLASSES))[::-1]
    for rnd in range(1, ROUNDS + 1):
        reg.start_round(run, rnd)
        rows = []
        for site in [None, *sites]:
            for scope in SCOPES:
                for c in classes:
                    for name in ("ap", "auroc", "f1", "eval_prevalence"):
                        rows.append((site, scope, c, name, float(rng.random()), int(rng.integers(0, 50))))
                for name in ("mAP", "mAUC", "mF1", "head_mAP", "medium_mAP", "tail_mAP"):
                    rows.append((site, scope, None, name, float(rng.random()), 100))
            rows += [(site, "all", None, k, float(rng.random() * 10), 100)
                     for k in ("train_seconds", "eval_seconds", "update_bytes", "frontal_lateral_gap",
                               "router_accuracy")]
        rows += [(None, "all", c, "train_prevalence", float(p), 1000) for c, p in zip(classes, prev)]
        rows.append((None, "all", None, "prevalence_mAP", 0.05, 1000))
        reg.add_metrics(run, rnd, rows)
        reg.finish_round(run, rnd, SITES, SITES)
        if rnd % 7 == 0:
            reg.add_event(run, "dropout", "no train reply this round", rnd, sites[rnd % SITES])
    reg.finish_run(run, "completed")
    return run


def run(out: Path) -> dict:
    from streamlit.testing.v1 import AppTest
    import streamlit as st

    from dashboards.views import PAGES

    out.mkdir(parents=True, exist_ok=True)
    db = out / "dashboard-bench.db"
    db.unlink(missing_ok=True)
    url = f"sqlite:///{db}"
    t0 = time.perf_counter()
    fill(url)
    fill_s = time.perf_counter() - t0
    os.environ["FEDCHEST_DB_URL"] = url
    app = str(Path(__file__).resolve().parent.parent / "dashboards" / "app.py")
    timings = {}
    for title in ["Runs", *PAGES]:
        best = []
        for _ in range(3):
            st.cache_data.clear()
            at = AppTest.from_file(app, default_timeout=120).run()  # warm the import of the app itself
            st.cache_data.clear()
            t = time.perf_counter()
            at.sidebar.radio(key="page").set_value(title).run()
            best.append(time.perf_counter() - t)
            assert not at.exception, (title, at.exception)
        timings[title] = min(best)
    rows = Registry(url).engine.connect().exec_driver_sql("SELECT count(*) FROM metrics").scalar()
    print({k: round(v, 3) for k, v in timings.items()}, f"{rows} metric rows", flush=True)
    return {"dashboard": record({
        "seconds_per_page_cold_cache": timings, "metric_rows": rows, "registry_fill_seconds": fill_s,
        "headline": {**{f"{k} (s, cold)": v for k, v in timings.items()}, "slowest page (s)": max(timings.values())},
    }, f"python -m benchmarks.run --only dashboard ({ROUNDS} rounds x {SITES} sites x 3 projections x "
       f"{CLASSES} classes, "
       "SQLite, AppTest server-side render)")}
