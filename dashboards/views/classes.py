"""Per-class results sorted by training prevalence, with head / medium / tail bands; classes a site does not
annotate are shown as such."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from dashboards import charts
from dashboards.data import RunContext, round_picker
from dashboards.views.ct import SCOPE as CT_SCOPE
from shared_models.metrics import HEAD_THRESHOLD, TAIL_THRESHOLD

TITLE = "Classes"
SLUG = "classes"
METRICS = {"AP": "ap", "AUROC": "auroc", "F1 at 0.5": "f1"}


NO_RESULT = "no result"  # the band of a class nothing was released for in the chosen test split


def band(prevalence: float) -> str:
    if prevalence is None or np.isnan(prevalence):
        return "not annotated"
    return "head" if prevalence > HEAD_THRESHOLD else "tail" if prevalence < TAIL_THRESHOLD else "medium"


def withheld_note(agg: pd.DataFrame, rnd: int, site: str | None, proj: str) -> str:
    """Why a class can have no released result: not annotated, or withheld under the small-count rule. The sites
    record only how many classes they withheld per scope (``withheld_classes``), not which; pooled, a class has no
    result when every site either did not annotate it or withheld it."""
    rows = agg[(agg["round"] == rnd) & (agg["name"] == "withheld_classes") & (agg["projection"] == proj)
               & (agg["site"].notna() if site is None else agg["site"] == site)]
    if rows.empty:
        return "not annotated in this test split"
    counts = ", ".join(f"{s} {int(v)}" for s, v in sorted(zip(rows["site"], rows["value"])))
    return ("not annotated in this test split, or withheld under the site's small-count rule (fewer test positives "
            f"or negatives than its min_count; classes withheld: {counts})")


def train_prevalence(cm: pd.DataFrame) -> pd.Series:
    """The consortium's training prevalence per radiograph class. A run with CT sites also records the chest-CT
    label set's prevalences (projection ``CT``), which share class names with the radiograph set (Cardiomegaly,
    ...); they belong to the CT page, not here."""
    rows = cm[cm["site"].isna() & (cm["name"] == "train_prevalence") & (cm["projection"] == "all")]
    return rows.set_index("class_name")["value"]


def render(ctx: RunContext) -> None:
    st.header(TITLE)
    rnd = round_picker(ctx, "classes_round")
    if rnd is None:
        return
    cm = ctx.classes(rnd)
    if (cm["projection"] == CT_SCOPE).any():
        st.caption("The chest-CT sites' classes (their own label set) are on the CT page.")
    cm = cm[cm["projection"] != CT_SCOPE]
    sites = sorted(s for s in cm["site"].dropna().unique())
    c1, c2, c3 = st.columns(3)
    site = c1.selectbox("Site", ["pooled (all sites)", *sites], key="classes_site")
    proj = c2.selectbox("Projection", ["all", "PA", "AP", "LAT"], key="classes_projection")
    label = c3.selectbox("Metric", list(METRICS), key="classes_metric")
    at_site = cm["site"].isna() if site.startswith("pooled") else cm["site"] == site
    prev = train_prevalence(cm)
    here = cm[at_site & (cm["projection"] == proj)]
    values = here[here["name"] == METRICS[label]].set_index("class_name")
    annotated = here[here["name"] == "eval_prevalence"].set_index("class_name")["n"]
    if values.empty:
        st.info(f"No per-class results for {site}, projection {proj}, round {rnd}.")
        return
    df = pd.DataFrame({"class_name": values.index, "value": values["value"].to_numpy(),
                       "n": values["n"].to_numpy()})
    df["train_prevalence"] = df["class_name"].map(prev).astype(float)
    df["band"] = df["train_prevalence"].map(band)
    df["annotated"] = df["class_name"].map(annotated).fillna(0).astype(int)
    df.loc[df["annotated"] == 0, "band"] = NO_RESULT
    st.subheader(f"{label} per class: {site}, projection {proj}, round {rnd}")
    shown = df[df["train_prevalence"] > 0]
    st.altair_chart(charts.class_bars(shown, f"{label} (0-1)"), width="stretch")
    missing = df.loc[df["annotated"] == 0, "class_name"].tolist()
    no_pos = df.loc[(df["annotated"] > 0) & df["value"].isna(), "class_name"].tolist()
    if missing:
        why = withheld_note(ctx.aggregates(), rnd, None if site.startswith("pooled") else site, proj)
        st.warning(f"No result ({len(missing)} classes: {why}): {', '.join(missing)}")
    if no_pos:
        st.caption(f"Annotated but without positives in this test split, so {label} is undefined: {', '.join(no_pos)}")
    unseen = df.loc[~(df["train_prevalence"] > 0), "class_name"].tolist()
    if unseen:
        st.caption("No training positives released by any site (none, or fewer than the site's min_count; not "
                   f"plotted): {', '.join(unseen)}")
    st.dataframe(df.sort_values("train_prevalence", ascending=False).round(4), hide_index=True,
                 width="stretch")
    zero_shot(ctx, rnd, cm[at_site & (cm["projection"] == proj)], site, proj, METRICS[label])


ZS_SETS = {"descriptive": "descriptive prompts", "template": "template prompts",
           "random": "random embeddings (one seeded draw)"}


def zero_shot(ctx: RunContext, rnd: int, here: pd.DataFrame, site: str, proj: str, metric: str) -> None:
    """Held-out classes (never in any training label), scored by the image-text branch, apart from the seen ones:
    per class under each prompt set, and the pooled macro means with their bootstrap intervals."""
    zs = here[here["name"].str.startswith("zs_")]
    if zs.empty:
        return
    st.subheader(f"Zero-shot classes (never in any training label): {site}, projection {proj}, round {rnd}")
    agg = ctx.aggregates()
    agg = agg[(agg["round"] == rnd) & agg["site"].isna() & (agg["projection"] == "all")].set_index("name")["value"]
    rows = []
    for key, title in ZS_SETS.items():
        get = lambda m, key=key: agg.get(f"zs_{key}_{m}")  # noqa: E731
        if get("mAUC") is not None:
            rows.append({"prompts": title, "mAUC": get("mAUC"), "mAUC 95% CI": _ci(get("mAUC_lo"), get("mAUC_hi")),
                         "mAP": get("mAP"), "mAP 95% CI": _ci(get("mAP_lo"), get("mAP_hi")), "mF1": get("mF1")})
    if rows:
        st.caption("Pooled over all sites (bootstrap per class from the pooled score histograms, 95 % percentile "
                   "intervals). Classes with fewer positives than a site's min_count are withheld by that site.")
        st.dataframe(pd.DataFrame(rows).round(4), hide_index=True, width="stretch")
    table = {}
    for key, title in {**ZS_SETS, "proxy": "proxy (descriptive)"}.items():
        part = zs[zs["name"] == f"zs_{key}_{metric}"].set_index("class_name")
        for cls, row in part.iterrows():
            table.setdefault(cls, {"class_name": cls, "positives": int(row["n"]) if row["n"] is not None else 0})
            table[cls][title] = row["value"]
    if table:
        st.dataframe(pd.DataFrame(list(table.values())).round(4), hide_index=True, width="stretch")
        proxy = zs.loc[zs["name"] == f"zs_proxy_{metric}", "class_name"].unique().tolist()
        if proxy:
            st.caption(f"Proxy classes (seen, hidden from the ASL branch, used for model selection): "
                       f"{', '.join(proxy)}")


def _ci(lo, hi) -> str:
    return "-" if lo is None or hi is None or np.isnan(lo) or np.isnan(hi) else f"[{lo:.3f}, {hi:.3f}]"
