"""Every dashboard page against a registry filled by a real tiny federated run (Streamlit's AppTest, no
browser; tests/test_dashboard_browser.py drives Chromium), plus the empty and missing registry."""

import pandas as pd
import pyarrow as pa
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from streamlit.testing.v1 import AppTest

from dashboards.queries import aggregate_metrics, engine_for
from dashboards.views import PAGES
from server.registry import Registry
from tests.conftest import REPO

APP = str(REPO / "dashboards" / "app.py")


def _app(url: str, monkeypatch, **params) -> AppTest:
    monkeypatch.setenv("FEDCHEST_DB_URL", url)
    at = AppTest.from_file(APP, default_timeout=120)
    for k, v in params.items():
        at.query_params[k] = v
    return at.run()


def _charts(at: AppTest) -> list:
    return at.get("vega_lite_chart")


def _chart_text(chart) -> str:
    """A chart's Vega-Lite spec and the strings of its Arrow datasets."""
    return chart.proto.spec + "".join(d.data.data.decode("utf-8", "ignore") for d in chart.proto.datasets)


def _chart_frame(chart) -> pd.DataFrame:
    """The rows behind a chart (its Arrow datasets, concatenated)."""
    return pd.concat([pa.ipc.open_stream(d.data.data).read_all().to_pandas() for d in chart.proto.datasets],
                     ignore_index=True)


def test_runs_page_lists_the_run(tiny_run_with_references, monkeypatch):
    url, run_id, sites = tiny_run_with_references
    at = _app(url, monkeypatch)
    assert not at.exception
    runs = at.dataframe[0].value
    row = runs[runs["id"] == run_id].iloc[0]
    assert row["status"] == "completed" and row["sites"] == len(sites) and row["rounds_done"] == 2
    assert any("Synthetic data" in w.value for w in at.warning)


def test_overview_curves_baseline_and_references(tiny_run_with_references, monkeypatch):
    url, run_id, sites = tiny_run_with_references
    at = _app(url, monkeypatch, page="overview", run=run_id)
    assert not at.exception and at.header[0].value == "Run overview"
    assert len(_charts(at)) == 4  # pooled, per site, bands, references
    assert any("constant predictor" in c.value for c in at.caption)


def test_sites_by_projections_heatmap_and_gap(tiny_run_with_references, monkeypatch):
    url, run_id, _ = tiny_run_with_references
    at = _app(url, monkeypatch, page="sites", run=run_id)
    assert not at.exception and at.header[0].value == "Sites x projections"
    assert len(_charts(at)) >= 2  # heatmap, router accuracy (+ gap when laterals have positives)
    at.selectbox(key="sites_metric").set_value("tail_mAP").run()
    assert not at.exception


def test_classes_sorted_by_prevalence_with_bands(tiny_run_with_references, monkeypatch):
    url, run_id, sites = tiny_run_with_references
    at = _app(url, monkeypatch, page="classes", run=run_id)
    assert not at.exception and at.header[0].value == "Classes"
    table = at.dataframe[0].value
    assert len(table) == 30  # the CXR-LT 2026 seen classes
    prev = table["train_prevalence"].dropna().to_numpy()
    assert (prev[:-1] >= prev[1:]).all()
    assert set(table["band"]) <= {"head", "medium", "tail", "not annotated", "no result"}
    at.selectbox(key="classes_site").set_value(sites[0]).run()
    at.selectbox(key="classes_projection").set_value("LAT").run()
    assert not at.exception


def test_generalisation_matrix_has_global_and_local_models(tiny_run_with_references, monkeypatch):
    url, run_id, sites = tiny_run_with_references
    at = _app(url, monkeypatch, page="generalisation", run=run_id)
    assert not at.exception
    chart = _charts(at)[0]
    assert "evaluating site" in chart.proto.spec
    cells = _chart_frame(chart).set_index(["model", "site"])["value"]
    assert len(cells) == len(sites) * (len(sites) + 1)  # the global model and one local-only model per site
    agg = aggregate_metrics(engine_for(url), run_id)
    mine = agg[(agg["round"] == 2) & agg["site"].notna() & (agg["projection"] == "all") & (agg["name"] == "mAP")]
    assert len(mine) == len(sites) and mine["value"].notna().any()  # (a site whose classes were all withheld: NaN)
    for site, value in zip(mine["site"], mine["value"]):  # the run's own round-2 results, as the registry has them
        assert cells[("global (round 2)", site)] == pytest.approx(value, nan_ok=True)
    for a in sites:  # the references next to the run: 0.2 at home, 0.1 elsewhere
        for b in sites:
            assert cells[(f"local-only:{a}", b)] == pytest.approx(0.2 if a == b else 0.1)


def test_health_shows_durations_straggler_and_events(tiny_run_with_references, monkeypatch):
    url, run_id, sites = tiny_run_with_references
    at = _app(url, monkeypatch, page="health", run=run_id)
    assert not at.exception
    straggler = at.dataframe[0].value
    assert list(straggler["round"]) == [1, 2] and set(straggler["site"]) <= set(sites)
    # train time, evaluate time, the slowest site's phases in train and in evaluate, bytes sent
    assert len(_charts(at)) == 5
    server = at.dataframe[1].value  # the server's own phases per round
    assert list(server.index) == [1, 2]
    assert {"train push", "train aggregate", "evaluate push", "evaluate aggregate", "round checkpoint"} <= set(server)
    # evaluate-with-train: round 1's model is evaluated inside round 2's train stage; only the last round has an
    # evaluation stage of its own
    assert server["evaluate push"].isna().tolist() == [True, False]
    assert (server.fillna(0) >= 0).all().all() and server["train push"].notna().all()


def test_privacy_says_when_the_run_had_no_dp(tiny_run_with_references, monkeypatch):
    url, run_id, _ = tiny_run_with_references
    at = _app(url, monkeypatch, page="privacy", run=run_id)
    assert not at.exception
    assert any("did not train under differential privacy" in i.value for i in at.info)


def test_every_page_is_reachable_from_the_sidebar(tiny_run_with_references, monkeypatch):
    url, run_id, _ = tiny_run_with_references
    at = _app(url, monkeypatch)
    for title in PAGES:
        at.sidebar.radio(key="page").set_value(title).run()
        assert not at.exception, title
        assert at.header[0].value == title


def test_empty_registry(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    Registry(url)
    at = _app(url, monkeypatch)
    assert not at.exception and any("No runs" in i.value for i in at.info)


def test_missing_registry_file(tmp_path, monkeypatch):
    at = _app(f"sqlite:///{tmp_path / 'nope.db'}", monkeypatch)
    assert not at.exception and any("no registry at" in i.value for i in at.info)
    assert not (tmp_path / "nope.db").exists()  # the dashboard never creates a registry


def test_dashboard_engine_is_read_only(tiny_run_with_references):
    url, _, _ = tiny_run_with_references
    with pytest.raises(OperationalError, match="readonly"):
        with engine_for(url).begin() as c:
            c.execute(text("DELETE FROM events"))


def _axes(spec: dict):
    yield from ((ch, spec["encoding"][ch]) for ch in ("x", "y") if ch in spec.get("encoding", {}))
    for layer in spec.get("layer", []):
        yield from _axes(layer)


def test_every_chart_has_axis_titles(tiny_run_with_references, monkeypatch):
    import json

    url, run_id, _ = tiny_run_with_references
    at = _app(url, monkeypatch)
    seen = 0
    for title in PAGES:
        at.sidebar.radio(key="page").set_value(title).run()
        for chart in _charts(at):
            for channel, enc in _axes(json.loads(chart.proto.spec)):
                assert enc.get("title"), f"{title}: a chart's {channel} axis has no title"
                seen += 1
    assert seen >= 16
