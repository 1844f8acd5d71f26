"""Run overview: pooled and per-site curves, head / medium / tail, the constant-predictor baseline and the
federated vs local-only vs pooled references."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboards import charts
from dashboards.data import RunContext, no_evaluation

TITLE = "Run overview"
SLUG = "overview"


def render(ctx: RunContext) -> None:
    st.header(TITLE)
    agg = ctx.aggregates()
    pooled = agg[agg["site"].isna() & (agg["projection"] == "all")]
    if pooled[pooled["name"] == "mAP"].empty:
        no_evaluation(ctx)
        return
    base = pooled[pooled["name"] == "prevalence_mAP"].sort_values("round")["value"].dropna()
    baseline = float(base.iloc[-1]) if len(base) else None

    st.subheader("Pooled consortium metrics per round")
    main = pooled[pooled["name"].isin(["mAP", "mAUC", "mF1"])].rename(columns={"name": "metric"})
    st.altair_chart(charts.lines(main, "round", "value", "metric", "round", "metric value (0-1)", baseline,
                                 "constant predictor mAP (prevalence)"), width="stretch")
    if baseline is not None:
        st.caption(f"Dashed line: the mAP of a constant predictor that scores every image with the class "
                   f"prevalence ({baseline:.3f}); a model below it has learned nothing.")

    metric = st.selectbox("Per-site metric", ["mAP", "mAUC", "mF1"], key="overview_site_metric")
    per_site = agg[agg["site"].notna() & (agg["projection"] == "all") & (agg["name"] == metric)]
    st.subheader(f"{metric} per site (each on its own test split)")
    if per_site.empty:
        st.info("No per-site results yet.")
    else:
        st.altair_chart(charts.lines(per_site, "round", "value", "site", "round", f"{metric} (0-1)"),
                        width="stretch")

    st.subheader("Head / medium / tail mAP (pooled)")
    bands = pooled[pooled["name"].isin(["head_mAP", "medium_mAP", "tail_mAP"])].dropna(subset=["value"])
    if bands.empty:
        st.info("No class bands yet: they need the consortium's training prevalence (sent with round 1).")
    else:
        bands = bands.assign(band=bands["name"].str.replace("_mAP", ""))
        st.altair_chart(charts.lines(bands, "round", "value", "band", "round", "mAP (0-1)"), width="stretch")
    _references(ctx, pooled)


def _references(ctx: RunContext, pooled: pd.DataFrame) -> None:
    st.subheader("Federated vs local-only vs pooled")
    refs = ctx.references()
    refs = (refs[refs["site"].isna() & (refs["projection"] == "all") & (refs["name"] == "mAP")]
            if not refs.empty else refs)
    if refs.empty:
        st.info("No reference recorded for this run. The accuracy benchmark (`make bench`) records local-only and "
                "pooled (centralised) training next to its federated run.")
        return
    fed = pooled[pooled["name"] == "mAP"].sort_values("round").iloc[-1]
    table = pd.concat([pd.DataFrame({"model": [f"federated (round {int(fed['round'])})"], "mAP": [fed["value"]]}),
                       refs.rename(columns={"value": "mAP"})[["model", "mAP"]]], ignore_index=True)
    st.altair_chart(charts.bars(table, "model", "mAP", "model", "pooled test mAP (0-1)"), width="stretch")
