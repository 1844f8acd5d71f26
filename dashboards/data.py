"""Cached access to the registry for the pages: one read-only engine per URL, query results kept a few
seconds so that a page refreshes while a run is writing without hammering the database."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import streamlit as st

from dashboards import queries

REFRESH_SECONDS = 5


@st.cache_resource
def engine(url: str):
    return queries.engine_for(url)


@st.cache_data(ttl=REFRESH_SECONDS, show_spinner=False)
def runs(url: str) -> pd.DataFrame:
    e = engine(url)
    return queries.runs(e) if queries.has_tables(e) else pd.DataFrame()


@st.cache_data(ttl=REFRESH_SECONDS, show_spinner=False)
def aggregates(url: str, run_id: str) -> pd.DataFrame:
    return queries.aggregate_metrics(engine(url), run_id)


@st.cache_data(ttl=REFRESH_SECONDS, show_spinner=False)
def classes(url: str, run_id: str, rnd: int) -> pd.DataFrame:
    return queries.class_metrics(engine(url), run_id, rnd)


@st.cache_data(ttl=REFRESH_SECONDS, show_spinner=False)
def events(url: str, run_id: str) -> pd.DataFrame:
    return queries.events(engine(url), run_id)


@st.cache_data(ttl=REFRESH_SECONDS, show_spinner=False)
def references(url: str, run_id: str) -> pd.DataFrame:
    return queries.references(engine(url), run_id)


@dataclass
class RunContext:
    """What every page gets: the registry URL and the selected run (a row of the runs table)."""

    url: str
    run: pd.Series

    @property
    def run_id(self) -> str:
        return str(self.run["id"])

    def aggregates(self) -> pd.DataFrame:
        return aggregates(self.url, self.run_id)

    def classes(self, rnd: int) -> pd.DataFrame:
        return classes(self.url, self.run_id, rnd)

    def events(self) -> pd.DataFrame:
        return events(self.url, self.run_id)

    def references(self) -> pd.DataFrame:
        return references(self.url, self.run_id)

    def evaluated_rounds(self) -> list[int]:
        agg = self.aggregates()
        return sorted(int(r) for r in agg.loc[agg["name"] == "mAP", "round"].unique())


def no_evaluation(ctx: RunContext) -> None:
    """The note of a page that needs evaluation results when the run has none: still training, or every site's
    summary withheld (DP sites whose policy releases none), or none recorded."""
    ev = ctx.events()
    withheld = ev[ev["kind"] == "evaluation_withheld"] if not ev.empty else ev
    if not withheld.empty:
        st.info(f"No evaluation results: every site that answered trains under differential privacy and released no "
                f"evaluation summary ({', '.join(sorted(set(withheld['site'].dropna())))}). A run config with "
                "dp-eval-noise-multiplier > 0 asks for a noised release charged to each site's ledger; a site may "
                "send exact summaries with [privacy] dp_exact_evaluation = true. The Privacy and Health pages "
                "still apply.")
    elif ctx.run["status"] == "running":
        st.info("This run has no evaluation results yet: the first round is still training.")
    else:
        st.info(f"This run recorded no evaluation results (status: {ctx.run['status']}).")


def round_picker(ctx: RunContext, key: str) -> int | None:
    """A round slider over the evaluated rounds (the last by default); None, with a note, when there is none."""
    rounds = ctx.evaluated_rounds()
    if not rounds:
        no_evaluation(ctx)
        return None
    if len(rounds) == 1:
        return rounds[0]
    return int(st.select_slider("Round", options=rounds, value=rounds[-1], key=key))
