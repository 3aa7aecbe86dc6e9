"""Two integrations on their sandboxes: the HubSpot fake on a thread of its own, fast presets, a config file."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from engine.sandbox import hubspot

REPO = Path(__file__).resolve().parents[1]
HUBSPOT_PRESET = REPO / "presets" / "hubspot" / "contacts.yaml"


class ThreadedHubspot:
    """The HubSpot sandbox on its own event loop in a thread, so subprocesses can reach it."""

    def __init__(self, **overrides: Any) -> None:
        self.config = hubspot.SandboxConfig(**overrides)
        self.loop = asyncio.new_event_loop()
        self.base_url = ""
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="hubspot-sandbox", daemon=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            runner, self.base_url = self.loop.run_until_complete(hubspot.start_sandbox(self.config, port=0))
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            self.loop.run_forever()
        finally:
            self.loop.run_until_complete(runner.cleanup())
            self.loop.close()

    def __enter__(self) -> ThreadedHubspot:
        self._thread.start()
        assert self._ready.wait(15), "sandbox did not start"
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(15)

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.base_url}/_sandbox/{path}", data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            return json.loads(resp.read())

    def emails(self) -> list[str]:
        return [c["properties"].get("email") for c in self.admin("GET", "state")["contacts"]]


def fast_hubspot_preset(directory: Path) -> Path:
    """The shipped HubSpot preset with test-sized backoff and a client bucket that never binds."""
    yaml = YAML()
    data = yaml.load(HUBSPOT_PRESET.read_text(encoding="utf-8"))
    backoff = data["delivery"]["retries"]["backoff"]
    backoff["initial_seconds"] = 0.05
    backoff["max_seconds"] = 0.5
    data["delivery"]["rate_limit"]["requests"] = 10000
    data["delivery"]["rate_limit"]["per_seconds"] = 10
    path = directory / "hubspot-fast.yaml"
    with path.open("w", encoding="utf-8") as handle:
        yaml.dump(data, handle)
    return path


def write_config(
    path: Path,
    outreach_preset: Path | None,
    outreach_settings: Path | None,
    hubspot_preset: Path | None,
    hubspot_url: str | None,
    *,
    hubspot_enabled: bool = True,
) -> Path:
    """An integrations file naming the two sandboxes; the HubSpot token is read from the environment."""
    lines = ["# yaml-language-server: $schema=../schemas/integrations.schema.json", "integrations:"]
    if outreach_preset is not None:
        lines += ["  outreach:", f"    preset: {outreach_preset}", f"    settings_file: {outreach_settings}"]
    if hubspot_preset is not None:
        lines += [
            "  hubspot:",
            f"    preset: {hubspot_preset}",
            "    settings:",
            '      access_token: "${HUBSPOT_TOKEN}"',
            f"      base_url: {hubspot_url}",
            f"    enabled: {'true' if hubspot_enabled else 'false'}",
        ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
