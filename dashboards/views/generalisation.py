"""Cross-site generalisation: each model (the global one, and local-only ones where recorded) on each site."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboards import charts
from dashboards.data import RunContext, round_picker

TITLE = "Cross-site generalisation"
SLUG = "generalisation"


def render(ctx: RunContext) -> None:
    st.header(TITLE)
    rnd = round_picker(ctx, "gen_round")
    if rnd is None:
        return
    metric = st.selectbox("Metric", ["mAP", "mAUC", "mF1"], key="gen_metric")
    agg = ctx.aggregates()
    glob = agg[(agg["round"] == rnd) & agg["site"].notna() & (agg["projection"] == "all") & (agg["name"] == metric)]
    rows = [pd.DataFrame({"model": f"global (round {rnd})", "site": glob["site"], "value": glob["value"]})]
    refs = ctx.references()
    if not refs.empty:
        r = refs[refs["site"].notna() & (refs["projection"] == "all") & (refs["name"] == metric)]
        rows.append(r[["model", "site", "value"]])
    matrix = pd.concat(rows, ignore_index=True)
    st.subheader(f"{metric}: model x evaluating site")
    st.altair_chart(charts.heatmap(matrix, "site", "model", "value", "evaluating site (its test split)", "model",
                                   metric), width="stretch")
    if len(rows) == 1 or rows[1].empty:
        st.info("Only the global model is recorded. Local-only models appear here when a benchmark (`make bench`, "
                "accuracy) or a site records them as references of this run.")
    else:
        st.caption("A local-only model is trained at one site only; its row shows how it transfers to the others.")
