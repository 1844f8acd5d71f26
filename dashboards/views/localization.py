"""Localisation: the prompt localiser (runs with ``localizer = true``). Box AP at IoU 0.5 and the mean IoU of the
top box, pooled over the sites with boxes (all their detections ranked together) and per site and class."""

from __future__ import annotations

import streamlit as st

from dashboards import charts
from dashboards.data import RunContext

TITLE = "Localisation"
SLUG = "localization"
METRICS = {"box_mAP50": "box mAP@0.5", "box_mIoU": "mean IoU of the top box"}


def render(ctx: RunContext) -> None:
    st.header(TITLE)
    agg = ctx.aggregates()
    loc = agg[agg["name"].isin(list(METRICS))]
    rounds = sorted(int(r) for r in loc["round"].unique())
    if not rounds:
        st.info("This run has no localiser results: the prompt localiser trains when the run config sets "
                "localizer = true, and is scored at sites whose data carries boxes.")
        return
    rnd = rounds[-1] if len(rounds) == 1 else int(st.select_slider("Round", rounds, rounds[-1], key="loc_round"))
    pooled = loc[loc["site"].isna()].assign(metric=lambda d: d["name"].map(METRICS))
    st.subheader("Pooled over the sites with boxes")
    st.altair_chart(charts.lines(pooled, "round", "value", "metric", "round", "value (0-1)"), width="stretch")

    st.subheader(f"Per site, round {rnd}")
    here = loc[loc["round"] == rnd].copy()
    here["site"] = here["site"].fillna("pooled")
    table = here.pivot_table(index="site", columns="name", values="value", aggfunc="first")
    pairs = here[here["name"] == "box_mAP50"].set_index("site")["n"]
    st.dataframe(table.assign(**{"image-class pairs with boxes": pairs}).reset_index(), hide_index=True,
                 width="stretch", column_config={k: st.column_config.NumberColumn(v, format="%.3f")
                                                 for k, v in METRICS.items()})

    st.subheader(f"Per class (pooled), round {rnd}")
    cm = ctx.classes(rnd)
    cm = cm[cm["site"].isna() & cm["name"].isin(["box_AP50", "box_mIoU"])].dropna(subset=["value"])
    if cm.empty:
        st.info("No per-class result this round.")
        return
    st.altair_chart(charts.bars(cm.rename(columns={"name": "metric"}), "class_name", "value", "class",
                                "value (0-1)", colour="metric"), width="stretch")
    st.caption("A class is scored at the sites that hold at least min_count images with its boxes; images where it "
               "is present but has no box are left out (their ground truth is unknown).")
