"""Token-answer values: ``auth.token_values`` fields (Salesforce's instance_url, Zoho's api_domain) in templates.

A made-up OAuth destination on loopback answers its token requests with an
``instance_url`` naming where the API lives; the preset's request URL is
``{token.instance_url}/v1/contacts``. The engine must send there, keep the
value with the access token (a restart that reuses the token knows it too),
and ``check`` must refuse what cannot work or would leak a token.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from engine import outcome as oc
from engine.compile.compiler import PresetError, load_preset
from engine.pipeline.prepare import Pipeline
from engine.runtime import Engine
from language_fixtures import ACME_PRESET, lead, write_acme

OAUTH = """\
auth:
  type: oauth2_refresh_token
  token_url: "{settings.base_url}/oauth/token"
  client_id_setting: client_id
  client_secret_setting: client_secret
  refresh_token_setting: refresh_token
  token_values: [instance_url]
"""
SETTINGS = """\
settings:
  client_id: {type: string, required: true}
  client_secret: {type: string, required: true, secret: true}
  refresh_token: {type: string, required: true, secret: true}
"""
OAUTH_EDITS = (
    ("settings:\n  api_key: {type: string, required: true, secret: true}\n", SETTINGS),
    ("auth:\n  type: api_key\n  key_setting: api_key\n  in: query\n  name: key\n", OAUTH),
    ('url: "{settings.base_url}/v1/contacts"\n', 'url: "{token.instance_url}/v1/contacts"\n'),
)
CREDENTIALS = {"client_id": "client-1", "client_secret": "client-secret-1", "refresh_token": "refresh-token-1"}


def oauth_preset(tmp_path: Path, *edits: tuple[str, str]) -> Path:
    return write_acme(tmp_path, ACME_PRESET, *OAUTH_EDITS, *edits)


class Destination:
    """Token endpoint at the origin; the API under /instance-7, as the token answer says."""

    def __init__(self, instance: bool = True) -> None:
        self.instance = instance  # False: the token answer leaves instance_url out
        self.mints = 0
        self.seen: list[tuple[str, str, str]] = []
        self.base = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/oauth/token", self.token)
        app.router.add_post("/instance-7/v1/contacts", self.create)
        return app

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        assert form["grant_type"] == "refresh_token"
        self.mints += 1
        answer = {
            "access_token": f"access-token-{self.mints}",
            "refresh_token": f"rotated-{self.mints}",
            "expires_in": 3600,
            "instance_url": f"{self.base}/instance-7",
        }
        if not self.instance:
            del answer["instance_url"]
        return web.json_response(answer)

    async def create(self, request: web.Request) -> web.Response:
        self.seen.append((request.method, request.path, request.headers.get("Authorization", "")))
        return web.json_response({"id": len(self.seen)}, status=201)


async def serving(destination: Destination) -> web.AppRunner:
    runner = web.AppRunner(destination.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    destination.base = f"http://127.0.0.1:{port}"
    return runner


def test_the_request_goes_to_the_token_answers_instance_and_a_restart_still_knows_it(tmp_path: Path) -> None:
    preset_path = oauth_preset(tmp_path / "preset")
    state = tmp_path / "state"

    async def scenario() -> None:
        destination = Destination()
        runner = await serving(destination)
        try:
            settings = {**CREDENTIALS, "base_url": destination.base}
            async with Engine.from_preset(str(preset_path), settings, state=state) as engine:
                first = await engine.process(lead(message_id="m-1"), 0)
            async with Engine.from_preset(str(preset_path), settings, state=state) as engine:
                second = await engine.process(lead(email="joe@acme.test", message_id="m-2"), 1)
        finally:
            await runner.cleanup()
        assert [first.outcome, second.outcome] == [oc.DELIVERED, oc.DELIVERED], (first.to_dict(), second.to_dict())
        assert first.request["url"] == f"{destination.base}/instance-7/v1/contacts"
        assert first.request["headers"]["Authorization"] == "Bearer ***"
        # One mint: the second engine reused the stored token, and knew its instance_url with it.
        assert destination.mints == 1
        assert destination.seen == [("POST", "/instance-7/v1/contacts", "Bearer access-token-1")] * 2
        assert "access-token-1" not in json.dumps([first.to_dict(), second.to_dict()])

    asyncio.run(scenario())


def test_a_token_answer_without_the_declared_value_is_not_used(tmp_path: Path) -> None:
    """Without instance_url the URL cannot be built: the answer is retried, then the event dead-lettered."""
    preset_path = oauth_preset(tmp_path / "preset")

    async def scenario() -> Any:
        destination = Destination(instance=False)
        runner = await serving(destination)

        async def no_sleep(_: float) -> None:
            return None

        try:
            settings = {**CREDENTIALS, "base_url": destination.base}
            async with Engine.from_preset(str(preset_path), settings, sleep=no_sleep) as engine:
                return await engine.process(lead(), 0), destination
        finally:
            await runner.cleanup()

    outcome, destination = asyncio.run(scenario())
    assert (outcome.outcome, outcome.cause) == (oc.DEAD_LETTERED, "auth_unavailable"), outcome.to_dict()
    assert "auth.token_values" in outcome.detail
    assert destination.mints == 3 and destination.seen == []  # max_attempts: 3


def test_a_dry_run_shows_where_the_token_value_goes(tmp_path: Path) -> None:
    preset = load_preset(str(oauth_preset(tmp_path)))
    outcome = Pipeline(preset, {**CREDENTIALS}).dry_run(lead(), 0)
    assert outcome.outcome == oc.WOULD_SEND
    assert outcome.request["url"] == "{token.instance_url}/v1/contacts"


def problems(path: Path) -> list[str]:
    with pytest.raises(PresetError) as info:
        load_preset(str(path))
    return info.value.problems


def line_of(path: Path, needle: str) -> str:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if needle in line:
            return f"{path}:{number}:"
    raise AssertionError(needle)


@pytest.mark.parametrize("secret", ["access_token", "refresh_token", "id_token"])
def test_check_refuses_a_token_as_a_token_value(tmp_path: Path, secret: str) -> None:
    path = oauth_preset(tmp_path, ("token_values: [instance_url]", f"token_values: [instance_url, {secret}]"))
    [line] = problems(path)
    assert line.startswith(line_of(path, "token_values:")) and f"'{secret}' is a secret of the token answer" in line


def test_check_refuses_an_undeclared_token_value_at_its_line(tmp_path: Path) -> None:
    path = oauth_preset(tmp_path, ('url: "{token.instance_url}/v1/contacts"', 'url: "{token.api_domain}/v1/contacts"'))
    [line] = problems(path)
    assert line.startswith(line_of(path, "{token.api_domain}"))
    assert "{token.api_domain} is not in auth.token_values (declared: instance_url)" in line


def test_check_refuses_a_token_value_without_an_oauth_kind(tmp_path: Path) -> None:
    path = write_acme(
        tmp_path, ACME_PRESET, ('url: "{settings.base_url}/v1/contacts"\n', 'url: "{token.instance_url}/v1/contacts"\n')
    )
    [line] = problems(path)
    assert line.startswith(line_of(path, "{token.instance_url}")) and "declares no token_values" in line


def test_check_refuses_a_token_value_in_the_token_url(tmp_path: Path) -> None:
    path = oauth_preset(
        tmp_path, ('token_url: "{settings.base_url}/oauth/token"', 'token_url: "{token.instance_url}/oauth/token"')
    )
    [line] = problems(path)
    assert line.startswith(line_of(path, "token_url:")) and "unknown placeholder {token.instance_url}" in line
