"""``signal-engine demo --keep-serving`` serves the console over the demo's state: a new user's first look at
the Event Debugger, in a real headless Chromium.

What the page must show is the demo's events as the product page says they
end (``test_cli_demo.EXPECTED``, read from the spec): the leads delivered,
the rest dropped with their reasons, under the preset's integration name.
"""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from test_cli_demo import EXPECTED, SIGNAL_ENGINE, _read_lines
from test_console_browser import CHROMEDRIVER, CHROMIUM, browser, console_errors, open_page, rows  # noqa: F401

pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None, reason="chromium and chromium-driver")


def test_keep_serving_serves_the_console_with_the_demos_events(tmp_path: Path, browser: Any) -> None:
    proc = subprocess.Popen(
        [str(SIGNAL_ENGINE), "demo", "--keep-serving", "--quiet", "--state", str(tmp_path / "s")],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=_read_lines, args=(proc.stderr, lines), daemon=True).start()
        said: list[str] = []
        while not any("serving until Ctrl-C" in line for line in said):
            line = lines.get(timeout=60)
            assert line, f"the demo ended before serving: {said}"
            said.append(line)
        text = "".join(said)
        found = re.search(r"demo: console: (http://127\.0\.0\.1:\d+/console/)$", text, re.M)
        assert found, text
        assert text.index("demo: console:") < text.index("demo: sandbox:")  # the first thing to open

        open_page(browser, found[1], "demo-debugger")  # / of the console opens the Event Debugger
        assert browser.current_url.endswith("/console/events")
        shown = rows(browser)
        assert {r["integration"] for r in shown} == {"outreach-lead-capture"}
        expected = Counter(outcome for outcome, _ in EXPECTED.values())
        assert Counter(r["outcome"] for r in shown) == expected
        assert Counter(r["why"] for r in shown if r["outcome"] == "dropped") == Counter(
            reason for outcome, reason in EXPECTED.values() if outcome == "dropped"
        )
        delivered = {r["email"] for r in shown if r["outcome"] == "delivered"}
        assert {"jane.doe@acme.com", "marcus.lee@northwind.io", "priya.shah@globex.com"} <= delivered
        assert console_errors(browser) == []

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
