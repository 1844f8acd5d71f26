"""Health: per site per round, train and evaluate durations, bytes sent, dropouts, errors and rejected updates,
and the straggler of each round."""

from __future__ import annotations

import streamlit as st

from dashboards import charts
from dashboards.data import RunContext
from server.timeline import ROUND_PHASES, SITE_PHASES

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
    _phases(agg)
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


def _phases(agg) -> None:
    """Where each round's seconds went (deployments; the ClientApp's timeline stamps and the server's clock)."""
    rows = agg[agg["name"].str.startswith("phase.") & (agg["projection"] == "all")]
    if rows.empty:
        return
    parts = rows["name"].str.split(".", expand=True)
    rows = rows.assign(stage=parts[1], phase=parts[2])
    st.subheader("Where a round's time goes (seconds, by phase)")
    st.caption("Per stage, the slowest site's reply in each round: from the server's push to its pull of the reply. "
               "Across hosts the figures include the hosts' clock offset. With evaluate-with-train (the default) a "
               "train reply also carries the evaluation of the round before's model, and only the last round has "
               "an evaluate stage of its own.")
    for stage in ("train", "evaluate"):
        part = rows[(rows["stage"] == stage) & rows["site"].notna()]
        if part.empty:
            continue
        total = part.groupby(["round", "site"])["value"].sum().reset_index()
        slowest = total.loc[total.groupby("round")["value"].idxmax(), ["round", "site"]]
        part = part.merge(slowest, on=["round", "site"])
        part = part.assign(order=part["phase"].map({p: i for i, p in enumerate(SITE_PHASES)}))
        st.altair_chart(charts.stacked(part, "round", "value", "phase", "round", f"{stage}: seconds",
                                       list(SITE_PHASES)), width="stretch")
    server = rows[rows["site"].isna()]
    if not server.empty:
        st.caption("The server's own seconds: pushing each stage's messages, its work after the last reply "
                   "(aggregation, pooling, registry rows), and the round's checkpoint.")
        server = server.assign(part=server["stage"] + " " + server["phase"])
        table = server.pivot_table(index="round", columns="part", values="value", aggfunc="sum")
        order = [f"{s} {p}" for s in ("train", "evaluate", "round") for p in ROUND_PHASES]
        st.dataframe(table[[c for c in order if c in table]].round(3), width="stretch")
