"""The local Salesforce fake behaves as docs/vendors/salesforce.md says Salesforce does, and the
salesforce/leads preset delivers to it end to end: the token answer's instance_url, the query by
email, update-or-create, a dead letter replayed once. Real loopback HTTP and real CLI processes.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote

from engine import outcome as oc
from engine.sandbox import salesforce
from sandbox_helpers import Running, running

REPO = Path(__file__).resolve().parents[1]
CLIENT = {"client_id": "sandbox-client", "client_secret": "sandbox-secret"}
API = "/services/data/v60.0"
LEAD = {"FirstName": "Jane", "LastName": "Doe", "Email": "jane.doe@acme.com", "Company": "Acme Inc"}


def run(coro: Any) -> None:
    asyncio.run(coro)


async def session(fake: Running) -> dict[str, str]:
    status, body, _ = await fake.call(
        "POST",
        "/services/oauth2/token",
        form={"grant_type": "refresh_token", "refresh_token": "sandbox-refresh-token", **CLIENT},
    )
    assert status == 200, body
    return {"Authorization": f"Bearer {body['access_token']}"}


def soql(email_literal: str) -> str:
    return f"{API}/query?q=" + quote(f"SELECT Id FROM Lead WHERE Email = '{email_literal}' AND IsConverted = false")


def test_the_token_answer_names_the_instance_and_has_no_expiry_or_new_refresh_token() -> None:
    async def scenario() -> None:
        async with running(salesforce) as fake:
            status, body, _ = await fake.call(
                "POST",
                "/services/oauth2/token",
                form={"grant_type": "refresh_token", "refresh_token": "sandbox-refresh-token", **CLIENT},
            )
            assert status == 200
            assert body["instance_url"] == fake.base and body["token_type"] == "Bearer"
            assert "expires_in" not in body and "refresh_token" not in body
            status, body, _ = await fake.call(
                "POST",
                "/services/oauth2/token",
                form={"grant_type": "refresh_token", "refresh_token": "revoked", **CLIENT},
            )
            assert (status, body["error"]) == (400, "invalid_grant")
            status, body, _ = await fake.call(
                "POST",
                "/services/oauth2/token",
                form={
                    "grant_type": "refresh_token",
                    "client_id": "other",
                    "client_secret": "x",
                    "refresh_token": "sandbox-refresh-token",
                },
            )
            assert (status, body["error"]) == (400, "invalid_client_id")

    run(scenario())


def test_errors_are_lists_of_error_codes_and_every_answer_reports_api_usage() -> None:
    async def scenario() -> None:
        async with running(salesforce, daily_limit=3) as fake:
            status, body, headers = await fake.call("GET", soql("a@b.co"), headers={"Authorization": "Bearer nope"})
            assert (status, body[0]["errorCode"]) == (401, "INVALID_SESSION_ID")
            assert headers["Sforce-Limit-Info"] == "api-usage=1/3"
            auth = await session(fake)
            status, body, _ = await fake.call(
                "POST", f"{API}/sobjects/Lead", headers=auth, json_body={"Email": "a@b.co"}
            )
            assert (status, body[0]["errorCode"], body[0]["fields"]) == (
                400,
                "REQUIRED_FIELD_MISSING",
                ["LastName", "Company"],
            )
            status, body, _ = await fake.call(
                "POST", f"{API}/sobjects/Lead", headers=auth, json_body={**LEAD, "Tags": "x"}
            )
            assert (status, body[0]["errorCode"]) == (400, "INVALID_FIELD")
            status, body, headers = await fake.call("POST", f"{API}/sobjects/Lead", headers=auth, json_body=LEAD)
            assert (status, body[0]["errorCode"]) == (403, "REQUEST_LIMIT_EXCEEDED")
            assert headers["Sforce-Limit-Info"] == "api-usage=3/3"

    run(scenario())


def test_create_query_patch_and_an_escaped_literal_that_cannot_widen_the_query() -> None:
    async def scenario() -> None:
        async with running(salesforce) as fake:
            auth = await session(fake)
            status, created, _ = await fake.call("POST", f"{API}/sobjects/Lead", headers=auth, json_body=LEAD)
            assert status == 201 and created["success"] is True and created["id"].startswith("00Q")
            status, body, _ = await fake.call("GET", soql("JANE.DOE@acme.com"), headers=auth)
            assert (status, body["totalSize"], body["records"][0]["Id"]) == (200, 1, created["id"])
            # A quote escaped as \' stays inside the literal: it matches nothing rather than every Lead.
            status, body, _ = await fake.call("GET", soql("x\\' OR Email != \\'"), headers=auth)
            assert (status, body["totalSize"]) == (200, 0)
            status, body, _ = await fake.call("GET", soql("x' OR Email != '"), headers=auth)
            assert (status, body[0]["errorCode"]) == (400, "MALFORMED_QUERY")
            status, body, _ = await fake.call(
                "PATCH", f"{API}/sobjects/Lead/{created['id']}", headers=auth, json_body={"Title": "CEO"}
            )
            assert (status, body) == (204, None)
            assert fake.state.leads[created["id"]]["Title"] == "CEO"
            status, body, _ = await fake.call(
                "PATCH", f"{API}/sobjects/Lead/00Q000000000099AAA", headers=auth, json_body={"Title": "CEO"}
            )
            assert (status, body[0]["errorCode"]) == (404, "NOT_FOUND")

    run(scenario())


def test_a_blocking_duplicate_rule_answers_duplicates_detected() -> None:
    async def scenario() -> None:
        async with running(salesforce, duplicate_rule="block") as fake:
            auth = await session(fake)
            status, _, _ = await fake.call("POST", f"{API}/sobjects/Lead", headers=auth, json_body=LEAD)
            assert status == 201
            status, body, _ = await fake.call("POST", f"{API}/sobjects/Lead", headers=auth, json_body=LEAD)
            assert (status, body[0]["errorCode"]) == (400, "DUPLICATES_DETECTED")
            assert body[0]["duplicateResult"]["allowSave"] is False

    run(scenario())


# --------------------------------------------------------------------------
# The preset against the fake, through the command line
# --------------------------------------------------------------------------


class _Sandbox:
    """The fake on its own loop in a thread, so CLI subprocesses can reach it."""

    def __init__(self, **config: Any) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.base = ""
        self.state: Any = None

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        runner, self.base = self.loop.run_until_complete(
            salesforce.start_sandbox(salesforce.SandboxConfig(**self.config), port=0)
        )
        self.state = runner.app[salesforce.STATE_KEY]
        self.ready.set()
        try:
            self.loop.run_forever()
        finally:
            self.loop.run_until_complete(runner.cleanup())
            self.loop.close()

    def __enter__(self) -> _Sandbox:
        self.thread.start()
        assert self.ready.wait(15), "sandbox did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(15)

    def read(self, what: Any) -> Any:
        async def call() -> Any:
            return what(self.state)

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(15)


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def _settings(tmp_path: Path, base: str) -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(
        f"client_id: sandbox-client\nclient_secret: sandbox-secret\n"
        f"refresh_token: sandbox-refresh-token\nlogin_url: {base}\n",
        encoding="utf-8",
    )
    return path


def _outcomes(proc: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_the_example_stream_creates_five_leads_and_a_repeat_updates_them(tmp_path: Path) -> None:
    with _Sandbox() as fake:
        settings = _settings(tmp_path, fake.base)
        first = _cli(
            "run",
            "salesforce/leads",
            "--settings",
            settings,
            "--events",
            "examples/lead-capture.ndjson",
            "--state",
            tmp_path / "one",
        )
        assert first.returncode == 0, first.stderr
        sent = [o for o in _outcomes(first) if o["outcome"] != oc.DROPPED]
        assert [o["outcome"] for o in sent] == [oc.DELIVERED] * 5
        assert all(o["detail"] == "flow delivered: find, create (skipped: update)" for o in sent)
        assert fake.read(lambda s: (s.creates, s.updates, s.mints)) == (5, 0, 1)
        # Another run (its own state) sends the same leads again: each is found and patched, none created.
        again = _cli(
            "run",
            "salesforce/leads",
            "--settings",
            settings,
            "--events",
            "examples/lead-capture.ndjson",
            "--state",
            tmp_path / "two",
        )
        assert again.returncode == 0, again.stderr
        sent = [o for o in _outcomes(again) if o["outcome"] != oc.DROPPED]
        assert all(o["detail"] == "flow delivered: find, update (skipped: create)" for o in sent), sent
        assert fake.read(lambda s: (s.creates, s.updates, len(s.leads))) == (5, 5, 5)
        assert "sandbox-secret" not in first.stdout + first.stderr + again.stdout + again.stderr


def test_a_lead_dead_lettered_by_503s_is_replayed_and_delivered_once(tmp_path: Path) -> None:
    with _Sandbox(faults=[503] * 5) as fake:
        settings = _settings(tmp_path, fake.base)
        events = tmp_path / "one.ndjson"
        events.write_text(
            json.dumps(
                {
                    "type": "track",
                    "event": "Demo Requested",
                    "messageId": "dlq-1",
                    "userId": "u-1",
                    "traits": {"email": "jane.doe@acme.com", "lastName": "Doe", "company": "Acme"},
                    "context": {"consent": {"canonical": {"marketing": True}}},
                }
            )
            + "\n",
            encoding="utf-8",
        )
        state = tmp_path / "state"
        first = _cli("run", "salesforce/leads", "--settings", settings, "--events", events, "--state", state)
        (outcome,) = _outcomes(first)
        assert (outcome["outcome"], outcome["cause"]) == (oc.DEAD_LETTERED, "http_503"), outcome
        assert "flow step 'find'" in outcome["detail"]
        assert fake.read(lambda s: s.creates) == 0
        replay = _cli("dlq", "replay", "salesforce/leads", "--settings", settings, "--state", state)
        assert replay.returncode == 0, replay.stderr
        (replayed,) = _outcomes(replay)
        assert replayed["outcome"] == oc.DELIVERED, replayed
        again = _cli("dlq", "replay", "salesforce/leads", "--settings", settings, "--state", state)
        assert again.returncode == 0 and again.stdout == ""
        assert fake.read(lambda s: (s.creates, s.updates, len(s.leads))) == (1, 0, 1)


def test_an_expired_session_is_refreshed_with_the_same_refresh_token(tmp_path: Path) -> None:
    with _Sandbox() as fake:
        settings = _settings(tmp_path, fake.base)
        state = tmp_path / "state"
        events = tmp_path / "events.ndjson"
        lines = [
            {
                "type": "track",
                "event": "Signed Up",
                "messageId": f"s-{i}",
                "userId": f"u-{i}",
                "traits": {"email": f"p{i}@example.org", "name": f"P {i}"},
                "context": {"consent": {"canonical": {"marketing": True}}},
            }
            for i in range(2)
        ]
        events.write_text(json.dumps(lines[0]) + "\n", encoding="utf-8")
        assert (
            _cli("run", "salesforce/leads", "--settings", settings, "--events", events, "--state", state).returncode
            == 0
        )
        fake.read(lambda s: s.expire_access_tokens())
        events.write_text(json.dumps(lines[1]) + "\n", encoding="utf-8")
        second = _cli("run", "salesforce/leads", "--settings", settings, "--events", events, "--state", state)
        assert second.returncode == 0, second.stderr
        assert [o["outcome"] for o in _outcomes(second)] == [oc.DELIVERED]
        assert fake.read(lambda s: (s.mints, s.creates, s.refresh_tokens)) == (2, 2, {"sandbox-refresh-token"})
