"""The console as an aiohttp sub-application, mounted under ``/console``.

Pages (server-rendered) and the JSON API under ``/console/api/`` answer
from the same :class:`~engine.console.source.ConsoleSource`; the live list
is Server-Sent Events (``/console/api/stream``), polling the record every
``POLL_SECONDS`` on the server side, so a row recorded by another process
(a ``run``, a worker) shows up as well as one recorded here.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from ..loggers import package_logger
from ..state.record import RecordQuery
from . import playground, setup, views
from .figures import health
from .security import HEADERS, Guard, middleware
from .source import ConsoleSource, ReplayUnavailable, letter_integration

log = package_logger(__name__)

PREFIX = "/console"
POLL_SECONDS = 0.5
HEARTBEAT_SECONDS = 15.0
SOURCE: web.AppKey[ConsoleSource] = web.AppKey("source", ConsoleSource)
GUARD: web.AppKey[Guard] = web.AppKey("guard", Guard)
STOPPING: web.AppKey[asyncio.Event] = web.AppKey("stopping", asyncio.Event)
STATIC = {"console.js": "text/javascript", "console.css": "text/css", "favicon.svg": "image/svg+xml"}
FILTERS = ("integration", "outcome", "reason", "q")


def create_console_app(source: ConsoleSource, guard: Guard | None = None) -> web.Application:
    """The console; mount it with ``root.add_subapp("/console", app)`` (see :func:`mount`)."""
    app = web.Application(middlewares=[middleware(guard or Guard())])
    app[SOURCE] = source
    app[GUARD] = guard or Guard()
    app[STOPPING] = asyncio.Event()
    app.router.add_get("/", _to_events)
    app.router.add_get("/events", events_page)
    app.router.add_get("/events/{id}", event_page)
    app.router.add_get("/dead-letters", dead_letters_page)
    app.router.add_post("/dead-letters/replay", replay_form)
    app.router.add_post("/dead-letters/delete", delete_form)
    app.router.add_get("/dead-letters/{id}", letter_page)
    app.router.add_get("/integrations", integrations_page)
    app.router.add_get("/playground", playground_page)
    app.router.add_post("/api/playground", api_playground)
    app.router.add_post("/api/playground/golden", api_playground_golden)
    app.router.add_get(r"/api/playground/presets/{name:.+}", api_playground_preset)
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/api/events", api_events)
    app.router.add_get("/api/events/{id}", api_event)
    app.router.add_get("/api/stream", api_stream)
    app.router.add_get("/api/dead-letters", api_dead_letters)
    app.router.add_post("/api/dead-letters/replay", api_replay)
    app.router.add_post("/api/dead-letters/delete", api_delete)
    app.router.add_get("/api/dead-letters/{id}", api_letter)
    app.router.add_get("/api/integrations", api_integrations)
    setup.add_routes(app, setup.Setup.of(source, app[GUARD]))
    from . import authorise  # the OAuth code flow, on the set-up pages' state

    authorise.add_routes(app)

    async def stop_streams(_: web.Application) -> None:
        app[STOPPING].set()

    app.on_shutdown.append(stop_streams)
    return app


def mount(root: web.Application, console: web.Application) -> None:
    """Serve ``console`` under ``/console`` of ``root`` (an intake's app, or the console's own)."""
    root.add_subapp(PREFIX, console)


def standalone(console: web.Application) -> web.Application:
    root = web.Application()
    root.router.add_get("/", _to_events)
    mount(root, console)

    async def stop_streams(_: web.Application) -> None:
        console[STOPPING].set()

    root.on_shutdown.append(stop_streams)
    return root


def _redirect(where: str) -> web.Response:
    return web.Response(status=303, headers={"Location": where, **HEADERS})


async def _to_events(_: web.Request) -> web.Response:
    """``/`` opens the Event Debugger (async: aiohttp deprecates plain functions as handlers)."""
    return _redirect("/console/events")


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, content_type="text/html", charset="utf-8", status=status)


def _filters(request: web.Request) -> dict[str, str]:
    return {k: request.query.get(k, "").strip()[:200] for k in FILTERS}


def _query(filters: Mapping[str, str], limit: int = 200) -> RecordQuery:
    return RecordQuery(
        integration=filters.get("integration") or None,
        outcome=filters.get("outcome") or None,
        reason=filters.get("reason") or None,
        search=filters.get("q") or None,
        limit=limit,
    )


async def _off_loop(function: Any, *args: Any) -> Any:
    """Store reads are synchronous (SQLite, Redis): off the event loop, so an intake beside us keeps answering."""
    return await asyncio.to_thread(function, *args)


# -- pages ------------------------------------------------------------------
async def events_page(request: web.Request) -> web.Response:
    """The Event Debugger: the recorded events, newest first, filtered by the query string."""
    source, guard = request.app[SOURCE], request.app[GUARD]
    filters = _filters(request)
    _, cursor = await _off_loop(source.record.since, None)
    rows = await _off_loop(source.events, _query(filters))
    names = await _off_loop(source.integrations)
    return _html(views.events_page(rows, names, filters, cursor, csrf=guard.csrf))


async def event_page(request: web.Request) -> web.Response:
    """One recorded event: its outcome, every request and answer, masked."""
    source, guard = request.app[SOURCE], request.app[GUARD]
    entry = await _off_loop(source.event, request.match_info["id"])
    if entry is None:
        return _html(
            views.page(
                "Event not found",
                "events",
                "<p>This event is no longer in the record (it keeps "
                'the most recent ones only). <a href="/console/events">All events</a></p>',
                csrf=guard.csrf,
            ),
            status=404,
        )
    return _html(views.event_page(entry, csrf=guard.csrf))


async def dead_letters_page(request: web.Request) -> web.Response:
    """The dead letters, by integration and cause, with replay and delete forms."""
    source, guard = request.app[SOURCE], request.app[GUARD]
    letters = await _off_loop(source.dead_letters)
    causes = sorted({str(letter.get("cause")) for letter in letters})
    cause = request.query.get("cause") or None
    groups: dict[str, list[dict[str, Any]]] = {}
    for letter in letters:
        if cause is None or letter.get("cause") == cause:
            groups.setdefault(letter["integration"], []).append(letter)
    replayable = await _off_loop(source.replayable, list(groups))
    message = request.query.get("message")
    why = {name: await _off_loop(source.why_not_replayable, name) for name in groups if name not in replayable}
    return _html(
        views.dead_letters_page(
            groups, replayable, message[:300] if message else None, causes, cause, csrf=guard.csrf, why_not=why
        )
    )


async def replay_form(request: web.Request) -> web.Response:
    """Replay the chosen dead letters through their integration's connection (the form of the page)."""
    source, guard = request.app[SOURCE], request.app[GUARD]
    form = await request.post()
    if not guard.csrf_ok(request, str(form.get("csrf", ""))):
        return _html(
            views.page(
                "Refused",
                "dead-letters",
                "<p>The form was stale or came from another site; reload the page and try again.</p>",
                csrf=guard.csrf,
            ),
            status=403,
        )
    integration = str(form.get("integration", ""))
    if form.get("one"):
        ids: list[str] | None = [str(form["one"])]
    elif form.get("mode") == "all" and form.get("cause"):
        # "Replay all" under a cause filter: the letters the page showed, as they are now.
        ids = [
            str(letter["id"])
            for letter in await _off_loop(source.dead_letters, integration)
            if letter.get("cause") == form.get("cause")
        ]
        if not ids:
            return _message(f"No {form.get('cause')!s} letters are left for {integration}.")
    elif form.get("mode") == "all":
        ids = None
    else:
        ids = [str(v) for v in form.getall("selected", [])]
        if not ids:
            return _message("Nothing selected: tick the letters to replay, or press Replay all.")
    try:
        results = await source.replay(integration, ids)
    except ReplayUnavailable as exc:
        return _message(str(exc))
    delivered = sum(1 for r in results if r.outcome == "delivered")
    return _message(
        f"{integration}: replayed {len(results)}, delivered {delivered}, "
        f"{len(results) - delivered} still in the dead letters. The results are in the Event Debugger."
    )


def _refused() -> web.Response:
    return _html(
        views.page(
            "Refused",
            "dead-letters",
            "<p>The form was stale or came from another site; reload the page and try again.</p>",
            csrf="",
        ),
        status=403,
    )


async def delete_form(request: web.Request) -> web.Response:
    """Delete one letter or the selected, in two steps: this page asks, and only a confirmed form deletes."""
    source, guard = request.app[SOURCE], request.app[GUARD]
    form = await request.post()
    if not guard.csrf_ok(request, str(form.get("csrf", ""))):
        return _refused()
    integration = str(form.get("integration", ""))
    ids = [str(form["one"])] if form.get("one") else [str(v) for v in form.getall("selected", [])]
    if not ids:
        return _message("Nothing selected: tick the letters to delete.")
    if form.get("confirmed") != "yes":
        wanted = set(ids)
        letters = [
            letter for letter in await _off_loop(source.dead_letters, integration) if str(letter.get("id")) in wanted
        ]
        if not letters:
            return _message(f"Those letters are no longer in the dead letters of {integration}.")
        return _html(views.confirm_delete_page(integration, letters, csrf=guard.csrf))
    deleted = await _off_loop(source.delete, integration, ids)
    gone = len(ids) - len(deleted)
    return _message(
        f"{integration}: deleted {len(deleted)} dead letter(s)" + (f"; {gone} were already gone." if gone else ".")
    )


async def letter_page(request: web.Request) -> web.Response:
    """One dead letter: the event, its cause and its last answer."""
    source, guard = request.app[SOURCE], request.app[GUARD]
    letter = await _off_loop(source.letter, request.match_info["id"])
    if letter is None:
        return _html(
            views.page(
                "Dead letter not found",
                "dead-letters",
                "<p>This letter is no longer in the dead "
                'letters (replayed or deleted). <a href="/console/dead-letters">All dead letters</a>'
                "</p>",
                csrf=guard.csrf,
            ),
            status=404,
        )
    replayable = bool(await _off_loop(source.replayable, [letter["integration"]]))
    return _html(views.letter_page(letter, replayable, csrf=guard.csrf))


def _message(text: str) -> web.Response:
    from urllib.parse import urlencode

    return _redirect("/console/dead-letters?" + urlencode({"message": text}))


async def integrations_page(request: web.Request) -> web.Response:
    """Each integration's health: outcomes, lag, dead letters and charts."""
    return _html(views.integrations_page(await _figures(request.app[SOURCE]), csrf=request.app[GUARD].csrf))


async def _figures(source: ConsoleSource) -> list[dict[str, Any]]:
    import time

    rows = await _off_loop(source.record.window, time.time() - 86400)
    names = await _off_loop(source.integrations)
    letters: dict[str, int] = {}
    for entry in await _off_loop(source.letters.entries):
        name = letter_integration(entry)
        letters[name] = letters.get(name, 0) + 1
    out = health(rows, names, letters, lags=await _off_loop(source.lag))
    configured = {c.name: c for c in source.configured}
    made = {m.name: m for m in await _off_loop(source.made)}
    for item in out:
        name = item["integration"]
        found = configured.get(name)
        item["configured"] = (
            None
            if found is None
            else {
                "file": found.file,
                "preset": found.preset,
                "enabled": found.enabled,
                "replayable": found.unavailable is None,
                "why_not": found.unavailable,
            }
        )
        if name in made:
            opened = await _off_loop(source.open_made, name)
            why = opened if isinstance(opened, str) else None
            item["configured"] = {
                "origin": "console",
                "name": name,
                "preset": made[name].preset,
                "enabled": True,
                "replayable": why is None,
                "why_not": why,
            }
    return out


async def playground_page(request: web.Request) -> web.Response:
    """The playground: a preset's YAML and an event, run as a dry run in the page."""
    source = request.app[SOURCE]
    names = _playground_presets(source)
    asked = request.query.get("preset")
    chosen = asked if asked is not None and asked in names else (names[0] if names else "")
    text = _playground_source(source, chosen) if chosen else ""
    result = await _off_loop(playground.run, text, playground.EXAMPLE_EVENTS)
    return _html(
        views.playground_page(names, chosen, text, playground.EXAMPLE_EVENTS, result, csrf=request.app[GUARD].csrf)
    )


def _playground_presets(source: ConsoleSource) -> list[str]:
    """The integrations' presets first (by integration name), then every preset on the preset path."""
    mine = [c.integration for c in source.connections if c.preset.path is not None]
    return [*mine, *(n for n in playground.presets() if n not in mine)]


def _playground_source(source: ConsoleSource, name: str) -> str:
    connection = source.connection(name)
    if connection is not None and connection.preset.path is not None:
        return Path(connection.preset.path).read_text(encoding="utf-8")
    return playground.preset_source(name)


async def api_playground(request: web.Request) -> web.Response:
    """Dry-run an event through the YAML posted: the outcome and the masked request; nothing is sent."""
    if not request.app[GUARD].csrf_ok(request, None):
        return web.json_response({"error": "missing or wrong X-CSRF-Token"}, status=403)
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("yaml"), str) or not isinstance(body.get("events"), str):
        return web.json_response({"error": 'the body must be JSON: {"yaml": TEXT, "events": TEXT}'}, status=400)
    return web.json_response(await _off_loop(playground.run, body["yaml"], body["events"]), dumps=_dumps)


async def api_playground_golden(request: web.Request) -> web.Response:
    """The chosen preset's golden cases, run against the YAML in the page (nothing is sent)."""
    if not request.app[GUARD].csrf_ok(request, None):
        return web.json_response({"error": "missing or wrong X-CSRF-Token"}, status=403)
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("yaml"), str) or not isinstance(body.get("preset"), str):
        return web.json_response({"error": 'the body must be JSON: {"yaml": TEXT, "preset": NAME}'}, status=400)
    if len(body["yaml"]) > playground.MAX_YAML_CHARS:
        return web.json_response(
            {"error": f"the preset is longer than {playground.MAX_YAML_CHARS:,} characters"}, status=400
        )
    # An integration's cases are its preset's (golden/<preset name>/).
    connection = request.app[SOURCE].connection(body["preset"])
    name = connection.preset.name if connection is not None else body["preset"]
    return web.json_response(await _off_loop(playground.golden, body["yaml"], name), dumps=_dumps)


async def api_playground_preset(request: web.Request) -> web.Response:
    """A built-in or configured preset's YAML, for the playground to start from."""
    try:
        return web.json_response({"yaml": _playground_source(request.app[SOURCE], request.match_info["name"])})
    except (KeyError, OSError):
        return web.json_response({"error": "no such preset"}, status=404)


async def login_page(request: web.Request) -> web.Response:
    """The sign-in form (when the console is started with a token)."""
    return _html(views.login_page(None, csrf=request.app[GUARD].csrf))


async def login(request: web.Request) -> web.Response:
    """Check the token posted and set the session cookie."""
    guard = request.app[GUARD]
    if not guard.token:
        return _redirect("/console/events")
    if not guard.login_allowed():
        return _html(views.login_page("Too many attempts; wait a minute.", csrf=guard.csrf), status=429)
    form = await request.post()
    if not guard.check_login(str(form.get("token", ""))):
        return _html(views.login_page("That is not the console token.", csrf=guard.csrf), status=401)
    response = _redirect("/console/events")
    response.set_cookie(
        "signal_console", guard.session, httponly=True, samesite="Strict", path="/console", secure=request.secure
    )
    return response


async def static(request: web.Request) -> web.Response:
    """The console's script, style sheet and icon."""
    name = request.match_info["name"]
    if name not in STATIC:
        raise web.HTTPNotFound()
    body = resources.files("engine.console").joinpath("static", name).read_bytes()
    return web.Response(body=body, headers={"Content-Type": f"{STATIC[name]}; charset=utf-8"})


# -- the JSON API -------------------------------------------------------------
async def api_events(request: web.Request) -> web.Response:
    """The recorded events as JSON, filtered by the query string (``limit`` up to 1000)."""
    filters = _filters(request)
    try:
        limit = max(1, min(1000, int(request.query.get("limit", "100"))))
    except ValueError:
        return web.json_response({"error": "limit: a whole number from 1 to 1000"}, status=400)
    rows = await _off_loop(request.app[SOURCE].events, _query(filters, limit))
    return web.json_response({"events": rows}, dumps=_dumps)


async def api_event(request: web.Request) -> web.Response:
    """One recorded event as JSON."""
    entry = await _off_loop(request.app[SOURCE].event, request.match_info["id"])
    if entry is None:
        return web.json_response({"error": "no such event in the record"}, status=404)
    return web.json_response(entry, dumps=_dumps)


async def api_dead_letters(request: web.Request) -> web.Response:
    """The dead letters as JSON, of one integration (``?integration=``) or all."""
    letters = await _off_loop(request.app[SOURCE].dead_letters, request.query.get("integration") or None)
    return web.json_response({"dead_letters": letters}, dumps=_dumps)


async def api_replay(request: web.Request) -> web.Response:
    """``dlq replay`` for scripts: replay the dead letters named; what each replay ended as."""
    source, guard = request.app[SOURCE], request.app[GUARD]
    if not guard.csrf_ok(request, None):
        return web.json_response({"error": "missing or wrong X-CSRF-Token"}, status=403)
    try:
        body = await request.json()
    except ValueError:
        return web.json_response({"error": 'the body must be JSON: {"integration": NAME, "ids": [...]}'}, status=400)
    integration, ids = (body.get("integration"), body.get("ids")) if isinstance(body, dict) else (None, None)
    if not isinstance(integration, str) or not (
        ids is None or (isinstance(ids, list) and all(isinstance(i, str) for i in ids))
    ):
        return web.json_response(
            {"error": "integration: a name; ids: a list of letter ids, or null for all"}, status=400
        )
    try:
        results = await source.replay(integration, ids)
    except ReplayUnavailable as exc:
        return web.json_response({"error": str(exc)}, status=409)
    return web.json_response({"results": source.redactor.redact([r.to_dict() for r in results])}, dumps=_dumps)


async def api_letter(request: web.Request) -> web.Response:
    """One dead letter as JSON."""
    letter = await _off_loop(request.app[SOURCE].letter, request.match_info["id"])
    if letter is None:
        return web.json_response({"error": "no such dead letter"}, status=404)
    return web.json_response(letter, dumps=_dumps)


async def api_delete(request: web.Request) -> web.Response:
    """``dlq delete`` for scripts: ``{"integration": NAME, "ids": [...]}``; which were deleted, which not found."""
    source, guard = request.app[SOURCE], request.app[GUARD]
    if not guard.csrf_ok(request, None):
        return web.json_response({"error": "missing or wrong X-CSRF-Token"}, status=403)
    try:
        body = await request.json()
    except ValueError:
        body = None
    integration, ids = (body.get("integration"), body.get("ids")) if isinstance(body, dict) else (None, None)
    if (
        not isinstance(integration, str)
        or not isinstance(ids, list)
        or not ids
        or not all(isinstance(i, str) for i in ids)
    ):
        return web.json_response(
            {"error": 'the body must be JSON: {"integration": NAME, "ids": [ID, ...]} (at least one id)'}, status=400
        )
    deleted = await _off_loop(source.delete, integration, ids)
    return web.json_response({"deleted": deleted, "not_found": [i for i in dict.fromkeys(ids) if i not in deleted]})


async def api_integrations(request: web.Request) -> web.Response:
    """Each integration's health figures as JSON (what the integrations page shows)."""
    return web.json_response({"integrations": await _figures(request.app[SOURCE])}, dumps=_dumps)


async def api_stream(request: web.Request) -> web.StreamResponse:
    """New rows matching the filters, as Server-Sent Events; ``Last-Event-ID`` resumes after a reconnect."""
    source, stopping = request.app[SOURCE], request.app[STOPPING]
    query = _query(_filters(request))
    cursor = request.headers.get("Last-Event-ID") or request.query.get("cursor") or None
    if cursor is None:
        _, cursor = await _off_loop(source.record.since, None)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            **{k: v for k, v in HEADERS.items() if k != "Cache-Control"},
        }
    )
    await response.prepare(request)
    await response.write(b"retry: 1000\n\n")
    quiet = 0.0
    try:
        while not stopping.is_set():
            rows, cursor = await _off_loop(source.record.since, cursor)
            rows = source.redactor.redact([r for r in rows if query.matches(r)])
            for row in rows:
                await response.write(f"id: {cursor}\nevent: row\ndata: {_dumps(row)}\n\n".encode())
            if not rows:
                quiet += POLL_SECONDS
                if quiet >= HEARTBEAT_SECONDS:
                    await response.write(f"id: {cursor}\n: still here\n\n".encode())
                    quiet = 0.0
            else:
                quiet = 0.0
            try:
                await asyncio.wait_for(stopping.wait(), POLL_SECONDS)
            except TimeoutError:
                pass
    except ConnectionResetError:
        pass  # the page was closed
    return response


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)
