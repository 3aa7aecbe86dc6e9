"""The sandboxes' authorize step: what RFC 6749 §4.1, Outreach's "Step 2" and Salesloft's docs promise, over HTTP.

Expected values come from the product page ("Open this URL ... Outreach
redirects back to your redirect URI with a code query parameter"; "The
authorization code is single-use and expires within minutes"; the exchange
answers access_token, refresh_token and expires_in: 7200) and from RFC 6749
(§4.1.2: state echoed; §4.1.2.1: no redirect to an unverified URI, errors
redirected otherwise; §4.1.3: redirect_uri must match) and RFC 8252 §7.3
(any port for a loopback IP redirect URI). Salesloft's: the redirect carries
code, context and scope, and the exchange sends context and scope back
(docs/vendors/salesloft.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from engine.sandbox import outreach, salesloft
from tests.sandbox_helpers import Running, running

JSONAPI = "application/vnd.api+json"
REDIRECT = "http://127.0.0.1:51004/callback"  # a port the app never registered: loopback, so any port goes


def scenario(test: Callable[[Running], Awaitable[None]], module: Any = outreach, **config: Any) -> None:
    async def main() -> None:
        async with running(module, **config) as sandbox:
            await test(sandbox)

    asyncio.run(main())


async def authorize(sandbox: Running, **overrides: str | None) -> tuple[int, str | None, str]:
    """GET /oauth/authorize as a browser would, without following the redirect: (status, Location, body)."""
    params = {
        "client_id": "sandbox-client",
        "redirect_uri": REDIRECT,
        "response_type": "code",
        "scope": "prospects.read prospects.write",
        "state": "st-1234",
        **overrides,
    }
    query = urlencode({k: v for k, v in params.items() if v is not None})
    async with sandbox.session.get(f"{sandbox.base}/oauth/authorize?{query}", allow_redirects=False) as resp:
        return resp.status, resp.headers.get("Location"), await resp.text()


def redirected(location: str | None) -> tuple[str, dict[str, str]]:
    assert location is not None
    parts = urlsplit(location)
    return f"{parts.scheme}://{parts.netloc}{parts.path}", {k: v[0] for k, v in parse_qs(parts.query).items()}


async def exchange(sandbox: Running, code: str, **overrides: str) -> tuple[int, Any]:
    form = {
        "client_id": "sandbox-client",
        "client_secret": "sandbox-secret",
        "redirect_uri": REDIRECT,
        "grant_type": "authorization_code",
        "code": code,
        **overrides,
    }
    status, body, _ = await sandbox.call("POST", "/oauth/token", form=form)
    return status, body


def test_approval_redirects_to_the_loopback_uri_with_a_code_and_the_state() -> None:
    async def test(sandbox: Running) -> None:
        status, location, _ = await authorize(sandbox)
        assert status == 302
        target, query = redirected(location)
        assert target == REDIRECT
        assert query["state"] == "st-1234" and query["code"]
        assert set(query) == {"code", "state"}
        assert (await sandbox.admin("GET", "state"))[1]["authorizations"] == 1

    scenario(test)


def test_the_code_buys_tokens_that_work_like_outreach_s() -> None:
    async def test(sandbox: Running) -> None:
        _, location, _ = await authorize(sandbox)
        status, body = await exchange(sandbox, redirected(location)[1]["code"])
        assert status == 200
        assert body["expires_in"] == 7200 and body["token_type"] == "bearer"
        assert body["scope"] == "prospects.read prospects.write"
        # The access token is accepted by the API...
        status, listing, _ = await sandbox.call(
            "GET", "/api/v2/prospects", headers={"Authorization": f"Bearer {body['access_token']}"}
        )
        assert status == 200 and listing["data"] == []
        # ...and the refresh token mints (and rotates) like the configured one.
        status, minted, _ = await sandbox.call(
            "POST",
            "/oauth/token",
            form={
                "client_id": "sandbox-client",
                "client_secret": "sandbox-secret",
                "grant_type": "refresh_token",
                "refresh_token": body["refresh_token"],
            },
        )
        assert status == 200 and minted["refresh_token"] != body["refresh_token"]
        state = (await sandbox.admin("GET", "state"))[1]
        assert state["code_exchanges"] == 1 and state["mints"] == 1

    scenario(test, mint_limit=0)


def test_a_code_is_single_use() -> None:
    async def test(sandbox: Running) -> None:
        _, location, _ = await authorize(sandbox)
        code = redirected(location)[1]["code"]
        assert (await exchange(sandbox, code))[0] == 200
        status, body = await exchange(sandbox, code)
        assert status == 400 and body["error"] == "invalid_grant"

    scenario(test)


def test_a_code_expires_within_minutes() -> None:
    async def test(sandbox: Running) -> None:
        _, location, _ = await authorize(sandbox)
        sandbox.state.clock = lambda: time.time() + 601  # the default lifetime is 600 s
        status, body = await exchange(sandbox, redirected(location)[1]["code"])
        assert status == 400 and body == {
            "error": "invalid_grant",
            "error_description": "The authorization code has expired.",
        }

    scenario(test)


def test_the_exchange_must_name_the_redirect_uri_of_the_request_and_a_wrong_try_spends_the_code() -> None:
    async def test(sandbox: Running) -> None:
        _, location, _ = await authorize(sandbox)
        code = redirected(location)[1]["code"]
        status, body = await exchange(sandbox, code, redirect_uri="http://127.0.0.1:51005/callback")
        assert status == 400 and body["error"] == "invalid_grant"
        assert (await exchange(sandbox, code))[0] == 400

    scenario(test)


def test_the_exchange_needs_the_client_secret() -> None:
    async def test(sandbox: Running) -> None:
        _, location, _ = await authorize(sandbox)
        status, body = await exchange(sandbox, redirected(location)[1]["code"], client_secret="wrong")
        assert status == 401 and body["error"] == "invalid_client"

    scenario(test)


@pytest.mark.parametrize(
    "overrides",
    [
        {"client_id": "someone-else"},
        {"redirect_uri": None},
        {"redirect_uri": "https://attacker.example/callback"},
        {"redirect_uri": "http://127.0.0.1:51004/elsewhere"},
        {"redirect_uri": "http://localhost:51004/callback"},  # a name, not the loopback IP literal (RFC 8252 §7.3)
    ],
    ids=["unknown-client", "no-redirect-uri", "other-host", "other-path", "localhost-name"],
)
def test_no_code_and_no_redirect_to_a_uri_the_app_did_not_register(overrides: dict[str, str | None]) -> None:
    async def test(sandbox: Running) -> None:
        status, location, page = await authorize(sandbox, **overrides)
        assert status == 400 and location is None
        assert "<h1>" in page
        assert (await sandbox.admin("GET", "state"))[1]["authorizations"] == 0

    scenario(test)


@pytest.mark.parametrize(
    "overrides, error",
    [
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"scope": None}, "invalid_scope"),
        ({"scope": "prospects.read prospects.delete"}, "invalid_scope"),
    ],
    ids=["implicit-grant", "no-scope", "scope-not-enabled"],
)
def test_other_errors_are_redirected_with_the_state(overrides: dict[str, str | None], error: str) -> None:
    async def test(sandbox: Running) -> None:
        status, location, _ = await authorize(sandbox, **overrides)
        assert status == 302
        target, query = redirected(location)
        assert target == REDIRECT and query["error"] == error and query["state"] == "st-1234"
        assert "code" not in query

    scenario(test)


def test_a_denying_person_sends_access_denied_back() -> None:
    async def test(sandbox: Running) -> None:
        status, location, _ = await authorize(sandbox)
        assert status == 302
        _, query = redirected(location)
        assert query["error"] == "access_denied" and query["state"] == "st-1234" and "code" not in query

    scenario(test, consent="deny")


def test_a_registered_redirect_uri_keeps_its_own_query() -> None:
    async def test(sandbox: Running) -> None:
        status, location, _ = await authorize(sandbox, redirect_uri="https://app.example/cb?tenant=7")
        assert status == 302
        target, query = redirected(location)
        assert target == "https://app.example/cb" and query["tenant"] == "7" and query["code"]

    scenario(test, redirect_uris=["https://app.example/cb?tenant=7"])


def test_salesloft_redirects_with_context_and_scope_and_wants_them_back() -> None:
    async def test(sandbox: Running) -> None:
        status, location, _ = await authorize(sandbox, scope=None)  # Salesloft's URL carries no scope
        assert status == 302
        _, query = redirected(location)
        assert {"code", "context", "state"} <= set(query)
        status, location, _ = await authorize(sandbox, scope=None)
        _, second = redirected(location)
        # Without context and scope the exchange is refused (and the code spent).
        status, body = await exchange(sandbox, query["code"])
        assert status == 400 and body["error"] == "invalid_grant"
        status, body = await exchange(sandbox, second["code"], context=second["context"], scope=second.get("scope", ""))
        assert status == 200 and body["refresh_token"] and body["access_token"]

    scenario(test, salesloft)
