"""Setting up an integration in the console, in a real headless Chromium over a real ``signal-engine console``.

What must hold: the form is the preset's ``settings:``; a mistake is shown
next to its field (the message ``check`` gives); once fixed, Save stores it in
``state.db`` with its secrets encrypted (read from the raw row); no secret is
in any page's source; without ``SIGNAL_CONSOLE_SECRET_KEY`` a secret is
refused and the page says why; a write without the page's CSRF token is refused.
"""

from __future__ import annotations

import json
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By

from engine.state.sqlite import SqliteState
from service_helpers import Service
from test_console_browser import SHOTS, browser, console_errors, open_page  # noqa: F401 - the fixture

cryptography = pytest.importorskip("cryptography.fernet")
KEY = cryptography.Fernet.generate_key().decode()
SECRET = "cs-" + cryptography.Fernet.generate_key().decode()[:24]
REFRESH = "rt-" + cryptography.Fernet.generate_key().decode()[:24]
FORM = "/integrations/new?preset=outreach/lead-capture"
# A complete, valid set-up of the Outreach preset, as a person types it.
EU_FORM = {
    "name": "outreach-eu",
    "setting.client_id": "client-eu",
    "setting.client_secret": SECRET,
    "setting.refresh_token": REFRESH,
}


class ConsoleProcess:
    def __init__(self, tmp: Path, key: str | None) -> None:
        self.state = tmp / "state"
        SqliteState(self.state).close()  # the state directory a run or serve made
        env = {"SIGNAL_CONSOLE_SECRET_KEY": key or ""}
        self.proc = Service("console", "--state", self.state, "--port", "0", cwd=tmp, env=env, name="console")
        self.base = self.proc.wait_for_line(r"^console on (http://\S+)/console/$").group(1) + "/console"

    def rows(self) -> list[tuple[str, str, str]]:
        with sqlite3.connect(self.state / "state.db") as db:
            return list(db.execute("SELECT name, preset, doc FROM console_integrations ORDER BY name"))


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[ConsoleProcess]:
    running = ConsoleProcess(tmp_path, KEY)
    try:
        yield running
    finally:
        running.proc.stop()


@pytest.fixture
def keyless(tmp_path: Path) -> Iterator[ConsoleProcess]:
    running = ConsoleProcess(tmp_path, None)
    try:
        yield running
    finally:
        running.proc.stop()


def field(driver: Any, name: str) -> Any:
    return driver.find_element(By.NAME, f"setting.{name}")


def fill(driver: Any, values: dict[str, str]) -> None:
    for name, value in values.items():
        box = driver.find_element(By.NAME, name)
        box.clear()
        box.send_keys(value)


def problem(driver: Any, name: str) -> str:
    """The problem shown inside the field's own block (next to it), or ''."""
    block = driver.find_element(By.ID, f"setting-{name}")
    found = block.find_elements(By.CSS_SELECTOR, ".field-problem")
    return " ".join(p.text for p in found)


def save(driver: Any) -> None:
    click_and_wait(driver, driver.find_element(By.ID, "save"))


def click_and_wait(driver: Any, button: Any) -> None:
    """Click, then wait for the next page (not the old one still reporting itself complete)."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    old = driver.find_element(By.TAG_NAME, "html")
    button.click()

    def gone(_: Any) -> bool:
        try:
            old.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as exc:
            # Asked while the old document was being swapped out, chromedriver can say this instead of "stale".
            if "does not belong to the document" in str(exc):
                return True
            raise
        return False

    WebDriverWait(driver, 15).until(gone)
    WebDriverWait(driver, 15).until(lambda d: d.execute_script("return document.readyState") == "complete")


def test_a_mistake_shows_beside_its_field_then_save_stores_the_secrets_encrypted(
    keyed: ConsoleProcess, browser: Any
) -> None:
    open_page(browser, keyed.base + FORM, "setup-form")
    labels = [el.text for el in browser.find_elements(By.CSS_SELECTOR, ".setting-name")]
    # The preset's settings, in its order (presets/outreach/lead-capture.yaml), after the integration's name.
    assert labels == [
        "Integration name",
        "client_id",
        "client_secret",
        "refresh_token",
        "consent_categories",
        "base_url",
    ]
    assert field(browser, "client_secret").get_attribute("type") == "password"
    assert browser.find_element(
        By.CSS_SELECTOR, 'input[name="setting.consent_categories"][value="marketing"]'
    ).is_selected()  # the preset's default category, ticked
    # Mistakes: client_id left out, plain http to a host that is not loopback, no consent category ticked.
    fill(
        browser,
        {
            "name": "outreach-eu",
            "setting.client_secret": SECRET,
            "setting.refresh_token": REFRESH,
            "setting.base_url": "http://api.example.com",
        },
    )
    browser.find_element(By.CSS_SELECTOR, 'input[name="setting.client_id"]').clear()
    browser.find_element(By.CSS_SELECTOR, 'input[name="setting.consent_categories"][value="marketing"]').click()
    browser.execute_script("document.querySelectorAll('[required]').forEach(e => e.removeAttribute('required'))")
    save(browser)
    if SHOTS is not None:
        browser.save_screenshot(str(SHOTS / "setup-problems.png"))
    assert "required setting 'client_id' is missing" in problem(browser, "client_id")
    assert "plain http is accepted only for loopback hosts" in problem(browser, "base_url")
    assert "must list at least one value" in problem(browser, "consent_categories")
    assert problem(browser, "client_secret") == ""
    assert SECRET not in browser.page_source and REFRESH not in browser.page_source
    assert field(browser, "client_secret").get_attribute("value") == ""  # write-only: not sent back
    assert field(browser, "base_url").get_attribute("value") == "http://api.example.com"  # the rest is kept
    assert keyed.rows() == []
    assert [e["message"] for e in console_errors(browser)] == [
        f"{keyed.base}/integrations/new - Failed to load resource: the server responded with a status of 422 "
        "(Unprocessable Entity)"
    ]  # the form's answer to a mistake, nothing else
    # Fixed: the secrets typed again, as the page asks.
    fill(
        browser,
        {
            "setting.client_id": "client-eu",
            "setting.client_secret": SECRET,
            "setting.refresh_token": REFRESH,
            "setting.base_url": "https://api.example.com",
        },
    )
    browser.find_element(By.CSS_SELECTOR, 'input[name="setting.consent_categories"][value="marketing"]').click()
    save(browser)
    if SHOTS is not None:
        browser.save_screenshot(str(SHOTS / "setup-saved.png"))
    assert "Saved outreach-eu." in browser.find_element(By.CSS_SELECTOR, "p.message").text
    row = browser.find_element(By.CSS_SELECTOR, 'table.console-integrations tr[data-integration="outreach-eu"]').text
    assert "outreach/lead-capture" in row and "client_secret: set (encrypted)" in row and "client_id: client-eu" in row
    assert SECRET not in browser.page_source and REFRESH not in browser.page_source
    assert console_errors(browser) == []
    # The raw row: the plain settings readable, the secrets only as Fernet tokens that open with the key.
    [(name, preset, doc)] = keyed.rows()
    assert (name, preset) == ("outreach-eu", "outreach/lead-capture")
    assert SECRET not in doc and REFRESH not in doc
    stored = json.loads(doc)
    assert stored["values"] == {
        "client_id": "client-eu",
        "consent_categories": ["marketing"],
        "base_url": "https://api.example.com",
    }
    fernet = cryptography.Fernet(KEY.encode())
    assert fernet.decrypt(stored["sealed"]["client_secret"].encode()).decode() == SECRET
    assert fernet.decrypt(stored["sealed"]["refresh_token"].encode()).decode() == REFRESH
    # Saved again with the secret fields empty: the stored secrets are kept, never shown.
    open_page(browser, keyed.base + FORM)
    fill(browser, {"name": "outreach-eu", "setting.client_id": "client-eu-2"})
    save(browser)
    assert "Saved outreach-eu." in browser.find_element(By.CSS_SELECTOR, "p.message").text
    again = json.loads(keyed.rows()[0][2])
    assert again["values"]["client_id"] == "client-eu-2"
    assert fernet.decrypt(again["sealed"]["client_secret"].encode()).decode() == SECRET


def test_without_a_key_a_secret_is_refused_and_the_page_says_why(keyless: ConsoleProcess, browser: Any) -> None:
    open_page(browser, keyless.base + FORM, "setup-no-key")
    assert "SIGNAL_CONSOLE_SECRET_KEY is not set" in browser.find_element(By.ID, "no-secret-key").text
    fill(browser, EU_FORM)
    save(browser)
    assert "not stored: SIGNAL_CONSOLE_SECRET_KEY is not set" in problem(browser, "client_secret")
    assert SECRET not in browser.page_source
    assert keyless.rows() == []


def test_a_save_without_the_page_csrf_token_is_refused(keyed: ConsoleProcess) -> None:
    body = urllib.parse.urlencode(
        {
            "preset": "outreach/lead-capture",
            "name": "forged",
            "setting.client_id": "x",
            "setting.client_secret": SECRET,
            "setting.refresh_token": REFRESH,
        }
    ).encode()
    request = urllib.request.Request(keyed.base + "/integrations/new", data=body, method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 403
    assert keyed.rows() == []
    forged = urllib.request.Request(keyed.base + "/integrations/forged/authorise", data=b"", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(forged, timeout=10)
    assert refused.value.code == 403


def test_authorise_runs_the_auth_flow_and_stores_the_tokens_like_the_command(
    keyed: ConsoleProcess, browser: Any
) -> None:
    from engine.state.token_store import AUTHORISED_CHAIN
    from test_delivery_sandbox import ThreadedSandbox

    client_secret = "cs-" + cryptography.Fernet.generate_key().decode()[:24]
    sandbox = ThreadedSandbox(
        client_id="console-app",
        client_secret=client_secret,
        refresh_token="rt-unused-" + SECRET[3:],
        redirect_uris=["http://127.0.0.1/console/integrations/callback"],
    )
    sandbox.__enter__()
    try:
        open_page(browser, keyed.base + FORM)
        # No refresh token: Authorise is how this integration gets one, as `signal-engine auth` would.
        fill(
            browser,
            {
                "name": "outreach-auth",
                "setting.client_id": "console-app",
                "setting.client_secret": client_secret,
                "setting.base_url": sandbox.base_url,
            },
        )
        browser.execute_script("document.querySelectorAll('[required]').forEach(e => e.removeAttribute('required'))")
        save(browser)
        assert "Saved outreach-auth." in browser.find_element(By.CSS_SELECTOR, "p.message").text
        # The sandbox approves and redirects back to the console's callback, which exchanges the code.
        click_and_wait(
            browser, browser.find_element(By.CSS_SELECTOR, 'tr[data-integration="outreach-auth"] form.authorise button')
        )
        if SHOTS is not None:
            browser.save_screenshot(str(SHOTS / "setup-authorised.png"))
        assert browser.find_element(By.ID, "message").text == (
            "Authorised outreach-auth; the tokens are stored in the state."
        )
        with urllib.request.urlopen(f"{sandbox.base_url}/_sandbox/state", timeout=10) as answer:
            upstream = json.load(answer)
        assert upstream["authorizations"] == 1 and upstream["code_exchanges"] == 1
        assert client_secret not in browser.page_source
        assert not any(token in browser.page_source for token in upstream["refresh_tokens"])
    finally:
        sandbox.__exit__(None, None, None)
    state = SqliteState(keyed.state)
    try:
        tokens = state.tokens("console-app").load(AUTHORISED_CHAIN)
    finally:
        state.close()
    assert tokens is not None and tokens.access_token
    assert tokens.refresh_token in upstream["refresh_tokens"]  # the live one upstream, as `auth` stores it
    assert tokens.access_token not in browser.page_source


def test_edit_keeps_the_secrets_and_delete_asks_first(keyed: ConsoleProcess, browser: Any) -> None:
    fernet = cryptography.Fernet(KEY.encode())
    open_page(browser, keyed.base + FORM)
    fill(browser, EU_FORM)
    save(browser)
    # Edit: the form comes filled with the plain settings, the secret fields empty, the name fixed.
    click_and_wait(browser, browser.find_element(By.LINK_TEXT, "Edit outreach-eu"))
    assert browser.find_element(By.NAME, "name").get_attribute("value") == "outreach-eu"
    assert browser.find_element(By.NAME, "name").get_attribute("readonly") == "true"
    # Said once, in the page's heading; the form's own names the preset it was made from.
    assert browser.find_element(By.TAG_NAME, "h1").text == "Edit outreach-eu"
    form_heading = browser.find_element(By.CSS_SELECTOR, "#setup-form h2").text
    assert form_heading.endswith("(outreach/lead-capture)") and "Edit" not in form_heading, form_heading
    if SHOTS is not None:
        browser.save_screenshot(str(SHOTS / "setup-edit.png"))
    assert field(browser, "client_id").get_attribute("value") == "client-eu"
    assert field(browser, "client_secret").get_attribute("value") == ""
    assert SECRET not in browser.page_source and REFRESH not in browser.page_source
    # A mistake first (an empty client id): shown beside its field, nothing changed.
    browser.execute_script("document.querySelectorAll('[required]').forEach(e => e.removeAttribute('required'))")
    field(browser, "client_id").clear()
    save(browser)
    assert "required setting 'client_id' is missing" in problem(browser, "client_id")
    assert json.loads(keyed.rows()[0][2])["values"]["client_id"] == "client-eu"
    assert [e["message"] for e in console_errors(browser)] == [
        f"{keyed.base}/integrations/outreach-eu/edit - Failed to load resource: the server responded with a status "
        "of 422 (Unprocessable Entity)"
    ]  # the form's answer to a mistake, nothing else
    fill(browser, {"setting.client_id": "client-eu-2"})
    save(browser)
    assert "Saved outreach-eu." in browser.find_element(By.CSS_SELECTOR, "p.message").text
    [(_, _, doc)] = keyed.rows()
    assert json.loads(doc)["values"]["client_id"] == "client-eu-2"
    assert fernet.decrypt(json.loads(doc)["sealed"]["client_secret"].encode()).decode() == SECRET  # kept
    assert fernet.decrypt(json.loads(doc)["sealed"]["refresh_token"].encode()).decode() == REFRESH
    assert SECRET not in browser.page_source and REFRESH not in browser.page_source
    # Delete: a confirmation first; leaving it deletes nothing.
    click_and_wait(browser, browser.find_element(By.XPATH, "//button[text()='Delete outreach-eu']"))
    assert "Delete the integration outreach-eu" in browser.find_element(By.ID, "confirm-delete").text
    assert len(keyed.rows()) == 1
    click_and_wait(browser, browser.find_element(By.ID, "confirm"))
    assert browser.find_element(By.ID, "message").text.startswith("Deleted outreach-eu.")
    assert keyed.rows() == []
    assert browser.find_elements(By.CSS_SELECTOR, 'tr[data-integration="outreach-eu"]') == []
    assert console_errors(browser) == []


def test_edit_and_delete_without_the_page_csrf_token_are_refused(keyed: ConsoleProcess) -> None:
    from engine.state.console_integrations import StoredIntegration

    state = SqliteState(keyed.state)
    try:
        state.console_integrations().put(StoredIntegration("kept", "outreach/lead-capture", {"client_id": "c"}))
    finally:
        state.close()
    for path, body in (
        ("/integrations/kept/delete", {"confirmed": "yes"}),
        ("/integrations/kept/edit", {"setting.client_id": "forged"}),
    ):
        request = urllib.request.Request(keyed.base + path, data=urllib.parse.urlencode(body).encode(), method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 403
    forged = urllib.request.Request(keyed.base + "/api/integrations/kept", method="DELETE")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(forged, timeout=10)
    assert refused.value.code == 403
    assert [(n, json.loads(d)["values"]["client_id"]) for n, _, d in keyed.rows()] == [("kept", "c")]
