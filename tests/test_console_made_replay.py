"""Integrations set up in the console, in the console: their dead letters replayed, their lag, and a serve with
nothing but them.

Real processes, the real Outreach sandbox on loopback, a real headless
Chromium. ``serve --console --state DIR`` starts with no integrations file and
no PRESET: it says on stderr that there is nothing to deliver yet and refuses
events (503). An integration is saved in its console with a wrong client
secret; the next ``serve`` (still no file) delivers it: the sandbox refuses
the token, and the leads become dead letters. A console without the key says
in one line why they cannot be replayed (the page and the API, never a 500).
The secret is fixed in the console; one letter is replayed by clicking
*Replay* in the browser, the other through the API (``ids: null``, all), and
both are delivered. The integrations page and its API show the console-made
integration's lag.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

from service_helpers import Service, identify, lead, post, until, write_key_headers
from test_console_made_delivery import api, csrf_of, text_of
from test_delivery_sandbox import ThreadedSandbox, unique_credentials

cryptography = pytest.importorskip("cryptography.fernet")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
KEY = cryptography.Fernet.generate_key().decode()
NAME = "outreach-eu"


def stop(service: Service) -> None:
    service.signal(signal.SIGTERM)
    assert service.wait(30) == 0, service.stderr()[-2000:]
    service.stop()


def post_leads(url: str, tag: str, count: int) -> tuple[int, Any]:
    batch = [e for i in range(count) for e in (identify(i, tag), lead(i, tag))]
    return post(url, "/v1/batch", {"batch": batch}, write_key_headers())


def outcomes_of(service: Service, kind: str) -> set[str]:
    return {o["messageId"] for o in service.outcomes() if o.get("integration") == NAME and o["outcome"] == kind}


def test_serve_with_nothing_configured_without_the_console_is_a_one_line_error(tmp_path: Path) -> None:
    service = Service("serve", "--state", tmp_path / "state", "--port", "0", cwd=tmp_path, name="bare")
    try:
        assert service.wait(30) == 2
    finally:
        service.stop()
    [line] = service.stderr().strip().splitlines()
    assert "nothing to deliver" in line and "--console" in line


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None, reason="Debian's chromium and chromium-driver")
def test_a_console_made_integration_s_dead_letters_are_replayed_from_the_console(tmp_path: Path) -> None:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    creds = unique_credentials()
    state = tmp_path / "state"
    env = {"SIGNAL_CONSOLE_SECRET_KEY": KEY}
    with ThreadedSandbox(mint_limit=1000, **creds) as outreach:
        # Nothing configured: the console alone, a clear line on stderr, and every event refused.
        first = Service("serve", "--state", state, "--port", "0", "--console", cwd=tmp_path, env=env, name="first")
        try:
            base = first.url + "/console"
            notice = first.wait_for_notice(r"^signal-engine: warning: nothing to deliver yet: .*")
            assert f"{first.url}/console/integrations/new" in notice.group(0)
            assert "as soon as it is saved" in notice.group(0)
            status, body = post_leads(first.url, "none", 1)
            assert status == 503 and body["code"] == "no_integration", body
            # Saved with a wrong secret: this serve delivers it at once, and the token is refused.
            wrong = {**creds, "client_secret": "cs-not-the-right-one", "base_url": outreach.base_url}
            status, body = api(
                base,
                "PUT",
                f"/api/integrations/{NAME}",
                {"preset": "outreach/lead-capture", "settings": wrong},
                csrf_of(base),
            )
            assert status == 201 and "delivers it from now on" in body["note"], body
            assert post_leads(first.url, "dl", 2)[0] == 200
            until(
                lambda: outcomes_of(first, "dead_lettered") == {"dl-lead-0", "dl-lead-1"},
                timeout=60,
                what=lambda: f"{first.outcomes()[-4:]}; {first.stderr()[-1500:]}",
            )
            # Its health and lag are shown, as a file's integration's are (nothing of it waits now).
            [figures] = [
                i for i in api(base, "GET", "/api/integrations")[1]["integrations"] if i["integration"] == NAME
            ]
            assert figures["lag"] == 0 and figures["dead_letters"] == 2
            assert figures["configured"]["origin"] == "console" and figures["configured"]["replayable"] is True
            assert "Lag: 0 event(s) not finished yet." in text_of(base + "/integrations")[1]

            # A console without the key lists the letters but says in one line why it cannot replay them.
            keyless = Service(
                "console",
                "--state",
                state,
                "--port",
                "0",
                cwd=tmp_path,
                env={"SIGNAL_CONSOLE_SECRET_KEY": ""},
                name="keyless",
            )
            try:
                other = keyless.wait_for_line(r"^console on (http://\S+)/console/$").group(1) + "/console"
                status, page = text_of(other + "/dead-letters")
                assert status == 200 and "dl-lead-0" in page
                assert ">Replay<" not in page and "SIGNAL_CONSOLE_SECRET_KEY is not set" in page
                status, body = api(
                    other, "POST", "/api/dead-letters/replay", {"integration": NAME, "ids": None}, csrf_of(other)
                )
                assert status == 409, body
                assert "\n" not in body["error"] and "SIGNAL_CONSOLE_SECRET_KEY is not set" in body["error"]
                assert f"cannot replay {NAME!r}" in body["error"]
            finally:
                keyless.stop()

            # Fixed in the console (this serve restarts it with the new secret); replayed by clicking, then the
            # rest through the API.
            fixed = {**creds, "base_url": outreach.base_url}
            status, body = api(base, "PUT", f"/api/integrations/{NAME}", {"settings": fixed}, csrf_of(base))
            assert status == 200 and "with these settings from now on" in body["note"], body
            options = webdriver.ChromeOptions()
            options.binary_location = CHROMIUM
            for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
                options.add_argument(flag)
            driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
            try:
                driver.get(base + "/dead-letters")
                section = next(
                    s for s in driver.find_elements(By.CSS_SELECTOR, "section.integration") if NAME in s.text
                )
                row = next(r for r in section.find_elements(By.CSS_SELECTOR, "tbody tr") if "dl-lead-0" in r.text)
                row.find_element(By.XPATH, ".//button[normalize-space()='Replay']").click()
                told = WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.ID, "notice"))[0].text
                assert f"{NAME}: replayed 1, delivered 1" in told, told
                assert "dl-lead-0" not in driver.find_element(By.TAG_NAME, "main").text
            finally:
                driver.quit()
            status, body = api(
                base, "POST", "/api/dead-letters/replay", {"integration": NAME, "ids": None}, csrf_of(base)
            )
            assert status == 200, body
            assert [(r["messageId"], r["outcome"]) for r in body["results"]] == [("dl-lead-1", "delivered")]
            assert api(base, "GET", f"/api/dead-letters?integration={NAME}")[1]["dead_letters"] == []
            seen = json.dumps(body) + text_of(base + "/dead-letters")[1] + text_of(base + "/integrations")[1]
            assert creds["client_secret"] not in seen and creds["refresh_token"] not in seen
            # New events go out with the fixed secret, without a restart.
            assert post_leads(first.url, "live", 1)[0] == 200
            until(lambda: "live-lead-0" in outcomes_of(first, "delivered"), timeout=60, what=first.stderr)
        finally:
            stop(first)

        # The next serve, with no file either, reads it from the store at start; deleted, it stops at once.
        second = Service("serve", "--state", state, "--port", "0", "--console", cwd=tmp_path, env=env, name="second")
        try:
            base = second.url + "/console"
            assert post_leads(second.url, "after", 1)[0] == 200
            until(lambda: "after-lead-0" in outcomes_of(second, "delivered"), timeout=60, what=second.stderr)
            assert "nothing to deliver" not in second.stderr()
            status, body = api(base, "DELETE", f"/api/integrations/{NAME}", None, csrf_of(base))
            assert status == 200 and "no longer delivers it" in body["note"], body
            status, body = post_leads(second.url, "gone", 1)
            assert status == 503 and body["code"] == "no_integration", body
        finally:
            stop(second)
        emails = sorted(e for p in outreach.admin("GET", "state")["prospects"] for e in p["attributes"]["emails"])
        assert emails == ["after0@service.test", "dl0@service.test", "dl1@service.test", "live0@service.test"]
        for service in (first, second):
            assert creds["client_secret"] not in service.stderr() and creds["refresh_token"] not in service.stderr()


def test_one_that_cannot_be_opened_keeps_its_place_in_the_queue(tmp_path: Path) -> None:
    """Skipped for want of the key, its waiting events stay queued for it (the queue drops an unnamed one's)."""
    import asyncio

    from engine.service.integrations import IntegrationsConfig
    from engine.service.serving import ServiceOptions, nothing_configured, with_console_made
    from engine.state.console_integrations import SecretBox, StoredIntegration
    from engine.state.sqlite import SqliteState
    from engine.state.sqlite.queue import SqliteQueue

    state = SqliteState(tmp_path)
    try:
        sealed = {n: SecretBox(KEY).seal(f"{n}-value") for n in ("client_secret", "refresh_token")}
        state.console_integrations().put(StoredIntegration(NAME, "outreach/lead-capture", {"client_id": "c"}, sealed))
        empty = ServiceOptions(IntegrationsConfig([]), environ={})
        assert nothing_configured(empty)
        options, skipped = with_console_made(empty, state)
    finally:
        state.close()
    assert options.config.names() == [] and list(options.resting) == [NAME] and len(skipped) == 1
    assert not nothing_configured(options)  # a store with one: serve starts and says why it is skipped
    queue = SqliteQueue(tmp_path, integrations=[NAME])
    asyncio.run(queue.append(['{"type": "track"}']))
    asyncio.run(queue.close())
    # The next start, still without the key, names it: its event is still waiting.
    queue = SqliteQueue(tmp_path, integrations=[*options.config.names(), *options.resting])
    try:
        assert queue.lag(NAME) == 1
    finally:
        asyncio.run(queue.close())
