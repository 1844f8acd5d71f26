"""fedchest dashboard (first cut): runs, pooled metrics per round, site x projection, per-class AP.

Start with `fedchest dashboard --db URL`. Read-only; shows aggregates only. Synthetic runs are labelled.
"""

from __future__ import annotations

import os

import streamlit as st

from dashboards.queries import aggregate_metrics, class_metrics, engine_for, runs

st.set_page_config(page_title="fedchest", layout="wide")
url = os.environ.get("FEDCHEST_DB_URL", "sqlite:///demo-out/registry.db")
engine = engine_for(url)
st.title("fedchest: federated chest imaging")
st.caption(f"registry: {url}")

all_runs = runs(engine)
if all_runs.empty:
    st.info("No runs in this registry yet. Start one with `fedchest demo --out DIR`.")
    st.stop()
st.subheader("Runs")
st.dataframe(all_runs, hide_index=True)
run_id = st.selectbox("Run", all_runs["id"], format_func=lambda r: f"{all_runs.set_index('id').loc[r, 'name']} ({r[:8]})")
if bool(all_runs.set_index("id").loc[run_id, "synthetic"]):
    st.warning("Synthetic data: these figures show the machinery works; they are not clinical results.")

agg = aggregate_metrics(engine, run_id)
if agg.empty:
    st.info("This run has no evaluation results yet.")
    st.stop()
pooled = agg[agg["site"].isna() & (agg["projection"] == "all")]
st.subheader("Pooled consortium metrics per round")
wide = pooled.pivot_table(index="round", columns="name", values="value")
cols = [c for c in ("mAP", "mAUC", "mF1", "head_mAP", "medium_mAP", "tail_mAP", "prevalence_mAP") if c in wide]
st.line_chart(wide[cols], x_label="round", y_label="metric value (0-1)")

last = int(agg["round"].max())
rnd = st.slider("Round", 1, last, last) if last > 1 else last
metric = st.selectbox("Metric", ["mAP", "mAUC", "mF1", "head_mAP", "medium_mAP", "tail_mAP"])
st.subheader(f"Sites x projections: {metric}, round {rnd}")
sel = agg[(agg["round"] == rnd) & (agg["name"] == metric)].copy()
sel["site"] = sel["site"].fillna("pooled")
st.dataframe(sel.pivot_table(index="site", columns="projection", values="value")[["all", "PA", "AP", "LAT"]].round(3))

st.subheader(f"Per-class AP, round {rnd} (pooled, all projections)")
cm = class_metrics(engine, run_id, rnd)
ap = cm[cm["site"].isna() & (cm["projection"] == "all") & (cm["name"] == "ap")].set_index("class_name")["value"]
st.bar_chart(ap.dropna().sort_values(ascending=False), x_label="class", y_label="average precision")
