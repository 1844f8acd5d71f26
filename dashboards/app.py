"""fedchest dashboard: runs, run overview, sites x projections, classes, cross-site generalisation, chest CT,
health, privacy, reliability. Start with `fedchest dashboard --db URL`. Read-only on the registry; shows aggregates
only.

Deep links: `?page=classes&run=<run id>` opens a page on a run.
"""

from __future__ import annotations

import os

import pandas as pd
import streamlit as st

from dashboards import data
from dashboards.queries import RegistryMissing
from dashboards.views import PAGES, SLUGS

RUNS_PAGE = "Runs"
st.set_page_config(page_title="fedchest", page_icon=":material/radiology:", layout="wide")
url = os.environ.get("FEDCHEST_DB_URL", "sqlite:///demo-out/registry.db")


def render_runs(runs: pd.DataFrame) -> None:
    st.header(RUNS_PAGE)
    cols = ["name", "status", "heads", "sites", "rounds_done", "num_rounds", "strategy", "label_set", "synthetic",
            "started_at", "duration_min", "id"]
    st.dataframe(runs[cols], hide_index=True, width="stretch", column_config={
        "rounds_done": st.column_config.NumberColumn("rounds done"),
        "num_rounds": st.column_config.NumberColumn("rounds planned"),
        "duration_min": st.column_config.NumberColumn("duration (min)", format="%.1f"),
        "started_at": st.column_config.DatetimeColumn("started (UTC)", format="YYYY-MM-DD HH:mm"),
        "synthetic": st.column_config.CheckboxColumn("synthetic data"),
    })
    st.caption("Pick a run and a page in the sidebar. Running runs refresh by themselves.")


def main() -> None:
    st.sidebar.title("fedchest")
    st.sidebar.caption(f"registry: `{url}` (read-only)")
    try:
        runs = data.runs(url)
    except RegistryMissing as exc:
        st.title("fedchest")
        st.info(f"{exc}. Start a run first (`make demo`), or point the dashboard at a registry with `--db URL`.")
        return
    if runs.empty:
        st.title("fedchest")
        st.info("No runs in this registry yet. Start one with `make demo` or `fedchest demo --out DIR`.")
        return
    params = st.query_params
    ids = runs["id"].tolist()
    default_run = ids.index(params["run"]) if params.get("run") in ids else 0
    by_id = runs.set_index("id")
    run_id = st.sidebar.selectbox("Run", ids, index=default_run, key="run",
                                  format_func=lambda r: f"{by_id.loc[r, 'name']} · {by_id.loc[r, 'status']} · {r[:8]}")
    titles = [RUNS_PAGE, *PAGES]
    wanted = SLUGS.get(params.get("page", ""), RUNS_PAGE if "page" not in params else params.get("page"))
    page = st.sidebar.radio("Page", titles, index=titles.index(wanted) if wanted in titles else 0, key="page")
    run = by_id.loc[run_id].copy()
    run["id"] = run_id
    live = run["status"] == "running"
    refresh = st.sidebar.toggle("Refresh every 5 s", value=bool(live), key="refresh",
                                help="On by default while the selected run is running")
    if bool(run["synthetic"]):
        st.warning("Synthetic data: these figures show the machinery works; they are not clinical results.")

    @st.fragment(run_every=data.REFRESH_SECONDS if refresh else None)
    def body() -> None:
        if page == RUNS_PAGE:
            render_runs(data.runs(url))
        else:
            PAGES[page].render(data.RunContext(url, run))

    body()


main()
