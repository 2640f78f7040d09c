"""The expert browses the registry in a real browser: headless Chromium driving MLflow's web UI.

The UI is a React single-page app, so only a browser proves that it renders the registered model, its
``champion`` alias and the version's run metrics for a user who is logged in with basic auth. Chromium and
its driver are Debian's (``chromium``, ``chromium-driver``), installed by the set-up (scripts/bootstrap.sh,
which ``make test`` runs), never by the test: without them the test fails under CI (``CI=true``) and is
skipped elsewhere. Selenium is given the driver's path, so Selenium Manager never downloads a browser.
Screenshots are kept in the test's folder and copied to tests/artifacts/ for a person to look at. The
seeded server is the ``mlflow_server`` fixture of tests/model/conftest.py.
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
WAIT_S = 60
ROW = "./ancestor::*[@role='row' or self::tr][1]"


@pytest.fixture(scope="module", autouse=True)
def _require_chromium() -> None:
    """Fail (under CI) or skip (elsewhere) when the set-up has not installed Chromium and its driver.

    Module-scoped and autouse, so it runs before the module's server is started for nothing.
    """
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if not missing:
        return
    message = (
        f"{' and '.join(missing)} missing: run scripts/bootstrap.sh (make test does), "
        "or apt-get install chromium chromium-driver"
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture()
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def _log_in(driver: webdriver.Chrome, user: str, password: str) -> None:
    """Send basic-auth credentials with every request the page makes (credentials in URLs are unreliable)."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})


def _row_text(driver: webdriver.Chrome, xpath: str, expected: str, server: Any) -> str:
    """The text of the table row holding the element at ``xpath``, once it shows ``expected``.

    The page renders in steps (and re-renders rows), so the row is looked up afresh on every try.
    """

    def row_text(d: webdriver.Chrome) -> str | bool:
        text = d.find_element(By.XPATH, xpath).find_element(By.XPATH, ROW).text
        return text if expected in text else False

    ignored = (NoSuchElementException, StaleElementReferenceException)
    try:
        return WebDriverWait(driver, WAIT_S, ignored_exceptions=ignored).until(row_text)
    except TimeoutException:
        page, log = driver.find_element(By.TAG_NAME, "body").text[:2000], server.log.read_text()[-3000:]
        pytest.fail(f"no row with {expected!r} in {WAIT_S} s at {driver.current_url}:\n{page}\n{log}")


def _screenshot(driver: webdriver.Chrome, tmp_path: Path, name: str, show: str | None = None) -> Path:
    """Save the window (scrolled to the element at ``show``) in the test's folder and in tests/artifacts."""
    if show is not None:
        element = driver.find_element(By.XPATH, show)
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    shot = tmp_path / name
    assert driver.save_screenshot(str(shot)), f"no screenshot of {driver.current_url}"
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / name)
    return shot


@pytest.mark.slow
def test_expert_sees_the_champion_version_and_its_run_metric(
    mlflow_server: Any, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    model, alias = mlflow_server.MODEL, mlflow_server.ALIAS
    metric, metric_value = mlflow_server.METRIC, mlflow_server.METRIC_VALUE
    _log_in(browser, *mlflow_server.expert)
    browser.get(f"{mlflow_server.url}/#/models/{model}")
    version_link = f"//a[normalize-space()='Version {mlflow_server.version}']"
    assert f"@ {alias}" in _row_text(browser, version_link, alias, mlflow_server)
    assert model in browser.find_element(By.TAG_NAME, "body").text
    shot = _screenshot(browser, tmp_path, "registry-browser.png")
    assert shot.stat().st_size > 10_000

    # The version's page links to the run that produced it; the run's overview lists its metrics.
    browser.find_element(By.XPATH, version_link).click()
    run_page = f"#/experiments/{mlflow_server.experiment_id}/runs/{mlflow_server.run_id}"
    source_run = WebDriverWait(browser, WAIT_S).until(
        lambda d: d.find_element(By.XPATH, f"//a[contains(@href, '{run_page}')]")
    )
    assert source_run.get_attribute("href").startswith(f"{mlflow_server.url}/{run_page}")
    browser.get(f"{mlflow_server.url}/{run_page}")
    metric_cell = f"//*[@role='row']//*[normalize-space()='{metric}']"
    row = _row_text(browser, metric_cell, str(metric_value), mlflow_server)
    assert row.split() == [metric, str(metric_value)], row
    _screenshot(browser, tmp_path, "registry-browser-run.png", show=metric_cell)
