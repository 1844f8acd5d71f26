"""Box-latent runs: how far to trust a prediction. Macro-AUROC, Brier and ECE per number of BL-TTA samples,
OOD AUROC of the box radius per OOD kind (all with bootstrap intervals), each site's temperature, and the site
similarity the server computes from the sites' aggregate class boxes (for choosing source sites)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from dashboards import charts
from dashboards.data import RunContext, round_picker

TITLE = "Reliability (box-latent)"
SLUG = "reliability"
OOD_KINDS = {"device": "held-out imaging device", "corrupt": "corrupted images", "nonchest": "non-chest images"}


def _ci(get, name: str) -> str:
    lo, hi = get(f"{name}_lo"), get(f"{name}_hi")
    return "-" if lo is None or hi is None or np.isnan(lo) or np.isnan(hi) else f"[{lo:.3f}, {hi:.3f}]"


def render(ctx: RunContext) -> None:
    st.header(TITLE)
    agg = ctx.aggregates()
    if not agg["name"].str.startswith("box_").any():
        st.info("This run has no box-latent head. Start one with run config `box-latent = true` (and "
                "`box-backbone-weights` = a checkpoint of a routed-experts run), or `fedchest demo --box-latent`.")
        return
    rnd = round_picker(ctx, "rel_round")
    if rnd is None:
        return
    here = agg[(agg["round"] == rnd) & (agg["projection"] == "all")]
    pooled = here[here["site"].isna()].set_index("name")["value"]
    get = lambda k: pooled.get(k)  # noqa: E731
    samples = sorted({int(n.split("_")[1][1:]) for n in pooled.index if n.startswith("box_n") and n.endswith("_mAUC")})
    rows = [{"BL-TTA samples N": n, "macro-AUROC": get(f"box_n{n}_mAUC"), "AUROC 95% CI": _ci(get, f"box_n{n}_mAUC"),
             "Brier": get(f"box_n{n}_brier"), "Brier 95% CI": _ci(get, f"box_n{n}_brier"),
             "Brier (no temperature)": get(f"box_n{n}_brier_raw"), "ECE": get(f"box_n{n}_ece"),
             "ECE 95% CI": _ci(get, f"box_n{n}_ece"), "ECE (no temperature)": get(f"box_n{n}_ece_raw")}
            for n in samples]
    st.subheader(f"Pooled over all sites, round {rnd}")
    st.dataframe(pd.DataFrame(rows).round(4), hide_index=True, width="stretch")
    st.caption("Brier and ECE (10 bins) after each site's temperature, fitted on its own validation split; "
               "intervals: bootstrap over the pooled score histograms and reliability tables (95 % percentile).")
    ood = [{"OOD kind": title, "AUROC of the radius score": get(f"box_ood_{k}_auroc"),
            "95% CI": _ci(get, f"box_ood_{k}_auroc")} for k, title in OOD_KINDS.items()]
    st.subheader("Out-of-distribution detection (mean log box radius)")
    st.dataframe(pd.DataFrame(ood).round(4), hide_index=True, width="stretch")
    per_site = here[here["site"].notna() & here["name"].isin(["box_temperature",
                                                              *(f"box_ood_{k}_auroc" for k in OOD_KINDS)])]
    if not per_site.empty:
        st.dataframe(per_site.pivot_table(index="site", columns="name", values="value").round(3), width="stretch")
    cm = ctx.classes(rnd)
    sim = cm[cm["name"] == "box_site_similarity"].rename(columns={"class_name": "other_site"})
    if not sim.empty:
        st.subheader("Site similarity from aggregate class boxes")
        st.altair_chart(charts.heatmap(sim, "other_site", "site", "value", "site", "site", "mean box overlap"),
                        width="stretch")
        st.caption("Mean over the classes both sites report (enough positives at each, under each site's small-count "
                   "rule) of the overlap of their mean class boxes; 1 = the same boxes. Blank: no class in common. "
                   "Sites share only these per-class means, never a case's box.")
