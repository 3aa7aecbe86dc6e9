"""The *Authorise* button: ``signal-engine auth`` for an integration set up in the console.

The same flow and the same functions as the command
(:mod:`engine.delivery.auth.authorization_code`): the browser is sent to the
preset's ``authorize_url`` with a fresh ``state``; the destination redirects
back to ``/console/integrations/callback``, which trades the code for tokens
and stores them where ``auth`` does (the state's token store, under the
client id), so a delivery with these settings uses them. The redirect URI
must be one the app lists, as for the command.
"""

from __future__ import annotations

import secrets
import time
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

from ..delivery.auth.authorization_code import (
    AuthorisationError,
    Client,
    authorization_url,
    can_authorise,
    exchange_code,
    refused_redirect,
    store_tokens,
)
from ..delivery.transport import AiohttpTransport
from ..language.model import Preset
from ..language.settings import Settings, SettingsError, resolve
from ..redaction import Redactor
from ..state.console_integrations import SecretsUnavailable, StoredIntegration
from .setup import SETUP, Setup, _preset

CALLBACK = "/console/integrations/callback"
PENDING_SECONDS = 600.0  # as long as a code may live: an older redirect is refused


def add_routes(app: web.Application) -> None:
    app.router.add_post("/integrations/{name}/authorise", start)
    app.router.add_get("/integrations/callback", callback)


def settings_of(setup: Setup, item: StoredIntegration, preset: Preset) -> Settings:
    """The stored values with the secrets opened; a missing refresh token is fine (this flow makes one)."""
    values: dict[str, Any] = dict(item.values)
    if item.sealed:
        if setup.box is None:
            raise SecretsUnavailable(str(setup.no_secrets))
        values.update({name: setup.box.open(token) for name, token in item.sealed.items()})
    return resolve(preset.settings, values, require=False)


def _back(message: str) -> web.Response:
    return web.Response(
        status=303, headers={"Location": "/console/integrations/new?" + urlencode({"message": message})}
    )


async def start(request: web.Request) -> web.Response:
    """Start an integration's authorisation: redirect to the destination's consent page."""
    setup = request.app[SETUP]
    form = await request.post()
    if not setup.guard.csrf_ok(request, str(form.get("csrf", ""))):
        from . import setup_views

        return web.Response(text=setup_views.refused(setup.guard.csrf), content_type="text/html", status=403)
    name = request.match_info["name"]
    item = setup.store.get(name) if setup.store is not None else None
    preset = _preset(item.preset) if item is not None else None
    if item is None or preset is None:
        return _back(f"cannot authorise {name}: no such integration set up here")
    why = can_authorise(preset.auth)
    if why is not None:
        return _back(f"cannot authorise {name}: {why}")
    try:
        settings = settings_of(setup, item, preset)
    except (SecretsUnavailable, SettingsError) as exc:
        return _back(f"cannot authorise {name}: {str(exc).splitlines()[0]}")
    assert preset.auth is not None
    state = secrets.token_urlsafe(32)  # ties the redirect to this attempt (RFC 6749 §10.12)
    redirect_uri = f"{request.scheme}://{request.host}{CALLBACK}"
    now = time.monotonic()
    for old in [s for s, p in setup.pending.items() if now - p[2] > PENDING_SECONDS]:
        del setup.pending[old]
    setup.pending[state] = (name, redirect_uri, now)
    return web.Response(status=303, headers={"Location": authorization_url(preset.auth, settings, redirect_uri, state)})


async def callback(request: web.Request) -> web.Response:
    """Where the destination sends the browser back: exchange the code for tokens and store them."""
    setup = request.app[SETUP]
    answer = dict(request.query)
    pending = setup.pending.pop(answer.get("state", ""), None)
    if pending is None or time.monotonic() - pending[2] > PENDING_SECONDS:
        return _back(
            "this authorisation is unknown or too old (each Authorise is good for one attempt); press Authorise again"
        )
    name, redirect_uri, _ = pending
    if "error" in answer:
        return _back(f"{name}: {refused_redirect(answer)}")
    item = setup.store.get(name) if setup.store is not None else None
    preset = _preset(item.preset) if item is not None else None
    if item is None or preset is None or preset.auth is None or not answer.get("code"):
        return _back(f"{name}: the redirect carried no code, or the integration is gone; nothing was stored")
    try:
        settings = settings_of(setup, item, preset)
        redactor = Redactor(settings.secrets())
        timeout = aiohttp.ClientTimeout(total=preset.delivery.timeout_seconds)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            transport = AiohttpTransport(session, preset.delivery.timeout_seconds, preset.delivery.max_response_bytes)
            echoed = {k: answer[k] for k in preset.auth.echo_redirect_params if k in answer}
            tokens = await exchange_code(
                preset.auth, settings, transport, answer["code"], redirect_uri, redactor, echoed=echoed
            )
        for value in (tokens.refresh_token, tokens.access_token):
            if value:
                setup.source.redactor.add(value)
        replaced = await store_tokens(setup.source.backend.tokens(Client.of(preset.auth, settings).client_id), tokens)
    except (AuthorisationError, SecretsUnavailable, SettingsError) as exc:
        return _back(f"{name}: {str(exc).splitlines()[0]}")
    except OSError as exc:
        return _back(
            f"{name}: the tokens could not be stored ({exc.strerror or type(exc).__name__}); press Authorise again"
        )
    return _back(
        f"Authorised {name}; the tokens are stored in the state"
        f"{', replacing the earlier authorisation' if replaced else ''}."
    )
