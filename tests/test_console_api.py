"""The console's JSON API over both backends: what the workers, a run and a ``dlq replay`` recorded.

Real processes throughout: ``serve --redis --console`` with a ``worker``
delivering to the Outreach sandbox; a ``run`` and a ``dlq replay`` on a
state directory read by ``signal-engine console``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from redis_server import needs_redis, redis_server, redis_url  # noqa: F401 - fixtures
from service_helpers import SERVICE_ENV, Service, post_signed, until
from test_delivery_sandbox import ThreadedSandbox, cli, fast_preset, unique_credentials, write_settings

CONSENT = {"consent": {"canonical": {"marketing": True}}}


def lead(tag: str) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Demo Requested",
        "messageId": f"{tag}-lead",
        "userId": f"{tag}-user",
        "context": CONSENT,
        "traits": {"email": f"{tag}@example.com", "firstName": "Api", "lastName": "Test"},
    }


def get(url: str, token: str | None = None, extra: dict[str, str] | None = None) -> Any:
    headers = {**({"Authorization": f"Bearer {token}"} if token else {}), **(extra or {})}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as answer:
        return json.loads(answer.read())


def post(url: str, body: Any, token: str) -> tuple[int, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@needs_redis
def test_workers_on_redis_record_what_the_console_of_serve_shows(tmp_path: Path, redis_url: str) -> None:
    creds = unique_credentials()
    with ThreadedSandbox(**creds) as sandbox:
        preset = fast_preset(tmp_path)
        settings = write_settings(tmp_path / "settings.yaml", sandbox.base_url, creds)
        serve = Service(
            "serve",
            preset,
            "--settings",
            settings,
            "--redis",
            redis_url,
            "--port",
            "0",
            "--quiet",
            "--console",
            cwd=tmp_path,
            name="serve",
        )
        worker = Service(
            "worker", preset, "--settings", settings, "--redis", redis_url, "--consumer", "w1", cwd=tmp_path, name="w1"
        )
        try:
            url = serve.url
            for tag in ("alpha", "beta"):
                assert post_signed(url, lead(tag))[0] == 200
            assert post_signed(url, {"type": "page", "messageId": "p-1", "anonymousId": "a"})[0] == 200
            api = url + "/console/api"
            until(lambda: len(get(api + "/events")["events"]) == 3, what="three recorded events")
            events = get(api + "/events")["events"]
            assert {e["messageId"]: e["outcome"] for e in events} == {
                "alpha-lead": "delivered",
                "beta-lead": "delivered",
                "p-1": "dropped",
            }
            assert {e["integration"] for e in events} == {"lead-capture-fast"}
            found = get(api + "/events?q=beta%40example.com")["events"]
            assert [e["messageId"] for e in found] == ["beta-lead"]
            one = get(api + "/events/" + urllib.request.quote(found[0]["id"], safe=""))
            assert one["outcome_record"]["response"]["status"] == 201
            assert one["outcome_record"]["request"]["headers"]["Authorization"] == "Bearer ***"
            assert one["explain"]["decided_by"] == "request"
            figures = {f["integration"]: f for f in get(api + "/integrations")["integrations"]}
            hour = figures["lead-capture-fast"]["windows"]["last hour"]
            assert (hour["delivered"], hour["dropped"], hour["failed"], hour["dead_lettered"]) == (2, 1, 0, 0)
            text = json.dumps([get(api + "/events"), one, figures])
            for secret in (creds["client_secret"], creds["refresh_token"], *sandbox.issued):
                assert secret not in text

            # The lag is the integration's consumer group's: nothing left once the worker is done, then one
            # event accepted with no worker running.
            def lag() -> Any:
                return get(api + "/integrations")["integrations"][0]["lag"]

            until(lambda: lag() == 0, what="no lag once the worker is done")
            worker.stop()
            assert post_signed(url, lead("gamma"))[0] == 200
            until(lambda: lag() == 1, what="a lag of one event with no worker")
        finally:
            worker.stop()
            serve.stop()


def test_a_dlq_replay_is_recorded_and_the_api_replays_with_a_token(tmp_path: Path) -> None:
    creds = unique_credentials()
    with ThreadedSandbox(faults=["500"] * 10, **creds) as sandbox:
        preset = fast_preset(tmp_path)
        settings = write_settings(tmp_path / "settings.yaml", sandbox.base_url, creds)
        state = tmp_path / "state"
        events = tmp_path / "events.ndjson"
        events.write_text(json.dumps(lead("first")) + "\n")
        assert cli("run", preset, "--events", events, "--settings", settings, "--state", state).returncode == 1
        events.write_text(json.dumps(lead("second")) + "\n")
        assert cli("run", preset, "--events", events, "--settings", settings, "--state", state).returncode == 1
        token = "api-token-" + os.urandom(6).hex()
        console = Service(
            "console",
            "--state",
            state,
            "--port",
            "0",
            "--preset",
            preset,
            "--settings",
            settings,
            cwd=tmp_path,
            name="console",
            env={"SIGNAL_CONSOLE_TOKEN": token},
        )
        try:
            api = console.wait_for_line(r"^console on (http://\S+)$").group(1) + "api"
            letters = get(api + "/dead-letters", token)["dead_letters"]
            assert [(l["messageId"], l["integration"], l["cause"]) for l in letters] == [
                ("first-lead", "lead-capture-fast", "http_500"),
                ("second-lead", "lead-capture-fast", "http_500"),
            ]
            status, answer = post(
                api + "/dead-letters/replay", {"integration": "lead-capture-fast", "ids": [letters[0]["id"]]}, token
            )
            assert status == 200, answer
            assert [(r["messageId"], r["outcome"]) for r in answer["results"]] == [("first-lead", "delivered")]
            assert [l["messageId"] for l in get(api + "/dead-letters", token)["dead_letters"]] == ["second-lead"]
            status, answer = post(api + "/dead-letters/replay", {"integration": "nobody", "ids": None}, token)
            assert status == 409 and "--preset" in answer["error"]
            # "Replay all" under a cause filter replays only the letters of that cause: here none.
            console_base = api[: -len("api")]
            request = urllib.request.Request(
                console_base + "dead-letters/replay",
                method="POST",
                data=b"integration=lead-capture-fast&mode=all&cause=http_418",
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/x-www-form-urlencoded"},
            )
            with urllib.request.urlopen(request, timeout=30) as answer:
                assert "No http_418 letters are left" in answer.read().decode()
            assert [l["messageId"] for l in get(api + "/dead-letters", token)["dead_letters"]] == ["second-lead"]
        finally:
            console.stop()
        # The CLI's replay is recorded the same way, marked as a replay, with the event its first outcome kept.
        replay = cli("dlq", "replay", preset, "--settings", settings, "--state", state)
        assert replay.returncode == 0, replay.stderr
    console = Service("console", "--state", state, "--port", "0", cwd=tmp_path, name="console2")
    try:
        api = console.wait_for_line(r"^console on (http://\S+)$").group(1) + "api"
        rows = get(api + "/events")["events"]
        assert [(r["messageId"], r["outcome"], r["replay"]) for r in rows] == [
            ("second-lead", "delivered", True),
            ("first-lead", "delivered", True),
            ("second-lead", "dead_lettered", False),
            ("first-lead", "dead_lettered", False),
        ]
        assert rows[0]["email"] == "second@example.com" and rows[0]["userId"] == "second-user"
        assert get(api + "/dead-letters")["dead_letters"] == []
    finally:
        console.stop()


def test_serve_console_refuses_a_public_host_without_a_token(tmp_path: Path) -> None:
    env = {**{k: v for k, v in os.environ.items() if k != "SIGNAL_CONSOLE_TOKEN"}, **SERVICE_ENV}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "serve",
            "outreach/lead-capture",
            "--state",
            str(tmp_path / "state"),
            "--host",
            "0.0.0.0",
            "--port",
            "0",
            "--console",
            "--redis",
            "redis://127.0.0.1:1/0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 2
    assert "SIGNAL_CONSOLE_TOKEN" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("command", ["run", "serve", "worker", "dlq replay"])
def test_every_command_that_delivers_can_keep_no_record(command: str) -> None:
    proc = cli(*command.split(), "--help")
    assert "--no-record" in proc.stdout


def test_sign_in_is_rate_limited_and_a_form_needs_its_csrf_token(tmp_path: Path) -> None:
    from urllib.parse import urlencode

    from engine.state.sqlite import SqliteState

    SqliteState(tmp_path / "state").close()
    token = "console-token-" + os.urandom(6).hex()
    console = Service(
        "console",
        "--state",
        tmp_path / "state",
        "--port",
        "0",
        cwd=tmp_path,
        name="console",
        env={"SIGNAL_CONSOLE_TOKEN": token},
    )

    def form(path: str, fields: dict[str, str], headers: dict[str, str] | None = None) -> tuple[int, Any]:
        request = urllib.request.Request(
            base + path,
            data=urlencode(fields).encode(),
            method="POST",
            headers={"Content-Type": "application/x-www-form-urlencoded", **(headers or {})},
        )
        opener = urllib.request.build_opener(NoRedirect)
        try:
            with opener.open(request, timeout=10) as answer:
                return answer.status, answer.headers
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers

    try:
        base = console.wait_for_line(r"^console on (http://\S+)$").group(1)
        status, headers = form("login", {"token": token})
        assert status == 303 and headers["Location"] == "/console/events"
        cookie = headers["Set-Cookie"].split(";")[0]
        assert token not in cookie
        assert [form("login", {"token": "wrong"})[0] for _ in range(5)] == [401] * 5
        assert form("login", {"token": token})[0] == 429  # even the right token waits out the minute
        # Signed in, a replay form without the page's CSRF token is refused.
        assert form("dead-letters/replay", {"integration": "x", "mode": "all"}, {"Cookie": cookie})[0] == 403
        assert get(base + "api/events", None, {"Cookie": cookie}) == {"events": []}
    finally:
        console.stop()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None
