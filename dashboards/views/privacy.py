"""Privacy: epsilon spent per site per round against its budget (sites training under DP report both), every
charged release included (DP-SGD, the released counts, noised evaluation summaries), and what each DP site's
evaluation summaries were: withheld, noised and charged, or exact by the site's own policy."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboards import charts
from dashboards.data import RunContext

TITLE = "Privacy"
SLUG = "privacy"
EVALUATION_MODES = {0: "withheld (nothing about the test split left the site)",
                    1: "noised (Gaussian mechanism, charged to the site's ledger)",
                    2: "exact (the site's policy: dp_exact_evaluation = true, outside the accountant)"}


def render(ctx: RunContext) -> None:
    st.header(TITLE)
    agg = ctx.aggregates()
    sited = agg[agg["site"].notna()]
    eps = sited[sited["name"].isin(["dp_epsilon", "dp_epsilon_after_evaluation"])]
    if eps.empty:
        st.info("No site reported a privacy cost: this run did not train under differential privacy.")
        return
    eps = eps.groupby(["site", "round"], as_index=False)["value"].max()  # the latest release of each round
    budget = sited[sited["name"] == "dp_epsilon_budget"]
    st.subheader("Epsilon spent per site (cumulative, at the site's delta, every charged release included)")
    st.altair_chart(charts.lines(eps, "round", "value", "site", "round", "epsilon spent (cumulative)"),
                    width="stretch")
    if not budget.empty:
        last = eps.sort_values("round").groupby("site").tail(1).set_index("site")["value"]
        cap = budget.sort_values("round").groupby("site").tail(1).set_index("site")["value"]
        table = (last.rename("epsilon spent").to_frame().join(cap.rename("budget"))
                 .assign(**{"budget used (%)": lambda d: (100 * d["epsilon spent"] / d["budget"]).round(1)}))
        st.dataframe(table.round(3), width="stretch")
    modes = sited[sited["name"] == "dp_evaluation"]
    st.subheader("Evaluation summaries of DP sites")
    if modes.empty:
        st.caption("No DP site answered an evaluation round.")
        return
    last_mode = modes.sort_values("round").groupby("site").tail(1)
    st.dataframe(pd.DataFrame({"site": last_mode["site"],
                               "evaluation summary": [EVALUATION_MODES.get(int(v), str(v))
                                                      for v in last_mode["value"]]}),
                 hide_index=True, width="stretch")
