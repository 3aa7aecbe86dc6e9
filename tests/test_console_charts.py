"""The Integrations page's small charts: inline SVG bars drawn on the server, in a real headless Chromium.

Recorded outcomes are written straight into a state directory at known ages,
so each bar's count is known beforehand: the last hour in 5-minute bars,
the last day in hourly bars, oldest first.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.state.record import Recorded
from engine.state.sqlite import SqliteState
from service_helpers import Service

NAME = "outreach-lead-capture"
# (minutes ago, outcome): the first two in the newest 5-minute bar, the third 12 minutes ago (the third newest),
# the dead letter three and a half hours ago (the fourth newest hourly bar; outside the last hour).
RECORDED = [(1, "delivered"), (2, "delivered"), (12, "failed"), (210, "dead_lettered"), (4, "dropped")]


def seed(state: Path) -> None:
    backend = SqliteState(state)
    now = time.time()
    backend.record().add_many(
        [
            Recorded.of(
                {
                    "integration": NAME,
                    "at": now - minutes * 60,
                    "outcome": outcome,
                    "messageId": f"m{i}",
                    "preset": "outreach/lead-capture",
                }
            )
            for i, (minutes, outcome) in enumerate(RECORDED)
        ]
    )
    backend.close()


@pytest.fixture
def console(tmp_path: Path) -> Iterator[str]:
    seed(tmp_path / "state")
    served = Service("console", "--state", tmp_path / "state", "--port", "0", cwd=tmp_path, name="console")
    try:
        yield served.wait_for_line(r"^console on (http://\S+)$").group(1).rstrip("/")
    finally:
        served.stop()


EXPECTED = {
    ("last hour", "delivered"): [0] * 11 + [2],
    ("last hour", "failed"): [0] * 9 + [1, 0, 0],
    ("last hour", "dead_lettered"): [0] * 12,
    ("last hour", "dropped"): [0] * 11 + [1],
    ("last day", "delivered"): [0] * 23 + [2],
    ("last day", "failed"): [0] * 23 + [1],
    ("last day", "dead_lettered"): [0] * 20 + [1, 0, 0, 0],
    ("last day", "dropped"): [0] * 23 + [1],
}


def test_the_api_gives_each_window_its_bars(console: str) -> None:
    with urllib.request.urlopen(console + "/api/integrations", timeout=10) as answer:
        figures = {f["integration"]: f for f in json.loads(answer.read())["integrations"]}
    charts = figures[NAME]["series"]
    assert charts["last hour"]["bar_seconds"] == 300 and charts["last day"]["bar_seconds"] == 3600
    for (window, kind), bars in EXPECTED.items():
        assert charts[window][kind] == bars, (window, kind)


def test_the_integrations_page_draws_the_bars_with_no_script_and_no_browser_error(console: str) -> None:
    browser_test = pytest.importorskip("test_console_browser")
    if browser_test.CHROMIUM is None or browser_test.CHROMEDRIVER is None:
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    from selenium.webdriver.common.by import By

    with contextlib.contextmanager(browser_test.browser.__wrapped__)() as browser:
        browser_test.open_page(browser, console + "/integrations", "integrations-charts")
        card = browser.find_element(By.CSS_SELECTOR, f'section[data-integration="{NAME}"]')
        rows = card.find_elements(By.CSS_SELECTOR, "table.health tbody tr")
        seen: dict[tuple[str, str], Any] = {}
        for row in rows:
            window = row.find_element(By.TAG_NAME, "th").text
            for chart in row.find_elements(By.CSS_SELECTOR, "svg.spark"):
                kind = chart.get_attribute("class").split()[1]
                heights = [float(r.get_attribute("height")) for r in chart.find_elements(By.TAG_NAME, "rect")]
                drawn = browser.execute_script("return arguments[0].getBoundingClientRect().height", chart)
                seen[(window, kind)] = (heights, drawn)
        assert set(seen) == set(EXPECTED)
        for key, bars in EXPECTED.items():
            heights, drawn = seen[key]
            assert len(heights) == len(bars) and drawn == 24, key
            # The busiest bar is full height; an empty one a 1-pixel baseline; the rest in proportion.
            top = max(bars) or 1
            assert heights == [22.0 * b / top if b else 1.0 for b in bars], key
        assert browser_test.console_errors(browser) == []
