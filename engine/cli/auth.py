"""``signal-engine auth PRESET --settings FILE``: authorise a preset's OAuth app once, in a browser.

The destination's side of the authorization code grant is declared in the
preset (``auth.authorize_url``, ``auth.scopes``, ``auth.token_url``); this
command plays the person's part without them copying codes around:

1. it listens on ``http://127.0.0.1:PORT/callback`` and prints the
   authorization URL (client id, scopes, that redirect URI and a fresh
   ``state``); the person opens it, signs in and approves;
2. the destination redirects the browser back to the listener, which keeps
   only the answer carrying this ``state``;
3. the code is exchanged at the token endpoint, and the refresh and access
   tokens are stored in the state directory (``state.db``, 0600), as the
   authorisation of this client_id.

A later ``run``, ``dlq replay`` or ``Engine`` on the same state directory,
with settings that name no refresh token, continues that chain. A refresh
token in the settings would win over it, so the command refuses to start
while the settings file sets one. Nothing secret is printed: not the
client secret, the code, nor any token.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..language.model import Preset
from ..language.settings import Settings, SettingsError, load_settings_file, resolve
from .common import UsageError, add_preset_path_option, add_reset_state_option, check_state_dir, load_preset_arg
from .report import EXIT_EVENTS_FAILED, EXIT_OK

DEFAULT_PORT = 8750
DEFAULT_TIMEOUT_SECONDS = 300.0


def register(sub: Any) -> None:
    auth = sub.add_parser(
        "auth",
        help="authorise a preset's OAuth app once, in a browser, and store its tokens",
        description="Print the destination's authorization URL, wait on a loopback redirect URI for the person's "
        "approval, exchange the code and store the refresh and access tokens in the state directory "
        "(0600). A run with the same settings and --state then needs no refresh_token setting. "
        "Exit status: 0 authorised; 1 the authorisation did not complete (denied, timed out, the code "
        "refused); 2 a usage or configuration error.",
    )
    auth.add_argument("preset", metavar="PRESET", help="built-in name (destination/preset) or path to a YAML preset")
    auth.add_argument(
        "--settings",
        metavar="FILE",
        help="YAML mapping of setting values (the app's client id and secret; no refresh_token)",
    )
    auth.add_argument(
        "--state",
        metavar="DIR",
        default=".signal-state",
        help="where the tokens are stored; use the same with run (default: %(default)s)",
    )
    add_reset_state_option(auth)
    auth.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        help="loopback port of the redirect URI http://127.0.0.1:PORT/callback, which the app must "
        "list as a redirect URI; 0 picks a free port, for destinations that accept any "
        "loopback port (RFC 8252) (default: %(default)s)",
    )
    auth.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help="how long to wait for the browser's redirect (default: %(default)g)",
    )
    auth.add_argument(
        "--open",
        action="store_true",
        help="also open the URL in the default web browser (by default it is only printed)",
    )
    add_preset_path_option(auth)
    auth.set_defaults(func=cmd_auth)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (0 to 65535)")
    return port


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def cmd_auth(args: argparse.Namespace) -> int:
    import asyncio  # the event loop and the web machinery only when the command runs

    from ..delivery.auth.authorization_code import can_authorise

    preset = load_preset_arg(args)
    why_not = can_authorise(preset.auth)
    if why_not:
        raise UsageError(f"{preset.name}: {why_not}")
    settings = _settings(args, preset)
    check_state_dir(args.state, reset=args.reset_state)
    return asyncio.run(_authorise(args, preset, settings))


def _settings(args: argparse.Namespace, preset: Preset) -> Settings:
    """The app's settings; a refresh token in them is refused, since a run would use it instead."""
    assert preset.auth is not None
    supplied: dict[str, Any] = {}
    where: dict[str, str] = {}
    if args.settings:
        supplied, where = load_settings_file(args.settings)
    name = preset.auth.refresh_token_setting or ""
    if name in supplied:
        raise UsageError(
            f"{where[name]}: {name} is set here, and a run would use it rather than the authorisation "
            f"this command stores; delete that line (the new refresh token is kept in --state "
            f"{args.state})"
        )
    try:
        return resolve(preset.settings, supplied, require=True, where=where)
    except SettingsError as exc:
        if args.settings:
            raise
        raise SettingsError([*exc.problems, "pass --settings FILE with the app's client id and secret"]) from None


async def _authorise(args: argparse.Namespace, preset: Preset, settings: Settings) -> int:
    import asyncio
    import secrets
    import webbrowser

    import aiohttp

    from ..delivery.auth.authorization_code import (
        AuthorisationError,
        Client,
        authorization_url,
        exchange_code,
        refused_redirect,
        store_tokens,
    )
    from ..delivery.transport import AiohttpTransport
    from ..redaction import Redactor
    from ..state.backend import open_state
    from .log_handlers import configure_logging
    from .loopback_redirect import LoopbackRedirect

    auth = preset.auth
    assert auth is not None
    redactor = Redactor(settings.secrets())
    configure_logging(redactor, verbose=False)
    state = secrets.token_urlsafe(32)  # ties the redirect to this attempt (RFC 6749 §10.12)
    receiver = LoopbackRedirect(state, port=args.port, warn=_say)
    try:
        redirect_uri = await receiver.start()
    except OSError as exc:
        raise UsageError(
            f"--port {args.port}: cannot listen on 127.0.0.1:{args.port} "
            f"({exc.strerror or type(exc).__name__}); pass another --port (and list that redirect URI "
            "in the app)"
        ) from None
    try:
        url = authorization_url(auth, settings, redirect_uri, state)
        _say(f"signal-engine: to authorise {preset.name}, open this URL in a browser, sign in and approve:")
        print(url, flush=True)
        _say(
            f"signal-engine: waiting up to {args.timeout:g}s for the redirect to {redirect_uri} "
            "(the app must list it as a redirect URI)"
        )
        if args.open and not await asyncio.get_running_loop().run_in_executor(None, webbrowser.open, url):
            _say("signal-engine: no web browser could be opened here; open the URL yourself")
        try:
            answer = await receiver.wait(args.timeout)
        except TimeoutError:
            return _failed(
                f"no redirect came back within {args.timeout:g}s; nothing was stored. Run the command "
                "again and open the new URL (each one is good for one attempt)"
            )
        if "error" in answer:
            return _failed(refused_redirect(answer))
        timeout = aiohttp.ClientTimeout(total=preset.delivery.timeout_seconds)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                transport = AiohttpTransport(
                    session, preset.delivery.timeout_seconds, preset.delivery.max_response_bytes
                )
                echoed = {name: answer[name] for name in auth.echo_redirect_params if name in answer}
                tokens = await exchange_code(
                    auth, settings, transport, answer["code"], redirect_uri, redactor, echoed=echoed
                )
            client_id = Client.of(auth, settings).client_id
            backend = open_state(args.state)
            try:
                replaced = await store_tokens(backend.tokens(client_id), tokens)
            finally:
                backend.close()
        except AuthorisationError as exc:
            return _failed(str(exc))
        except OSError as exc:  # the state refused the write (a full disk): the new tokens are lost
            return _failed(
                f"the tokens could not be stored in --state {args.state} "
                f"({exc.strerror or type(exc).__name__}); free some space and run the command again"
            )
    finally:
        await receiver.close()
    store = Path(args.state) / "state.db"
    _say(
        f"signal-engine: authorised {preset.name} for client_id {client_id!r}; the tokens are stored in {store} "
        f"(0600){', replacing the earlier authorisation' if replaced else ''}. A run with these settings and "
        f"--state {args.state} uses them"
    )
    return EXIT_OK


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _failed(reason: str) -> int:
    _say(f"signal-engine: authorisation failed: {reason}")
    return EXIT_EVENTS_FAILED
