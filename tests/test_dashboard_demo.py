"""Every dashboard page (the Runs page and every page of dashboards.views.PAGES) for every run of a registry made
like `make demo`'s (radiograph sites with PA / AP / lateral views and the zero-shot branch, a chest-CT site, the
box-latent run) plus a run under DP-SGD: Streamlit's AppTest, no browser (tests/test_dashboard_browser.py drives
Chromium through the same pages). Each page must render without an exception and show what it shows for that kind
of run (tests/demo_registry.py, EXPECTED), or its note when the run lacks the page's family. Marker: e2e (the
registry takes four small federated runs to build)."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest
from streamlit.testing.v1 import AppTest

from dashboards.queries import aggregate_metrics, class_metrics, engine_for
from dashboards.views import SLUGS
from tests.conftest import REPO
from tests.demo_registry import EXPECTED

pytestmark = pytest.mark.e2e
APP = str(REPO / "dashboards" / "app.py")
TEXT_ELEMENTS = ("subheader", "info", "caption", "warning", "success", "markdown")


def _page(url: str, monkeypatch, run_id: str, slug: str) -> AppTest:
    monkeypatch.setenv("FEDCHEST_DB_URL", url)
    at = AppTest.from_file(APP, default_timeout=120)
    if slug:
        at.query_params["page"] = slug
    at.query_params["run"] = run_id
    return at.run()


def _frame(chart) -> pd.DataFrame:
    return pd.concat([pa.ipc.open_stream(d.data.data).read_all().to_pandas() for d in chart.proto.datasets],
                     ignore_index=True)


def test_expectations_cover_every_page_and_run():
    assert set(EXPECTED) == {"", *SLUGS}
    assert all(set(by_run) == {"main", "box", "dp"} for by_run in EXPECTED.values())


@pytest.mark.parametrize("slug", list(EXPECTED))
def test_every_page_of_every_run_shows_its_content(demo_registry, monkeypatch, slug):
    title = SLUGS.get(slug, "Runs")
    for kind, run_id in demo_registry.runs.items():
        expect = EXPECTED[slug][kind]
        at = _page(demo_registry.url, monkeypatch, run_id, slug)
        where = f"{title} on the {kind} run"
        assert not at.exception, f"{where}: {at.exception[0].message}"
        assert at.header[0].value == title, where
        shown = [e.value for name in TEXT_ELEMENTS for e in getattr(at, name)]
        for text in expect.texts:
            assert any(text in s for s in shown), f"{where}: {text!r} not among {shown}"
        charts, frames = len(at.get("vega_lite_chart")), len(at.dataframe)
        assert charts >= expect.charts and frames >= expect.frames, f"{where}: {charts} charts, {frames} tables"
        if expect.empty:
            assert charts == frames == 0, f"{where}: the run has none of this page's results, yet it shows some"
        assert any("Synthetic data" in w.value for w in at.warning), where


def _runs_table(demo_registry, monkeypatch) -> pd.DataFrame:
    return _page(demo_registry.url, monkeypatch, demo_registry.runs["main"], "").dataframe[0].value.set_index("id")


def test_runs_page_lists_the_three_runs(demo_registry, monkeypatch):
    table = _runs_table(demo_registry, monkeypatch)
    assert set(table.index) == set(demo_registry.runs.values())
    assert (table["status"] == "completed").all()
    assert table.loc[demo_registry.runs["main"], "rounds_done"] == 1
    assert table.loc[demo_registry.runs["box"], "rounds_done"] == 2
    n_main = len(demo_registry.radiograph_sites) + len(demo_registry.ct_sites)
    assert table.loc[demo_registry.runs["main"], "heads"] == "routed-experts+zeroshot+ct"
    assert table.loc[demo_registry.runs["box"], "heads"] == "box-latent"
    assert table.loc[[demo_registry.runs[k] for k in ("main", "box", "dp")], "sites"].tolist() == [
        n_main, len(demo_registry.radiograph_sites), len(demo_registry.dp_epsilon)]


def test_runs_page_counts_the_rounds_of_a_run_whose_evaluation_was_withheld(demo_registry, monkeypatch):
    """A round in which every site withheld its evaluation (DP) is still a finished round (it was recorded as
    unfinished, so the Runs page said 0 rounds done of a completed run)."""
    assert _runs_table(demo_registry, monkeypatch).loc[demo_registry.runs["dp"], "rounds_done"] == 1


def test_sites_page_has_every_projection_of_the_radiograph_sites(demo_registry, monkeypatch):
    """The CT site has no radiograph projections: the heatmap shows the radiograph sites (and the pool) only."""
    at = _page(demo_registry.url, monkeypatch, demo_registry.runs["main"], "sites")
    cells = _frame(at.get("vega_lite_chart")[0])
    assert set(cells["site"]) == {*demo_registry.radiograph_sites, "pooled (all sites)"}
    assert set(cells["projection"]) == {"all", "PA", "AP", "LAT"}
    assert cells.loc[cells["projection"] == "all", "value"].notna().any()


def test_classes_page_keeps_the_ct_label_set_apart(demo_registry, monkeypatch):
    """The CT label set shares class names with the radiograph set (Cardiomegaly, ...); the Classes page lists each
    radiograph class once, with the radiograph set's training prevalence (not the CT set's). Reading every
    train_prevalence row raised pandas' InvalidIndexError on this registry."""
    run_id = demo_registry.runs["main"]
    cm = class_metrics(engine_for(demo_registry.url), run_id, 1)
    prev = cm[cm["site"].isna() & (cm["name"] == "train_prevalence")]
    shared = set(prev.loc[prev["projection"] == "CT", "class_name"]) & set(prev.loc[prev["projection"] == "all",
                                                                                   "class_name"])
    assert shared, "the fixture should have CT classes named like radiograph ones"
    at = _page(demo_registry.url, monkeypatch, run_id, "classes")
    assert not at.exception
    shown = at.dataframe[0].value.set_index("class_name")["train_prevalence"]
    assert shown.index.is_unique and len(shown) == 30
    radiograph = prev[prev["projection"] == "all"].set_index("class_name")["value"]
    for name in shared:
        assert shown[name] == pytest.approx(round(radiograph[name], 4), nan_ok=True), name


def test_classes_page_tells_withheld_from_not_annotated(demo_registry, monkeypatch):
    """At 120 images a site withholds most classes under its small-count rule; the page must not call them 'not
    annotated' alone, and gives each site's count of withheld classes."""
    run_id = demo_registry.runs["main"]
    agg = aggregate_metrics(engine_for(demo_registry.url), run_id)
    withheld = agg[(agg["name"] == "withheld_classes") & (agg["projection"] == "all") & (agg["round"] == 1)]
    assert not withheld.empty, "the fixture's sites should withhold some classes"
    at = _page(demo_registry.url, monkeypatch, run_id, "classes")
    note = next(w.value for w in at.warning if w.value.startswith("No result"))
    assert "withheld under the site's small-count rule" in note
    for site, n in zip(withheld["site"], withheld["value"]):
        assert f"{site} {int(n)}" in note
    assert "no result" in set(at.dataframe[0].value["band"])


def test_ct_page_lists_the_ct_sites(demo_registry, monkeypatch):
    at = _page(demo_registry.url, monkeypatch, demo_registry.runs["main"], "ct")
    per_site = at.dataframe[0].value
    assert set(per_site["site"]) == {*demo_registry.ct_sites, "pooled (all CT sites)"}


def test_privacy_page_shows_each_dp_sites_epsilon(demo_registry, monkeypatch):
    at = _page(demo_registry.url, monkeypatch, demo_registry.runs["dp"], "privacy")
    spent = _frame(at.get("vega_lite_chart")[0]).set_index("site")["value"]
    assert spent.to_dict() == pytest.approx(demo_registry.dp_epsilon)
    modes = at.dataframe[0].value
    assert set(modes["site"]) == set(demo_registry.dp_epsilon)
    assert all(m.startswith("withheld") for m in modes["evaluation summary"])  # dp-eval-noise-multiplier 0


def test_pages_without_evaluation_name_the_sites_that_withheld_it(demo_registry, monkeypatch):
    for slug in ("overview", "sites", "classes", "generalisation"):
        at = _page(demo_registry.url, monkeypatch, demo_registry.runs["dp"], slug)
        note = at.info[0].value
        assert "still training" not in note and all(site in note for site in demo_registry.dp_epsilon), slug
