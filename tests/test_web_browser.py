"""The console in a real headless Chromium: every page loads, a retry and a pause are done through the UI (the
button, the confirmation page, the result), the live parts move, and each page is saved as a screenshot.

Chromium and its driver are Debian's `chromium` and `chromium-driver`; scripts/browser installs them when they
are missing (apt-get as root). The test is skipped, with the reason, only when that is impossible. Screenshots go
to the test's directory; with SAVE_CONSOLE_SCREENSHOTS=1 they are also copied to docs/console/ (how the ones
in the docs were made).

The console and a worker run as real processes on the test's ledger and Redis.
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import subprocess
import uuid

import pytest

from conftest import ROOT, wait_until

pytest.importorskip("jinja2", reason="the console's extra is not installed: pip install -e '.[web]'")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the test extra)")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402

from test_web import make_dead, make_running, start_console, submit  # noqa: E402

pytestmark = pytest.mark.serial  # chromium takes both cores while it starts

DOCS = ROOT / "docs" / "console"


@pytest.fixture(scope="module")
def chromium():
    proc = subprocess.run([str(ROOT / "scripts" / "browser")], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.skip(f"no headless Chromium: scripts/browser could not install it ({proc.stderr.strip()[-300:]})")
    return shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture
def browser(chromium):
    from selenium.webdriver.chrome.service import Service
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager look for a driver online
    binary, driver_path = chromium
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1360,1000", "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def shown(driver, css: str, attribute: str | None = None) -> str:
    """What the page shows at `css` now (its text, or an attribute), or "" while it is not there: the next page
    still loading after a click, or the live refresh replacing the element. A wait polls this; a find_element in
    a wait would fail at its first poll (a CI run did: right after a click, on the page being left)."""
    try:
        return " ".join((element.get_attribute(attribute) if attribute else element.text) or ""
                        for element in driver.find_elements(webdriver.common.by.By.CSS_SELECTOR, css))
    except StaleElementReferenceException:
        return ""


def shoot(driver, tmp_path, name: str) -> None:
    """A full-page screenshot: the window is made as tall as the page first."""
    height = driver.execute_script("return Math.max(document.body.scrollHeight, 600)")
    driver.set_window_size(1360, min(height + 20, 2400))
    path = tmp_path / "screens" / f"{name}.png"
    path.parent.mkdir(exist_ok=True)
    assert driver.save_screenshot(str(path))
    if os.environ.get("SAVE_CONSOLE_SCREENSHOTS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, DOCS / f"{name}.png")


def seed_history(hours: int = 12) -> None:
    """Jobs that finished over the last hours (for the charts), written as a worker's outcomes would be."""
    from app import ledger
    from app.models import Job
    now = ledger.now()
    rows = []
    for hour in range(hours):
        for n in range(6 + (hour * 7) % 11):
            rows.append({"id": str(uuid.uuid4()), "task": ("checksum_file", "deliver_webhook", "add")[n % 3],
                         "kwargs": json.dumps({"path": f"in/{hour}-{n}.csv"}), "hour": hour, "n": n})
    ledger.insert_jobs([{k: v for k, v in row.items() if k not in ("hour", "n")} for row in rows],
                       os.environ["NIGHTSHIFT_QUEUE"])
    for row in rows:
        finished = now - datetime.timedelta(hours=row["hour"], minutes=row["n"] * 3)
        dead = (row["n"] + row["hour"]) % 9 == 0
        Job.update(state="dead" if dead else "succeeded", created_at=finished - datetime.timedelta(seconds=2),
                   started_at=finished - datetime.timedelta(seconds=1), finished_at=finished, duration=0.8,
                   worker="web1:4121:9f3a", error="TemporaryError: upstream answered 503" if dead else None,
                   reason="failed on attempt 3" if dead else None).where(Job.id == row["id"]).execute()


@pytest.mark.slow
def test_pages_retry_and_pause_in_a_real_browser(env, browser, tmp_path, start_worker, monkeypatch):
    from app import ledger, pausing
    queue = env["NIGHTSHIFT_QUEUE"]
    seed_history()
    dead = make_dead(task="deliver_webhook", error="PermanentError: https://hooks.example/x answered 410 Gone",
                     url="https://hooks.example/x", payload={"order": 4711},
                     headers={"Authorization": "Bearer whsec_notshown"})
    make_dead(message="disk full")
    running = make_running("count_primes", limit=50_000_000)
    ledger.record_progress(running, 12, 50, "segment 12 of 50")
    submit("checksum_file", key="upload-20261125-0042", path="uploads/report.csv")
    # A real consumer of a second queue: it shows in the workers table with its own heartbeat and RSS.
    start_worker("reports", NIGHTSHIFT_QUEUE=f"{queue}-reports")
    console, port = start_console(env, NIGHTSHIFT_TASK_MODULES="tasks,sample_tasks,zoned_tasks",
                                  NIGHTSHIFT_CLEANUP_CRON="0 * * * *")
    base = f"http://127.0.0.1:{port}"
    by_css = webdriver.common.by.By.CSS_SELECTOR
    try:
        browser.get(base + "/")
        assert "Queues" in browser.page_source and queue in browser.page_source
        wait_until(lambda: "reports" in shown(browser, "#overview") and "alive" in shown(browser, "#overview"), 20, 0.5,
                   "the live refresh to show the second queue's worker")
        shoot(browser, tmp_path, "overview")

        browser.get(base + "/jobs")
        shoot(browser, tmp_path, "jobs")
        # Filter through the form, as a person would.
        from selenium.webdriver.support.ui import Select
        Select(browser.find_element(by_css, "select[name=state]")).select_by_visible_text("dead")
        browser.find_element(by_css, "form.filters button").click()
        wait_until(lambda: "state=dead" in browser.current_url, 10, message="the filtered list")
        assert dead[:13] in browser.page_source and "Retry all matching" in browser.page_source
        shoot(browser, tmp_path, "jobs-dead")

        browser.get(f"{base}/jobs/{running}")
        assert browser.find_element(by_css, "#progress").get_attribute("value") == "24"
        shoot(browser, tmp_path, "job-running")
        ledger.record_progress(running, 40, 50, "segment 40 of 50")
        wait_until(lambda: shown(browser, "#progress", "value") == "80", 15, 0.3,
                   "the progress bar to move without a reload")
        assert "segment 40 of 50" in browser.find_element(by_css, "#progress-note").text

        # Retry through the UI: the button, the confirmation page, the outcome.
        browser.get(f"{base}/jobs/{dead}")
        assert "whsec_notshown" not in browser.page_source
        shoot(browser, tmp_path, "job-dead")
        browser.find_element(by_css, "button[data-action=retry]").click()
        wait_until(lambda: "Retry?" in browser.page_source, 10, message="the confirmation page")
        assert ledger.state_of(dead) == "dead"
        shoot(browser, tmp_path, "confirm")
        browser.find_element(by_css, "#confirm").click()
        wait_until(lambda: "retried 1 job(s)" in browser.page_source, 10, message="the retry's outcome")
        assert ledger.state_of(dead) == "queued"
        assert "web from 127.0.0.1" in browser.page_source  # the audit row on the job's page

        # Pause through the UI, from the overview.
        browser.get(base + "/")
        row = [r for r in browser.find_elements(by_css, "#overview tbody tr") if r.text.startswith(queue + " ")
               or r.text.split("\n")[0].strip() == queue][0]
        row.find_element(by_css, "button[data-action=pause]").click()
        wait_until(lambda: "Pause queue?" in browser.page_source, 10, message="the confirmation page")
        browser.find_element(by_css, "#confirm").click()
        wait_until(lambda: "paused" in shown(browser, "p.message"), 10, message="the pause")
        assert pausing.is_paused_in_ledger(queue)
        shoot(browser, tmp_path, "overview-paused")

        browser.get(base + "/schedule")
        assert "nightshift_cleanup" in browser.page_source and "Europe/Berlin" in browser.page_source
        shoot(browser, tmp_path, "schedule")
    finally:
        console.send_signal(signal.SIGTERM)
        console.wait(15)

    # With a token: the login form, then the pages.
    console, port = start_console(env, NIGHTSHIFT_WEB_TOKEN="correct-horse-battery")
    try:
        browser.get(f"http://127.0.0.1:{port}/jobs")
        assert "/login" in browser.current_url
        shoot(browser, tmp_path, "login")
        browser.find_element(by_css, "input[name=token]").send_keys("correct-horse-battery")
        browser.find_element(by_css, "form.login button").click()
        wait_until(lambda: browser.current_url.endswith("/jobs"), 10, message="the login")
        assert dead[:13] in browser.page_source
    finally:
        console.send_signal(signal.SIGTERM)
        console.wait(15)
