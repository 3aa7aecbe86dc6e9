"""``/metrics`` as a Prometheus user reads it: no noise series, no empty labels, each number what its name says.

Expected shapes come from the Prometheus naming and instrumentation
practices (an empty label value is the same as no label, so it must not be
used as a value; a ``*_created`` series doubles every counter) and from the
metric descriptions in docs/guides/service.md, "Metrics".
"""

from __future__ import annotations

import asyncio
import signal
import urllib.request
from pathlib import Path

import aiohttp
from aiohttp import web

from engine.delivery.auth.oauth2 import token_endpoint_request
from engine.delivery.transport import AiohttpTransport
from engine.envelope import HttpRequest
from engine.language.model import AuthSpec
from engine.redaction import Redactor
from engine.service.metrics import Metrics
from engine.service.serving import CountingTransport
from service_helpers import Service, identify, lead, post, until, write_key_headers
from test_delivery_sandbox import ThreadedSandbox, fast_preset, unique_credentials, write_settings

INTEGRATION = "lead-capture-fast"  # serve PRESET is one integration named after the preset (here its file stem)
LABEL = f'integration="{INTEGRATION}"'


def scrape(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        return response.read().decode()


def sample(text: str, name: str) -> float | None:
    """The value of the series written exactly ``name`` (labels included), or None when absent."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_a_served_preset_exposes_clean_series_and_counts_latency_for_deliveries_only(tmp_path: Path) -> None:
    creds = unique_credentials()
    with ThreadedSandbox(**creds) as sandbox:
        settings = write_settings(tmp_path / "settings.yaml", sandbox.base_url, creds)
        serve = Service(
            "serve",
            fast_preset(tmp_path),
            "--settings",
            settings,
            "--state",
            tmp_path / "state",
            "--port",
            "0",
            cwd=tmp_path,
            name="serve",
        )
        try:
            url = serve.url
            # An identify (dropped: the preset maps no identify) and its lead (delivered).
            status, _ = post(url, "/v1/batch", {"batch": [identify(1, "m"), lead(1, "m")]}, write_key_headers())
            assert status == 200
            until(lambda: len(serve.outcomes()) == 2, what=lambda: f"two outcomes; stderr: {serve.stderr()}")
            # An outcome's line is printed before it is acknowledged and counted: wait for the counts too.
            until(
                lambda: (
                    sum(
                        sample(scrape(url), f'signal_outcomes_total{{{LABEL},outcome="{o}",reason="{r}"}}') or 0
                        for o, r in (("dropped", "event_not_mapped"), ("delivered", "none"))
                    )
                    == 2
                ),
                what=lambda: "both outcomes counted",
            )
            text = scrape(url)
            serve.signal(signal.SIGTERM)
            assert serve.wait(30) == 0
        finally:
            serve.stop()
    assert sorted(o["outcome"] for o in serve.outcomes()) == ["delivered", "dropped"]

    assert not [line for line in text.splitlines() if "_created" in line], "no *_created series"
    assert '=""' not in text, "no empty label value"
    assert sample(text, f'signal_outcomes_total{{{LABEL},outcome="dropped",reason="event_not_mapped"}}') == 1
    assert sample(text, f'signal_outcomes_total{{{LABEL},outcome="delivered",reason="none"}}') == 1
    # One delivery, one drop: the histogram holds the delivery only.
    assert sample(text, f"signal_delivery_latency_seconds_count{{{LABEL}}}") == 1
    # The engine minted one access token: the token endpoint's 200 is counted as the token endpoint's.
    assert sample(text, f'signal_token_endpoint_responses_total{{{LABEL},status="200"}}') == 1
    assert sample(text, f"signal_token_refreshes_total{{{LABEL}}}") == 1


def test_token_endpoint_429s_are_not_counted_as_the_destinations() -> None:
    """A throttled token endpoint (Outreach: about one mint a minute) is not a throttled API."""

    async def main() -> str:
        async def too_many(request: web.Request) -> web.Response:
            return web.json_response({"error": "rate_limited"}, status=429, headers={"Retry-After": "60"})

        app = web.Application()
        app.router.add_post("/oauth/token", too_many)
        app.router.add_post("/api/things", too_many)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        base = f"http://127.0.0.1:{port}"
        metrics = Metrics()
        try:
            async with aiohttp.ClientSession() as session:
                transport = CountingTransport(AiohttpTransport(session, 5, 1 << 20), metrics, "crm")
                token = token_endpoint_request(
                    AuthSpec(type="oauth2"),
                    base + "/oauth/token",
                    "client",
                    "secret",
                    {"grant_type": "refresh_token", "refresh_token": "r"},
                    Redactor(),
                )
                assert (await transport.send(token)).status == 429
                api = HttpRequest("POST", base + "/api/things", {"Authorization": "Bearer a"}, body={"a": 1})
                assert (await transport.send(api)).status == 429
        finally:
            await runner.cleanup()
        body, _ = await metrics.render()
        return body.decode()

    text = asyncio.run(main())
    assert sample(text, 'signal_token_endpoint_responses_total{integration="crm",status="429"}') == 1
    assert sample(text, 'signal_destination_responses_total{integration="crm",status="429"}') == 1
    assert sample(text, 'signal_destination_429_total{integration="crm"}') == 1
