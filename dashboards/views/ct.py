"""Chest CT: the CT vision-language model trained at the consortium's CT sites (runs with ``ct = true``). Text-to-
volume retrieval against its chance level, per-class AUROC and F1 at the Youden threshold, and axial localisation
against always answering the middle of the scan; pooled and per site."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboards import charts
from dashboards.data import RunContext

TITLE = "Chest CT"
SLUG = "ct"
SCOPE = "CT"  # server/ct_eval.py: the projection column of CT rows


def render(ctx: RunContext) -> None:
    st.header(TITLE)
    agg = ctx.aggregates()
    ct = agg[agg["projection"] == SCOPE]
    rounds = sorted(int(r) for r in ct.loc[ct["name"] == "R@10", "round"].unique())
    if not rounds:
        st.info("This run has no CT results: the CT model trains when the run config sets ct = true and a CT site "
                "(a site.toml with ct-rate or dicom-ct sources) takes part.")
        return
    rnd = rounds[-1] if len(rounds) == 1 else int(st.select_slider("Round", rounds, rounds[-1], key="ct_round"))
    pooled = ct[ct["site"].isna()]

    st.subheader("Text-to-volume retrieval (pooled): each report against its own site's volumes")
    recall = pooled[pooled["name"].str.match(r"^R@\d+(_chance)?$")].copy()
    recall["K"] = recall["name"].str.extract(r"^(R@\d+)")[0]
    recall["curve"] = recall["name"].str.endswith("_chance").map({True: "chance", False: "model"})
    st.altair_chart(charts.lines(recall, "round", "value", "K", "round", "recall at K (0-1)", dash="curve"),
                    width="stretch")
    st.caption("Dashed: the recall of a random ranking (K / gallery size, summed over the sites' galleries).")

    st.subheader("Disease scores and localisation (pooled)")
    both = pooled[pooled["name"].isin(["mAUC", "mean_youden_f1"])].rename(columns={"name": "metric"})
    st.altair_chart(charts.lines(both, "round", "value", "metric", "round", "metric value (0-1)", 0.5,
                                 "AUROC of a random score"), width="stretch")
    loc = pooled[pooled["name"].isin(["loc_mae_mm", "loc_centre_mae_mm"])].copy()
    loc["predictor"] = loc["name"].map({"loc_mae_mm": "model", "loc_centre_mae_mm": "middle of the scan"})
    if loc["value"].notna().any():
        st.altair_chart(charts.lines(loc, "round", "value", "predictor", "round",
                                     "depth error of a report sentence (mm)"), width="stretch")
    else:
        st.info("No localisation result: no site had enough referenced sentences in its test split.")

    st.subheader(f"Per site, round {rnd}")
    here = ct[(ct["round"] == rnd)].copy()
    here["site"] = here["site"].fillna("pooled (all CT sites)")
    table = here.pivot_table(index="site", columns="name", values="value", aggfunc="first")
    volumes = here[here["name"] == "R@10"].set_index("site")["n"]
    cols = [c for c in ("R@1", "R@1_chance", "R@5", "R@5_chance", "R@10", "R@10_chance", "mAUC", "mean_youden_f1",
                        "loc_mae_mm", "loc_centre_mae_mm") if c in table.columns]
    st.dataframe(table[cols].assign(volumes=volumes).reset_index(), hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(c.replace("_", " "), format="%.3f") for c in cols})
    st.caption("Empty cells: the site held the figure back under its small-count rule (fewer test volumes, "
               "positives or negatives than its min_count).")

    st.subheader(f"Per class (pooled), round {rnd}")
    cm = ctx.classes(rnd)
    cm = cm[(cm["projection"] == SCOPE) & cm["site"].isna()]
    bars = cm[cm["name"].isin(["auroc", "youden_f1"])].rename(columns={"name": "metric"})
    if bars["value"].notna().any():
        st.altair_chart(charts.bars(bars.dropna(subset=["value"]), "class_name", "value", "class",
                                    "value (0-1)", colour="metric"), width="stretch")
    else:
        st.info("No per-class result: every class had too few test positives or negatives at every CT site.")
    prev = cm[cm["name"] == "train_prevalence"][["class_name", "value", "n"]]
    if not prev.empty:
        st.dataframe(pd.DataFrame({"class": prev["class_name"], "training prevalence": prev["value"],
                                   "annotated training volumes": prev["n"]}), hide_index=True, width="stretch")
