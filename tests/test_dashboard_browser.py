"""The dashboard in a real browser: `fedchest dashboard` on a free port, headless Chromium (Debian's chromium
and chromedriver, through Selenium) opens every page, checks its key elements and saves a screenshot under
test-artifacts/dashboard/: on the tiny run's registry, and for every run of a registry made like `make demo`'s
(test-artifacts/dashboard/demo/). Skipped, saying why, without Chromium. Marker: e2e."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.e2e
ARTIFACTS = REPO / "test-artifacts" / "dashboard"
# page slug -> (header text, CSS selector of a key element, how many of them at least)
PAGES = {
    "": ("Runs", '[data-testid="stDataFrame"]', 1),
    "overview": ("Run overview", ".vega-embed", 4),
    "sites": ("Sites x projections", ".vega-embed", 2),
    "classes": ("Classes", '[data-testid="stDataFrame"]', 1),
    "generalisation": ("Cross-site generalisation", ".vega-embed", 1),
    "health": ("Health", ".vega-embed", 3),
    "privacy": ("Privacy", '[data-testid="stAlert"]', 1),
}
FRAME = '[data-testid="stDataFrame"]'
NO_CHROMIUM = ("chromium and chromedriver not installed and not installable here "
               "(scripts/ensure_system_packages.sh needs root or passwordless sudo with apt-get)")
# checked before any fixture is built (the demo registry takes minutes)
needs_chromium = pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                                    reason=NO_CHROMIUM)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip(NO_CHROMIUM)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1800"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=opts)


@contextmanager
def _serve(url: str):
    """`fedchest dashboard` on the registry ``url``, on a free port; yields its base URL once it answers."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "consortium.cli", "dashboard", "--db", url, "--port", str(port)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                if urllib.request.urlopen(f"{base}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("dashboard did not start: "
                                       f"{proc.stdout.read() if proc.poll() is not None else ''}") from None
                time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="module")
def dashboard(tiny_run_with_references):
    url, run_id, sites = tiny_run_with_references
    with _serve(url) as base:
        yield base, run_id


def _open(driver, base: str, run_id: str, slug: str, header: str):
    """Open a page of a run and wait for its header; returns a 60-second WebDriverWait on the page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{base}/?run={run_id}" + (f"&page={slug}" if slug else ""))
    wait = WebDriverWait(driver, 60)
    wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "h2"), header))
    return wait


def _drawn(wait, at_least: int) -> None:
    """Wait for ``at_least`` charts drawn (a canvas or svg inside each Vega embed), not just mounted."""
    from selenium.webdriver.common.by import By

    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".vega-embed canvas, .vega-embed svg")) >= at_least)


@needs_chromium
def test_every_page_in_chromium(dashboard):
    from selenium.webdriver.common.by import By

    base, run_id = dashboard
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver = _browser()
    try:
        for slug, (header, selector, at_least) in PAGES.items():
            wait = _open(driver, base, run_id, slug, header)
            wait.until(lambda d, selector=selector, at_least=at_least:
                       len(d.find_elements(By.CSS_SELECTOR, selector)) >= at_least)
            if selector == ".vega-embed":
                _drawn(wait, at_least)
            body = driver.find_element(By.TAG_NAME, "body").text
            assert "Synthetic data" in body, slug
            assert "Traceback" not in body and "Error" not in body.split("Synthetic data")[0], slug
            time.sleep(0.5)  # let the charts finish their transitions before the screenshot
            driver.save_screenshot(str(ARTIFACTS / f"{slug or 'runs'}.png"))
    finally:
        driver.quit()
    assert len(list(ARTIFACTS.glob("*.png"))) >= len(PAGES)


@needs_chromium
def test_every_page_of_every_demo_run_in_chromium(demo_registry):
    """Every page for every run of the registry made like `make demo`'s plus a DP run (tests/demo_registry.py):
    each page shows its header, its subheaders or notes, at least its charts (drawn) and tables, or, for a run
    that lacks the page's family, its note and no chart or table; never an exception."""
    from selenium.webdriver.common.by import By

    from dashboards.views import SLUGS
    from tests.demo_registry import EXPECTED

    out = ARTIFACTS / "demo"
    out.mkdir(parents=True, exist_ok=True)
    driver = _browser()
    try:
        with _serve(demo_registry.url) as base:
            for kind, run_id in demo_registry.runs.items():
                for slug, by_run in EXPECTED.items():
                    expect, where = by_run[kind], f"{SLUGS.get(slug, 'Runs')} on the {kind} run"
                    wait = _open(driver, base, run_id, slug, SLUGS.get(slug, "Runs"))
                    for text in expect.texts:
                        wait.until(lambda d, text=text: text in d.find_element(By.TAG_NAME, "body").text,
                                   f"{where}: {text!r} not shown")
                    _drawn(wait, expect.charts)
                    wait.until(lambda d, n=expect.frames: len(d.find_elements(By.CSS_SELECTOR, FRAME)) >= n,
                               f"{where}: fewer than {expect.frames} tables")
                    if expect.empty:  # its note is the page's last element: nothing else is on its way
                        assert not driver.find_elements(By.CSS_SELECTOR, f".vega-embed, {FRAME}"), where
                    assert not driver.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]'), where
                    assert "Traceback" not in driver.find_element(By.TAG_NAME, "body").text, where
                    driver.save_screenshot(str(out / f"{kind}-{slug or 'runs'}.png"))
    finally:
        driver.quit()
    assert len(list(out.glob("*.png"))) >= 3 * len(EXPECTED)
