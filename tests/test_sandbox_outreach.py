"""Tests for the local Outreach sandbox, over real loopback HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from engine.sandbox import outreach
from engine.sandbox.outreach import STATE_KEY, SandboxConfig, SandboxState, parse_fault, start_sandbox

JSONAPI = "application/vnd.api+json"
REPO_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


class Sandbox:
    """A running sandbox plus a client session pointed at it."""

    def __init__(self, runner: web.AppRunner, base: str, session: aiohttp.ClientSession) -> None:
        self.runner = runner
        self.base = base
        self.session = session

    @property
    def state(self) -> SandboxState:
        return self.runner.app[STATE_KEY]

    def shift_clock(self, seconds: float) -> None:
        """Move the sandbox's notion of time forward without sleeping."""
        self.state.clock = lambda: time.time() + seconds

    async def refresh(
        self, token: str | None = None, *, as_json: bool = False, client_secret: str | None = None
    ) -> tuple[int, dict[str, Any], Any]:
        config = self.state.config
        params = {
            "grant_type": "refresh_token",
            "client_id": config.client_id,
            "client_secret": client_secret if client_secret is not None else config.client_secret,
            "refresh_token": token if token is not None else config.refresh_token,
        }
        kwargs: dict[str, Any] = {"json": params} if as_json else {"data": params}
        async with self.session.post(f"{self.base}/oauth/token", **kwargs) as resp:
            return resp.status, await resp.json(), resp.headers

    async def access_token(self) -> str:
        status, body, _ = await self.refresh()
        assert status == 200, body
        return body["access_token"]

    async def api(
        self, method: str, path: str, token: str | None, body: Any = None, content_type: str = JSONAPI
    ) -> tuple[int, Any, Any]:
        headers = {"Content-Type": content_type}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = json.dumps(body) if body is not None else None
        async with self.session.request(method, f"{self.base}{path}", data=data, headers=headers) as resp:
            text = await resp.text()
            return resp.status, (json.loads(text) if text else None), resp.headers

    async def create(self, token: str, attributes: dict[str, Any]) -> tuple[int, Any, Any]:
        document = {"data": {"type": "prospect", "attributes": attributes}}
        return await self.api("POST", "/api/v2/prospects", token, document)

    async def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.session.request(method, f"{self.base}/_sandbox/{path}", json=body) as resp:
            return resp.status, await resp.json()


@asynccontextmanager
async def sandbox(**overrides: Any) -> AsyncIterator[Sandbox]:
    runner, base = await start_sandbox(SandboxConfig(**overrides), port=0)
    try:
        async with aiohttp.ClientSession() as session:
            yield Sandbox(runner, base, session)
    finally:
        await runner.cleanup()


# --------------------------------------------------------------------------
# OAuth
# --------------------------------------------------------------------------


def test_start_sandbox_reports_real_port() -> None:
    async def scenario() -> None:
        async with sandbox() as sb:
            assert sb.base.startswith("http://127.0.0.1:")
            assert int(sb.base.rsplit(":", 1)[1]) > 0

    asyncio.run(scenario())


def test_refresh_rotates_and_old_refresh_token_is_invalid_grant() -> None:
    async def scenario() -> None:
        async with sandbox(mint_limit=0, token_ttl=1234) as sb:
            before = int(time.time())
            status, body, _ = await sb.refresh()
            assert status == 200
            assert body["token_type"] == "bearer"
            assert body["expires_in"] == 1234
            assert body["scope"] == "prospects.read prospects.write"
            assert body["refresh_token"] != "sandbox-refresh-token"
            assert before <= body["created_at"] <= int(time.time())
            assert body["access_token"]

            status, again, _ = await sb.refresh("sandbox-refresh-token")
            assert status == 400
            assert again["error"] == "invalid_grant"
            assert again["error_description"]

            status, rotated, _ = await sb.refresh(body["refresh_token"], as_json=True)
            assert status == 200
            assert rotated["refresh_token"] not in (body["refresh_token"], "sandbox-refresh-token")
            assert sb.state.mints == 2
            _, state = await sb.admin("GET", "state")
            assert state["mints"] == 2
            assert state["token_statuses"] == [200, 400, 200]

    asyncio.run(scenario())


def test_wrong_client_secret_is_invalid_client_and_keeps_token() -> None:
    async def scenario() -> None:
        async with sandbox() as sb:
            status, body, _ = await sb.refresh(client_secret="nope")
            assert (status, body["error"]) == (401, "invalid_client")
            status, _, _ = await sb.refresh()
            assert status == 200

    asyncio.run(scenario())


def test_mint_throttle_answers_429_without_burning_refresh_token() -> None:
    async def scenario() -> None:
        async with sandbox() as sb:
            status, first, _ = await sb.refresh()
            assert status == 200
            status, body, headers = await sb.refresh(first["refresh_token"])
            assert status == 429
            assert 1 <= int(headers["Retry-After"]) <= 60
            assert sb.state.mints == 1

            sb.shift_clock(61)
            status, _, _ = await sb.refresh(first["refresh_token"])
            assert status == 200
            assert sb.state.mints == 2

    asyncio.run(scenario())


# --------------------------------------------------------------------------
# auth and media type
# --------------------------------------------------------------------------


def test_api_requires_a_current_bearer_token() -> None:
    async def scenario() -> None:
        async with sandbox() as sb:
            status, body, _ = await sb.api("GET", "/api/v2/prospects", None)
            assert status == 401
            assert body["errors"][0]["id"] == "unauthorized"
            status, _, _ = await sb.api("GET", "/api/v2/prospects", "not-a-token")
            assert status == 401
            token = await sb.access_token()
            status, _, _ = await sb.api("GET", "/api/v2/prospects", token)
            assert status == 200

    asyncio.run(scenario())


def test_expired_access_token_is_rejected() -> None:
    async def scenario() -> None:
        async with sandbox(token_ttl=60) as sb:
            token = await sb.access_token()
            sb.shift_clock(61)
            status, _, _ = await sb.api("GET", "/api/v2/prospects", token)
            assert status == 401

    asyncio.run(scenario())


def test_admin_expire_tokens_invalidates_access_tokens() -> None:
    async def scenario() -> None:
        async with sandbox() as sb:
            token = await sb.access_token()
            status, body = await sb.admin("POST", "expire-tokens")
            assert (status, body) == (200, {"expired": 1})
            status, _, _ = await sb.api("GET", "/api/v2/prospects", token)
            assert status == 401

    asyncio.run(scenario())


def test_wrong_media_type_is_415_and_creates_nothing() -> None:
    async def scenario() -> None:
        async with sandbox() as sb:
            token = await sb.access_token()
            document = {"data": {"type": "prospect", "attributes": {"emails": ["a@example.com"]}}}
            status, body, _ = await sb.api("POST", "/api/v2/prospects", token, document, "application/json")
            assert status == 415
            error = body["errors"][0]
            assert (error["id"], error["title"]) == ("unsupportedMediaType", "Unsupported Media Type")
            assert "application/vnd.api+json" in error["details"]
            assert sb.state.creates == 0

            status, _, _ = await sb.api("POST", "/api/v2/prospects", token, document, f"{JSONAPI}; charset=utf-8")
            assert status == 201

    asyncio.run(scenario())


# --------------------------------------------------------------------------
# prospects
# --------------------------------------------------------------------------


def test_create_returns_201_with_resource_and_get_finds_it() -> None:
    async def scenario() -> None:
        async with sandbox() as sb:
            token = await sb.access_token()
            attributes = {"emails": ["ada@example.com"], "firstName": "Ada", "tags": ["lead"]}
            status, body, headers = await sb.create(token, attributes)
            assert status == 201
            assert headers["Content-Type"].startswith(JSONAPI)
            data = body["data"]
            assert data["type"] == "prospect"
            assert isinstance(data["id"], int)
            assert {k: data["attributes"][k] for k in attributes} == attributes
            assert data["attributes"]["createdAt"].endswith("Z")
            assert data["attributes"]["updatedAt"] == data["attributes"]["createdAt"]
            assert data["links"]["self"] == f"{sb.base}/api/v2/prospects/{data['id']}"

            status, fetched, _ = await sb.api("GET", f"/api/v2/prospects/{data['id']}", token)
            assert status == 200
            assert fetched["data"]["attributes"] == data["attributes"]

            status, missing, _ = await sb.api("GET", "/api/v2/prospects/999", token)
            assert status == 404
            assert missing["errors"][0]["id"] == "resourceNotFound"
            _, state = await sb.admin("GET", "state")
            assert state["creates"] == 1
            assert state["prospects"][0]["attributes"]["firstName"] == "Ada"

    asyncio.run(scenario())


def test_duplicate_email_is_422_with_outreach_detail() -> None:
    async def scenario() -> None:
        async with sandbox() as sb:
            token = await sb.access_token()
            status, _, _ = await sb.create(token, {"emails": ["ada@example.com"]})
            assert status == 201
            status, body, _ = await sb.create(token, {"emails": ["other@example.com", "ADA@Example.com"]})
            assert status == 422
            assert body == {
                "errors": [
                    {
                        "id": "validationError",
                        "title": "Validation Error",
                        "detail": "Contacts email hash has already been taken.",
                        "source": {"pointer": "/data"},
                    }
                ]
            }
            assert sb.state.creates == 1

    asyncio.run(scenario())


def test_unknown_attribute_is_422_with_pointer() -> None:
    async def scenario() -> None:
        async with sandbox() as sb:
            token = await sb.access_token()
            status, body, _ = await sb.create(token, {"emails": ["a@example.com"], "favouriteColour": "blue"})
            assert status == 422
            error = body["errors"][0]
            assert error["id"] == "validationError"
            assert error["source"] == {"pointer": "/data/attributes/favouriteColour"}
            assert sb.state.creates == 0

    asyncio.run(scenario())


def test_value_longer_than_max_length_is_422() -> None:
    async def scenario() -> None:
        async with sandbox() as sb:
            token = await sb.access_token()
            status, body, _ = await sb.create(token, {"emails": ["a@example.com"], "firstName": "x" * 256})
            assert status == 422
            assert body["errors"][0]["source"]["pointer"] == "/data/attributes/firstName"
            status, _, _ = await sb.create(
                token, {"emails": ["a@example.com"], "firstName": "x" * 255, "company": "c" * 5000}
            )
            assert status == 201

    asyncio.run(scenario())


def test_wrong_attribute_type_is_422_but_null_is_accepted() -> None:
    async def scenario() -> None:
        async with sandbox() as sb:
            token = await sb.access_token()
            status, body, _ = await sb.create(token, {"emails": "a@example.com"})
            assert status == 422
            assert body["errors"][0]["source"]["pointer"] == "/data/attributes/emails"
            status, _, _ = await sb.create(token, {"emails": ["a@example.com"], "title": None})
            assert status == 201

    asyncio.run(scenario())


def test_fallback_rules_used_when_default_schema_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(outreach, "_default_schema_path", lambda: tmp_path / "missing.json")
    rules = outreach.load_attribute_rules(None)
    assert set(rules) == {
        "emails",
        "firstName",
        "lastName",
        "name",
        "title",
        "occupation",
        "company",
        "mobilePhones",
        "addressCity",
        "addressState",
        "addressCountry",
        "tags",
    }
    assert rules["firstName"].max_length == 255
    assert rules["company"].max_length is None
    with pytest.raises(FileNotFoundError):
        outreach.load_attribute_rules(tmp_path / "missing.json")


def test_schema_path_from_config_sets_attributes_and_limits(tmp_path: Path) -> None:
    schema = {
        "properties": {
            "data": {
                "properties": {
                    "attributes": {
                        "properties": {
                            "emails": {"type": "array", "items": {"type": "string"}},
                            "firstName": {"type": "string", "maxLength": 3},
                        }
                    }
                }
            }
        }
    }
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema), encoding="utf-8")

    async def scenario() -> None:
        async with sandbox(schema_path=path) as sb:
            token = await sb.access_token()
            status, body, _ = await sb.create(token, {"emails": ["a@example.com"], "firstName": "Adam"})
            assert (status, body["errors"][0]["source"]["pointer"]) == (422, "/data/attributes/firstName")
            status, body, _ = await sb.create(token, {"emails": ["a@example.com"], "lastName": "L"})
            assert (status, body["errors"][0]["source"]["pointer"]) == (422, "/data/attributes/lastName")
            status, _, _ = await sb.create(token, {"emails": ["a@example.com"], "firstName": "Ada"})
            assert status == 201

    asyncio.run(scenario())


def test_search_by_email_is_case_insensitive() -> None:
    async def scenario() -> None:
        async with sandbox() as sb:
            token = await sb.access_token()
            await sb.create(token, {"emails": ["ada@example.com"], "firstName": "Ada"})
            await sb.create(token, {"emails": ["bob@example.com"], "firstName": "Bob"})
            status, body, _ = await sb.api(
                "GET", "/api/v2/prospects?filter[emails]=BOB@example.com&page[size]=1", token
            )
            assert status == 200
            assert [p["attributes"]["firstName"] for p in body["data"]] == ["Bob"]
            assert body["meta"] == {"count": 1}
            status, body, _ = await sb.api("GET", "/api/v2/prospects?filter[emails]=nobody@example.com", token)
            assert (status, body["data"], body["meta"]["count"]) == (200, [], 0)
            status, _, _ = await sb.api("GET", "/api/v2/prospects?filter[email]=ada@example.com", token)
            assert status == 400

    asyncio.run(scenario())


def test_patch_changes_only_sent_attributes_and_replaces_arrays() -> None:
    async def scenario() -> None:
        async with sandbox() as sb:
            token = await sb.access_token()
            _, created, _ = await sb.create(
                token, {"emails": ["ada@example.com"], "firstName": "Ada", "title": "Engineer", "tags": ["a", "b"]}
            )
            prospect_id = created["data"]["id"]
            sb.shift_clock(5)
            patch = {"data": {"type": "prospect", "id": prospect_id, "attributes": {"tags": ["c"], "title": "CTO"}}}
            status, body, _ = await sb.api("PATCH", f"/api/v2/prospects/{prospect_id}", token, patch)
            assert status == 200
            attributes = body["data"]["attributes"]
            assert attributes["tags"] == ["c"]
            assert attributes["title"] == "CTO"
            assert attributes["firstName"] == "Ada"
            assert attributes["emails"] == ["ada@example.com"]
            assert attributes["updatedAt"] > attributes["createdAt"]

            _, fetched, _ = await sb.api("GET", f"/api/v2/prospects/{prospect_id}", token)
            assert fetched["data"]["attributes"]["tags"] == ["c"]

            patch["data"]["id"] = 999
            status, body, _ = await sb.api("PATCH", "/api/v2/prospects/999", token, patch)
            assert status == 404
            assert body["errors"][0]["id"] == "resourceNotFound"

    asyncio.run(scenario())


def test_patch_cannot_take_another_prospects_email() -> None:
    async def scenario() -> None:
        async with sandbox() as sb:
            token = await sb.access_token()
            await sb.create(token, {"emails": ["ada@example.com"]})
            _, bob, _ = await sb.create(token, {"emails": ["bob@example.com"]})
            bob_id = bob["data"]["id"]
            patch = {"data": {"type": "prospect", "id": bob_id, "attributes": {"emails": ["Ada@example.com"]}}}
            status, body, _ = await sb.api("PATCH", f"/api/v2/prospects/{bob_id}", token, patch)
            assert status == 422
            assert body["errors"][0]["detail"] == "Contacts email hash has already been taken."
            patch["data"]["attributes"]["emails"] = ["BOB@example.com", "bob2@example.com"]
            status, _, _ = await sb.api("PATCH", f"/api/v2/prospects/{bob_id}", token, patch)
            assert status == 200

    asyncio.run(scenario())


def test_an_email_given_up_by_a_patch_is_free_and_found_on_its_new_holder() -> None:
    async def scenario() -> None:
        async with sandbox() as sb:
            token = await sb.access_token()
            _, bob, _ = await sb.create(token, {"emails": ["bob@example.com"]})
            bob_id = bob["data"]["id"]
            patch = {"data": {"type": "prospect", "id": bob_id, "attributes": {"emails": ["robert@example.com"]}}}
            assert (await sb.api("PATCH", f"/api/v2/prospects/{bob_id}", token, patch))[0] == 200
            status, other, _ = await sb.create(token, {"emails": ["Bob@example.com"]})
            assert status == 201
            _, found, _ = await sb.api("GET", "/api/v2/prospects?filter[emails]=bob@example.com", token)
            assert [p["id"] for p in found["data"]] == [other["data"]["id"]]
            _, found, _ = await sb.api("GET", "/api/v2/prospects?filter[emails]=ROBERT@example.com", token)
            assert [p["id"] for p in found["data"]] == [bob_id]
            assert (await sb.create(token, {"emails": ["robert@example.com"]}))[0] == 422

    asyncio.run(scenario())


# --------------------------------------------------------------------------
# rate limit
# --------------------------------------------------------------------------


def test_rate_limit_headers_and_429_past_quota() -> None:
    async def scenario() -> None:
        async with sandbox(quota=3, window=100) as sb:
            token = await sb.access_token()
            started = time.time()
            status, _, headers = await sb.api("GET", "/api/v2/prospects", token)
            assert status == 200
            assert headers["X-RateLimit-Limit"] == "3"
            assert headers["X-RateLimit-Remaining"] == "2, 5"
            reset = int(headers["X-RateLimit-Reset"])
            assert started + 99 <= reset <= time.time() + 101
            await sb.api("GET", "/api/v2/prospects", token)
            status, _, headers = await sb.create(token, {"emails": ["a@example.com"]})
            assert (status, headers["X-RateLimit-Remaining"]) == (201, "0, 3")

            status, body, headers = await sb.create(token, {"emails": ["b@example.com"]})
            assert status == 429
            assert body["errors"][0]["id"] == "rateLimitExceeded"
            assert headers["X-RateLimit-Reset"] == str(reset)
            assert 1 <= int(headers["Retry-After"]) <= 100
            assert sb.state.creates == 1
            assert len(sb.state.prospects) == 1

            sb.shift_clock(101)
            status, _, headers = await sb.api("GET", "/api/v2/prospects", token)
            assert status == 200
            assert int(headers["X-RateLimit-Reset"]) > reset
            assert headers["X-RateLimit-Remaining"] == "2, 5"

    asyncio.run(scenario())


def test_single_value_remaining_when_configured() -> None:
    async def scenario() -> None:
        async with sandbox(quota=10, two_value_remaining=False) as sb:
            token = await sb.access_token()
            _, _, headers = await sb.api("GET", "/api/v2/prospects", None)
            assert headers["X-RateLimit-Remaining"] == "9"
            _, _, headers = await sb.api("GET", "/api/v2/prospects", token)
            assert headers["X-RateLimit-Remaining"] == "8"

    asyncio.run(scenario())


# --------------------------------------------------------------------------
# faults
# --------------------------------------------------------------------------


def test_status_faults_are_one_shot_and_in_order() -> None:
    async def scenario() -> None:
        async with sandbox(faults=[502]) as sb:
            token = await sb.access_token()
            status, body = await sb.admin("POST", "faults", {"faults": [503, "500"]})
            assert (status, body["pending_faults"]) == (200, ["502", "503", "500"])

            status, _, headers = await sb.api("GET", "/api/v2/prospects", token)
            assert status == 502
            assert "X-RateLimit-Limit" in headers
            status, body, headers = await sb.api("GET", "/api/v2/prospects", token)
            assert status == 503
            assert headers["Retry-After"] == "1"
            assert body["errors"][0]["id"] == "scheduledServerMaintenance"
            status, body, _ = await sb.create(token, {"emails": ["a@example.com"]})
            assert status == 500
            assert body["errors"][0]["id"] == "internalServerError"
            status, _, _ = await sb.create(token, {"emails": ["a@example.com"]})
            assert status == 201

            _, state = await sb.admin("GET", "state")
            assert state["statuses"] == [502, 503, 500, 201]
            assert state["requests_by_status"] == {"502": 1, "503": 1, "500": 1, "201": 1}
            assert state["creates"] == 1
            assert state["pending_faults"] == []

    asyncio.run(scenario())


def test_drop_fault_closes_connection_without_creating() -> None:
    async def scenario() -> None:
        async with sandbox() as sb:
            token = await sb.access_token()
            await sb.admin("POST", "faults", {"faults": ["drop"]})
            with pytest.raises(aiohttp.ClientConnectionError):
                await sb.create(token, {"emails": ["a@example.com"]})
            assert sb.state.statuses == ["drop"]
            assert sb.state.creates == 0
            status, _, _ = await sb.create(token, {"emails": ["a@example.com"]})
            assert status == 201

    asyncio.run(scenario())


def test_drop_after_fault_writes_then_loses_the_answer() -> None:
    async def scenario() -> None:
        async with sandbox(faults=["drop-after"]) as sb:
            token = await sb.access_token()
            with pytest.raises(aiohttp.ClientConnectionError):
                await sb.create(token, {"emails": ["a@example.com"]})
            assert sb.state.creates == 1
            status, body, _ = await sb.create(token, {"emails": ["a@example.com"]})
            assert status == 422
            assert body["errors"][0]["detail"] == "Contacts email hash has already been taken."

    asyncio.run(scenario())


def test_delay_fault_slows_the_answer_then_answers_normally() -> None:
    async def scenario() -> None:
        async with sandbox() as sb:
            token = await sb.access_token()
            await sb.admin("POST", "faults", {"faults": ["delay:0.4"]})
            started = time.monotonic()
            status, _, _ = await sb.api("GET", "/api/v2/prospects", token)
            assert status == 200
            assert time.monotonic() - started >= 0.4
            # One-shot: spent by that request, so the next is answered at once.
            _, state = await sb.admin("GET", "state")
            assert state["pending_faults"] == []
            assert (await sb.api("GET", "/api/v2/prospects", token))[0] == 200

    asyncio.run(scenario())


def test_invalid_fault_is_refused_and_queues_nothing() -> None:
    async def scenario() -> None:
        async with sandbox() as sb:
            status, body = await sb.admin("POST", "faults", {"faults": [500, "explode"]})
            assert status == 400
            assert "explode" in body["error"]
            assert list(sb.state.faults) == []

    asyncio.run(scenario())
    for bad in ("explode", "delay:-1", "200", 99, True):
        with pytest.raises(ValueError):
            parse_fault(bad)
    assert parse_fault(" Delay:1.5 ").seconds == 1.5
    with pytest.raises(ValueError):
        SandboxState(SandboxConfig(faults=["nope"]))


def test_random_faults_are_reproducible_with_a_seed() -> None:
    def draws(seed: int) -> list[str | None]:
        state = SandboxState(SandboxConfig(fault_rate=0.5, fault_seed=seed))
        return [None if (f := state.next_fault()) is None else f.describe() for _ in range(40)]

    first = draws(7)
    assert first == draws(7)
    assert None in first
    faults = {f for f in first if f is not None}
    assert faults and faults <= {"500", "502", "503", "drop"}
    assert SandboxState(SandboxConfig(fault_rate=0.0)).next_fault() is None


def test_random_fault_rate_one_faults_every_api_request() -> None:
    async def scenario() -> None:
        async with sandbox(fault_rate=1.0, fault_seed=3) as sb:
            token = await sb.access_token()
            for _ in range(5):
                try:
                    status, _, _ = await sb.create(token, {"emails": ["a@example.com"]})
                    assert status in (500, 502, 503)
                except aiohttp.ClientConnectionError:
                    pass
            assert sb.state.creates == 0
            assert len(sb.state.statuses) == 5

    asyncio.run(scenario())


def test_garbage_fault_writes_then_answers_a_200_that_is_not_the_api() -> None:
    async def scenario() -> None:
        async with sandbox(faults=["garbage"]) as sb:
            token = await sb.access_token()
            document = {"data": {"type": "prospect", "attributes": {"emails": ["a@example.com"]}}}
            async with sb.session.post(
                f"{sb.base}/api/v2/prospects",
                data=json.dumps(document),
                headers={"Content-Type": JSONAPI, "Authorization": f"Bearer {token}"},
            ) as resp:
                assert resp.status == 200
                assert resp.content_type == "text/html"
                assert "<html>" in await resp.text()
            assert sb.state.creates == 1  # the write happened: the answer proves nothing either way
            status, body, _ = await sb.create(token, {"emails": ["a@example.com"]})
            assert status == 422

    asyncio.run(scenario())


def test_a_fault_mix_draws_each_fault_at_its_rate_reproducibly() -> None:
    def draws(seed: int) -> list[str | None]:
        state = SandboxState(SandboxConfig(fault_mix="garbage=0.2,503=0.1,429=0.05,drop=0.05", fault_seed=seed))
        return [None if (f := state.next_fault()) is None else f.describe() for _ in range(4000)]

    first = draws(11)
    assert first == draws(11)
    counts = {name: first.count(name) for name in ("garbage", "503", "429", "drop")}
    # Binomial(4000, p): three standard deviations either side.
    for name, share in (("garbage", 0.2), ("503", 0.1), ("429", 0.05), ("drop", 0.05)):
        spread = 3 * (4000 * share * (1 - share)) ** 0.5
        assert abs(counts[name] - 4000 * share) < spread, (name, counts)
    assert first.count(None) + sum(counts.values()) == 4000


def test_a_bad_fault_mix_is_refused() -> None:
    for bad in ("garbage=0.8,503=0.3", "garbage", "garbage=lots", "explode=0.1", "503=1.5"):
        with pytest.raises(ValueError):
            SandboxState(SandboxConfig(fault_mix=bad))

    async def scenario() -> None:
        async with sandbox() as sb:
            status, body = await sb.admin("POST", "faults", {"faults": [500], "fault_mix": {"garbage": 2}})
            assert status == 400 and "garbage" in body["error"]
            assert list(sb.state.faults) == [] and sb.state.fault_mix == []  # nothing half-applied
            status, body = await sb.admin("POST", "faults", {"fault_mix": {"garbage": 0.5}})
            assert status == 200
            _, state = await sb.admin("GET", "state")
            assert state["fault_mix"] == {"garbage": 0.5}

    asyncio.run(scenario())


def test_the_token_endpoint_fails_for_a_while_then_mints() -> None:
    async def scenario() -> None:
        async with sandbox(token_outage_seconds=60) as sb:
            answers = []
            for _ in range(4):
                try:
                    async with sb.session.post(f"{sb.base}/oauth/token", data={"grant_type": "refresh_token"}) as resp:
                        answers.append((resp.status, resp.content_type))
                except aiohttp.ClientConnectionError:
                    answers.append(("drop", None))
            assert answers == [(503, "application/json"), (200, "text/html"), ("drop", None), (500, "application/json")]
            assert sb.state.mints == 0
            sb.shift_clock(61)  # the outage is over
            status, body, _ = await sb.refresh()
            assert status == 200 and body["access_token"]
            _, state = await sb.admin("GET", "state")
            assert state["token_statuses"] == [503, 200, "drop", 500, 200]
            assert state["token_outage_answers"] == 4
            # An outage can also be started while running.
            assert (await sb.admin("POST", "token-outage", {"seconds": 30}))[0] == 200
            async with sb.session.post(f"{sb.base}/oauth/token", data={}) as resp:
                assert resp.status == 503
            assert (await sb.admin("POST", "token-outage", {"seconds": -1}))[0] == 400
            assert (await sb.admin("POST", "token-outage", {"requests": "two"}))[0] == 400
            # Or for a number of requests, whenever they come. (The offset is from now, not cumulative:
            # past the outage and the mint throttle's minute since the mint at +61 s.)
            sb.shift_clock(200)
            assert (await sb.admin("POST", "token-outage", {"requests": 2}))[0] == 200
            statuses = []
            for _ in range(3):
                try:
                    status, _, _ = await sb.refresh(
                        sb.state.config.refresh_token if not sb.state.mints else sorted(sb.state.refresh_tokens)[0]
                    )
                except (aiohttp.ClientConnectionError, aiohttp.ContentTypeError):
                    status = "failed"
                statuses.append(status)
            assert statuses[2] == 200 and sb.state.token_outage_requests == 0
            assert sb.state.token_statuses[-3:-1] != [200, 200]

    asyncio.run(scenario())


def test_state_counts_requests_being_answered() -> None:
    async def scenario() -> None:
        async with sandbox() as sb:
            token = await sb.access_token()
            await sb.admin("POST", "faults", {"faults": ["delay:0.5", "delay:0.5"]})
            slow = [asyncio.ensure_future(sb.api("GET", "/api/v2/prospects", token)) for _ in range(2)]
            for _ in range(100):
                if sb.state.in_flight == 2:
                    break
                await asyncio.sleep(0.01)
            assert (await sb.admin("GET", "state"))[1]["in_flight"] == 2
            await asyncio.gather(*slow)
            assert sb.state.in_flight == 0

    asyncio.run(scenario())


# --------------------------------------------------------------------------
# admin reset and command line
# --------------------------------------------------------------------------


def test_reset_restores_initial_refresh_token_and_clears_prospects() -> None:
    async def scenario() -> None:
        async with sandbox(mint_limit=0) as sb:
            token = await sb.access_token()
            await sb.create(token, {"emails": ["a@example.com"]})
            status, body = await sb.admin("POST", "reset")
            assert status == 200
            assert (body["prospects"], body["mints"], body["statuses"]) == ([], 0, [])
            assert body["refresh_tokens"] == ["sandbox-refresh-token"]
            status, _, _ = await sb.api("GET", "/api/v2/prospects", token)
            assert status == 401
            status, _, _ = await sb.refresh()
            assert status == 200

    asyncio.run(scenario())


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT")
def test_main_prints_address_and_stops_cleanly_on_ctrl_c() -> None:
    code = "import sys; from engine.sandbox.outreach import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--port", "0", "--refresh-token", "demo-token", "--fault", "503"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert "demo-token" in line and "sandbox-client" in line
        url = next(word for word in line.split() if word.startswith("http://")).rstrip(",")
        with urllib.request.urlopen(f"{url}/_sandbox/state", timeout=5) as resp:
            state = json.load(resp)
        assert state["pending_faults"] == ["503"]
        assert state["refresh_tokens"] == ["demo-token"]
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert "Traceback" not in stderr


def test_main_rejects_a_bad_fault_argument(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        outreach.main(["--fault", "explode"])
    assert excinfo.value.code == 2
    assert "explode" in capsys.readouterr().err
