"""The dashboard renders from a registry (Streamlit's AppTest: no browser; the browser tests come with the
dashboard issue)."""

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from server.registry import Registry
from tests.conftest import REPO


@pytest.fixture
def registry_url(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    reg = Registry(url)
    run = reg.create_run("dash-test", "FedChestAvg", "routed-experts", "cxrlt2026", 2, {}, True)
    for rnd in (1, 2):
        rows = [(site, proj, None, "mAP", 0.1 * rnd + i * 0.01, 10) for i, site in enumerate([None, "a", "b"])
                for proj in ("all", "PA", "AP", "LAT")]
        rows += [(None, "all", c, "ap", float(v), 3) for c, v in zip("xyz", np.linspace(0.2, 0.6, 3))]
        reg.add_metrics(run, rnd, rows)
    reg.finish_run(run, "completed")
    monkeypatch.setenv("FEDCHEST_DB_URL", url)
    return url


def test_dashboard_renders_runs_and_metrics(registry_url):
    at = AppTest.from_file(str(REPO / "dashboards" / "app.py"), default_timeout=60).run()
    assert not at.exception
    assert any("Synthetic data" in w.value for w in at.warning)
    assert len(at.dataframe) == 2  # runs + site x projection


def test_dashboard_says_so_when_empty(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDCHEST_DB_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    Registry(f"sqlite:///{tmp_path / 'empty.db'}")
    at = AppTest.from_file(str(REPO / "dashboards" / "app.py"), default_timeout=60).run()
    assert not at.exception
    assert any("No runs" in i.value for i in at.info)
