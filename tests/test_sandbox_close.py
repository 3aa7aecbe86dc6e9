"""The local Close fake behaves as docs/vendors/close.md says Close does, over real loopback HTTP."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from engine.sandbox import close
from sandbox_helpers import Running, basic, running

KEY = basic("sandbox-api-key", "")
LEAD = {
    "name": "Acme Inc",
    "contacts": [
        {
            "name": "Jane Doe",
            "title": "Head of Growth",
            "emails": [{"email": "jane.doe@acme.com", "type": "office"}],
            "phones": [{"phone": "+447700900123", "type": "mobile"}],
        }
    ],
    "addresses": [{"label": "business", "city": "London", "country": "GB"}],
}


def run(coro: Any) -> None:
    asyncio.run(coro)


def lead_by_email_query(email: str, fields: list[str] | None = None) -> dict[str, Any]:
    """The query Close's own API wrapper builds for 'a lead having a contact with this email'."""
    body: dict[str, Any] = {
        "query": {
            "type": "and",
            "queries": [
                {"type": "object_type", "object_type": "lead"},
                {
                    "type": "has_related",
                    "this_object_type": "lead",
                    "related_object_type": "contact",
                    "related_query": {
                        "type": "has_related",
                        "this_object_type": "contact",
                        "related_object_type": "contact_email",
                        "related_query": {
                            "type": "field_condition",
                            "field": {"type": "regular_field", "object_type": "contact_email", "field_name": "email"},
                            "condition": {"type": "text", "mode": "exact_value", "value": email},
                        },
                    },
                },
            ],
        },
        "_limit": 1,
    }
    if fields is not None:
        body["_fields"] = {"lead": fields}
    return body


async def post_lead(sb: Running, lead: Any = None, auth: dict[str, str] = KEY) -> tuple[int, Any, Any]:
    return await sb.call("POST", "/api/v1/lead/", json_body=LEAD if lead is None else lead, headers=auth)


# --------------------------------------------------------------------------
# auth
# --------------------------------------------------------------------------


def test_api_key_is_the_basic_username_with_an_empty_password() -> None:
    async def scenario() -> None:
        async with running(close) as sb:
            for headers in (
                {},
                basic("wrong", ""),
                basic("sandbox-api-key", "x"),
                basic("", "sandbox-api-key"),
                {"Authorization": "Bearer sandbox-api-key"},
                {"Authorization": "Basic sandbox-api-key"},
            ):
                status, body, _ = await post_lead(sb, auth=headers)
                assert status == 401, headers
                assert "error" in body
            assert sb.state.leads == {}
            status, _, _ = await post_lead(sb)
            assert status == 200

    run(scenario())


# --------------------------------------------------------------------------
# leads: nested create, no dedupe, lookup, contact update
# --------------------------------------------------------------------------


def test_create_nests_contacts_emails_phones_and_addresses() -> None:
    async def scenario() -> None:
        async with running(close) as sb:
            status, body, _ = await post_lead(sb)
            assert status == 200
            assert body["id"].startswith("lead_") and body["display_name"] == "Acme Inc"
            (contact,) = body["contacts"]
            assert contact["id"].startswith("cont_") and contact["lead_id"] == body["id"]
            assert contact["emails"] == [
                {"email": "jane.doe@acme.com", "type": "office", "email_lower": "jane.doe@acme.com"}
            ]
            assert contact["phones"] == [
                {"phone": "+447700900123", "type": "mobile", "phone_formatted": "+44 7700 900123", "country": "GB"}
            ]
            assert body["addresses"] == [{"label": "business", "city": "London", "country": "GB"}]
            status, fetched, _ = await sb.call("GET", f"/api/v1/lead/{body['id']}/", headers=KEY)
            assert (status, fetched["contacts"][0]["id"]) == (200, contact["id"])

    run(scenario())


def test_the_same_lead_posted_twice_is_two_leads_because_close_does_not_dedupe() -> None:
    async def scenario() -> None:
        async with running(close) as sb:
            first = await post_lead(sb)
            second = await post_lead(sb)
            assert (first[0], second[0]) == (200, 200)
            assert first[1]["id"] != second[1]["id"]
            _, state = await sb.admin("GET", "state")
            assert (state["lead_count"], state["contact_count"], state["creates"]) == (2, 2, 2)

    run(scenario())


def test_search_finds_the_lead_by_contact_email_with_requested_fields() -> None:
    async def scenario() -> None:
        async with running(close) as sb:
            await post_lead(sb, {"name": "Other", "contacts": [{"name": "Bob", "emails": [{"email": "bob@x.io"}]}]})
            _, lead, _ = await post_lead(sb)
            status, body, _ = await sb.call(
                "POST",
                "/api/v1/data/search/",
                headers=KEY,
                json_body=lead_by_email_query("Jane.Doe@acme.com", ["id", "name", "contacts"]),
            )
            assert status == 200
            assert body["cursor"] is None
            (found,) = body["data"]
            assert (found["__object_type"], found["id"], found["name"]) == ("lead", lead["id"], "Acme Inc")
            assert found["contacts"][0]["emails"][0]["email"] == "jane.doe@acme.com"
            assert set(found) == {"__object_type", "id", "name", "contacts"}

            status, body, _ = await sb.call(
                "POST", "/api/v1/data/search/", headers=KEY, json_body=lead_by_email_query("nobody@acme.com")
            )
            assert (status, body) == (200, {"data": [], "cursor": None})
            query = lead_by_email_query("jane.doe@acme.com")
            query["query"]["queries"][1]["related_query"]["related_query"]["field"]["field_name"] = "title"
            status, body, _ = await sb.call("POST", "/api/v1/data/search/", headers=KEY, json_body=query)
            assert status == 400

    run(scenario())


def test_put_contact_replaces_the_lists_it_is_sent() -> None:
    async def scenario() -> None:
        async with running(close) as sb:
            _, lead, _ = await post_lead(sb)
            contact_id = lead["contacts"][0]["id"]
            update = {
                "title": "CTO",
                "phones": [{"phone": "+447700900123", "type": "mobile"}, {"phone": "+14155552671", "type": "mobile"}],
            }
            status, body, _ = await sb.call("PUT", f"/api/v1/contact/{contact_id}/", headers=KEY, json_body=update)
            assert status == 200
            assert (body["title"], body["name"]) == ("CTO", "Jane Doe")
            assert [p["phone"] for p in body["phones"]] == ["+447700900123", "+14155552671"]
            assert [e["email"] for e in body["emails"]] == ["jane.doe@acme.com"]
            status, body, _ = await sb.call(
                "PUT",
                f"/api/v1/contact/{contact_id}/",
                headers=KEY,
                json_body={"phones": [{"phone": "+14155552671", "type": "mobile"}]},
            )
            assert [p["phone"] for p in body["phones"]] == ["+14155552671"]
            status, _, _ = await sb.call("PUT", "/api/v1/contact/cont_nope/", headers=KEY, json_body={"title": "x"})
            assert status == 404
            assert (sb.state.creates, sb.state.updates) == (1, 2)

    run(scenario())


# --------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------


def test_countries_must_be_iso_alpha2_codes() -> None:
    async def scenario() -> None:
        async with running(close) as sb:
            for country in ("United Kingdom", "gb", "GBR"):
                status, body, _ = await post_lead(sb, {**LEAD, "addresses": [{"city": "London", "country": country}]})
                assert status == 400, country
                assert "addresses.0.country" in body["field-errors"]
                assert body["errors"] == []
            status, _, _ = await post_lead(sb, {**LEAD, "addresses": [{"country": "DE"}]})
            assert status == 200

    run(scenario())


def test_empty_stubs_and_unknown_fields_are_refused() -> None:
    async def scenario() -> None:
        async with running(close) as sb:
            bad = {
                "name": "Acme",
                "tags": ["x"],
                "contacts": [
                    {"name": "Jane", "emails": [{"type": "office"}], "phones": [{"type": "mobile"}], "first_name": "J"}
                ],
                "addresses": [{"label": "business"}],
            }
            status, body, _ = await post_lead(sb, bad)
            assert status == 400
            assert set(body["field-errors"]) == {
                "tags",
                "contacts.0.emails.0.email",
                "contacts.0.phones.0.phone",
                "contacts.0.first_name",
                "addresses.0",
            }
            status, body, _ = await post_lead(sb, {"contacts": [{"title": "CEO"}]})
            assert (status, list(body["field-errors"])) == (400, ["contacts.0"])
            status, body, _ = await post_lead(
                sb,
                {
                    "contacts": [
                        {
                            "name": "J",
                            "phones": [{"phone": "12", "type": "mobile"}],
                            "emails": [{"email": "nope", "type": "office"}],
                        }
                    ]
                },
            )
            assert set(body["field-errors"]) == {"contacts.0.phones.0.phone", "contacts.0.emails.0.email"}
            assert sb.state.leads == {}

    run(scenario())


# --------------------------------------------------------------------------
# rate limit
# --------------------------------------------------------------------------


def test_ratelimit_header_per_endpoint_group_and_429_with_rate_reset() -> None:
    async def scenario() -> None:
        async with running(close, quota=2, window=10) as sb:
            now = time.time()
            sb.state.clock = lambda: now
            status, _, headers = await post_lead(sb)
            assert (status, headers["ratelimit"]) == (200, "limit=2, remaining=1, reset=10")
            await post_lead(sb)
            status, body, headers = await post_lead(sb)
            assert status == 429
            assert body["error"]["message"].startswith("API call count exceeded")
            assert body["error"]["rate_reset"] == 10.0
            assert (body["error"]["rate_limit"], body["error"]["rate_window"]) == (2, 10)
            assert headers["ratelimit"] == "limit=2, remaining=0, reset=10"
            # another endpoint group has its own budget
            status, _, headers = await sb.call(
                "POST", "/api/v1/data/search/", headers=KEY, json_body=lead_by_email_query("jane.doe@acme.com")
            )
            assert (status, headers["ratelimit"]) == (200, "limit=2, remaining=1, reset=10")
            later = now + 4.5
            sb.state.clock = lambda: later
            _, body, _ = await post_lead(sb)
            assert body["error"]["rate_reset"] == 5.5
            after = now + 10
            sb.state.clock = lambda: after
            status, _, _ = await post_lead(sb)
            assert status == 200
            assert sb.state.creates == 3

    run(scenario())


# --------------------------------------------------------------------------
# faults, reset, command line
# --------------------------------------------------------------------------


def test_faults_and_reset() -> None:
    async def scenario() -> None:
        async with running(close, faults=[500, "drop"]) as sb:
            status, _, headers = await post_lead(sb)
            assert status == 500 and "ratelimit" in headers
            with pytest.raises(aiohttp.ClientConnectionError):
                await post_lead(sb)
            assert sb.state.creates == 0
            await sb.admin("POST", "faults", {"faults": ["drop-after"]})
            with pytest.raises(aiohttp.ClientConnectionError):
                await post_lead(sb)
            assert sb.state.creates == 1  # written, answer lost: a blind retry would make a second lead
            status, body = await sb.admin("POST", "reset")
            assert (body["lead_count"], body["pending_faults"]) == (0, ["500", "drop"])

    run(scenario())


def test_main_rejects_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--fault", "boom"], ["--quota", "-1"]):
        with pytest.raises(SystemExit) as excinfo:
            close.main(argv)
        assert excinfo.value.code == 2
    assert "boom" in capsys.readouterr().err
