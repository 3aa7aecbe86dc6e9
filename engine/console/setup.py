"""Setting up an integration in the console: a preset, a form made from its ``settings:``, Save.

The form is generated from the preset's declarations
(:class:`~engine.language.settings.SettingSpec`): a secret is a password
field that is never filled back in (write-only: leaving it empty keeps the
stored one), the consent setting is a set of categories to tick. Saving
checks the values with :func:`~engine.language.settings.resolve`, as
``check`` does, and each problem is shown next to its field. Integrations
of an integrations file stay read-only here; those saved here live in the
state store (:mod:`engine.state.console_integrations`), their secrets sealed
with the key in ``SIGNAL_CONSOLE_SECRET_KEY``; without it the console
refuses to store a secret and the page says why.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import MultiDict

from ..compile import load_preset
from ..language.model import Preset
from ..language.settings import SettingsError, resolve
from ..state.console_integrations import (
    IntegrationStore,
    SecretBox,
    SecretsUnavailable,
    StoredIntegration,
    now,
)
from ..state.record import INTEGRATION_NAME as NAME
from . import playground, setup_views
from .security import Guard
from .source import ConsoleSource

FORM = "_form"  # the problems key of a problem that belongs to no one field
PICKED_UP = setup_views.PICKED_UP  # when a running service sees a save (engine/service/console_made.py)
STOPPED_LATER = "A running serve or worker stops delivering it at its next start."
KEPT = "\x00kept"  # stands for a stored secret while checking: it is never shown nor stored


@dataclass
class Setup:
    """What the set-up pages need: the store (None: this backend keeps none), the sealing key or why there is none."""

    source: ConsoleSource
    guard: Guard
    store: IntegrationStore | None
    box: SecretBox | None = None
    no_secrets: str | None = None
    # Authorisations under way (``state`` → integration, redirect URI, when): see :mod:`.authorise`.
    pending: dict[str, tuple[str, str, float]] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @classmethod
    def of(cls, source: ConsoleSource, guard: Guard, environ: Mapping[str, str] | None = None) -> Setup:
        opener = getattr(source.backend, "console_integrations", None)
        store = opener() if opener is not None else None
        try:
            box: SecretBox | None = SecretBox.from_env(os.environ if environ is None else environ)
            reason = None
        except SecretsUnavailable as exc:
            box, reason = None, str(exc)
        setup = cls(source, guard, store, box, reason)
        setup._learn_secrets()
        return setup

    def _learn_secrets(self) -> None:
        """The stored secrets join the redactor, so no recorded event or answer can show one."""
        if self.store is None or self.box is None:
            return
        for item in self.store.all():
            for token in item.sealed.values():
                try:
                    self.source.redactor.add(self.box.open(token))
                except SecretsUnavailable:
                    pass

    def file_names(self) -> set[str]:
        return self.source.file_names()

    def listed(self) -> list[StoredIntegration]:
        return self.store.all() if self.store is not None else []

    def file_defined(self) -> list[tuple[str, str, str]]:
        """The integrations this console was given from a file or a command line: (name, preset, where)."""
        found = {c.name: (c.name, c.preset, c.file) for c in self.source.configured}
        for c in self.source.connections:
            found.setdefault(c.integration, (c.integration, c.preset.name, "the command line"))
        return [found[n] for n in sorted(found)]

    def get(self, name: str) -> StoredIntegration | None:
        return self.store.get(name) if self.store is not None else None

    def delete(self, name: str) -> str:
        """Delete a console-made integration; what to tell the person (a file's is refused: it is read-only)."""
        if name in self.file_names():
            raise ReadOnly(f"{name} is defined in the integrations file, which is read-only here; nothing was deleted")
        if self.store is None or not self.store.delete(name):
            raise LookupError(f"{name}: no such integration set up in the console (already deleted?)")
        return f"Deleted {name}. Its dead letters, records and stored tokens stay under its name. {STOPPED_LATER}"

    def save(self, preset: Preset, form: Mapping[str, Any]) -> tuple[dict[str, list[str]], StoredIntegration | None]:
        """Check and store; the problems by field name (``FORM`` for the form as a whole), or the stored item."""
        problems: dict[str, list[str]] = {}
        name = str(form.get("name", "")).strip()
        if not NAME.match(name):
            problems.setdefault("name", []).append(
                "lower-case letters, digits and '-', starting and ending with a letter or digit, at most 63"
            )
        elif name in self.file_names():
            problems.setdefault("name", []).append(
                f"{name!r} is defined in the integrations file, which is read-only here; choose another name"
            )
        if self.store is None:
            problems.setdefault(FORM, []).append("this state store keeps no console integrations")
            return problems, None
        existing = self.store.get(name) if "name" not in problems else None
        if existing is not None and existing.preset != preset.name:
            problems.setdefault("name", []).append(f"{name!r} already exists with preset {existing.preset}")
            existing = None
        values = parse(preset, form)
        secrets = {n: v for n, v in values.items() if preset.settings[n].secret and v is not None}
        checked = dict(values)
        for kept in existing.sealed if existing else {}:
            if checked.get(kept) is None:
                checked[kept] = KEPT
        try:
            resolve(
                preset.settings,
                {k: v for k, v in checked.items() if v is not None},
                require=True,
                where={n: n for n in preset.settings},
            )
        except SettingsError as exc:
            for line in exc.problems:
                field_name, _, text = line.partition(": ")
                problems.setdefault(field_name if field_name in preset.settings else FORM, []).append(text)
        if secrets and self.box is None:
            for secret in secrets:
                problems.setdefault(secret, []).append("not stored: " + str(self.no_secrets))
        if problems:
            return problems, None
        assert self.box is not None or not secrets
        sealed = dict(existing.sealed) if existing else {}
        sealed.update({n: self.box.seal(v) for n, v in secrets.items()} if self.box else {})
        public = {n: v for n, v in values.items() if v is not None and not preset.settings[n].secret}
        item = StoredIntegration(name, preset.name, public, sealed, now())
        self.store.put(item)
        for value in secrets.values():
            self.source.redactor.add(value)
        return {}, item


class ReadOnly(Exception):
    """A write to an integration of the integrations file, which the console only shows."""


def form_values(preset: Preset, item: StoredIntegration) -> tuple[dict[str, str], list[str] | None]:
    """A stored integration's plain values as the set-up form shows them (its secrets never), and the ticked
    consent categories."""
    shown: dict[str, str] = {"name": item.name}
    ticked: list[str] | None = None
    for name, value in item.values.items():
        spec = preset.settings.get(name)
        if spec is None or spec.secret:
            continue
        key = f"setting.{name}"
        if spec.type == "string_list" and name == preset.consent_setting:
            ticked = [str(v) for v in value] if isinstance(value, list) else None
        elif spec.type == "string_list":
            shown[key + ".other"] = ", ".join(str(v) for v in value) if isinstance(value, list) else str(value)
        elif isinstance(value, bool):
            shown[key] = "true" if value else "false"
        else:
            shown[key] = str(value)
    return shown, ticked


def form_of(preset: Preset, name: str, settings: Mapping[str, Any]) -> tuple[MultiDict[str], list[str]]:
    """A JSON API body's settings as the set-up form would post them; unknown names are problems."""
    form: MultiDict[str] = MultiDict(name=name)
    unknown = []
    for key, value in settings.items():
        spec = preset.settings.get(key)
        if spec is None:
            unknown.append(key)
            continue
        if value is None:
            continue
        if spec.type == "string_list":
            form.add(f"setting.{key}.present", "1")
            for item in value if isinstance(value, list) else [value]:
                form.add(f"setting.{key}", str(item))
        elif isinstance(value, bool):
            form.add(f"setting.{key}", "true" if value else "false")
        else:
            form.add(f"setting.{key}", str(value))
    return form, unknown


def parse(preset: Preset, form: Mapping[str, Any]) -> dict[str, Any]:
    """The form's values as the settings file would give them; empty is "not given" (the default applies)."""
    out: dict[str, Any] = {}
    for name, spec in preset.settings.items():
        key = f"setting.{name}"
        if spec.type == "string_list":
            ticked = [str(v) for v in form.getall(key, [])] if hasattr(form, "getall") else []
            other = [p.strip() for p in str(form.get(f"{key}.other", "")).split(",") if p.strip()]
            chosen = list(dict.fromkeys([*ticked, *other]))
            # Nothing ticked on a shown field is an error (it would open the consent gate), not the default.
            out[name] = chosen if chosen or form.get(f"{key}.present") else None
            continue
        raw = str(form.get(key, ""))
        if spec.type == "boolean":
            out[name] = {"true": True, "false": False}.get(raw)
        elif spec.type == "integer":
            text = raw.strip()
            out[name] = None if not text else (int(text) if text.lstrip("-").isdigit() else text)
        else:
            out[name] = raw if raw.strip() else None
    return out


def categories(preset: Preset) -> list[str]:
    """The consent categories to offer: the preset's default and those its aliases name."""
    spec = preset.settings.get(preset.consent_setting)
    found = list(spec.default or []) if spec is not None else []
    found += list(preset.consent_aliases)
    return list(dict.fromkeys(str(c) for c in found))


SETUP: web.AppKey[Setup] = web.AppKey("setup", Setup)


def add_routes(app: web.Application, setup: Setup) -> None:
    """The set-up pages, under ``/console/integrations/new`` (writes CSRF-checked like replay)."""
    app[SETUP] = setup
    app.router.add_get("/integrations/new", new_page)
    app.router.add_post("/integrations/new", save_form)
    app.router.add_get("/integrations/{name}/edit", edit_page)
    app.router.add_post("/integrations/{name}/edit", edit_form)
    app.router.add_post("/integrations/{name}/delete", delete_form)
    app.router.add_get("/api/integrations/{name}", api_get)
    app.router.add_put("/api/integrations/{name}", api_put)
    app.router.add_delete("/api/integrations/{name}", api_delete)


def _preset(name: str) -> Preset | None:
    if name not in playground.presets():
        return None
    try:
        return load_preset(name)
    except Exception:  # noqa: BLE001 - a broken preset on the path: offered, but not set up
        return None


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, content_type="text/html", charset="utf-8", status=status)


async def new_page(request: web.Request) -> web.Response:
    """The set-up form of a new integration, built from the chosen preset's settings."""
    setup = request.app[SETUP]
    chosen = request.query.get("preset", "")
    preset = await asyncio.to_thread(_preset, chosen) if chosen else None
    listed = await asyncio.to_thread(setup.listed)
    saved = request.query.get("saved")
    message = request.query.get("message")
    note = request.query.get("note")
    authorisable = await asyncio.to_thread(_authorisable, listed)
    return _allowing(
        _html(
            setup_views.setup_page(
                playground.presets(),
                preset,
                {},
                {},
                listed,
                setup.no_secrets,
                csrf=setup.guard.csrf,
                saved=saved if saved else None,
                note=note[:400] if note else None,
                message=message[:400] if message else None,
                authorisable=set(authorisable),
                categories=categories(preset) if preset else [],
                file_defined=setup.file_defined(),
            )
        ),
        authorisable.values(),
    )


async def save_form(request: web.Request) -> web.Response:
    """Check and save an integration's settings (secrets encrypted at rest); problems shown next to their fields."""
    setup = request.app[SETUP]
    form = await request.post()
    if not setup.guard.csrf_ok(request, str(form.get("csrf", ""))):
        return _html(setup_views.refused(setup.guard.csrf), status=403)
    preset = await asyncio.to_thread(_preset, str(form.get("preset", "")))
    if preset is None:
        return _html(
            setup_views.setup_page(
                playground.presets(),
                None,
                {FORM: ["choose a preset"]},
                {},
                setup.listed(),
                setup.no_secrets,
                csrf=setup.guard.csrf,
                file_defined=setup.file_defined(),
            ),
            status=400,
        )
    async with setup._lock:  # one save at a time: two would race on the same name
        problems, item = await asyncio.to_thread(setup.save, preset, form)
    if item is not None:
        return _saved(item.name, await setup.source.changed(item.name))
    shown = {k: v for k, v in form.items() if not (k.startswith("setting.") and _secret(preset, k))}
    return _html(
        setup_views.setup_page(
            playground.presets(),
            preset,
            problems,
            shown,
            setup.listed(),
            setup.no_secrets,
            csrf=setup.guard.csrf,
            categories=categories(preset),
            ticked=[str(v) for v in form.getall(f"setting.{preset.consent_setting}", [])],
            file_defined=setup.file_defined(),
        ),
        status=422,
    )


def _authorisable(listed: list[StoredIntegration]) -> dict[str, str]:
    """Integrations with an Authorise button, each with its authorize URL's origin.

    The page's CSP must allow that origin in ``form-action``: the browser
    checks a form's redirects against it, and Authorise is a form (a POST,
    CSRF-checked) answered with a redirect to the destination.
    """
    from urllib.parse import urlsplit

    from ..delivery.auth.authorization_code import authorization_url, can_authorise

    out = {}
    for item in listed:
        preset = _preset(item.preset)
        if preset is None or preset.auth is None or can_authorise(preset.auth) is not None:
            continue
        try:
            settings = resolve(preset.settings, dict(item.values), require=False)
            parts = urlsplit(authorization_url(preset.auth, settings, "", ""))
        except (SettingsError, ValueError):
            continue
        # Only a plain host[:port] goes into the CSP header: nothing a setting could use to widen the policy.
        if parts.scheme in ("http", "https") and re.fullmatch(
            r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?", parts.netloc
        ):
            out[item.name] = f"{parts.scheme}://{parts.netloc}"
    return out


def _allowing(response: web.Response, origins: Any) -> web.Response:
    from .security import CSP

    extra = " ".join(sorted(set(origins)))
    if extra:
        response.headers["Content-Security-Policy"] = CSP.replace("form-action 'self'", f"form-action 'self' {extra}")
    return response


def _secret(preset: Preset, key: str) -> bool:
    spec = preset.settings.get(key.removeprefix("setting.").removesuffix(".other"))
    return spec is not None and spec.secret


def view_of(item: StoredIntegration) -> dict[str, Any]:
    """A console-made integration as the JSON API shows it: its secrets named, never given."""
    return {
        "name": item.name,
        "preset": item.preset,
        "origin": "console",
        "settings": dict(item.values),
        "secrets": dict.fromkeys(sorted(item.sealed), "set (encrypted)"),
        "saved_at": item.saved_at,
    }


def _saved(name: str, note: str | None = None) -> web.Response:
    """Back to the list, saying it was saved and, beside a serve that applied it at once, what it did."""
    from urllib.parse import urlencode

    query = {"saved": name, **({"note": note} if note else {})}
    return web.Response(status=303, headers={"Location": "/console/integrations/new?" + urlencode(query)})


def _deleted(told: str, note: str | None) -> str:
    return told.replace(STOPPED_LATER, note) if note else told


def _told(message: str) -> web.Response:
    from urllib.parse import urlencode

    return web.Response(
        status=303, headers={"Location": "/console/integrations/new?" + urlencode({"message": message})}
    )


def _read_only_page(setup: Setup, name: str) -> web.Response:
    from .views import e

    said = (
        f'<p class="error" role="alert">{e(name)} is defined in the integrations file: it is read-only here. '
        "Edit the file, <code>check</code> it and restart the service. "
    )
    return _notice_page(setup, "Read-only", said, 409)


def _not_found_page(setup: Setup, name: str) -> web.Response:
    from .views import e

    return _notice_page(setup, "Not found", f"<p>No integration {e(name)} is set up in the console. ", 404)


def _notice_page(setup: Setup, title: str, said: str, status: int) -> web.Response:
    """A page that says why an integration's page cannot be shown, and leads back to the integrations."""
    from .views import page

    back = '<a href="/console/integrations/new">Back to the integrations</a></p>'
    return _html(page(title, "integrations", said + back, csrf=setup.guard.csrf), status=status)


async def _edit_answer(
    setup: Setup,
    item: StoredIntegration,
    preset: Preset,
    problems: Mapping[str, list[str]],
    shown: Mapping[str, Any],
    ticked: list[str] | None,
    status: int,
) -> web.Response:
    listed = await asyncio.to_thread(setup.listed)
    return _html(
        setup_views.setup_page(
            playground.presets(),
            preset,
            problems,
            shown,
            listed,
            setup.no_secrets,
            csrf=setup.guard.csrf,
            categories=categories(preset),
            ticked=ticked,
            editing=item.name,
            file_defined=setup.file_defined(),
        ),
        status=status,
    )


async def _console_made_item(setup: Setup, name: str) -> StoredIntegration | web.Response:
    """An integration set up in the console, or the page saying why it cannot be changed here (the file's
    are read-only; an unknown name is not found)."""
    if name in setup.file_names():
        return _read_only_page(setup, name)
    item = await asyncio.to_thread(setup.get, name)
    return _not_found_page(setup, name) if item is None else item


async def _console_made(setup: Setup, name: str) -> tuple[StoredIntegration, Preset] | web.Response:
    """The same with its preset, which a form needs: one whose preset is gone is not found either."""
    item = await _console_made_item(setup, name)
    if isinstance(item, web.Response):
        return item
    preset = await asyncio.to_thread(_preset, item.preset)
    return _not_found_page(setup, name) if preset is None else (item, preset)


async def edit_page(request: web.Request) -> web.Response:
    """The set-up form of a console-made integration, filled with its plain settings (its secrets never)."""
    setup = request.app[SETUP]
    found = await _console_made(setup, request.match_info["name"])
    if isinstance(found, web.Response):
        return found
    item, preset = found
    shown, ticked = form_values(preset, item)
    return await _edit_answer(setup, item, preset, {}, shown, ticked, 200)


async def edit_form(request: web.Request) -> web.Response:
    """Save the edited settings; an empty secret field keeps the stored secret."""
    setup = request.app[SETUP]
    form = await request.post()
    if not setup.guard.csrf_ok(request, str(form.get("csrf", ""))):
        return _html(setup_views.refused(setup.guard.csrf), status=403)
    name = request.match_info["name"]
    found = await _console_made(setup, name)
    if isinstance(found, web.Response):
        return found
    item, preset = found
    fixed: MultiDict[Any] = MultiDict((k, v) for k, v in form.items() if k != "name")
    fixed["name"] = name  # the name is the integration's identity (its queue, letters, records): not edited
    async with setup._lock:
        problems, saved = await asyncio.to_thread(setup.save, preset, fixed)
    if saved is not None:
        return _saved(saved.name, await setup.source.changed(saved.name))
    shown = {k: v for k, v in fixed.items() if not (k.startswith("setting.") and _secret(preset, k))}
    ticked = [str(v) for v in form.getall(f"setting.{preset.consent_setting}", [])]
    return await _edit_answer(setup, item, preset, problems, shown, ticked, 422)


async def delete_form(request: web.Request) -> web.Response:
    """Delete a console-made integration in two steps: this page asks, and only a confirmed form deletes."""
    setup = request.app[SETUP]
    form = await request.post()
    if not setup.guard.csrf_ok(request, str(form.get("csrf", ""))):
        return _html(setup_views.refused(setup.guard.csrf), status=403)
    name = request.match_info["name"]
    item = await _console_made_item(setup, name)  # one whose preset is gone can still be deleted
    if isinstance(item, web.Response):
        return item
    if form.get("confirmed") != "yes":
        return _html(setup_views.confirm_delete_page(item, csrf=setup.guard.csrf))
    try:
        async with setup._lock:
            told = await asyncio.to_thread(setup.delete, name)
    except (ReadOnly, LookupError) as exc:
        return _told(str(exc.args[0]))
    return _told(_deleted(told, await setup.source.changed(name)))


# -- the JSON API ------------------------------------------------------------
def _json(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status)


async def api_get(request: web.Request) -> web.Response:
    """One integration set up in the console (its secrets named, never given), or a file's, marked read-only."""
    setup = request.app[SETUP]
    name = request.match_info["name"]
    for file_name, preset, where in setup.file_defined():
        if file_name == name:
            return _json({"name": name, "preset": preset, "origin": "file", "file": where, "read_only": True})
    item = await asyncio.to_thread(setup.get, name)
    if item is None:
        return _json({"error": f"no integration {name!r} is set up in the console"}, status=404)
    return _json(view_of(item))


async def api_put(request: web.Request) -> web.Response:
    """Create or edit a console-made integration: ``{"preset": NAME, "settings": {...}}``, checked as Save is.

    Secrets are write-only: one left out (or null) keeps the stored value.
    ``preset`` may be left out when editing; it cannot be changed.
    """
    setup = request.app[SETUP]
    if not setup.guard.csrf_ok(request, None):
        return _json({"error": "missing or wrong X-CSRF-Token"}, status=403)
    name = request.match_info["name"]
    if name in setup.file_names():
        return _json({"error": f"{name} is defined in the integrations file, which is read-only here"}, status=409)
    try:
        body = await request.json()
    except ValueError:
        body = None
    settings = body.get("settings", {}) if isinstance(body, dict) else None
    if not isinstance(body, dict) or not isinstance(settings, dict) or not isinstance(body.get("preset", ""), str):
        return _json({"error": 'the body must be JSON: {"preset": NAME, "settings": {NAME: VALUE, ...}}'}, status=400)
    existing = await asyncio.to_thread(setup.get, name)
    wanted = str(body.get("preset") or (existing.preset if existing is not None else ""))
    preset = await asyncio.to_thread(_preset, wanted) if wanted else None
    if preset is None:
        return _json({"problems": {"preset": [f"no such preset: {wanted!r}" if wanted else "choose a preset"]}}, 422)
    form, unknown = form_of(preset, name, settings)
    if unknown:
        declared = ", ".join(preset.settings)
        return _json({"problems": {k: [f"unknown setting (the preset declares: {declared})"] for k in unknown}}, 422)
    async with setup._lock:
        problems, item = await asyncio.to_thread(setup.save, preset, form)
    if problems or item is None:
        return _json({"problems": problems}, status=422)
    note = await setup.source.changed(item.name) or PICKED_UP
    return _json({"saved": item.name, "integration": view_of(item), "note": note}, 200 if existing else 201)


async def api_delete(request: web.Request) -> web.Response:
    """Delete a console-made integration (a file's is refused: it is read-only here)."""
    setup = request.app[SETUP]
    if not setup.guard.csrf_ok(request, None):
        return _json({"error": "missing or wrong X-CSRF-Token"}, status=403)
    name = request.match_info["name"]
    try:
        async with setup._lock:
            told = await asyncio.to_thread(setup.delete, name)
    except ReadOnly as exc:
        return _json({"error": str(exc)}, status=409)
    except LookupError as exc:
        return _json({"error": str(exc.args[0])}, status=404)
    return _json({"deleted": name, "note": _deleted(told, await setup.source.changed(name))})
