"""The web dashboard in a real headless Chromium (Selenium) against the real service with API keys: sign in, a bad
file's line error, a job started from the browser whose charts grow while it trains, pause / resume, the
playground side by side, the models page, another organization seeing none of it, and no request leaving the
server's origin. Screenshots of every page go to artifacts/dashboard/ (git-ignored; the path is printed)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, _kill_trainers
from tests.helpers import chat_rows, jsonl, upload

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("OPENFT_TEST_ARTIFACTS", ROOT / "artifacts")) / "dashboard"

pytestmark = pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
                                reason="Debian's chromium and chromium-driver are not installed (scripts/install adds them)")


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_model):
    """The service with two organizations' keys, on SQLite (the pages see only the API, never the database)."""
    data_dir = tmp_path_factory.mktemp("dashboard")
    server = Server(data_dir, f"sqlite:///{data_dir / 'openft.db'}", {"tiny": str(tiny_model)})
    keys = {org: server.cli("keys", "create", "--org", org) for org in ("acme", "globex")}
    server.start()
    files = data_dir / "upload"
    files.mkdir()
    (files / "train.jsonl").write_bytes(jsonl(chat_rows(12)))
    (files / "valid.jsonl").write_bytes(jsonl(chat_rows(4, offset=100)))
    (files / "bad.jsonl").write_bytes(jsonl(chat_rows(1)) + b'{"messages": [oops]}\n')
    yield {"server": server, "keys": keys, "files": files, "state": {}}
    server.stop(signal.SIGKILL)
    _kill_trainers(data_dir)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="openft-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    driver.openft_network = NetworkLog(driver)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    print(f"\ndashboard screenshots: {ARTIFACTS}")
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


# ---- helpers ------------------------------------------------------------------------------------------------


def css(driver, selector):
    return driver.find_element("css selector", selector)


def until(driver, predicate, timeout: float = 60, what: str = "condition"):
    """Poll predicate(driver) until it returns something truthy (selector misses count as not yet)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    deadline, last = time.time() + timeout, None
    while time.time() < deadline:
        try:
            value = predicate(driver)
            if value:
                return value
        except (NoSuchElementException, StaleElementReferenceException) as e:
            last = e
        time.sleep(0.1)
    shot(driver, "timeout")
    raise AssertionError(f"timed out waiting for {what} ({last}); browser log: {browser_errors(driver)}")


def visible_text(driver, selector) -> str:
    el = css(driver, selector)
    return el.text if el.is_displayed() else ""


def shot(driver, name: str) -> None:
    """Save a screenshot of the page, after checking that each of its form controls has a label."""
    unlabelled = driver.execute_script(
        "return [...document.querySelectorAll('input, select, textarea')]"
        ".filter((e) => !e.labels.length && !e.getAttribute('aria-label')).map((e) => e.outerHTML)")
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))
    assert name == "timeout" or not unlabelled, f"controls without a label on {name}: {unlabelled}"


def browser_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


class NetworkLog:
    """What the browser requested and received, from Chrome's performance (DevTools network) log, read
    incrementally. Requests of the browser's own start page (chrome:// documents, open before the first
    navigation) are left out."""

    def __init__(self, driver):
        self.driver, self.urls, self.responses = driver, [], []

    def read(self) -> "NetworkLog":
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            params = message.get("params", {})
            if message["method"] == "Network.requestWillBeSent" and not params.get("documentURL", "").startswith("chrome://"):
                self.urls.append(params["request"]["url"])
            elif message["method"] == "Network.responseReceived":
                self.responses.append(params["response"])
        return self


def assert_only_own_origin(driver, site) -> None:
    """Every request since the last check went to the server (or stayed in the page: data: and blob: URLs)."""
    log = driver.openft_network.read()
    urls, log.urls = log.urls, []
    assert urls, "the performance log recorded no requests"
    outside = [u for u in urls if not u.startswith(site["server"].url + "/") and not u.startswith(("data:", "blob:"))]
    assert not outside, f"requests left the server's origin: {outside}"


def go(driver, site, hash_: str) -> None:
    url = f"{site['server'].url}/ui/{hash_}"
    driver.refresh() if driver.current_url == url else driver.get(url)


def sign_in(driver, site, org: str) -> None:
    go(driver, site, "#/jobs")
    if until(driver, lambda d: d.find_elements("css selector", "#sign-in, #jobs-table"), what="sign-in or jobs")[0] \
            .get_attribute("id") != "sign-in":
        css(driver, "#sign-out").click()
    until(driver, lambda d: css(d, "#api-key"), what="the sign-in form")
    css(driver, "#api-key").clear()
    css(driver, "#api-key").send_keys(site["keys"][org])
    css(driver, "#sign-in button[type=submit]").click()
    until(driver, lambda d: css(d, "#jobs-table"), what="the jobs list after sign-in")


def status(driver) -> str:
    return css(driver, "#job-status [data-status]").get_attribute("data-status")


def chart_points(driver, chart: str = "loss") -> int:
    return int(css(driver, f"svg[data-chart={chart}]").get_attribute("data-points"))


# ---- tests --------------------------------------------------------------------------------------------------


def test_the_server_serves_the_dashboard_itself_and_asks_for_a_key(browser, site):
    res = httpx.get(site["server"].url + "/", follow_redirects=False)
    assert res.status_code in (302, 307) and res.headers["location"] == "/ui/"
    page = httpx.get(site["server"].url + "/ui/")
    assert page.status_code == 200 and "<main" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert httpx.get(site["server"].url + "/ui/js/main.js").headers["content-type"].startswith("text/javascript")

    go(browser, site, "#/jobs")
    until(browser, lambda d: css(d, "#api-key"), what="the sign-in form")
    shot(browser, "sign-in")
    css(browser, "#api-key").send_keys("sk-wrong")
    css(browser, "#sign-in button[type=submit]").click()
    assert "not accepted" in until(browser, lambda d: visible_text(d, "#sign-in-error"), what="the rejection")
    sign_in(browser, site, "acme")
    assert css(browser, "#jobs-empty").is_displayed()
    assert_only_own_origin(browser, site)


def test_without_keys_the_dashboard_opens_without_sign_in(browser, tmp_path, tiny_model):
    server = Server(tmp_path, f"sqlite:///{tmp_path / 'openft.db'}", {"tiny": str(tiny_model)}).start()
    try:
        browser.get(server.url + "/")
        until(browser, lambda d: css(d, "#jobs-table"), what="the jobs list")
        assert browser.current_url == server.url + "/ui/#/jobs"
        assert not css(browser, "#sign-out").is_displayed() and not browser.find_elements("css selector", "#sign-in")
        shot(browser, "jobs-open-mode")
        assert_only_own_origin(browser, {"server": server})
    finally:
        server.stop(signal.SIGKILL)


def test_a_bad_training_file_shows_the_line_it_breaks(browser, site):
    go(browser, site, "#/create")
    until(browser, lambda d: d.find_elements("css selector", "#base-model option"), what="the model list")
    css(browser, "#training-file").send_keys(str(site["files"] / "bad.jsonl"))
    css(browser, "#start-job").click()
    message = until(browser, lambda d: visible_text(d, "#create-error"), timeout=60, what="the file's error")
    assert "line 2" in message.lower() and "json" in message.lower(), message
    shot(browser, "create-bad-file")
    assert_only_own_origin(browser, site)


def test_check_file_shows_a_bad_files_line_and_a_good_files_plan_without_starting_a_job(browser, site):
    server, key = site["server"], site["keys"]["acme"]
    probe = httpx.post(server.url + "/v1/fine_tuning/jobs", headers={"Authorization": f"Bearer {key}"},
                       json={"model": "tiny", "training_file": "file-none", "dry_run": True})
    if probe.status_code == 400 and probe.json()["error"]["param"] == "dry_run":
        pytest.skip("this server has no dry run yet: the Create page checks a file by starting its job")
    acme = server.client(api_key=key)
    jobs_before = [j.id for j in acme.fine_tuning.jobs.list(limit=100)]
    go(browser, site, "#/create")
    until(browser, lambda d: d.find_elements("css selector", "#base-model option[value=tiny]"), what="the model list")
    css(browser, "#training-file").send_keys(str(site["files"] / "bad.jsonl"))
    css(browser, "#check-file").click()
    message = until(browser, lambda d: visible_text(d, "#create-error"), what="the dry run's error")
    assert "line 2" in message.lower(), message
    css(browser, "#training-file").send_keys(str(site["files"] / "train.jsonl"))
    css(browser, "#check-file").click()
    plan = until(browser, lambda d: "Total steps" in css(d, "#dry-run").text and css(d, "#dry-run").text, what="the plan")
    assert re.search(r"Examples\s+12\b", plan), plan
    assert not css(browser, "#create-error").is_displayed()
    shot(browser, "create-checked")
    assert [j.id for j in acme.fine_tuning.jobs.list(limit=100)] == jobs_before
    assert_only_own_origin(browser, site)


def test_a_job_started_in_the_browser_charts_live_pauses_with_a_checkpoint_resumes_and_succeeds(browser, site):
    go(browser, site, "#/create")
    until(browser, lambda d: d.find_elements("css selector", "#base-model option[value=tiny]"), what="the model list")
    css(browser, "#training-file").send_keys(str(site["files"] / "train.jsonl"))
    css(browser, "#validation-file").send_keys(str(site["files"] / "valid.jsonl"))
    css(browser, "#hp-n_epochs").send_keys("20")  # 240 steps: time to pause it mid-way on a fast machine
    css(browser, "#hp-batch_size").send_keys("1")
    css(browser, "#suffix").send_keys("dash")
    css(browser, "#metadata").send_keys("team=dashboard")
    shot(browser, "create")
    css(browser, "#start-job").click()
    until(browser, lambda d: "#/jobs/ftjob_" in d.current_url, what="the job page")
    job_id = browser.current_url.rsplit("/", 1)[1]
    site["state"]["job"] = job_id

    until(browser, lambda d: chart_points(d) >= 2, timeout=120, what="the first loss points")
    first = chart_points(browser)
    assert status(browser) == "running"
    until(browser, lambda d: chart_points(d) > first + 1, timeout=60, what="the chart to gain points")
    assert chart_points(browser, "accuracy") > 0
    assert "of 240" in css(browser, "#step-count").text

    css(browser, "#pause").click()
    until(browser, lambda d: status(d) == "paused", timeout=90, what="paused")
    ckpt = until(browser, lambda d: d.find_elements("css selector", "#checkpoints tr[data-checkpoint]"), what="a checkpoint")
    assert ":ckpt-step-" in ckpt[0].get_attribute("data-checkpoint")
    assert "train_loss=" in ckpt[0].text
    assert "paused" in css(browser, "#timeline").text
    points_at_pause = chart_points(browser)
    shot(browser, "job-paused")

    css(browser, "#resume").click()
    until(browser, lambda d: status(d) != "paused", what="resumed")
    css(browser, "#resume").click()  # resuming a job that is no longer paused is a conflict, explained on the page
    assert "409" in until(browser, lambda d: visible_text(d, "#action-error"), what="the 409")
    until(browser, lambda d: status(d) == "succeeded", timeout=180, what="succeeded")
    until(browser, lambda d: not css(d, "#action-error").is_displayed(), what="the 409 to go once the job has ended")
    until(browser, lambda d: chart_points(d) > points_at_pause, what="the chart to continue after resume")
    until(browser, lambda d: "successfully completed" in css(d, "#event-log").text, what="the final event")
    model = css(browser, "#job-facts a").text
    assert model.startswith("ft:tiny:acme:dash:")
    site["state"]["model"] = model
    assert css(browser, "#download-results").is_displayed()
    timeline = css(browser, "#timeline").text
    for word in ("validating files", "queued", "running", "paused", "succeeded"):
        assert word in timeline, timeline
    shot(browser, "job")
    browser.set_window_size(1200, 700)  # the README's picture (docs/dashboard-job.png) is this one
    shot(browser, "job-small")
    browser.set_window_size(1280, 900)
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]})
    assert browser.execute_script("return getComputedStyle(document.body).backgroundColor") == "rgb(21, 23, 27)"
    shot(browser, "job-dark")
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})

    go(browser, site, "#/jobs")
    row = until(browser, lambda d: d.find_elements("css selector", f"#jobs-table tr[data-job={job_id}]"), what="the row")[0]
    assert "succeeded" in row.text and model in row.text and "supervised" in row.text
    css(browser, "#filter-meta-key").send_keys("team")
    css(browser, "#filter-meta-value").send_keys("nobody")
    css(browser, "form.filters button").click()
    until(browser, lambda d: css(d, "#jobs-empty").is_displayed(), what="no job with that metadata")
    css(browser, "#filter-meta-value").clear()
    css(browser, "#filter-meta-value").send_keys("dashboard")
    css(browser, "form.filters button").click()
    until(browser, lambda d: d.find_elements("css selector", f"#jobs-table tr[data-job={job_id}]"), what="the filtered row")
    shot(browser, "jobs")
    assert_followed_events_the_way_the_server_offers(browser, site, job_id)
    assert_only_own_origin(browser, site)


def assert_followed_events_the_way_the_server_offers(browser, site, job_id) -> None:
    """The job page reads the event stream where the server has one, and polls the event list where it has not."""
    probe = httpx.get(f"{site['server'].url}/v1/fine_tuning/jobs/{job_id}/events?stream=true",
                      headers={"Authorization": f"Bearer {site['keys']['acme']}"})
    log = browser.openft_network.read()
    events = [r for r in log.responses if f"/jobs/{job_id}/events?" in r["url"]]
    streamed = [r for r in events if r["mimeType"] == "text/event-stream"]
    polled = [u for u in log.urls if f"/jobs/{job_id}/events?limit=100" in u]
    if probe.headers["content-type"].startswith("text/event-stream"):
        assert streamed and not polled, (events, polled)
    else:
        assert polled and not streamed, (events, polled)


def test_the_playground_streams_the_fine_tuned_model_beside_its_base(browser, site):
    model = site["state"]["model"]
    go(browser, site, f"#/playground?model={model}&compare=tiny")
    until(browser, lambda d: css(d, "#model-a").get_attribute("value") == model, what="the preselected model")
    assert css(browser, "#model-b").get_attribute("value") == "tiny" and css(browser, "#compare").is_selected()
    css(browser, "#system-prompt").send_keys("You answer in one short sentence.")  # as in the training rows
    css(browser, "#prompt").send_keys("What is item number 4?")
    css(browser, "#temperature").clear()
    css(browser, "#temperature").send_keys("1")
    css(browser, "#send").click()
    texts = {}
    for pane in ("a", "b"):
        until(browser, lambda d: d.find_elements("css selector", f"#transcript-{pane} li.assistant[data-done]"),
              timeout=120, what=f"pane {pane}'s reply")
        answer = css(browser, f"#transcript-{pane} li.assistant")
        assert answer.get_attribute("data-done") == "true", visible_text(browser, f"#error-{pane}")
        texts[pane] = answer.find_element("css selector", ".content").text
    print("playground replies:", texts)
    # A tiny model may end a reply at its first token; the pair of them together must have said something.
    assert "".join(texts.values()).strip()
    streamed = [r for r in browser.openft_network.read().responses if r["url"].endswith("/v1/chat/completions")]
    assert len(streamed) == 2 and all(r["mimeType"] == "text/event-stream" for r in streamed), streamed
    assert model in css(browser, "#transcript-a li.assistant strong").text
    assert css(browser, "#transcript-b li.assistant strong").text == "tiny"
    shot(browser, "playground")
    assert_only_own_origin(browser, site)


def test_another_organizations_key_sees_none_of_it(browser, site):
    job_id, model = site["state"]["job"], site["state"]["model"]
    sign_in(browser, site, "globex")
    until(browser, lambda d: css(d, "#jobs-empty").is_displayed(), what="an empty job list")
    go(browser, site, f"#/jobs/{job_id}")
    assert "404" in until(browser, lambda d: visible_text(d, "#job-error"), what="not found")
    go(browser, site, "#/models")
    until(browser, lambda d: d.find_elements("css selector", "#models tr[data-model=tiny]"), what="the base model")
    assert not [r for r in browser.find_elements("css selector", "#models tr") if "ft:" in r.text]
    go(browser, site, f"#/playground?model={model}")
    assert "not available" in until(browser, lambda d: visible_text(d, "#error-a"), what="the unavailable model")
    assert_only_own_origin(browser, site)


def test_the_jobs_list_pages_newest_first_and_filters_by_status(browser, site):
    globex = site["server"].client(api_key=site["keys"]["globex"])  # the browser is still signed in as globex
    training = upload(globex, chat_rows(12))
    ids = []
    for i in range(21):  # paused at once, so none of them trains
        ids.append(globex.fine_tuning.jobs.create(model="tiny", training_file=training, metadata={"n": str(i)}).id)
        globex.fine_tuning.jobs.pause(ids[-1])
    globex.fine_tuning.jobs.cancel(ids[5])
    newest_first = ids[::-1]
    go(browser, site, "#/jobs")
    rows = lambda d: [r.get_attribute("data-job") for r in d.find_elements("css selector", "#jobs-table tbody tr")]
    until(browser, lambda d: len(rows(d)) == 20, what="the first page")
    assert rows(browser) == newest_first[:20]
    css(browser, "#load-more").click()
    until(browser, lambda d: len(rows(d)) == 21, what="the second page")
    assert rows(browser) == newest_first and not css(browser, "#load-more").is_displayed()

    from selenium.webdriver.support.select import Select

    Select(css(browser, "#filter-status")).select_by_value("cancelled")
    css(browser, "form.filters button").click()
    until(browser, lambda d: rows(d) == [ids[5]], what="only the cancelled job")
    assert_only_own_origin(browser, site)


def test_the_models_page_exports_shares_and_deletes(browser, site, tmp_path):
    model = site["state"]["model"]
    sign_in(browser, site, "acme")
    browser.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path)})
    go(browser, site, "#/models")
    row = until(browser, lambda d: d.find_elements("css selector", f'#models tr[data-model="{model}"]'), what="the model")[0]
    row.find_element("css selector", "button:not(.danger)").click()  # Download, adapter format
    archive = until(browser, lambda d: [p for p in tmp_path.glob("*.tar.gz")], timeout=60, what="the download")[0]
    assert archive.name == model.replace(":", "_") + "-adapter.tar.gz" and archive.stat().st_size > 1000

    ckpts = [r for r in browser.find_elements("css selector", "#models tr[data-model]")
             if ":ckpt-step-" in r.get_attribute("data-model")]
    shared, doomed = ckpts[0].get_attribute("data-model"), ckpts[-1].get_attribute("data-model")
    assert shared != doomed
    row = css(browser, f'#models tr[data-model="{shared}"]')
    row.find_element("css selector", "input").send_keys("globex")
    row.find_element("xpath", ".//button[text()='Share']").click()
    until(browser, lambda d: "shared with globex" in css(d, f'#models tr[data-model="{shared}"]').text, what="the grant")
    delete = css(browser, f'#models tr[data-model="{doomed}"] button.danger')
    delete.click()
    delete.click()  # the second click confirms
    until(browser, lambda d: not d.find_elements("css selector", f'#models tr[data-model="{doomed}"]'), what="the delete")
    shot(browser, "models")

    sign_in(browser, site, "globex")
    go(browser, site, "#/models")
    row = until(browser, lambda d: d.find_elements("css selector", f'#models tr[data-model="{shared}"]'), what="the share")[0]
    until(browser, lambda d: "shared with you" in css(d, f'#models tr[data-model="{shared}"]').text, what="its label")
    assert not row.find_elements("css selector", "button")  # the grantee samples; it neither exports nor deletes
    assert_only_own_origin(browser, site)
