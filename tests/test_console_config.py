"""``signal-engine console --config FILE``, in a real headless Chromium, over what a real ``serve --config`` left.

Two integrations in one file, one enabled and delivering to the Outreach
sandbox, one disabled (its secret's ``${NAME}`` not set, so it keeps a place
in the queue and its events wait there). The console must list both, show
the first one's records and dead letter, each one's lag as the queue holds
it, and replay the letter by clicking, with that integration's own settings
from the file (no ``--preset``/``--settings``). The second is listed, says
why it cannot replay, and is read-only. Also: one name rule for a one-preset
integration, whatever names it.
"""

from __future__ import annotations

import json
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service_helpers import WRITE_KEY, Service, post_signed, until
from test_console_browser import CHROMEDRIVER, CHROMIUM, browser, console_errors, lead, open_page, rows  # noqa: F401
from test_delivery_sandbox import ThreadedSandbox, fast_preset, unique_credentials, write_settings

pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None, reason="chromium and chromium-driver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def api(base: str, path: str) -> Any:
    with urllib.request.urlopen(base + "api/" + path, timeout=10) as answer:
        return json.loads(answer.read())


class Served:
    """An integrations file, the state a ``serve --config`` left in it, and the sandbox behind it."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.creds = unique_credentials()
        self.sandbox = ThreadedSandbox(faults=["500"] * 5, **self.creds)  # the first lead: dead-lettered
        self.sandbox.__enter__()
        fast_preset(tmp)
        write_settings(tmp / "crm-settings.yaml", self.sandbox.base_url, self.creds)
        self.config = tmp / "integrations.yaml"
        # The intake's key is the serve's business: the console runs without it.
        self.config.write_text(
            "intake:\n"
            '  write_keys: ["${CONFIG_TEST_WRITE_KEY}"]\n'
            "integrations:\n"
            "  crm:\n"
            "    preset: ./lead-capture-fast.yaml\n"
            "    settings_file: crm-settings.yaml\n"
            "  archive:\n"
            "    preset: ./lead-capture-fast.yaml\n"
            "    enabled: false\n"
            "    settings:\n"
            "      client_id: archive-client\n"
            '      client_secret: "${ARCHIVE_SECRET}"\n'
            '      refresh_token: "${ARCHIVE_REFRESH}"\n'
            f"      base_url: {self.sandbox.base_url}\n",
            encoding="utf-8",
        )
        self.state = tmp / "state"
        serve = Service(
            "serve",
            "--config",
            self.config,
            "--state",
            self.state,
            "--port",
            "0",
            cwd=tmp,
            name="serve",
            env={"CONFIG_TEST_WRITE_KEY": WRITE_KEY},
        )
        try:
            for event in (lead("dead", "dead.letter@example.com"), lead("kept", "kept@example.com")):
                status, body = post_signed(serve.url, event)
                assert status == 200, body
                until(
                    lambda m=event["messageId"]: any(o["messageId"] == m for o in serve.outcomes()),
                    what=f"{event['messageId']}'s outcome",
                )
            serve.proc.send_signal(signal.SIGTERM)  # drains: the record's last batch is written
            assert serve.proc.wait(30) == 0
        finally:
            serve.stop()

    def close(self) -> None:
        self.sandbox.__exit__(None, None, None)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    running = Served(tmp_path_factory.mktemp("console-config"))
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def console(served: Served) -> Iterator[str]:
    # ARCHIVE_SECRET is unset for the console too: archive is listed, not replayable.
    process = Service(
        "console", "--config", served.config, "--state", served.state, "--port", "0", cwd=served.tmp, name="console"
    )
    try:
        yield process.wait_for_line(r"^console on (http://\S+)$").group(1)
    finally:
        process.stop()


def test_every_integration_of_the_file_is_listed_with_its_health_and_lag(
    served: Served, console: str, browser: Any
) -> None:
    figures = {item["integration"]: item for item in api(console, "integrations")["integrations"]}
    assert sorted(figures) == ["archive", "crm"]
    # Two events were accepted; crm finished both, archive is disabled: both still wait in its queue rows.
    assert figures["crm"]["lag"] == 0 and figures["archive"]["lag"] == 2
    assert figures["crm"]["windows"]["last day"]["dead_lettered"] == 1, figures["crm"]
    assert figures["crm"]["windows"]["last day"]["delivered"] == 1
    assert figures["crm"]["dead_letters"] == 1 and figures["archive"]["dead_letters"] == 0
    assert figures["crm"]["configured"]["replayable"] is True
    assert figures["archive"]["configured"]["replayable"] is False
    assert "client_secret are not set" in figures["archive"]["configured"]["why_not"]

    # The live list first: leaving it (its stream cut) is not the next page's concern.
    open_page(browser, console + "events?integration=crm")
    assert sorted((r["email"], r["integration"], r["outcome"]) for r in rows(browser)) == [
        ("dead.letter@example.com", "crm", "dead_lettered"),
        ("kept@example.com", "crm", "delivered"),
    ]
    open_page(browser, console + "integrations", "integrations-config")
    cards = {
        c.get_attribute("data-integration"): c.text
        for c in browser.find_elements(By.CSS_SELECTOR, "section.integration")
    }
    assert sorted(cards) == ["archive", "crm"]
    assert "Lag: 2 event(s) not finished yet" in cards["archive"]
    assert "Lag: 0 event(s) not finished yet" in cards["crm"]
    assert "read-only here" in cards["crm"] and str(served.config) in cards["crm"]
    assert "disabled" in cards["archive"] and "client_secret are not set" in cards["archive"]
    assert console_errors(browser) == []
    for path in ("events", "dead-letters", "integrations", "api/events", "api/dead-letters", "api/integrations"):
        with urllib.request.urlopen(console + path, timeout=10) as answer:
            body = answer.read().decode()
        assert served.creds["client_secret"] not in body and served.creds["refresh_token"] not in body, path


def test_a_letter_is_replayed_by_clicking_with_the_integrations_own_settings(
    served: Served, console: str, browser: Any
) -> None:
    open_page(browser, console + "dead-letters", "dead-letters-config")
    button = browser.find_element(By.CSS_SELECTOR, "button[name='one']")
    button.click()
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.ID, "notice"))
    assert "crm: replayed 1, delivered 1" in browser.find_element(By.ID, "notice").text
    errors = console_errors(browser)
    assert errors == [], errors
    assert api(console, "dead-letters")["dead_letters"] == []
    replays = [r for r in api(console, "events?integration=crm")["events"] if r["replay"]]
    assert [(r["messageId"], r["outcome"]) for r in replays] == [("dead-lead", "delivered")]
    page = browser.page_source
    assert served.creds["client_secret"] not in page and served.creds["refresh_token"] not in page


def test_an_integration_without_its_credentials_says_why_it_cannot_replay(served: Served) -> None:
    import asyncio

    from engine.cli.console import from_file
    from engine.console import ConsoleSource
    from engine.console.source import ReplayUnavailable
    from engine.state.sqlite import SqliteState

    connections, configured = from_file(str(served.config), [])
    assert [c.integration for c in connections] == ["crm"]
    assert [(c.name, c.enabled, c.unavailable is None) for c in configured] == [
        ("crm", True, True),
        ("archive", False, False),
    ]
    backend = SqliteState(served.state)
    try:
        source = ConsoleSource(backend, connections, configured=configured)
        with pytest.raises(ReplayUnavailable, match="client_secret are not set"):
            asyncio.run(source.replay("archive"))
        assert "--config" in source.why_not_replayable("nobody")
    finally:
        backend.close()


def test_console_refuses_config_with_preset(served: Served) -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "console",
            "--config",
            served.config,
            "--preset",
            "outreach/lead-capture",
            "--state",
            served.state,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=served.tmp,
    )
    assert proc.returncode == 2 and "not both" in proc.stderr and "Traceback" not in proc.stderr


# -- one name for a one-preset integration ------------------------------------------
@pytest.mark.parametrize(
    "file, name",
    [
        ("My_Leads.yaml", "my-leads"),  # README: a preset file by its stem
        ("presets/outreach/lead-capture.yaml", "outreach-lead-capture"),
    ],
)
def test_serve_preset_its_dead_letters_and_the_console_name_a_one_preset_integration_alike(
    tmp_path: Path, file: str, name: str
) -> None:
    """``serve PRESET``'s outcomes, its dead letters, its record and ``console --preset`` use one name; a file kept
    where its preset name puts it is that preset's own (``outreach/lead-capture`` → ``outreach-lead-capture``)."""
    creds = unique_credentials()
    with ThreadedSandbox(faults=["500"] * 5, **creds) as sandbox:
        preset = tmp_path / file
        preset.parent.mkdir(parents=True, exist_ok=True)
        fast_preset(tmp_path).rename(preset)
        settings = write_settings(tmp_path / "settings.yaml", sandbox.base_url, creds)
        serve = Service(
            "serve",
            preset,
            "--settings",
            settings,
            "--state",
            tmp_path / "state",
            "--port",
            "0",
            "--console",
            cwd=tmp_path,
            name="serve",
        )
        try:
            status, body = post_signed(serve.url, lead("named", "named@example.com"))
            assert status == 200, body
            until(lambda: serve.outcomes(), what="the lead's outcome")
            base = serve.url + "/console/"
            until(lambda: api(base, "events")["events"], what="the recorded outcome")
            assert [(o["outcome"], o["integration"]) for o in serve.outcomes()] == [("dead_lettered", name)]
            assert [letter["integration"] for letter in api(base, "dead-letters")["dead_letters"]] == [name]
            assert [row["integration"] for row in api(base, "events")["events"]] == [name]
            assert [item["integration"] for item in api(base, "integrations")["integrations"]] == [name]
        finally:
            serve.stop()
        # The console command, given the same preset: it replays the letter under that name.
        console = Service(
            "console",
            "--state",
            tmp_path / "state",
            "--port",
            "0",
            "--preset",
            preset,
            "--settings",
            settings,
            cwd=tmp_path,
            name="console",
            env={"SIGNAL_CONSOLE_TOKEN": "t0ken"},
        )
        try:
            base = console.wait_for_line(r"^console on (http://\S+)$").group(1)
            request = urllib.request.Request(
                base + "api/dead-letters/replay",
                method="POST",
                data=json.dumps({"integration": name, "ids": None}).encode(),
                headers={"Content-Type": "application/json", "Authorization": "Bearer t0ken"},
            )
            with urllib.request.urlopen(request, timeout=30) as answer:
                results = json.loads(answer.read())["results"]
            assert [(r["outcome"], r.get("integration")) for r in results] == [("delivered", name)]
        finally:
            console.stop()
