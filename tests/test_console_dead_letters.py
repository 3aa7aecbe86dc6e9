"""Deleting dead letters: ``dlq delete`` and the console's delete, the same store operation.

The console asks before it deletes (a confirmation page a browser must
answer), refuses a form without the page's CSRF token, and deletes only the
letters of the integration named; the JSON API does the same for scripts.
One letter opened shows the request it would replay and the last response.
Letters are written straight into a state directory, so no destination is
needed: deleting sends nothing.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.outcome import DEAD_LETTERED, Outcome
from engine.state.dead_letters import entry_for
from engine.state.sqlite import SqliteState
from redis_server import needs_redis, redis_server, redis_url  # noqa: F401 - fixtures
from service_helpers import Service

PRESET = "outreach/lead-capture"
INTEGRATION = "outreach-lead-capture"  # a run's letters are its preset's integration's


def seed(state: Path | Any, tags: list[str], preset: str = PRESET) -> dict[str, str]:
    """A dead letter per tag (a 500 five times); their ids by tag (a state directory, or a RedisState)."""
    backend = SqliteState(state) if isinstance(state, Path) else state
    letters = backend.dead_letters()
    for tag in tags:
        request = {
            "method": "POST",
            "url": "https://api.example.test/api/v2/prospects",
            "headers": {"Authorization": "Bearer ***"},
            "body": {"data": {"type": "prospect", "attributes": {"emails": [f"{tag}@example.com"]}}},
        }
        outcome = Outcome(
            0,
            f"{tag}-lead",
            DEAD_LETTERED,
            cause="http_500",
            detail="the server failed",
            attempts=5,
            request=request,
            response={"status": 500, "body": {"errors": [{"title": f"down {tag}"}]}},
        )
        letters.add(entry_for(preset, "create_prospect", outcome, request, key=f"key-{tag}"))
    ids = {str(e["messageId"]).removesuffix("-lead"): str(e["id"]) for e in letters.entries()}
    if backend is not state:
        backend.close()
    return ids


def dlq(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", "dlq", *map(str, args)], capture_output=True, text=True, timeout=60
    )


def test_dlq_delete_forgets_only_the_named_letters_and_says_which_were_not_there(tmp_path: Path) -> None:
    ids = seed(tmp_path / "state", ["one", "two", "three"])
    other = seed(tmp_path / "state", ["theirs"], preset="hubspot/contacts")["theirs"]
    deleted = dlq("delete", PRESET, "--state", tmp_path / "state", "--id", ids["one"], "--id", ids["three"])
    assert deleted.returncode == 0, deleted.stderr
    assert [json.loads(line) for line in deleted.stdout.splitlines()] == [
        {"id": ids["one"], "deleted": True},
        {"id": ids["three"], "deleted": True},
    ]
    listed = dlq("list", PRESET, "--state", tmp_path / "state")
    assert [json.loads(line)["messageId"] for line in listed.stdout.splitlines()] == ["two-lead"]
    # Another preset's letter, and one already gone: nothing deleted, both named, exit 1.
    refused = dlq("delete", PRESET, "--state", tmp_path / "state", "--id", other, "--id", ids["one"])
    assert refused.returncode == 1 and refused.stdout == ""
    assert f"not a dead letter of {PRESET}: {other}, {ids['one']}" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert len(dlq("list", "hubspot/contacts", "--state", tmp_path / "state").stdout.splitlines()) == 1


@needs_redis
def test_dlq_delete_on_redis_forgets_the_letters_the_workers_share(redis_url: str) -> None:
    from engine.state.redis import RedisState

    state = RedisState(redis_url)
    try:
        ids = seed(state, ["red", "blue"])
        deleted = dlq("delete", PRESET, "--redis", redis_url, "--id", ids["red"])
        assert deleted.returncode == 0, deleted.stderr
        assert [str(e["messageId"]) for e in state.dead_letters().entries()] == ["blue-lead"]
    finally:
        state.close()


def test_dlq_delete_needs_an_id(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    answer = dlq("delete", PRESET, "--state", tmp_path / "state")
    assert answer.returncode == 2 and "--id" in answer.stderr and "Traceback" not in answer.stderr


@pytest.fixture
def console(tmp_path: Path) -> Iterator[tuple[str, dict[str, str], Path]]:
    ids = seed(tmp_path / "state", ["alpha", "beta", "gamma", "delta"])
    served = Service("console", "--state", tmp_path / "state", "--port", "0", cwd=tmp_path, name="console")
    try:
        base = served.wait_for_line(r"^console on (http://\S+)$").group(1).rstrip("/")
        yield base, ids, tmp_path / "state"
    finally:
        served.stop()


def call(url: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url,
        data=data,
        method="GET" if body is None else "POST",
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def csrf_of(base: str) -> str:
    with urllib.request.urlopen(base + "/dead-letters", timeout=10) as answer:
        page = answer.read().decode()
    return page.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]


def test_the_api_deletes_with_the_page_token_and_shows_one_letter(console: tuple[str, dict[str, str], Path]) -> None:
    base, ids, state = console
    body = {"integration": INTEGRATION, "ids": [ids["alpha"], "no-such-id"]}
    assert call(base + "/api/dead-letters/delete", body)[0] == 403  # no CSRF token: refused
    assert (
        call(
            base + "/api/dead-letters/delete", {"integration": INTEGRATION, "ids": []}, {"X-CSRF-Token": csrf_of(base)}
        )[0]
        == 400
    )
    status, answer = call(base + "/api/dead-letters/delete", body, {"X-CSRF-Token": csrf_of(base)})
    assert status == 200 and answer == {"deleted": [ids["alpha"]], "not_found": ["no-such-id"]}
    # Another integration's name deletes nothing of this one.
    status, answer = call(
        base + "/api/dead-letters/delete",
        {"integration": "elsewhere", "ids": [ids["beta"]]},
        {"X-CSRF-Token": csrf_of(base)},
    )
    assert answer == {"deleted": [], "not_found": [ids["beta"]]}
    status, letter = call(base + f"/api/dead-letters/{ids['beta']}")
    assert status == 200 and letter["last_response"]["status"] == 500 and letter["integration"] == INTEGRATION
    assert letter["request"]["body"]["data"]["attributes"]["emails"] == ["beta@example.com"]
    assert call(base + f"/api/dead-letters/{ids['alpha']}")[0] == 404
    listed = dlq("list", PRESET, "--state", state)
    assert sorted(json.loads(line)["messageId"] for line in listed.stdout.splitlines()) == [
        "beta-lead",
        "delta-lead",
        "gamma-lead",
    ]


def test_a_delete_form_without_the_page_token_is_refused(console: tuple[str, dict[str, str], Path]) -> None:
    base, ids, _ = console
    form = f"integration={INTEGRATION}&one={ids['alpha']}&confirmed=yes".encode()
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(
            urllib.request.Request(base + "/dead-letters/delete", data=form, method="POST"), timeout=10
        )
    assert refused.value.code == 403
    assert call(base + f"/api/dead-letters/{ids['alpha']}")[0] == 200  # still there


# -- in a real headless Chromium --------------------------------------------------
def test_deleting_in_the_browser_asks_first_and_deletes_only_what_was_confirmed(
    console: tuple[str, dict[str, str], Path],
) -> None:
    browser_test = pytest.importorskip("test_console_browser")
    if browser_test.CHROMIUM is None or browser_test.CHROMEDRIVER is None:
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, ids, _ = console
    open_page, errors = browser_test.open_page, browser_test.console_errors
    with contextlib.contextmanager(browser_test.browser.__wrapped__)() as browser:
        open_page(browser, base + "/dead-letters", "dead-letters-delete")
        gamma = browser.find_element(By.XPATH, "//tr[.//a[normalize-space()='gamma-lead']]")
        gamma.find_element(By.XPATH, ".//button[normalize-space()='Delete…']").click()
        WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.ID, "to-delete"))
        browser_test.take_shot(browser, "dead-letters-confirm")
        assert [row.text.split()[2] for row in browser.find_elements(By.CSS_SELECTOR, "#to-delete tbody tr")] == [
            "gamma-lead"
        ]
        browser.find_element(By.ID, "cancel-delete").click()  # cancelled: nothing deleted
        WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "section.integration"))
        assert "gamma-lead" in browser.find_element(By.TAG_NAME, "main").text
        for tag in ("beta", "delta"):
            browser.find_element(By.ID, f"sel-{ids[tag]}").click()
        browser.find_element(By.XPATH, "//button[normalize-space()='Delete selected…']").click()
        WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.ID, "to-delete"))
        shown = [row.text.split()[2] for row in browser.find_elements(By.CSS_SELECTOR, "#to-delete tbody tr")]
        assert sorted(shown) == ["beta-lead", "delta-lead"]
        browser.find_element(By.ID, "confirm-delete").click()
        notice = WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.ID, "notice"))[0].text
        assert f"{INTEGRATION}: deleted 2 dead letter(s)." == notice
        text = browser.find_element(By.TAG_NAME, "main").text
        assert "gamma-lead" in text and "alpha-lead" in text and "beta-lead" not in text and "delta-lead" not in text
        assert errors(browser) == []
        # One letter opened: the request it would replay, and the last answer.
        browser.find_element(By.LINK_TEXT, "gamma-lead").click()
        WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.ID, "last-response"))
        browser_test.take_shot(browser, "dead-letter")
        assert browser.find_element(By.ID, "last-status").text == "500"
        assert "down gamma" in browser.find_element(By.ID, "last-response").text
        assert "gamma@example.com" in browser.find_element(By.ID, "request").text
        assert errors(browser) == []
