"""The console in a real headless Chromium, over a real ``serve --console`` delivering to the Outreach sandbox.

What the browser must see: every page loads with no error in the browser
console; recorded events of a real run; a new event appears in the live list
without a reload; filters and search narrow the list; an opened event shows
its request and the response status; a dead letter replayed by clicking is
delivered; event data is shown, never run; no secret in any page or answer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service_helpers import SIGNING_SECRET, WRITE_KEY, Service, post_signed, until
from test_delivery_sandbox import ThreadedSandbox, fast_preset, unique_credentials, write_settings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="Debian's chromium and chromium-driver are not installed "
    "(apt-get install chromium chromium-driver; .ci/run installs them)",
)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is a test dependency (pip install -e '.[test]')")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CONSENT = {"consent": {"canonical": {"marketing": True}}}
XSS = [
    '<script>window.__xss = "script"</script>',
    '"><img src=x onerror="window.__xss=\'img\'">',
    "javascript:window.__xss='link'",
]
SHOTS = Path(os.environ.get("SIGNAL_CONSOLE_SCREENSHOTS", "")) if os.environ.get("SIGNAL_CONSOLE_SCREENSHOTS") else None


def lead(tag: str, email: str, **traits: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Demo Requested",
        "messageId": f"{tag}-lead",
        "userId": f"{tag}-user",
        "context": CONSENT,
        "traits": {"email": email, "firstName": "Ada", "lastName": tag.title(), **traits},
    }


class Console:
    """A ``serve --console`` with a sandbox behind it, and what was sent to it."""

    def __init__(self, tmp: Path) -> None:
        self.creds = unique_credentials()
        # The first lead's five attempts get a 500: it is dead-lettered; the sandbox answers normally after.
        self.sandbox = ThreadedSandbox(faults=["500"] * 5, **self.creds)
        self.sandbox.__enter__()
        preset = fast_preset(tmp)
        settings = write_settings(tmp / "settings.yaml", self.sandbox.base_url, self.creds)
        self.serve = Service(
            "serve",
            preset,
            "--settings",
            settings,
            "--state",
            tmp / "state",
            "--port",
            "0",
            "--console",
            cwd=tmp,
            name="serve",
        )
        self.url = self.serve.url
        self.base = self.url + "/console"
        self.send(lead("dead", "dead.letter@example.com"))
        until(lambda: self.outcome("dead-lead") is not None, what="the first lead's outcome")
        self.send(
            {
                "type": "identify",
                "messageId": "live-id",
                "userId": "live-user",
                "context": CONSENT,
                "traits": {"email": "Grace.Hopper@Example.com", "firstName": "Grace", "lastName": "Hopper"},
            }
        )
        self.send(
            {
                "type": "track",
                "event": "Demo Requested",
                "messageId": "grace-lead",
                "userId": "live-user",
                "context": CONSENT,
            }
        )
        self.send({"type": "page", "messageId": "a-page", "anonymousId": "anon-1"})
        self.send(lead("xss", "xss@example.com", firstName=XSS[0], lastName=XSS[1], title=XSS[2]))
        until(lambda: len(self.serve.outcomes()) == 5, what="five outcomes")

    def send(self, event: dict[str, Any]) -> None:
        status, body = post_signed(self.url, event)
        assert status == 200, body

    def outcome(self, message_id: str) -> dict[str, Any] | None:
        return next((o for o in self.serve.outcomes() if o["messageId"] == message_id), None)

    def secrets(self) -> list[str]:
        return [
            self.creds["client_secret"],
            self.creds["refresh_token"],
            WRITE_KEY,
            SIGNING_SECRET,
            *self.sandbox.issued,
        ]

    def close(self) -> None:
        self.serve.stop()
        self.sandbox.__exit__(None, None, None)


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    running = Console(tmp_path_factory.mktemp("console"))
    try:
        assert running.outcome("dead-lead")["outcome"] == "dead_lettered"
        assert running.outcome("grace-lead")["outcome"] == "delivered"
        yield running
    finally:
        running.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        "--disable-extensions",
        "--no-first-run",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver: Any, url: str, shot: str | None = None) -> None:
    driver.get_log("browser")  # what an earlier page said is not this page's concern
    driver.get(url)
    WebDriverWait(driver, 10).until(lambda d: d.execute_script("return document.readyState") == "complete")
    if shot:
        take_shot(driver, shot)


def take_shot(driver: Any, shot: str) -> None:
    """A screenshot of the page as it is, when SIGNAL_CONSOLE_SCREENSHOTS names a folder for them."""
    if SHOTS is not None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SHOTS / f"{shot}.png"))


def console_errors(driver: Any) -> list[dict[str, Any]]:
    return [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]


def rows(driver: Any) -> list[dict[str, str]]:
    out = []
    for tr in driver.find_elements(By.CSS_SELECTOR, "#events tbody tr"):
        cells = [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
        out.append(
            {
                "time": cells[0],
                "event": cells[1],
                "email": cells[2],
                "userId": cells[3],
                "integration": cells[4],
                "outcome": cells[5],
                "why": cells[6],
                "attempts": cells[7],
            }
        )
    return out


def test_every_page_loads_without_a_browser_error_and_shows_the_run(console: Console, browser: Any) -> None:
    open_page(browser, console.base + "/events", "debugger")
    shown = rows(browser)
    by_email = {r["email"]: r for r in shown}
    assert by_email["grace.hopper@example.com"]["outcome"] == "delivered"  # the email joined from the identify
    assert by_email["grace.hopper@example.com"]["integration"] == "lead-capture-fast"
    assert by_email["grace.hopper@example.com"]["why"] == "HTTP 201"
    assert by_email["dead.letter@example.com"]["outcome"] == "dead_lettered"
    assert by_email["dead.letter@example.com"]["why"] == "http_500 · HTTP 500"
    assert by_email["dead.letter@example.com"]["attempts"] == "5"
    assert any(r["why"] == "event_not_mapped" and r["event"] == "page" for r in shown)
    assert console_errors(browser) == []
    for path, shot in (("/dead-letters", "dead-letters"), ("/integrations", "integrations")):
        open_page(browser, console.base + path, shot)
        assert console_errors(browser) == [], path
    open_page(browser, console.base + "/integrations")
    health = browser.find_element(By.CSS_SELECTOR, 'section[data-integration="lead-capture-fast"] table.health')
    hour = [td.text.split("\n")[0] for td in health.find_elements(By.CSS_SELECTOR, "tbody tr:first-child td")]
    assert hour[:6] == ["2", "0", "1", "2", "0", "1"], hour  # delivered, failed, dead-lettered, dropped, 429s, tokens


def test_an_opened_event_shows_its_request_and_the_answer(console: Console, browser: Any) -> None:
    open_page(browser, console.base + "/events?q=grace.hopper%40example.com")
    browser.find_element(By.CSS_SELECTOR, "#events tbody tr td a").click()
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.ID, "request"))
    if SHOTS is not None:
        browser.save_screenshot(str(SHOTS / "event.png"))
    request = browser.find_element(By.ID, "request").text
    assert f"POST {console.sandbox.base_url}/api/v2/prospects" in request
    assert "Bearer ***" in request and "grace.hopper@example.com" in request
    assert browser.find_element(By.ID, "response-status").text == "201"
    assert "1 attempt(s)" in browser.find_element(By.ID, "attempts").text
    assert '"type": "identify"' not in browser.find_element(By.ID, "incoming").text
    assert "Decided by: request" in browser.find_element(By.ID, "explain").text
    assert console_errors(browser) == []


def test_an_opened_event_lists_every_request_in_order(console: Console, browser: Any) -> None:
    open_page(browser, console.base + "/events?q=dead-lead&outcome=dead_lettered")
    browser.find_element(By.CSS_SELECTOR, "#events tbody tr td a").click()
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "table.exchanges"))
    trail = [
        [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
        for tr in browser.find_elements(By.CSS_SELECTOR, "table.exchanges tbody tr")
    ]
    # The first event of the run minted the token, then its create was answered 500 five times.
    assert [(row[1], row[3]) for row in trail] == [("token", "200")] + [("request", "500")] * 5
    assert all(row[2].startswith("POST " + console.sandbox.base_url) for row in trail)
    assert "x-ratelimit-remaining" in trail[1][6].lower()
    assert float(trail[-1][4].split()[0]) > float(trail[1][4].split()[0])  # sent later: the backoff shows
    if SHOTS is not None:
        browser.execute_script("document.getElementById('attempts').scrollIntoView()")
        browser.save_screenshot(str(SHOTS / "event-attempts.png"))
    assert console_errors(browser) == []


def test_filters_and_search_narrow_the_list(console: Console, browser: Any) -> None:
    open_page(browser, console.base + "/events")
    box = browser.find_element(By.CSS_SELECTOR, 'input[type="search"][name="q"]')
    assert box.find_element(By.XPATH, "ancestor::label").text.startswith("Search")
    box.send_keys("DEAD.letter@example")  # part of an email, any case
    box.submit()
    WebDriverWait(browser, 10).until(lambda d: "q=" in d.current_url)
    assert [r["email"] for r in rows(browser)] == ["dead.letter@example.com"]
    open_page(browser, console.base + "/events")
    browser.find_element(By.CSS_SELECTOR, 'select[name="outcome"] option[value="dropped"]').click()
    browser.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]").click()
    WebDriverWait(browser, 10).until(lambda d: "outcome=dropped" in d.current_url)
    assert {r["outcome"] for r in rows(browser)} == {"dropped"}
    open_page(browser, console.base + "/events?reason=http_500")
    assert [r["email"] for r in rows(browser)] == ["dead.letter@example.com"]
    open_page(browser, console.base + "/events?q=grace-lead")  # a messageId
    assert [r["email"] for r in rows(browser)] == ["grace.hopper@example.com"]
    assert console_errors(browser) == []


def test_a_new_event_appears_in_the_live_list_without_a_reload(console: Console, browser: Any) -> None:
    open_page(browser, console.base + "/events")
    WebDriverWait(browser, 10).until(lambda d: "Live: new events" in d.find_element(By.ID, "live").text)
    browser.execute_script("window.__sameDocument = true;")
    console.send(lead("fresh", "fresh.lead@example.com"))
    WebDriverWait(browser, 20).until(lambda d: any(r["email"] == "fresh.lead@example.com" for r in rows(d)))
    row = next(r for r in rows(browser) if r["email"] == "fresh.lead@example.com")
    assert row["outcome"] == "delivered" and row["userId"] == "fresh-user"
    assert browser.execute_script("return window.__sameDocument === true")  # no reload happened
    assert console_errors(browser) == []


def test_a_live_list_with_a_filter_shows_only_matching_new_events(console: Console, browser: Any) -> None:
    open_page(browser, console.base + "/events?outcome=dropped")
    WebDriverWait(browser, 10).until(lambda d: "Live: new events" in d.find_element(By.ID, "live").text)
    before = len(rows(browser))
    console.send(lead("filtered", "filtered@example.com"))
    console.send({"type": "page", "messageId": "late-page", "anonymousId": "anon-2"})
    WebDriverWait(browser, 20).until(lambda d: len(rows(d)) == before + 1)
    assert {r["outcome"] for r in rows(browser)} == {"dropped"}


def test_replaying_a_dead_letter_by_clicking_delivers_it(console: Console, browser: Any) -> None:
    open_page(browser, console.base + "/dead-letters")
    browser.find_element(By.CSS_SELECTOR, 'select[name="cause"] option[value="http_500"]').click()
    browser.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]").click()
    WebDriverWait(browser, 10).until(lambda d: "cause=http_500" in d.current_url)
    assert browser.find_elements(By.XPATH, "//button[normalize-space()='Replay all http_500']")
    open_page(browser, console.base + "/dead-letters")
    section = browser.find_element(By.CSS_SELECTOR, "section.integration")
    assert "dead-lead" in section.text and "http_500" in section.text
    section.find_element(By.XPATH, ".//button[normalize-space()='Replay']").click()
    notice = WebDriverWait(browser, 20).until(lambda d: d.find_elements(By.ID, "notice"))[0].text
    assert "replayed 1, delivered 1" in notice, notice
    assert "dead-lead" not in browser.find_element(By.TAG_NAME, "main").text
    assert console_errors(browser) == []
    prospects = console.sandbox.admin("GET", "state")["prospects"]
    assert "dead.letter@example.com" in [p["attributes"]["emails"][0] for p in prospects]
    open_page(browser, console.base + "/events?q=dead-lead")
    shown = rows(browser)
    assert shown[0]["outcome"] == "delivered" and "replay" in shown[0]["event"]
    assert shown[0]["email"] == "dead.letter@example.com"  # the event its first outcome recorded
    assert shown[1]["outcome"] == "dead_lettered"


def test_event_data_is_shown_never_run(console: Console, browser: Any) -> None:
    open_page(browser, console.base + "/events?q=xss%40example.com")
    browser.find_element(By.CSS_SELECTOR, "#events tbody tr td a").click()
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.ID, "incoming"))
    text = browser.find_element(By.ID, "incoming").text
    assert all(json.dumps(x)[1:-1] in text for x in XSS)  # shown as text (in JSON)
    assert browser.execute_script("return window.__xss === undefined")
    assert browser.find_elements(By.CSS_SELECTOR, "main img") == []
    assert console_errors(browser) == []


def test_no_secret_in_any_page_or_api_answer_and_every_answer_has_a_csp(console: Console) -> None:
    events = json.loads(fetch(console.base + "/api/events")[1])["events"]
    paths = [
        "/events",
        "/dead-letters",
        "/integrations",
        "/integrations/new?preset=outreach/lead-capture",
        "/api/events",
        "/api/dead-letters",
        "/api/integrations",
        "/static/console.js",
        *(f"/events/{e['id']}" for e in events),
        *(f"/api/events/{e['id']}" for e in events),
    ]
    for path in paths:
        headers, body = fetch(console.base + path)
        assert "script-src 'self'" in headers["Content-Security-Policy"], path
        for secret in console.secrets():
            assert secret not in body, (path, "a secret")


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[Any, str]:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as answer:
        return answer.headers, answer.read().decode()


def test_a_write_without_the_page_csrf_token_is_refused(console: Console) -> None:
    request = urllib.request.Request(
        console.base + "/api/dead-letters/replay",
        method="POST",
        data=json.dumps({"integration": "lead-capture-fast", "ids": None}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 403


# -- the console command, over what a run recorded ------------------------------
def test_the_console_command_shows_what_a_run_recorded(tmp_path: Path, browser: Any) -> None:
    creds = unique_credentials()
    with ThreadedSandbox(**creds) as sandbox:
        settings = write_settings(tmp_path / "settings.yaml", sandbox.base_url, creds)
        events = tmp_path / "events.ndjson"
        events.write_text(json.dumps(lead("cmd", "from.a.run@example.com")) + "\n")
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "engine",
                "run",
                "outreach/lead-capture",
                "--events",
                events,
                "--settings",
                settings,
                "--state",
                tmp_path / "state",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stderr
    served = Service("console", "--state", tmp_path / "state", "--port", "0", cwd=tmp_path, name="console")
    try:
        base = served.wait_for_line(r"^console on (http://\S+)$").group(1)
        open_page(browser, base + "events")
        shown = rows(browser)
        assert [(r["email"], r["integration"], r["outcome"]) for r in shown] == [
            ("from.a.run@example.com", "outreach-lead-capture", "delivered")
        ]
        assert console_errors(browser) == []
    finally:
        served.stop()


def test_the_console_refuses_a_non_loopback_host_without_a_token(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "SIGNAL_CONSOLE_TOKEN"}
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "console", "--state", tmp_path / "state", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert proc.returncode == 2
    assert "SIGNAL_CONSOLE_TOKEN" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_with_a_token_nothing_is_shown_without_it(tmp_path: Path, browser: Any) -> None:
    from engine.state.sqlite import SqliteState

    SqliteState(tmp_path / "state").close()
    token = "console-token-" + os.urandom(8).hex()
    served = Service(
        "console",
        "--state",
        tmp_path / "state",
        "--port",
        "0",
        cwd=tmp_path,
        name="console",
        env={"SIGNAL_CONSOLE_TOKEN": token},
    )
    try:
        base = served.wait_for_line(r"^console on (http://\S+)$").group(1)
        with pytest.raises(urllib.error.HTTPError) as refused:
            fetch(base + "api/events")
        assert refused.value.code == 401
        with pytest.raises(urllib.error.HTTPError) as refused:
            fetch(base + "api/events", {"Authorization": f"Bearer {WRITE_KEY}"})  # a write key is no console token
        assert refused.value.code == 401
        assert json.loads(fetch(base + "api/events", {"Authorization": f"Bearer {token}"})[1]) == {"events": []}
        open_page(browser, base + "events")
        assert browser.current_url.endswith("/console/login")
        field = browser.find_element(By.NAME, "token")
        field.send_keys("wrong")
        field.submit()
        WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".error"))
        field = browser.find_element(By.NAME, "token")
        field.send_keys(token)
        field.submit()
        WebDriverWait(browser, 10).until(lambda d: d.current_url.endswith("/console/events"))
        cookie = browser.get_cookie("signal_console")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and token not in cookie["value"]
        assert token not in browser.page_source
    finally:
        served.stop()


def test_the_playground_checks_and_runs_as_you_type(console: Console, browser: Any) -> None:
    from selenium.webdriver.common.keys import Keys

    open_page(browser, console.base + "/playground", "playground")
    chosen = browser.find_element(By.CSS_SELECTOR, "#preset-choice option:checked")
    assert chosen.text == "lead-capture-fast"  # the integration's own preset comes first
    assert "backoff" in browser.find_element(By.ID, "yaml").get_attribute("value")
    results = browser.find_element(By.ID, "results")
    assert "would_send" in results.text and "dropped" in results.text  # the example identify and lead
    assert browser.find_element(By.ID, "problems").text == ""
    yaml = browser.find_element(By.ID, "yaml")
    lines = yaml.get_attribute("value").count("\n") + 1
    yaml.send_keys(Keys.CONTROL, Keys.END)
    yaml.send_keys("\nbogus_section: 1")
    WebDriverWait(browser, 20).until(lambda d: "bogus_section" in d.find_element(By.ID, "problems").text)
    problem = browser.find_element(By.ID, "problems").text
    assert problem.startswith(f"line {lines + 1}: "), problem
    yaml.send_keys(Keys.BACKSPACE * len("\nbogus_section: 1"))
    WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "problems").text == "")
    events = browser.find_element(By.ID, "events-input")
    events.send_keys(Keys.CONTROL, "a")
    events.send_keys(Keys.DELETE)
    events.send_keys('{"type": "page", "messageId": "pg-1", "anonymousId": "a"}')
    WebDriverWait(browser, 20).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .play-event")) == 1)
    assert "dropped event_not_mapped" in browser.find_element(By.ID, "results").text
    if SHOTS is not None:
        browser.save_screenshot(str(SHOTS / "playground-typed.png"))
    browser.find_element(By.CSS_SELECTOR, '#preset-choice option[value="hubspot/contacts"]').click()
    WebDriverWait(browser, 20).until(
        lambda d: "hubspot/contacts" in d.find_element(By.ID, "yaml").get_attribute("value")
    )
    assert console_errors(browser) == []
