"""The local Salesloft fake behaves as docs/vendors/salesloft.md says Salesloft does, over real loopback HTTP."""

from __future__ import annotations

import asyncio
import base64
import math
import time
from typing import Any

import aiohttp
import pytest

from engine.sandbox import salesloft
from sandbox_helpers import Running, running

PEOPLE = "/v2/people"


def run(coro: Any) -> None:
    asyncio.run(coro)


async def refresh(
    sb: Running, token: str | None = None, *, as_json: bool = False, secret: str | None = None, basic: bool = False
) -> tuple[int, Any]:
    config = sb.state.config
    params = {"grant_type": "refresh_token", "refresh_token": token if token is not None else config.refresh_token}
    headers: dict[str, str] = {}
    if basic:
        pair = f"{config.client_id}:{secret if secret is not None else config.client_secret}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    else:
        params |= {
            "client_id": config.client_id,
            "client_secret": secret if secret is not None else config.client_secret,
        }
    if as_json:
        status, body, _ = await sb.call("POST", "/oauth/token", json_body=params, headers=headers)
    else:
        status, body, _ = await sb.call("POST", "/oauth/token", form=params, headers=headers)
    return status, body


async def bearer(sb: Running) -> dict[str, str]:
    status, body = await refresh(sb)
    assert status == 200, body
    return {"Authorization": f"Bearer {body['access_token']}"}


# --------------------------------------------------------------------------
# OAuth
# --------------------------------------------------------------------------


def test_refresh_rotates_the_refresh_token_and_the_old_one_is_invalid_grant() -> None:
    async def scenario() -> None:
        async with running(salesloft, token_ttl=7200) as sb:
            before = int(time.time())
            status, body = await refresh(sb)
            assert status == 200
            assert (body["token_type"], body["expires_in"]) == ("bearer", 7200)
            assert body["access_token"] and body["refresh_token"] != "sandbox-refresh-token"
            assert before <= body["created_at"] <= int(time.time())

            status, again = await refresh(sb, "sandbox-refresh-token")
            assert (status, again["error"]) == (400, "invalid_grant")
            assert again["error_description"]

            status, rotated = await refresh(sb, body["refresh_token"], as_json=True)
            assert status == 200
            assert rotated["refresh_token"] not in (body["refresh_token"], "sandbox-refresh-token")
            _, state = await sb.admin("GET", "state")
            assert (state["mints"], state["token_statuses"]) == (2, [200, 400, 200])
            assert state["refresh_tokens"] == [rotated["refresh_token"]]

    run(scenario())


def test_client_credentials_in_the_body_or_as_basic_and_bad_ones_are_invalid_client() -> None:
    async def scenario() -> None:
        async with running(salesloft) as sb:
            status, body = await refresh(sb, secret="nope")
            assert (status, body["error"]) == (401, "invalid_client")
            status, body = await refresh(sb, basic=True)
            assert status == 200
            status, body = await refresh(sb, body["refresh_token"], basic=True, secret="nope")
            assert (status, body["error"]) == (401, "invalid_client")
            status, body, _ = await sb.call(
                "POST",
                "/oauth/token",
                form={"grant_type": "password", "client_id": "sandbox-client", "client_secret": "sandbox-secret"},
            )
            assert (status, body["error"]) == (400, "unsupported_grant_type")

    run(scenario())


def test_api_needs_a_current_bearer_access_token() -> None:
    async def scenario() -> None:
        async with running(salesloft, token_ttl=100) as sb:
            headers = await bearer(sb)
            for bad in (
                {},
                {"Authorization": "Bearer nope"},
                {"Authorization": "sandbox-refresh-token"},
                {"Authorization": headers["Authorization"].replace("Bearer", "Token")},
            ):
                status, body, _ = await sb.call("GET", PEOPLE, headers=bad)
                assert (status, body) == (401, {"error": "Not authorized"}), bad
            status, _, _ = await sb.call("GET", PEOPLE, headers=headers)
            assert status == 200
            later = time.time() + 101
            sb.state.clock = lambda: later
            status, _, _ = await sb.call("GET", PEOPLE, headers=headers)
            assert status == 401
            sb.state.clock = time.time
            status, _ = await sb.admin("POST", "expire-tokens")
            status, _, _ = await sb.call("GET", PEOPLE, headers=headers)
            assert status == 401

    run(scenario())


# --------------------------------------------------------------------------
# people
# --------------------------------------------------------------------------


def test_create_answers_200_with_data_and_duplicate_email_is_422_taken() -> None:
    async def scenario() -> None:
        async with running(salesloft) as sb:
            headers = await bearer(sb)
            person = {
                "email_address": "jane.doe@acme.com",
                "first_name": "Jane",
                "last_name": "Doe",
                "mobile_phone": "+447700900123",
                "tags": ["Signal", "lead"],
            }
            status, body, _ = await sb.call("POST", PEOPLE, headers=headers, json_body=person)
            assert status == 200
            data = body["data"]
            assert (data["id"], data["email_address"], data["tags"]) == (1, "jane.doe@acme.com", ["Signal", "lead"])
            assert data["display_name"] == "Jane Doe"
            assert data["title"] is None

            status, body, _ = await sb.call(
                "POST", f"{PEOPLE}.json", headers=headers, json_body={"email_address": "JANE.DOE@acme.com"}
            )
            assert (status, body) == (422, {"errors": {"email_address": ["has already been taken"]}})
            assert sb.state.creates == 1

    run(scenario())


def test_create_refuses_unknown_fields_wrong_types_and_missing_identity() -> None:
    async def scenario() -> None:
        async with running(salesloft) as sb:
            headers = await bearer(sb)
            status, body, _ = await sb.call(
                "POST",
                PEOPLE,
                headers=headers,
                json_body={"email_address": "a@example.com", "company": "Acme", "tags": "lead", "account_id": "7"},
            )
            assert status == 422
            assert body["errors"] == {
                "company": ["is not a valid field"],
                "tags": ["must be an array of strings"],
                "account_id": ["must be an integer"],
            }
            status, body, _ = await sb.call("POST", PEOPLE, headers=headers, json_body={"first_name": "Jane"})
            assert status == 422 and "base" in body["errors"]
            status, _, _ = await sb.call(
                "POST", PEOPLE, headers=headers, json_body={"phone": "+15550100", "last_name": "Doe"}
            )
            assert status == 200
            status, _, _ = await sb.call(
                "POST",
                PEOPLE,
                headers={**headers, "Content-Type": "text/plain"},
                raw='{"email_address": "b@example.com"}',
            )
            assert status == 415
            assert sb.state.creates == 1

    run(scenario())


def test_lookup_by_email_addresses_then_put_replaces_the_tags() -> None:
    async def scenario() -> None:
        async with running(salesloft) as sb:
            headers = await bearer(sb)
            await sb.call("POST", PEOPLE, headers=headers, json_body={"email_address": "other@example.com"})
            await sb.call(
                "POST",
                PEOPLE,
                headers=headers,
                json_body={"email_address": "jane.doe@acme.com", "first_name": "Jane", "tags": ["Signal", "lead"]},
            )
            status, body, _ = await sb.call("GET", f"{PEOPLE}?email_addresses%5B%5D=JANE.DOE@acme.com", headers=headers)
            assert status == 200
            assert [p["id"] for p in body["data"]] == [2]
            assert body["metadata"]["paging"] == {
                "per_page": 25,
                "current_page": 1,
                "next_page": None,
                "prev_page": None,
            }
            status, body, _ = await sb.call("GET", f"{PEOPLE}?email_addresses[]=nobody@example.com", headers=headers)
            assert (status, body["data"]) == (200, [])
            status, body, _ = await sb.call("GET", f"{PEOPLE}?email_address=jane.doe@acme.com", headers=headers)
            assert status == 400

            status, body, _ = await sb.call(
                "PUT",
                f"{PEOPLE}/2",
                headers=headers,
                json_body={"title": "CTO", "tags": ["Signal", "lead", "demo-request"]},
            )
            assert status == 200
            assert (body["data"]["title"], body["data"]["first_name"]) == ("CTO", "Jane")
            assert body["data"]["tags"] == ["Signal", "lead", "demo-request"]
            status, body, _ = await sb.call("PUT", f"{PEOPLE}/2", headers=headers, json_body={"tags": ["x"]})
            assert body["data"]["tags"] == ["x"]  # sent tags replace the set
            status, body, _ = await sb.call(
                "PUT", f"{PEOPLE}/2", headers=headers, json_body={"email_address": "other@example.com"}
            )
            assert (status, body["errors"]) == (422, {"email_address": ["has already been taken"]})
            status, _, _ = await sb.call("PUT", f"{PEOPLE}/9", headers=headers, json_body={"title": "x"})
            assert status == 404
            assert (sb.state.creates, sb.state.updates) == (2, 2)

    run(scenario())


# --------------------------------------------------------------------------
# rate limit
# --------------------------------------------------------------------------


def test_cost_headers_on_every_answer_and_429_past_the_minute_budget() -> None:
    async def scenario() -> None:
        async with running(salesloft, quota=4, window=60) as sb:
            headers = await bearer(sb)
            now = time.time()
            sb.state.clock = lambda: now
            status, _, answer = await sb.call("GET", PEOPLE, headers=headers)
            assert status == 200
            assert (answer["x-ratelimit-endpoint-cost"], answer["x-ratelimit-remaining-minute"]) == ("1", "3")
            status, _, answer = await sb.call("GET", f"{PEOPLE}?page=101", headers=headers)
            assert (answer["x-ratelimit-endpoint-cost"], answer["x-ratelimit-remaining-minute"]) == ("3", "0")
            status, body, answer = await sb.call("POST", PEOPLE, headers=headers, json_body={"email_address": "a@b.co"})
            assert status == 429
            assert answer["x-ratelimit-remaining-minute"] == "0"
            assert sb.state.creates == 0
            next_minute = (math.floor(now / 60) + 1) * 60  # windows are calendar minutes
            sb.state.clock = lambda: next_minute
            status, _, answer = await sb.call("POST", PEOPLE, headers=headers, json_body={"email_address": "a@b.co"})
            assert (status, answer["x-ratelimit-remaining-minute"]) == (200, "3")

    run(scenario())


# --------------------------------------------------------------------------
# faults, reset, command line
# --------------------------------------------------------------------------


def test_faults_and_reset() -> None:
    async def scenario() -> None:
        async with running(salesloft, faults=[502, "drop-after"]) as sb:
            headers = await bearer(sb)  # the token endpoint is not subject to API faults
            status, _, answer = await sb.call("GET", PEOPLE, headers=headers)
            assert status == 502 and "x-ratelimit-remaining-minute" in answer
            with pytest.raises(aiohttp.ClientConnectionError):
                await sb.call("POST", PEOPLE, headers=headers, json_body={"email_address": "a@example.com"})
            status, body, _ = await sb.call(
                "POST", PEOPLE, headers=headers, json_body={"email_address": "a@example.com"}
            )
            assert (status, body["errors"]) == (422, {"email_address": ["has already been taken"]})
            status, body = await sb.admin("POST", "reset")
            assert (body["people"], body["refresh_tokens"], body["pending_faults"]) == (
                [],
                ["sandbox-refresh-token"],
                ["502", "drop-after"],
            )

    run(scenario())


def test_main_rejects_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--fault", "nope"], ["--window", "-1"]):
        with pytest.raises(SystemExit) as excinfo:
            salesloft.main(argv)
        assert excinfo.value.code == 2
    assert "nope" in capsys.readouterr().err
