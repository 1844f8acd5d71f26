"""Every dashboard page for every run of a registry made like `make demo`'s (radiograph sites with the zero-shot
branch, a chest-CT site, then the box-latent run), at a small, fast size. Marker: e2e (the registry takes a
federated run of each kind to build)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from streamlit.testing.v1 import AppTest

from dashboards.queries import class_metrics, engine_for, runs
from dashboards.views import PAGES
from tests.conftest import REPO

pytestmark = pytest.mark.e2e
APP = str(REPO / "dashboards" / "app.py")


@pytest.fixture(scope="session")
def demo_registry(tmp_path_factory) -> str:
    """`make demo`'s command line (--zeroshot --box-latent --ct-sites 1) with one round of each run, 120 images per
    site, 32 px, the tiny preset. Returns the registry URL. (At 60 images a site's test split is 12 images, and the
    random split often leaves no class with min_count positives and negatives: every radiograph figure withheld.)"""
    out = tmp_path_factory.mktemp("make-demo")
    r = subprocess.run([sys.executable, "-m", "server.cli", "demo", "--out", str(out), "--zeroshot", "--box-latent",
                        "--ct-sites", "1", "--rounds", "1", "--box-latent-rounds", "1", "--images-per-site", "120",
                        "--image-size", "32", "--preset", "tiny", "--seed", "2"],
                       capture_output=True, text=True, cwd=REPO, timeout=1800)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return json.loads((out / "summary.json").read_text())["db_url"]


def test_every_page_of_every_run_renders(demo_registry, monkeypatch):
    monkeypatch.setenv("FEDCHEST_DB_URL", demo_registry)
    table = runs(engine_for(demo_registry))
    assert len(table) == 2 and set(table["heads"]) == {"routed-experts+zeroshot+ct", "box-latent"}
    for run_id in table["id"]:
        for title, page in PAGES.items():
            at = AppTest.from_file(APP, default_timeout=120)
            at.query_params["page"] = page.SLUG
            at.query_params["run"] = run_id
            at.run()
            assert not at.exception, f"{title} on run {run_id}: {at.exception[0].message}"
            assert at.header[0].value == title


def test_classes_page_keeps_the_ct_label_set_apart(demo_registry, monkeypatch):
    """The CT label set shares class names with the radiograph set; the Classes page lists each radiograph class
    once, with the radiograph set's training prevalence (not the CT set's)."""
    monkeypatch.setenv("FEDCHEST_DB_URL", demo_registry)
    table = runs(engine_for(demo_registry))
    run_id = table.loc[table["heads"] == "routed-experts+zeroshot+ct", "id"].iloc[0]
    cm = class_metrics(engine_for(demo_registry), run_id, 1)
    prev = cm[cm["site"].isna() & (cm["name"] == "train_prevalence")]
    shared = set(prev.loc[prev["projection"] == "CT", "class_name"]) & set(prev.loc[prev["projection"] == "all",
                                                                                   "class_name"])
    assert shared, "the fixture should have CT classes named like radiograph ones"
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["page"] = "classes"
    at.query_params["run"] = run_id
    at.run()
    assert not at.exception
    shown = at.dataframe[0].value.set_index("class_name")["train_prevalence"]
    assert shown.index.is_unique and len(shown) == 30
    radiograph = prev[prev["projection"] == "all"].set_index("class_name")["value"]
    for name in shared:
        assert shown[name] == pytest.approx(round(radiograph[name], 4), nan_ok=True), name
