"""Health: per site per round, train and evaluate durations, bytes sent, dropouts, errors and rejected updates,
and the straggler of each round."""

from __future__ import annotations

import streamlit as st

from dashboards import charts
from dashboards.data import RunContext

TITLE = "Health"
SLUG = "health"
PROBLEMS = ("dropout", "train_error", "evaluate_error", "update_rejected", "evaluate_rejected", "round_skipped")


def render(ctx: RunContext) -> None:
    st.header(TITLE)
    agg = ctx.aggregates()
    site_rows = agg[agg["site"].notna() & (agg["projection"] == "all")]
    timing = site_rows[site_rows["name"].isin(["train_seconds", "eval_seconds"])]
    if timing.empty:
        st.info("No site has reported a duration yet.")
    else:
        st.subheader("Durations per site (seconds, data loading included)")
        for name, title in (("train_seconds", "train"), ("eval_seconds", "evaluate")):
            part = timing[timing["name"] == name]
            if not part.empty:
                st.altair_chart(charts.lines(part, "round", "value", "site", "round", f"{title} time (s)"),
                                width="stretch")
        train = timing[timing["name"] == "train_seconds"]
        if not train.empty:
            st.subheader("Straggler of each round")
            idx = train.groupby("round")["value"].idxmax()
            strag = train.loc[idx, ["round", "site", "value"]].rename(columns={"value": "train_seconds"})
            median = train.groupby("round")["value"].median()
            strag["x median"] = (strag["train_seconds"] / strag["round"].map(median)).round(2)
            st.dataframe(strag.round(2), hide_index=True, width="stretch")
    sent = site_rows[site_rows["name"] == "update_bytes"].assign(value=lambda d: d["value"] / 1e6)
    if not sent.empty:
        st.subheader("Update size sent per site")
        st.altair_chart(charts.lines(sent, "round", "value", "site", "round", "update sent (MB)"),
                        width="stretch")
    st.subheader("Dropouts, errors and rejected updates")
    ev = ctx.events()
    bad = ev[ev["kind"].isin(PROBLEMS)] if not ev.empty else ev
    if bad.empty:
        st.success("No dropout, error or rejected update in this run.")
    else:
        counts = bad.groupby(["kind"]).size().rename("events").reset_index()
        st.altair_chart(charts.bars(counts, "kind", "events", "event", "events (count)"), width="stretch")
        st.dataframe(bad[["round", "site", "kind", "message"]], hide_index=True, width="stretch")
