"""Sites x projections: a heatmap of one metric for one round, and the frontal vs lateral gap over rounds."""

from __future__ import annotations

import streamlit as st

from dashboards import charts
from dashboards.data import RunContext, round_picker

TITLE = "Sites x projections"
SLUG = "sites"
METRICS = ["mAP", "mAUC", "mF1", "head_mAP", "medium_mAP", "tail_mAP"]


def render(ctx: RunContext) -> None:
    st.header(TITLE)
    rnd = round_picker(ctx, "sites_round")
    if rnd is None:
        return
    metric = st.selectbox("Metric", METRICS, key="sites_metric")
    agg = ctx.aggregates()
    sel = agg[(agg["round"] == rnd) & (agg["name"] == metric) & agg["projection"].isin(charts.PROJECTION_ORDER)].copy()
    sel["site"] = sel["site"].fillna("pooled (all sites)")
    st.subheader(f"{metric}, round {rnd}: site x projection")
    if sel["value"].notna().any():
        st.altair_chart(charts.heatmap(sel, "projection", "site", "value", "projection", "site", metric,
                                       charts.PROJECTION_ORDER), width="stretch")
        st.caption("Blank cell: the site has no test images of that projection (or no positives to score).")
    else:
        st.info(f"No {metric} recorded for round {rnd}.")

    st.subheader("Frontal vs lateral gap over rounds")
    gap = agg[agg["name"] == "frontal_lateral_gap"].dropna(subset=["value"]).copy()
    if gap.empty:
        st.info("No gap yet: it needs frontal and lateral test images with positives at one site at least.")
    else:
        gap["site"] = gap["site"].fillna("pooled (all sites)")
        st.altair_chart(charts.lines(gap, "round", "value", "site", "round",
                                     "mean frontal (PA, AP) mAP minus lateral mAP"), width="stretch")
    router = agg[agg["name"] == "router_accuracy"].dropna(subset=["value"]).copy()
    if not router.empty:
        st.subheader("Router accuracy (images with a trusted view)")
        router["site"] = router["site"].fillna("pooled (all sites)")
        st.altair_chart(charts.lines(router, "round", "value", "site", "round", "router accuracy (0-1)"),
                        width="stretch")
