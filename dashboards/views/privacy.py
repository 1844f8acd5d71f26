"""Privacy: epsilon spent per site per round against its budget (sites training under DP report both)."""

from __future__ import annotations

import streamlit as st

from dashboards import charts
from dashboards.data import RunContext

TITLE = "Privacy"
SLUG = "privacy"


def render(ctx: RunContext) -> None:
    st.header(TITLE)
    agg = ctx.aggregates()
    eps = agg[agg["site"].notna() & (agg["name"] == "dp_epsilon")]
    if eps.empty:
        st.info("No site reported a privacy cost: this run did not train under differential privacy.")
        return
    budget = agg[agg["site"].notna() & (agg["name"] == "dp_epsilon_budget")]
    st.subheader("Epsilon spent per site (cumulative, at the site's delta)")
    st.altair_chart(charts.lines(eps, "round", "value", "site", "round", "epsilon spent (cumulative)"),
                    width="stretch")
    if not budget.empty:
        last = eps.sort_values("round").groupby("site").tail(1).set_index("site")["value"]
        cap = budget.sort_values("round").groupby("site").tail(1).set_index("site")["value"]
        table = (last.rename("epsilon spent").to_frame().join(cap.rename("budget"))
                 .assign(**{"budget used (%)": lambda d: (100 * d["epsilon spent"] / d["budget"]).round(1)}))
        st.dataframe(table.round(3), width="stretch")
