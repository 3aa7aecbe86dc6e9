"""Settings without a refresh token: the engine continues the chain a person authorised into the state.

``signal-engine auth`` stores the tokens of an authorization code as the
*authorisation* of a client_id (``AUTHORISED_CHAIN``). These tests put such
a chain in a real state directory and deliver to the Outreach sandbox over
loopback; what the sandbox saw is the proof. The CLI flow itself is in
``tests/test_cli_auth.py``.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest

from engine import outcome as oc
from engine.cli.main import main
from engine.compile.compiler import load_preset
from engine.delivery.auth.base import AuthFailure
from engine.delivery.auth.oauth2 import OAuth2Auth
from engine.language.settings import SettingsError, resolve
from engine.redaction import Redactor
from engine.runtime import Engine
from engine.sandbox import outreach
from engine.state.sqlite import SqliteState
from engine.state.token_store import AUTHORISED_CHAIN, MemoryTokenStore, StoredTokens
from tests.sandbox_helpers import running

PRESET = "outreach/lead-capture"


def credentials() -> dict[str, str]:
    return {"client_id": f"app-{secrets.token_hex(4)}", "client_secret": f"cs-{secrets.token_hex(16)}"}


def lead(i: int) -> dict[str, Any]:
    """The product page's "Demo Requested" shape, consenting and identified."""
    return {
        "type": "track",
        "event": "Demo Requested",
        "messageId": f"lead-{i}",
        "userId": f"user-{i}",
        "traits": {"email": f"lead{i}@acme.com", "firstName": "Jane", "lastName": "Doe"},
        "context": {"consent": {"canonical": {"marketing": True}}},
    }


def authorise(state_dir: Path, client_id: str, tokens: StoredTokens) -> None:
    """What `signal-engine auth` leaves behind."""
    backend = SqliteState(state_dir)
    try:
        backend.tokens(client_id).save(tokens, AUTHORISED_CHAIN)
    finally:
        backend.close()


def stored(state_dir: Path, client_id: str, origin: str = AUTHORISED_CHAIN) -> StoredTokens | None:
    backend = SqliteState(state_dir)
    try:
        return backend.tokens(client_id).load(origin)
    finally:
        backend.close()


def test_without_a_refresh_token_setting_delivery_mints_with_the_authorised_one(tmp_path: Path) -> None:
    async def scenario() -> None:
        creds = credentials()
        authorised = f"rt-{secrets.token_hex(16)}"
        async with running(outreach, mint_limit=0, refresh_token=authorised, **creds) as sandbox:
            authorise(tmp_path, creds["client_id"], StoredTokens(authorised))
            settings = {**creds, "base_url": sandbox.base}  # no refresh_token
            async with Engine.from_preset(PRESET, settings, state=tmp_path) as engine:
                first = [await engine.process(lead(i), i) for i in range(2)]
            assert [o.outcome for o in first] == [oc.DELIVERED, oc.DELIVERED]
            _, seen = await sandbox.admin("GET", "state")
            assert seen["mints"] == 1 and seen["token_statuses"] == [200]
            assert authorised not in seen["refresh_tokens"]  # spent upstream: it was the one used
            chain = stored(tmp_path, creds["client_id"])
            assert chain is not None and chain.refresh_token == seen["refresh_tokens"][0]  # rotation kept
            assert chain.access_token

            # The next engine reuses the stored access token: no second mint.
            async with Engine.from_preset(PRESET, settings, state=tmp_path) as engine:
                again = await engine.process(lead(9), 9)
            assert again.outcome == oc.DELIVERED and engine.mints == 0
            assert (await sandbox.admin("GET", "state"))[1]["mints"] == 1

    asyncio.run(scenario())


def test_a_refresh_token_in_the_settings_wins_over_the_authorisation(tmp_path: Path) -> None:
    async def scenario() -> None:
        creds = credentials()
        configured = f"rt-{secrets.token_hex(16)}"
        async with running(outreach, mint_limit=0, refresh_token=configured, **creds) as sandbox:
            revoked = StoredTokens(f"rt-revoked-{secrets.token_hex(8)}")
            authorise(tmp_path, creds["client_id"], revoked)
            settings = {**creds, "refresh_token": configured, "base_url": sandbox.base}
            async with Engine.from_preset(PRESET, settings, state=tmp_path) as engine:
                result = await engine.process(lead(1), 1)
            assert result.outcome == oc.DELIVERED
            assert (await sandbox.admin("GET", "state"))[1]["token_statuses"] == [200]  # never the revoked one
            assert stored(tmp_path, creds["client_id"]) == revoked  # the authorisation is left alone
            assert stored(tmp_path, creds["client_id"], configured) is not None

    asyncio.run(scenario())


def test_without_either_token_delivery_does_not_start_and_says_how_to_authorise(tmp_path: Path) -> None:
    async def scenario() -> None:
        creds = credentials()
        async with running(outreach, **creds) as sandbox:
            settings = {**creds, "base_url": sandbox.base}
            engine = Engine.from_preset(PRESET, settings, state=tmp_path)  # the settings themselves are fine
            with pytest.raises(SettingsError) as info:
                async with engine:
                    pytest.fail("delivery started without a refresh token")
            assert str(info.value) == (
                f"required setting 'refresh_token' is missing, and the state directory {tmp_path} holds no "
                f"authorisation for client_id '{creds['client_id']}': authorise the app once with "
                f"`signal-engine auth {PRESET} --settings FILE --state {tmp_path}`, or set refresh_token"
            )
            _, seen = await sandbox.admin("GET", "state")
            assert seen["statuses"] == [] and seen["token_statuses"] == []

            # The engine let go of the state it opened.
            with pytest.raises(sqlite3.ProgrammingError):
                engine.state.db.conn.execute("SELECT 1")  # type: ignore[attr-defined]

    asyncio.run(scenario())


def test_cli_run_without_a_refresh_token_is_a_configuration_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = tmp_path / "settings.yaml"
    settings.write_text("client_id: app\nclient_secret: cs-123456\nbase_url: http://127.0.0.1:9\n", encoding="utf-8")
    events = tmp_path / "events.ndjson"
    events.write_text('{"type": "track", "event": "Demo Requested"}\n', encoding="utf-8")
    state = tmp_path / "state"
    code = main(["run", PRESET, "--events", str(events), "--settings", str(settings), "--state", str(state)])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""  # before any event: no outcome line at all
    assert captured.err == (
        f"signal-engine: required setting 'refresh_token' is missing, and the state directory {state} holds no "
        f"authorisation for client_id 'app': authorise the app once with `signal-engine auth {PRESET} "
        f"--settings FILE --state {state}`, or set refresh_token\n"
    )
    assert stat.S_IMODE(state.stat().st_mode) == 0o700


def test_a_dry_run_needs_no_refresh_token_anywhere() -> None:
    preset = load_preset(PRESET)
    settings = resolve(preset.settings, {"client_id": "app", "client_secret": "cs-123456"}, require=True)
    assert settings["refresh_token"] is None


def test_minting_without_any_refresh_token_fails_for_a_person_without_asking_the_endpoint() -> None:
    """The backstop behind the engine's check, for hosts that build the auth themselves."""
    preset = load_preset(PRESET)
    settings = resolve(preset.settings, {"client_id": "app", "client_secret": "cs-123456"}, require=True)
    sent: list[Any] = []

    class Recorder:
        async def send(self, request: Any) -> Any:
            sent.append(request)
            raise AssertionError("the token endpoint was asked")

    assert preset.auth is not None
    auth = OAuth2Auth(preset.auth, settings, MemoryTokenStore(), Redactor(), preset.delivery.retries, Recorder())
    with pytest.raises(AuthFailure) as info:
        asyncio.run(auth.credential())
    assert info.value.fatal and "authorise the app" in str(info.value)
    assert sent == []
