"""The local HubSpot fake behaves as docs/vendors/hubspot.md says HubSpot does, over real loopback HTTP."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import aiohttp
import pytest

from engine.sandbox import hubspot
from sandbox_helpers import Running, running

TOKEN = "sandbox-private-app-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
CONTACTS = "/crm/v3/objects/contacts"


async def create(
    sb: Running, properties: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, Any, Any]:
    return await sb.call("POST", CONTACTS, headers=headers or BEARER, json_body={"properties": properties})


def run(coro: Any) -> None:
    asyncio.run(coro)


# --------------------------------------------------------------------------
# auth
# --------------------------------------------------------------------------


def test_private_app_token_must_come_as_bearer_header() -> None:
    async def scenario() -> None:
        async with running(hubspot) as sb:
            for headers in (
                {},
                {"Authorization": "Bearer wrong"},
                {"Authorization": TOKEN},
                {"Authorization": f"Basic {TOKEN}"},
            ):
                status, body, _ = await create(sb, {"email": "a@example.com"}, headers=headers or {"X": "y"})
                assert status == 401, headers
                assert body["category"] == "INVALID_AUTHENTICATION"
                assert body["status"] == "error"
                assert body["message"].startswith("Authentication credentials not found.")
                assert body["correlationId"]
            assert sb.state.contacts == {}
            status, _, _ = await sb.call("GET", f"{CONTACTS}/1?hapikey={TOKEN}")
            assert status == 401

    run(scenario())


# --------------------------------------------------------------------------
# create, conflict, update, read, search
# --------------------------------------------------------------------------


def test_create_answers_201_with_string_id_and_properties() -> None:
    async def scenario() -> None:
        async with running(hubspot) as sb:
            status, body, _ = await create(
                sb, {"email": "jane.doe@acme.com", "firstname": "Jane", "lifecyclestage": "lead"}
            )
            assert status == 201
            assert body["id"] == "1" and isinstance(body["id"], str)
            assert body["properties"]["email"] == "jane.doe@acme.com"
            assert body["properties"]["hs_object_id"] == "1"
            assert body["archived"] is False
            assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", body["createdAt"])
            _, state = await sb.admin("GET", "state")
            assert state["creates"] == 1
            assert state["contacts"] == [
                {"id": "1", "properties": {"email": "jane.doe@acme.com", "firstname": "Jane", "lifecyclestage": "lead"}}
            ]

    run(scenario())


def test_duplicate_email_is_409_conflict_naming_the_existing_id() -> None:
    async def scenario() -> None:
        async with running(hubspot) as sb:
            await create(sb, {"email": "first@example.com"})
            await create(sb, {"email": "jane.doe@acme.com"})
            status, body, _ = await create(sb, {"email": "JANE.DOE@acme.com", "firstname": "Again"})
            assert status == 409
            assert body["status"] == "error"
            assert body["category"] == "CONFLICT"
            assert body["message"] == "Contact already exists. Existing ID: 2"
            assert body["correlationId"]
            assert sb.state.creates == 2

    run(scenario())


def test_patch_by_the_conflict_id_overwrites_sent_properties_only() -> None:
    async def scenario() -> None:
        async with running(hubspot) as sb:
            await create(sb, {"email": "jane.doe@acme.com", "firstname": "Jane", "company": "Old Co"})
            _, conflict, _ = await create(sb, {"email": "jane.doe@acme.com", "company": "Acme Inc"})
            existing = conflict["message"].rsplit(" ", 1)[1]
            status, body, _ = await sb.call(
                "PATCH",
                f"{CONTACTS}/{existing}",
                headers=BEARER,
                json_body={"properties": {"company": "Acme Inc", "jobtitle": "CTO"}},
            )
            assert status == 200
            assert body["id"] == existing
            assert body["properties"]["company"] == "Acme Inc"
            assert body["properties"]["firstname"] == "Jane"
            status, body, _ = await sb.call(
                "PATCH", f"{CONTACTS}/{existing}", headers=BEARER, json_body={"properties": {"jobtitle": ""}}
            )
            assert status == 200 and "jobtitle" not in body["properties"]
            assert (sb.state.creates, sb.state.updates) == (1, 2)
            status, body, _ = await sb.call(
                "PATCH", f"{CONTACTS}/99", headers=BEARER, json_body={"properties": {"company": "x"}}
            )
            assert (status, body["category"]) == (404, "OBJECT_NOT_FOUND")

    run(scenario())


def test_patch_cannot_take_another_contacts_email() -> None:
    async def scenario() -> None:
        async with running(hubspot) as sb:
            await create(sb, {"email": "a@example.com"})
            await create(sb, {"email": "b@example.com"})
            status, body, _ = await sb.call(
                "PATCH", f"{CONTACTS}/2", headers=BEARER, json_body={"properties": {"email": "A@example.com"}}
            )
            assert (status, body["message"]) == (409, "Contact already exists. Existing ID: 1")

    run(scenario())


def test_get_by_id_or_by_email_and_search_by_email() -> None:
    async def scenario() -> None:
        async with running(hubspot) as sb:
            await create(sb, {"email": "jane.doe@acme.com", "firstname": "Jane", "company": "Acme"})
            status, body, _ = await sb.call("GET", f"{CONTACTS}/1?properties=email,company", headers=BEARER)
            assert status == 200
            assert body["properties"] == {"email": "jane.doe@acme.com", "company": "Acme"}
            status, body, _ = await sb.call("GET", f"{CONTACTS}/jane.doe@acme.com?idProperty=email", headers=BEARER)
            assert (status, body["id"]) == (200, "1")
            search = {
                "filterGroups": [
                    {"filters": [{"propertyName": "email", "operator": "EQ", "value": "JANE.DOE@acme.com"}]}
                ],
                "properties": ["email", "firstname"],
                "limit": 1,
            }
            status, body, _ = await sb.call("POST", f"{CONTACTS}/search", headers=BEARER, json_body=search)
            assert status == 200
            assert body["total"] == 1
            assert body["results"][0]["id"] == "1"
            assert body["results"][0]["properties"] == {"email": "jane.doe@acme.com", "firstname": "Jane"}
            search["filterGroups"][0]["filters"][0]["value"] = "nobody@example.com"
            status, body, _ = await sb.call("POST", f"{CONTACTS}/search", headers=BEARER, json_body=search)
            assert (status, body) == (200, {"total": 0, "results": []})

    run(scenario())


# --------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------


def _problems(body: dict[str, Any]) -> list[dict[str, Any]]:
    prefix = "Property values were not valid: "
    assert body["message"].startswith(prefix)
    return json.loads(body["message"][len(prefix) :])


def test_unknown_property_is_400_property_doesnt_exist_like_hubspot() -> None:
    async def scenario() -> None:
        async with running(hubspot) as sb:
            status, body, _ = await create(sb, {"email": "a@example.com", "signal_tags": "Signal;lead"})
            assert status == 400
            assert body["category"] == "VALIDATION_ERROR"
            assert _problems(body) == [
                {
                    "isValid": False,
                    "message": 'Property "signal_tags" does not exist',
                    "error": "PROPERTY_DOESNT_EXIST",
                    "name": "signal_tags",
                }
            ]
            assert sb.state.contacts == {}

        async with running(hubspot, custom_properties=["signal_tags"]) as sb:
            status, _, _ = await create(sb, {"email": "a@example.com", "signal_tags": "Signal;lead"})
            assert status == 201

    run(scenario())


def test_values_must_be_strings_within_65536_chars_and_valid() -> None:
    async def scenario() -> None:
        async with running(hubspot) as sb:
            status, body, _ = await create(
                sb,
                {
                    "email": "not-an-email",
                    "firstname": 7,
                    "jobtitle": "x" * 65537,
                    "lifecyclestage": "hot",
                    "createdate": "2020-01-01",
                },
            )
            assert status == 400
            errors = {p["name"]: p["error"] for p in _problems(body)}
            assert errors == {
                "email": "INVALID_EMAIL",
                "firstname": "INVALID_STRING",
                "jobtitle": "INVALID_LONG",
                "lifecyclestage": "INVALID_OPTION",
                "createdate": "READ_ONLY_VALUE",
            }
            status, _, _ = await create(sb, {"email": "a@example.com", "jobtitle": "x" * 65536})
            assert status == 201

    run(scenario())


def test_body_must_be_json_properties_object_without_unknown_keys() -> None:
    async def scenario() -> None:
        async with running(hubspot) as sb:
            status, body, _ = await sb.call(
                "POST", CONTACTS, headers=BEARER, json_body={"properties": {"email": "a@example.com"}, "tags": ["x"]}
            )
            assert (status, body["category"]) == (400, "VALIDATION_ERROR")
            assert '"tags"' in body["message"]
            status, _, _ = await sb.call("POST", CONTACTS, headers=BEARER, json_body={"email": "a@example.com"})
            assert status == 400
            status, _, _ = await sb.call(
                "POST", CONTACTS, headers={**BEARER, "Content-Type": "text/plain"}, raw='{"properties": {}}'
            )
            assert status == 415
            status, _, _ = await sb.call(
                "POST",
                CONTACTS,
                headers=BEARER,
                json_body={"properties": {"email": "a@example.com"}, "associations": []},
            )
            assert status == 201

    run(scenario())


# --------------------------------------------------------------------------
# rate limits
# --------------------------------------------------------------------------


def test_rate_limit_headers_on_every_answer_and_429_past_the_burst_quota() -> None:
    async def scenario() -> None:
        async with running(hubspot, quota=2, window=10, daily_quota=1000) as sb:
            status, _, headers = await create(sb, {"email": "a@example.com"})
            assert status == 201
            assert headers["X-HubSpot-RateLimit-Max"] == "2"
            assert headers["X-HubSpot-RateLimit-Remaining"] == "1"
            assert headers["X-HubSpot-RateLimit-Interval-Milliseconds"] == "10000"
            assert headers["X-HubSpot-RateLimit-Daily"] == "1000"
            assert headers["X-HubSpot-RateLimit-Daily-Remaining"] == "999"
            status, _, headers = await sb.call("GET", f"{CONTACTS}/1", headers={})
            assert (status, headers["X-HubSpot-RateLimit-Remaining"]) == (401, "0")

            status, body, headers = await create(sb, {"email": "b@example.com"})
            assert status == 429
            assert body["message"] == "You have reached your ten_secondly_rolling limit."
            assert (body["errorType"], body["policyName"]) == ("RATE_LIMIT", "TEN_SECONDLY_ROLLING")
            assert headers["X-HubSpot-RateLimit-Remaining"] == "0"
            assert sb.state.creates == 1

            later = time.time() + 11
            sb.state.clock = lambda: later
            status, _, headers = await create(sb, {"email": "b@example.com"})
            assert (status, headers["X-HubSpot-RateLimit-Remaining"]) == (201, "1")

    run(scenario())


def test_daily_limit_answers_429_with_the_daily_policy() -> None:
    async def scenario() -> None:
        async with running(hubspot, daily_quota=1) as sb:
            await create(sb, {"email": "a@example.com"})
            status, body, headers = await create(sb, {"email": "b@example.com"})
            assert status == 429
            assert (body["policyName"], body["message"]) == ("DAILY", "You have reached your daily limit.")
            assert headers["X-HubSpot-RateLimit-Daily-Remaining"] == "0"

    run(scenario())


# --------------------------------------------------------------------------
# batch upsert by email
# --------------------------------------------------------------------------

BATCH_UPSERT = f"{CONTACTS}/batch/upsert"


def upsert_input(email: str, **properties: str) -> dict[str, Any]:
    return {"idProperty": "email", "id": email, "properties": {"email": email, **properties}}


def test_batch_upsert_creates_and_updates_by_email_answering_200_when_all_went_through() -> None:
    async def scenario() -> None:
        async with running(hubspot) as sb:
            await create(sb, {"email": "old@example.com", "firstname": "Old", "jobtitle": "CTO"})
            status, body, headers = await sb.call(
                "POST",
                BATCH_UPSERT,
                headers=BEARER,
                json_body={
                    "inputs": [
                        upsert_input("new@example.com", firstname="New"),
                        upsert_input("OLD@example.com", jobtitle="CEO"),
                    ]
                },
            )
            assert status == 200
            assert body["status"] == "COMPLETE" and "errors" not in body and "numErrors" not in body
            assert [(r["id"], r["new"], r["properties"]["email"]) for r in body["results"]] == [
                ("2", True, "new@example.com"),
                ("1", False, "OLD@example.com"),
            ]
            assert re.match(r"^\d{4}-\d\d-\d\dT", body["startedAt"]) and body["completedAt"]
            assert headers["X-HubSpot-RateLimit-Daily-Remaining"] == str(250000 - 2)  # a batch is one request
            assert sb.state.contacts["1"]["jobtitle"] == "CEO" and sb.state.contacts["1"]["firstname"] == "Old"
            assert len(sb.state.contacts) == 2
            assert sb.state.batches == [["new@example.com", "OLD@example.com"]]

    run(scenario())


def test_batch_upsert_answers_207_with_an_error_naming_each_refused_input() -> None:
    async def scenario() -> None:
        async with running(hubspot) as sb:
            status, body, _ = await sb.call(
                "POST",
                BATCH_UPSERT,
                headers=BEARER,
                json_body={
                    "inputs": [
                        upsert_input("a@example.com"),
                        upsert_input("b..c@example.com"),
                        upsert_input("d@example.com", nosuch="x"),
                    ]
                },
            )
            assert status == 207
            assert [r["properties"]["email"] for r in body["results"]] == ["a@example.com"]
            assert body["numErrors"] == 2
            assert [(e["category"], e["context"]) for e in body["errors"]] == [
                ("VALIDATION_ERROR", {"id": ["b..c@example.com"]}),
                ("VALIDATION_ERROR", {"id": ["d@example.com"]}),
            ]
            assert "INVALID_EMAIL" in body["errors"][0]["message"]
            assert "PROPERTY_DOESNT_EXIST" in body["errors"][1]["message"]
            assert [c["email"] for c in sb.state.contacts.values()] == ["a@example.com"]

    run(scenario())


@pytest.mark.parametrize(
    "inputs, words",
    [
        ([upsert_input(f"p{i}@example.com") for i in range(101)], "limit is 100"),
        ([upsert_input("a@example.com"), upsert_input("A@example.com")], "Duplicate IDs"),
        ([{**upsert_input("a@example.com"), "idProperty": "firstname"}], "non-unique"),
        ([], "[inputs]"),
    ],
)
def test_batch_upsert_refuses_the_whole_request_with_a_400(inputs: list[Any], words: str) -> None:
    async def scenario() -> None:
        async with running(hubspot) as sb:
            status, body, _ = await sb.call("POST", BATCH_UPSERT, headers=BEARER, json_body={"inputs": inputs})
            assert (status, body["category"]) == (400, "VALIDATION_ERROR")
            assert words in body["message"]
            assert sb.state.contacts == {} and sb.state.batches == []

    run(scenario())


def test_batch_upsert_past_the_burst_quota_is_429_with_the_rate_limit_headers() -> None:
    async def scenario() -> None:
        async with running(hubspot, quota=1, window=10) as sb:
            await sb.call("POST", BATCH_UPSERT, headers=BEARER, json_body={"inputs": [upsert_input("a@example.com")]})
            status, body, headers = await sb.call(
                "POST", BATCH_UPSERT, headers=BEARER, json_body={"inputs": [upsert_input("b@example.com")]}
            )
            assert (status, body["policyName"]) == (429, "TEN_SECONDLY_ROLLING")
            assert headers["X-HubSpot-RateLimit-Remaining"] == "0"
            assert headers["X-HubSpot-RateLimit-Interval-Milliseconds"] == "10000"
            assert "X-HubSpot-RateLimit-Daily-Remaining" in headers
            assert sb.state.batches == [["a@example.com"]]

    run(scenario())


# --------------------------------------------------------------------------
# faults, admin, command line
# --------------------------------------------------------------------------


def test_faults_status_drop_and_drop_after() -> None:
    async def scenario() -> None:
        async with running(hubspot, faults=[503]) as sb:
            status, body = await sb.admin("POST", "faults", {"faults": ["drop", "drop-after", 429]})
            assert body["pending_faults"] == ["503", "drop", "drop-after", "429"]
            status, body, headers = await create(sb, {"email": "a@example.com"})
            assert (status, body["category"]) == (503, "INTERNAL_ERROR")
            assert "X-HubSpot-RateLimit-Remaining" in headers
            with pytest.raises(aiohttp.ClientConnectionError):
                await create(sb, {"email": "a@example.com"})
            assert sb.state.creates == 0
            with pytest.raises(aiohttp.ClientConnectionError):
                await create(sb, {"email": "a@example.com"})
            assert sb.state.creates == 1  # the write happened, the answer was lost
            status, body, _ = await create(sb, {"email": "a@example.com"})
            assert (status, body["policyName"]) == (429, "TEN_SECONDLY_ROLLING")
            status, body, _ = await create(sb, {"email": "a@example.com"})
            assert (status, body["category"]) == (409, "CONFLICT")
            _, state = await sb.admin("GET", "state")
            assert state["statuses"] == [503, "drop", "drop", 429, 409]
            assert [r["method"] for r in state["requests"]] == ["POST"] * 5
            status, body = await sb.admin("POST", "faults", {"faults": ["explode"]})
            assert status == 400 and "explode" in body["error"]

    run(scenario())


def test_reset_forgets_contacts_and_restores_quotas() -> None:
    async def scenario() -> None:
        async with running(hubspot, quota=5) as sb:
            await create(sb, {"email": "a@example.com"})
            status, body = await sb.admin("POST", "reset")
            assert status == 200
            assert (body["contacts"], body["statuses"], body["rate_limit"]["remaining"]) == ([], [], 5)
            status, _, _ = await create(sb, {"email": "a@example.com"})
            assert status == 201

    run(scenario())


def test_main_rejects_bad_numbers_and_faults(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--fault", "explode"], ["--window", "0"], ["--fault-rate", "2"]):
        with pytest.raises(SystemExit) as excinfo:
            hubspot.main(argv)
        assert excinfo.value.code == 2
    assert "explode" in capsys.readouterr().err
