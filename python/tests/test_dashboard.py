"""The dashboard in a real headless Chromium (Debian's chromium and
chromedriver, driven by selenium), `/metrics` through prometheus_client's
parser, and the performance report opened in the browser."""

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from conftest import taskfarm_bin

ROOT = Path(__file__).resolve().parents[2]


def find(name, *candidates):
    for c in (shutil.which(name), *candidates):
        if c and Path(c).is_file():
            return c
    pytest.fail(f"{name} is not installed (tests/run-all.sh installs Debian's chromium and chromium-driver)")


@pytest.fixture
def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = find("chromium", "/usr/bin/chromium")
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1300,900"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(find("chromedriver", "/usr/bin/chromedriver")), options=opts)
    yield driver
    driver.quit()


def status(cluster):
    out = subprocess.run([taskfarm_bin(), "status", "--scheduler-file", str(cluster.file), "--json"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def severe(driver):
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def sleep_graph(path, n=2000):
    """n tasks of 10 ms (prefix `sleep`) and a sum of n incs (prefixes `inc`, `total`)."""
    g = {f"sleep-{i}": ["sleep", 0.01] for i in range(n)}
    g.update({f"inc-{i}": ["inc", i] for i in range(100)})
    g["total"] = ["sum", [f"inc-{i}" for i in range(100)]]
    path.write_text(json.dumps(g))
    return path


def test_dashboard_shows_the_workers_and_the_progress_reaches_the_total(cluster, browser, tmp_path):
    url = status(cluster)["dashboard"]
    assert url.startswith("http://127.0.0.1:") and "?token=" in url
    graph = sleep_graph(tmp_path / "g.json")
    report = tmp_path / "report.html"
    submit = subprocess.Popen(
        [taskfarm_bin(), "submit", str(graph), "--scheduler-file", str(cluster.file), "--performance-report", str(report)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    browser.get(url)
    wait = WebDriverWait(browser, 120, poll_frequency=0.2)

    # The page redraws its tables on every update, so an element found by
    # one WebDriver call can be gone by the next (StaleElementReference).
    # Each read is one script, which runs between two redraws.
    def text(css):
        return browser.execute_script("const e = document.querySelector(arguments[0]); return e ? e.textContent : null;", css)

    def count(css):
        return browser.execute_script("return document.querySelectorAll(arguments[0]).length;", css)

    wait.until(lambda d: text("#nworkers") == "2")
    assert count("#workers tbody tr") == 2

    def done(prefix):
        t = text(f'#progress tr[data-prefix="{prefix}"] td.done')
        return int(t) if t is not None else -1

    wait.until(lambda d: done("sleep") == 2000 and done("inc") == 100 and done("total") == 1)
    assert text('#progress tr[data-prefix="sleep"] td.total') == "2000"
    out, err = submit.communicate(timeout=300)
    assert submit.returncode == 0, err
    assert '"total": 5050' in out
    # The task stream drew the runs of the last minute.
    drawn = browser.execute_script("return runs.length")
    assert drawn > 0
    if os.environ.get("TASKFARM_SCREENSHOT"):
        browser.save_screenshot(os.environ["TASKFARM_SCREENSHOT"])
    assert severe(browser) == [], "the page logged errors"

    # The report opens in the browser without errors and counts every prefix.
    browser.get(report.as_uri())
    counts = {
        r.get_attribute("data-prefix"): (r.find_element(By.CSS_SELECTOR, "td.total").text, r.find_element(By.CSS_SELECTOR, "td.done").text)
        for r in browser.find_elements(By.CSS_SELECTOR, "#prefixes tr[data-prefix]")
    }
    assert counts == {"sleep": ("2000", "2000"), "inc": ("100", "100"), "total": ("1", "1")}
    assert len(browser.find_elements(By.CSS_SELECTOR, "#stream rect")) >= 2101
    assert severe(browser) == []


def test_without_the_token_the_dashboard_refuses(cluster, browser):
    url = status(cluster)["dashboard"]
    c = cluster.client(2)
    assert c.dashboard_link == url, "Client.dashboard_link, as Dask's"
    c.close()
    base = url.split("?")[0]
    for path in ("", "events", "metrics", "api/status"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(base + path, timeout=30)
        assert e.value.code == 403
    browser.get(base)
    assert "403 Forbidden" in browser.find_element(By.TAG_NAME, "body").text


def test_metrics_parse_and_match_status(cluster, tmp_path):
    url = status(cluster)["dashboard"]
    base, token = url.split("/?token=")
    graph = sleep_graph(tmp_path / "g.json", n=50)
    subprocess.run([taskfarm_bin(), "submit", str(graph), "--scheduler-file", str(cluster.file)], check=True, capture_output=True)

    def scrape():
        req = urllib.request.Request(base + "/metrics", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(r.read().decode()) for s in f.samples}

    # The computation has ended, so the counts are still: two statuses
    # around a scrape that agree are what the scrape saw.
    before, m, after = status(cluster), scrape(), status(cluster)
    assert before["tasks"] == after["tasks"] and before["stats"] == after["stats"]
    for state, n in after["tasks"].items():
        assert m[("taskfarm_scheduler_tasks", (("state", state),))] == n, state
    assert m[("taskfarm_scheduler_tasks_finished_total", ())] == after["stats"]["tasks_finished"] >= 151
    assert m[("taskfarm_scheduler_workers", ())] == 2
    assert m[("taskfarm_scheduler_prefix_state_totals_total", (("state", "done"), ("task_prefix_name", "sleep")))] == 50
    threads = {dict(k[1])["worker"]: v for k, v in m.items() if k[0] == "taskfarm_worker_threads"}
    assert threads == {"w0": 2, "w1": 2}
