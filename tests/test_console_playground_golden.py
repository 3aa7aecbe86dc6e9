"""The playground runs the chosen preset's golden cases against the YAML in the page and shows each diff.

The cases are this repository's own (copied under the console's working
directory, where ``signal-engine golden`` looks by default); the number that
pass is counted from the case files, and the diff of a changed URL is
checked line by line. Delivery cases answer from their scripted responses:
nothing is sent.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.console.playground import preset_source
from engine.state.sqlite import SqliteState
from service_helpers import Service

REPO = Path(__file__).resolve().parents[1]
PRESET = "outreach/lead-capture"


@pytest.fixture
def console(tmp_path: Path) -> Iterator[tuple[str, int]]:
    cases = tmp_path / "golden" / PRESET
    shutil.copytree(REPO / "golden" / PRESET, cases)
    count = sum(1 for p in cases.rglob("*.json") if not p.name.endswith(".expected.json"))
    SqliteState(tmp_path / "state").close()
    served = Service("console", "--state", tmp_path / "state", "--port", "0", cwd=tmp_path, name="console")
    try:
        yield served.wait_for_line(r"^console on (http://\S+)$").group(1).rstrip("/"), count
    finally:
        served.stop()


def post(url: str, body: Any, csrf: str | None) -> tuple[int, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", **({"X-CSRF-Token": csrf} if csrf else {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_api_runs_the_cases_against_the_yaml_given(console: tuple[str, int]) -> None:
    base, count = console
    with urllib.request.urlopen(base + "/playground", timeout=10) as answer:
        csrf = answer.read().decode().split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
    yaml = preset_source(PRESET)
    assert post(base + "/api/playground/golden", {"yaml": yaml, "preset": PRESET}, None)[0] == 403
    status, answer = post(base + "/api/playground/golden", {"yaml": yaml, "preset": PRESET}, csrf)
    assert status == 200 and (answer["passed"], answer["failed"]) == (count, 0)
    assert all(case["diff"] == "" for case in answer["cases"])
    changed = yaml.replace("/api/v2/prospects", "/api/v2/leads")
    answer = post(base + "/api/playground/golden", {"yaml": changed, "preset": PRESET}, csrf)[1]
    failed = [case for case in answer["cases"] if not case["passed"]]
    assert failed and answer["failed"] == len(failed)
    diff = failed[0]["diff"].splitlines()
    assert diff[0] == f"--- {failed[0]['name']}.expected.json"
    assert '-      "url": "https://api.outreach.io/api/v2/prospects",' in diff
    assert '+      "url": "https://api.outreach.io/api/v2/leads",' in diff
    broken = post(base + "/api/playground/golden", {"yaml": yaml + "\nbogus_section: 1\n", "preset": PRESET}, csrf)[1]
    assert broken["cases"] == [] and "bogus_section" in broken["problems"][0]["message"]
    none = post(base + "/api/playground/golden", {"yaml": yaml, "preset": "../../etc"}, csrf)[1]
    assert none["cases"] == [] and none["note"].startswith("no golden cases for ../../etc")


def test_the_playground_page_runs_the_cases_and_shows_the_diffs(console: tuple[str, int]) -> None:
    browser_test = pytest.importorskip("test_console_browser")
    if browser_test.CHROMIUM is None or browser_test.CHROMEDRIVER is None:
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, count = console
    with contextlib.contextmanager(browser_test.browser.__wrapped__)() as browser:
        browser_test.open_page(browser, base + "/playground")
        browser.find_element(By.CSS_SELECTOR, f'#preset-choice option[value="{PRESET}"]').click()
        WebDriverWait(browser, 20).until(
            lambda d: "# Outreach — Lead Capture" in d.find_element(By.ID, "yaml").get_attribute("value")
        )
        browser.find_element(By.ID, "run-golden").click()
        status = WebDriverWait(browser, 30).until(
            lambda d: "passed" in d.find_element(By.ID, "golden-status").text and d.find_element(By.ID, "golden-status")
        )
        assert status.text.startswith(f"{count} passed, 0 failed"), status.text
        assert len(browser.find_elements(By.CSS_SELECTOR, "#golden details.golden-case.pass")) == count
        yaml = browser.find_element(By.ID, "yaml")
        browser.execute_script(
            "arguments[0].value = arguments[0].value.replace('/api/v2/prospects', '/api/v2/leads');"
            "arguments[0].dispatchEvent(new Event('input'));",
            yaml,
        )
        browser.find_element(By.ID, "run-golden").click()
        WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#golden details.golden-case.fail"))
        failed = browser.find_elements(By.CSS_SELECTOR, "#golden details.golden-case.fail")
        assert browser.find_element(By.ID, "golden-status").text.startswith(
            f"{count - len(failed)} passed, {len(failed)} failed"
        )
        first = failed[0]
        assert first.get_attribute("open") is not None  # a failed case opens on its diff
        removed = [s.text for s in first.find_elements(By.CSS_SELECTOR, "pre.diff span.removed")]
        added = [s.text for s in first.find_elements(By.CSS_SELECTOR, "pre.diff span.added")]
        assert '-      "url": "https://api.outreach.io/api/v2/prospects",' in removed
        assert '+      "url": "https://api.outreach.io/api/v2/leads",' in added
        browser.execute_script("arguments[0].scrollIntoView()", browser.find_element(By.ID, "run-golden"))
        browser_test.take_shot(browser, "playground-golden")
        assert browser_test.console_errors(browser) == []
