"""The dashboard in a real browser: `fedchest dashboard` on a free port, headless Chromium (Debian's chromium
and chromedriver, through Selenium) opens every page, checks its key elements and saves a screenshot under
test-artifacts/dashboard/. Marker: e2e."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("chromium and chromedriver not installed and not installable here "
                    "(scripts/ensure_system_packages.sh needs root or passwordless sudo with apt-get)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1800"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=opts)


@pytest.fixture(scope="module")
def dashboard(tiny_run_with_references):
    url, run_id, sites = tiny_run_with_references
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "dashboard", "--db", url, "--port", str(port)],
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
        yield base, run_id
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_every_page_in_chromium(dashboard):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    base, run_id = dashboard
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver = _browser()
    try:
        for slug, (header, selector, at_least) in PAGES.items():
            driver.get(f"{base}/?run={run_id}" + (f"&page={slug}" if slug else ""))
            wait = WebDriverWait(driver, 60)
            wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "h2"), header))
            wait.until(lambda d, selector=selector, at_least=at_least:
                       len(d.find_elements(By.CSS_SELECTOR, selector)) >= at_least)
            if selector == ".vega-embed":  # drawn, not just mounted
                wait.until(lambda d, at_least=at_least: len(d.find_elements(
                    By.CSS_SELECTOR, ".vega-embed canvas, .vega-embed svg")) >= at_least)
            body = driver.find_element(By.TAG_NAME, "body").text
            assert "Synthetic data" in body, slug
            assert "Traceback" not in body and "Error" not in body.split("Synthetic data")[0], slug
            time.sleep(0.5)  # let the charts finish their transitions before the screenshot
            driver.save_screenshot(str(ARTIFACTS / f"{slug or 'runs'}.png"))
    finally:
        driver.quit()
    assert len(list(ARTIFACTS.glob("*.png"))) >= len(PAGES)
