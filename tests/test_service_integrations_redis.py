"""Two integrations scaled out on Redis: one intake, one stream, a consumer group per integration.

Real processes, a real redis-server, the Outreach and HubSpot sandboxes. One
of two workers is killed with kill -9 mid-run: per integration, every lead
arrives exactly once and every event has exactly one published outcome.
`tail` and `dlq` name their integration.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import redis

from integration_helpers import ThreadedHubspot, fast_hubspot_preset, write_config
from redis_server import redis_server, redis_url  # noqa: F401 - fixtures
from service_helpers import WRITE_KEY, Service, identify, lead, post, until, write_key_headers
from test_delivery_sandbox import ThreadedSandbox, fast_preset, unique_credentials, write_settings
from test_service_integrations import ENV, FAST_HUBSPOT, HUBSPOT_TOKEN, prospect_emails

INTEGRATIONS = ("outreach", "hubspot")


def published(url: str, integration: str) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(url)
    try:
        return [json.loads(fields[b"outcome"]) for _, fields in client.xrange(f"signal:{integration}:outcomes")]
    finally:
        client.close()


def cli(cwd: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **ENV, "PYTHONUNBUFFERED": "1"},
    )


def test_kill_9_of_one_of_two_workers_loses_and_duplicates_nothing_per_integration(
    tmp_path: Path, redis_url: str
) -> None:
    count = 150
    creds = unique_credentials()
    with (
        ThreadedSandbox(faults=["delay:0.1"] * 30, **creds) as outreach,
        ThreadedHubspot(faults=["delay:0.1"] * 30, **FAST_HUBSPOT) as hubspot,
    ):
        settings = write_settings(tmp_path / "outreach.yaml", outreach.base_url, creds)
        config = write_config(
            tmp_path / "integrations.yaml",
            fast_preset(tmp_path),
            settings,
            fast_hubspot_preset(tmp_path),
            hubspot.base_url,
        )
        serve = Service(
            "serve",
            "--config",
            config,
            "--redis",
            redis_url,
            "--port",
            "0",
            "--quiet",
            cwd=tmp_path,
            env=ENV,
            name="serve",
        )
        workers = [
            Service(
                "worker",
                "--config",
                config,
                "--redis",
                redis_url,
                "--consumer",
                f"w{n}",
                "--visibility-timeout",
                "2",
                cwd=tmp_path,
                env=ENV,
                name=f"w{n}",
            )
            for n in range(2)
        ]
        try:
            url = serve.url
            for w in workers:
                w.wait_for_notice(r"^worker w\d consuming outreach, hubspot$")
            for start in range(0, count, 25):
                batch = [e for i in range(start, start + 25) for e in (identify(i, "r"), lead(i, "r"))]
                assert post(url, "/v1/batch", {"batch": batch}, write_key_headers())[0] == 200
                if start == 50:
                    until(lambda: len(workers[0].outcomes()) > 20, what="worker w0 to be busy")
                    workers[0].signal(signal.SIGKILL)
            until(
                lambda: all(len(published(redis_url, name)) >= 2 * count for name in INTEGRATIONS),
                timeout=120,
                what=lambda: (
                    f"every outcome: {[len(published(redis_url, n)) for n in INTEGRATIONS]}; "
                    + workers[1].stderr()[-1500:]
                ),
            )
            tail = cli(
                tmp_path,
                "tail",
                "--config",
                config,
                "--integration",
                "hubspot",
                "--redis",
                redis_url,
                "-n",
                "5",
                "--no-follow",
            )
            tail_all = cli(tmp_path, "tail", "--config", config, "--redis", redis_url, "-n", "10", "--no-follow")
            workers[1].signal(signal.SIGTERM)
            assert workers[1].wait(30) == 0
            serve.signal(signal.SIGTERM)
            assert serve.wait(30) == 0
            stream_left = redis.Redis.from_url(redis_url).xlen("signal:events")
        finally:
            for process in [serve, *workers]:
                process.stop()
        expected = sorted(f"r{i}@service.test" for i in range(count))
        assert sorted(prospect_emails(outreach)) == expected
        assert sorted(hubspot.emails()) == expected
    for name in INTEGRATIONS:
        outcomes = published(redis_url, name)
        per_event = Counter(o["messageId"] for o in outcomes)
        assert len(per_event) == 2 * count and set(per_event.values()) == {1}, (name, per_event.most_common(2))
        assert {o["integration"] for o in outcomes} == {name}
        assert all(o["outcome"] == "delivered" for o in outcomes if o["messageId"].startswith("r-lead-"))
    assert "took over" in workers[1].stderr()
    assert stream_left == 0  # every group was past every entry: the stream was trimmed
    assert tail.returncode == 0 and len(tail.stdout.splitlines()) == 5
    assert {json.loads(line)["integration"] for line in tail.stdout.splitlines()} == {"hubspot"}
    assert len(tail_all.stdout.splitlines()) == 10
    assert {json.loads(line)["integration"] for line in tail_all.stdout.splitlines()} <= set(INTEGRATIONS)
    for process in [serve, *workers]:
        text = process.stderr() + "\n".join(process.lines)
        for secret in (creds["client_secret"], creds["refresh_token"], HUBSPOT_TOKEN, WRITE_KEY, *outreach.issued):
            assert secret not in text


def test_a_worker_for_one_integration_and_its_dead_letters_on_redis(tmp_path: Path, redis_url: str) -> None:
    creds = unique_credentials()
    with ThreadedSandbox(**creds) as outreach, ThreadedHubspot(**FAST_HUBSPOT) as hubspot:
        hubspot.admin("POST", "faults", {"fault_mix": {"503": 1.0}})
        settings = write_settings(tmp_path / "outreach.yaml", outreach.base_url, creds)
        config = write_config(
            tmp_path / "integrations.yaml",
            fast_preset(tmp_path),
            settings,
            fast_hubspot_preset(tmp_path),
            hubspot.base_url,
        )
        serve = Service(
            "serve",
            "--config",
            config,
            "--redis",
            redis_url,
            "--port",
            "0",
            "--quiet",
            cwd=tmp_path,
            env=ENV,
            name="serve",
        )
        only_hubspot = Service(
            "worker",
            "--config",
            config,
            "--redis",
            redis_url,
            "--integration",
            "hubspot",
            "--consumer",
            "h1",
            cwd=tmp_path,
            env=ENV,
            name="h1",
        )
        try:
            url = serve.url
            only_hubspot.wait_for_notice(r"^worker h1 consuming hubspot$")
            assert post(url, "/v1/batch", {"batch": [identify(1, "d"), lead(1, "d")]}, write_key_headers())[0] == 200
            until(lambda: len(published(redis_url, "hubspot")) == 2, what="HubSpot's two outcomes")
            only_hubspot.signal(signal.SIGTERM)
            assert only_hubspot.wait(30) == 0
            # Nobody consumed for Outreach: its lag is the two events, held in the stream.
            metrics = subprocess.run(["curl", "-s", f"{url}/metrics"], capture_output=True, text=True).stdout
        finally:
            serve.stop()
            only_hubspot.stop()
        assert published(redis_url, "outreach") == []
        assert 'signal_integration_lag_events{integration="outreach"} 2.0' in metrics
        assert 'signal_integration_lag_events{integration="hubspot"} 0.0' in metrics
        assert 'signal_dead_letters{integration="hubspot"} 1.0' in metrics
        assert [o["outcome"] for o in published(redis_url, "hubspot")] == ["dropped", "dead_lettered"]
        listed = cli(tmp_path, "dlq", "list", "--config", config, "--integration", "hubspot", "--redis", redis_url)
        assert listed.returncode == 0 and "1 dead letter(s) for hubspot" in listed.stderr, listed.stderr
        assert json.loads(listed.stdout)["integration"] == "hubspot"
        hubspot.admin("POST", "faults", {"fault_mix": {}})
        replayed = cli(tmp_path, "dlq", "replay", "--config", config, "--integration", "hubspot", "--redis", redis_url)
        assert replayed.returncode == 0 and "delivered 1, 0 left" in replayed.stderr, replayed.stderr
        assert hubspot.emails() == ["d1@service.test"]
        assert prospect_emails(outreach) == []
        bad = cli(tmp_path, "worker", "--config", config, "--redis", redis_url, "--integration", "salesloft")
        assert bad.returncode == 2 and "--integration salesloft: no such integration" in bad.stderr
