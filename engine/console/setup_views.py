"""The set-up page: choose a preset, fill the form its ``settings:`` declare, Save.

A secret field is ``type=password`` and is never given a value: what was
typed is not sent back, not even after a mistake (the page says to type it
again), and a stored secret shows only as "set (encrypted)".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..language.model import Preset
from ..state.console_integrations import KEY_ENV, StoredIntegration
from .views import e, page, when

# When a running service sees a save or a delete (engine/service/console_made.py reads the store at start).
PICKED_UP = "A running serve or worker delivers it as saved from its next start."

FORM = "_form"


def _authorise(name: str, csrf: str) -> str:
    """A POST (CSRF-checked) that sends the browser to the destination's consent page, as ``signal-engine auth``."""
    return (
        f'<form method="post" action="/console/integrations/{e(name)}/authorise" class="authorise">'
        f'<input type="hidden" name="csrf" value="{e(csrf)}"><button type="submit">Authorise</button></form>'
    )


def refused(csrf: str) -> str:
    return page(
        "Refused",
        "integrations",
        "<p>The form was stale or came from another site; reload the page and try again.</p>",
        csrf=csrf,
    )


def _problems(problems: Mapping[str, list[str]], name: str) -> str:
    found = problems.get(name)
    if not found:
        return ""
    return "".join(f'<p class="error field-problem" id="problem-{e(name)}" role="alert">{e(p)}</p>' for p in found)


def _field(
    preset: Preset,
    name: str,
    problems: Mapping[str, list[str]],
    shown: Mapping[str, Any],
    categories: Sequence[str],
    ticked: Sequence[str] | None,
) -> str:
    spec = preset.settings[name]
    key = f"setting.{name}"
    flags = " required" if spec.required and not spec.stored else ""
    invalid = ' aria-invalid="true"' if problems.get(name) else ""
    marks = (" <small>(required)</small>" if spec.required else "") + (
        " <small>(secret)</small>" if spec.secret else ""
    )
    label = f'<span class="setting-name">{e(name)}</span>{marks}'
    hint = f'<small class="hint">{e(spec.description)}</small>' if spec.description else ""
    if spec.secret:
        again = " Type it again: a secret is never sent back to the page." if shown else ""
        control = (
            f'<input type="password" name="{e(key)}" autocomplete="new-password" data-setting="{e(name)}"'
            f'{invalid}><small class="hint">Write-only: it is encrypted when saved and never shown again; '
            f"left empty, a stored one is kept.{e(again)}</small>"
        )
    elif spec.type == "boolean":
        value = str(shown.get(key, ""))
        options = "".join(
            f'<option value="{v}"{" selected" if value == v else ""}>{t}</option>'
            for v, t in (
                ("", f"default ({spec.default})" if spec.default is not None else "not set"),
                ("true", "true"),
                ("false", "false"),
            )
        )
        control = f'<select name="{e(key)}" data-setting="{e(name)}"{invalid}>{options}</select>'
    elif spec.type == "string_list" and name == preset.consent_setting:
        chosen = set(ticked if ticked is not None else (spec.default or []))
        boxes = "".join(
            f'<label class="check"><input type="checkbox" name="{e(key)}" value="{e(c)}"'
            f"{' checked' if c in chosen else ''}> {e(c)}</label>"
            for c in categories
        )
        control = (
            f'<fieldset data-setting="{e(name)}"{invalid}><legend>Consent categories that gate delivery'
            f'</legend><input type="hidden" name="{e(key)}.present" value="1">{boxes}'
            f'<label>Other categories (comma-separated) <input type="text" name="{e(key)}.other" '
            f'value="{e(shown.get(key + ".other", ""))}"></label></fieldset>'
        )
    elif spec.type == "string_list":
        default = ", ".join(spec.default or [])
        control = (
            f'<input type="hidden" name="{e(key)}.present" value="">'
            f'<input type="text" name="{e(key)}.other" value="{e(shown.get(key + ".other", ""))}" '
            f'placeholder="{e(default)}" data-setting="{e(name)}"{invalid}>'
        )
    else:
        kind = "url" if spec.type == "url" else "text"
        placeholder = f' placeholder="{e(spec.default)}"' if spec.default is not None else ""
        control = (
            f'<input type="{kind if kind != "url" else "text"}" name="{e(key)}" value="{e(shown.get(key, ""))}"'
            f'{placeholder}{flags} data-setting="{e(name)}"{invalid}>'
        )
    return (
        f'<div class="setting" id="setting-{e(name)}"><label>{label} {control}</label>{hint}'
        f"{_problems(problems, name)}</div>"
    )


def setup_page(
    presets: Sequence[str],
    preset: Preset | None,
    problems: Mapping[str, list[str]],
    shown: Mapping[str, Any],
    listed: Sequence[StoredIntegration],
    no_secrets: str | None,
    *,
    csrf: str,
    saved: str | None = None,
    note: str | None = None,
    categories: Sequence[str] = (),
    ticked: Sequence[str] | None = None,
    message: str | None = None,
    authorisable: set[str] | frozenset[str] = frozenset(),
    editing: str | None = None,
    file_defined: Sequence[tuple[str, str, str]] = (),
) -> str:
    parts = [
        '<p class="note">Integrations of the integrations file are read-only here (edit the file and '
        "<code>check</code> it). Those set up on this page are kept in the state store, and "
        "<code>serve</code> and <code>worker</code> on that store deliver them too: a <code>serve --console</code> "
        "with its own queue (no <code>--redis</code>) from the moment one is saved here, the others from their "
        "next start.</p>"
    ]
    if saved:
        parts.append(f'<p class="message" id="saved" role="status">Saved {e(saved)}. {e(note or PICKED_UP)}</p>')
    if message:
        parts.append(f'<p class="message" id="message" role="status">{e(message)}</p>')
    if no_secrets:
        parts.append(f'<p class="error" id="no-secret-key" role="alert">Secrets cannot be stored: {e(no_secrets)}.</p>')
    options = "".join(
        f'<option value="{e(n)}"{" selected" if preset is not None and preset.name == n else ""}>{e(n)}</option>'
        for n in presets
    )
    parts.append(
        f'<form method="get" action="/console/integrations/new" class="choose-preset"><label>Preset '
        f'<select name="preset"><option value="">choose a preset</option>{options}</select></label> '
        f'<button type="submit">Choose</button></form>'
    )
    if preset is not None and editing is not None:
        parts = [*parts[:1], *(p for p in parts[1:] if "choose-preset" not in p)]
    if preset is not None:
        title = preset.metadata.get("title") or preset.name
        if editing is not None:  # the page's heading already says "Edit <name>"
            title = f"{title} ({preset.name})"
        action = f"/console/integrations/{e(editing)}/edit" if editing is not None else "/console/integrations/new"
        name_attrs = ' readonly aria-readonly="true"' if editing is not None else ""
        fields = "".join(_field(preset, n, problems, shown, categories, ticked) for n in preset.settings)
        invalid = ' aria-invalid="true"' if problems.get("name") else ""
        parts.append(
            f'<form method="post" action="{action}" class="setup" id="setup-form">'
            f'<h2>{e(title)}</h2><input type="hidden" name="csrf" value="{e(csrf)}">'
            f'<input type="hidden" name="preset" value="{e(preset.name)}">{_problems(problems, FORM)}'
            f'<div class="setting" id="setting-name"><label><span class="setting-name">Integration name</span> '
            f'<input type="text" name="name" value="{e(shown.get("name", ""))}" required{name_attrs} '
            f'placeholder="lower-case, e.g. {e(preset.name.split("/")[0])}"{invalid}></label>'
            f"{_problems(problems, 'name')}</div>{fields}"
            f'<button type="submit" id="save">Save</button></form>'
        )
    parts.append(_listed(listed, authorisable, csrf))
    parts.append(_file_defined(file_defined))
    heading = f"Edit {editing}" if editing is not None else "Set up an integration"
    return page(heading, "integrations", "".join(parts), csrf=csrf)


def _file_defined(found: Sequence[tuple[str, str, str]]) -> str:
    if not found:
        return ""
    rows = "".join(
        f'<tr data-integration="{e(name)}"><th scope="row">{e(name)}</th><td>{e(preset)}</td><td>{e(where)}</td>'
        f"<td>read-only here</td></tr>"
        for name, preset, where in found
    )
    return (
        '<h2>Defined in the integrations file</h2><p class="note" id="file-read-only">These are read-only here: '
        "edit the file, <code>check</code> it and restart the service.</p>"
        '<table class="file-integrations"><thead><tr><th scope="col">Name</th><th scope="col">Preset</th>'
        f'<th scope="col">Defined in</th><th scope="col">Here</th></tr></thead><tbody>{rows}</tbody></table>'
    )


def _edit_delete(name: str, csrf: str) -> str:
    """An Edit link and a Delete form (a POST, CSRF-checked, that first asks for a confirmation)."""
    return (
        f'<a class="button edit" href="/console/integrations/{e(name)}/edit">Edit {e(name)}</a> '
        f'<form method="post" action="/console/integrations/{e(name)}/delete" class="delete">'
        f'<input type="hidden" name="csrf" value="{e(csrf)}"><button type="submit">Delete {e(name)}</button></form>'
    )


def confirm_delete_page(item: StoredIntegration, *, csrf: str) -> str:
    """The confirmation a delete asks for: only this page's form deletes."""
    body = (
        f'<p id="confirm-delete">Delete the integration <strong>{e(item.name)}</strong> ({e(item.preset)}), '
        "set up in the console? Its settings and encrypted secrets are removed from the state store; its dead "
        f"letters, records and stored tokens stay under its name. A running serve or worker stops delivering it at its next start.</p>"
        f'<form method="post" action="/console/integrations/{e(item.name)}/delete" class="confirm-delete">'
        f'<input type="hidden" name="csrf" value="{e(csrf)}"><input type="hidden" name="confirmed" value="yes">'
        f'<button type="submit" id="confirm">Yes, delete {e(item.name)}</button></form> '
        '<p><a href="/console/integrations/new">No, keep it</a></p>'
    )
    return page(f"Delete {item.name}?", "integrations", body, csrf=csrf)


def _listed(listed: Sequence[StoredIntegration], authorisable: set[str] | frozenset[str], csrf: str) -> str:
    if not listed:
        return '<h2>Set up in the console</h2><p class="empty">None yet.</p>'
    rows = []
    for item in listed:
        values = (
            "; ".join(f"{k}: {', '.join(v) if isinstance(v, list) else v}" for k, v in sorted(item.values.items()))
            or "defaults"
        )
        secrets = ", ".join(f"{k}: set (encrypted)" for k in sorted(item.sealed)) or "none"
        rows.append(
            f'<tr data-integration="{e(item.name)}"><th scope="row">{e(item.name)}</th><td>{e(item.preset)}'
            f"</td><td>{e(values)}</td><td>{e(secrets)}</td><td>{e(when(item.saved_at))}</td>"
            f"<td>{_authorise(item.name, csrf) if item.name in authorisable else ''}"
            f"{_edit_delete(item.name, csrf)}</td></tr>"
        )
    return (
        '<h2>Set up in the console</h2><table class="console-integrations"><thead><tr><th scope="col">Name</th>'
        '<th scope="col">Preset</th><th scope="col">Settings</th><th scope="col">Secrets</th>'
        f'<th scope="col">Saved</th><th scope="col"></th></tr></thead><tbody>{"".join(rows)}</tbody></table>'
        f'<p class="note">Secrets are sealed with {KEY_ENV}; keep the key: without it they cannot be read back.</p>'
    )
