"""The console's pages, rendered on the server as plain HTML.

Every value that came from an event, a letter or a preset is escaped here
(:func:`e`); the pages carry no inline script or style (the CSP forbids
both), only ``/console/static/console.js`` and ``console.css``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from ..outcome import DEAD_LETTERED, DELIVERED, DROPPED, FAILED, WOULD_SEND

OUTCOMES = (DELIVERED, DROPPED, FAILED, DEAD_LETTERED, WOULD_SEND)
NAV = (
    ("events", "Event Debugger"),
    ("dead-letters", "Dead letters"),
    ("integrations", "Integrations"),
    ("playground", "Playground"),
)


def e(value: Any) -> str:
    return "" if value is None else escape(str(value), quote=True)


def when(at: Any) -> str:
    if not isinstance(at, (int, float)):
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at)) + f".{int(at * 1000) % 1000:03d}Z"


def pretty(value: Any) -> str:
    return e(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def page(title: str, current: str, body: str, *, csrf: str) -> str:
    here = ' aria-current="page"'
    nav = "".join(f'<a href="/console/{path}"{here if path == current else ""}>{e(label)}</a>' for path, label in NAV)
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="csrf-token" content="{e(csrf)}">'
        f"<title>{e(title)} · signal-engine console</title>"
        f'<link rel="icon" href="/console/static/favicon.svg" type="image/svg+xml">'
        f'<link rel="stylesheet" href="/console/static/console.css">'
        f'<script src="/console/static/console.js" defer></script></head>'
        f'<body><header><span class="brand">signal-engine</span><nav aria-label="Console">{nav}</nav></header>'
        f"<main><h1>{e(title)}</h1>{body}</main></body></html>"
    )


def _options(values: Iterable[str], chosen: str | None, any_label: str) -> str:
    items = [f'<option value="">{e(any_label)}</option>']
    items += [f'<option value="{e(v)}"{" selected" if v == chosen else ""}>{e(v)}</option>' for v in values]
    return "".join(items)


def outcome_badge(row: Mapping[str, Any]) -> str:
    return f'<span class="badge {e(row.get("outcome"))}">{e(row.get("outcome"))}</span>'


def why(row: Mapping[str, Any]) -> str:
    parts = [row.get("reason") or row.get("cause")]
    if row.get("status") is not None:
        parts.append(f"HTTP {row.get('status')}")
    return " · ".join(str(p) for p in parts if p)


def event_row(row: Mapping[str, Any]) -> str:
    link = f"/console/events/{quote(str(row.get('id')), safe='')}"
    name = row.get("event") or row.get("type") or ""
    latency = f"{row['latency_ms']:.1f} ms" if isinstance(row.get("latency_ms"), (int, float)) else ""
    replay = ' <span class="tag">replay</span>' if row.get("replay") else ""
    return (
        f'<tr data-id="{e(row.get("id"))}"><td><a href="{e(link)}">{e(when(row.get("at")))}</a></td>'
        f"<td>{e(name)}{replay}</td><td>{e(row.get('email'))}</td><td>{e(row.get('userId'))}</td>"
        f"<td>{e(row.get('integration'))}</td><td>{outcome_badge(row)}</td><td>{e(why(row))}</td>"
        f'<td class="num">{e(row.get("attempts"))}</td><td class="num">{e(latency)}</td></tr>'
    )


COLUMNS = ("Time", "Event", "Email", "userId", "Integration", "Outcome", "Reason / status", "Attempts", "Latency")


def events_page(
    rows: Sequence[Mapping[str, Any]],
    integrations: Sequence[str],
    filters: Mapping[str, str],
    cursor: str,
    *,
    csrf: str,
) -> str:
    stream = "/console/api/stream?" + urlencode({k: v for k, v in filters.items() if v})
    form = (
        f'<form class="filters" method="get" action="/console/events" role="search">'
        f'<label>Integration <select name="integration">{_options(integrations, filters.get("integration"), "all")}'
        f"</select></label>"
        f'<label>Outcome <select name="outcome">{_options(OUTCOMES, filters.get("outcome"), "any")}</select></label>'
        f'<label>Reason <input name="reason" value="{e(filters.get("reason"))}" '
        f'placeholder="e.g. no_consent, http_500"></label>'
        f'<label>Search <input type="search" name="q" value="{e(filters.get("q"))}" '
        f'placeholder="email, userId or messageId"></label>'
        f'<button type="submit">Filter</button> <a href="/console/events">Clear</a></form>'
    )
    head = "".join(f'<th scope="col">{e(c)}</th>' for c in COLUMNS)
    body = "".join(event_row(r) for r in rows)
    empty = (
        ""
        if rows
        else '<p class="empty" id="empty">No recorded events match. New ones appear here as they are processed.</p>'
    )
    return page(
        "Event Debugger",
        "events",
        f'{form}<p class="live" id="live" aria-live="polite">Live: waiting for new events…</p>'
        f'<table id="events" data-stream="{e(stream)}" data-cursor="{e(cursor)}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table>{empty}",
        csrf=csrf,
    )


def event_page(entry: Mapping[str, Any], *, csrf: str) -> str:
    result = entry.get("outcome_record") or {}
    request = result.get("request") or {}
    response = result.get("response") or {}
    facts = [
        ("Time", when(entry.get("at"))),
        ("Integration", entry.get("integration")),
        ("Preset", entry.get("preset")),
        ("messageId", entry.get("messageId")),
        ("Event", entry.get("event") or entry.get("type")),
        ("Email", entry.get("email")),
        ("userId", entry.get("userId")),
        ("Outcome", entry.get("outcome")),
        ("Reason / cause", entry.get("reason") or entry.get("cause")),
        ("Detail", result.get("detail")),
        ("Attempts", entry.get("attempts")),
        ("Latency", f"{entry['latency_ms']:.1f} ms" if isinstance(entry.get("latency_ms"), (int, float)) else None),
        ("Replay of a dead letter", "yes" if entry.get("replay") else None),
    ]
    summary = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in facts if v not in (None, ""))
    parts = [f'<p><a href="/console/events">← all events</a></p><dl class="facts">{summary}</dl>']
    if request:
        headers = "".join(
            f'<tr><th scope="row">{e(k)}</th><td>{e(v)}</td></tr>' for k, v in (request.get("headers") or {}).items()
        )
        parts.append(
            f'<section id="request"><h2>Request</h2>'
            f'<p class="request-line"><code>{e(request.get("method"))} {e(request.get("url"))}</code></p>'
            f'<table class="headers"><caption>Headers (credentials masked)</caption>{headers}</table>'
            f"<h3>Body</h3><pre>{pretty(request.get('body'))}</pre></section>"
        )
    attempts = entry.get("attempts")
    if response or attempts:
        status = response.get("status")
        parts.append(
            f'<section id="attempts"><h2>Attempts</h2>'
            f"<p>{e(attempts)} attempt(s); the last answer:</p>"
            f'<dl class="facts"><dt>Status</dt><dd id="response-status">{e(status if status is not None else "no answer")}'
            f"</dd></dl><h3>Response body (capped)</h3><pre>{pretty(response.get('body'))}</pre>"
            f"{exchanges_table(entry.get('exchanges') or [])}</section>"
        )
    parts.append(f'<section id="incoming"><h2>Incoming event</h2><pre>{pretty(entry.get("incoming"))}</pre></section>')
    explain = entry.get("explain")
    if explain:
        decided = explain.get("decided_by") if isinstance(explain, dict) else None
        parts.append(
            f'<section id="explain"><h2>Explain</h2>'
            f"{f'<p>Decided by: <strong>{e(decided)}</strong> (re-run now on the recorded event)</p>' if decided else ''}"
            f"<pre>{pretty(explain.get('steps', explain) if isinstance(explain, dict) else explain)}</pre></section>"
        )
    if entry.get("traits"):
        parts.append(
            f'<section id="traits"><h2>Traits as resolved</h2><pre>{pretty(entry.get("traits"))}</pre></section>'
        )
    return page(f"Event {entry.get('messageId') or entry.get('id')}", "events", "".join(parts), csrf=csrf)


def exchanges_table(exchanges: Sequence[Mapping[str, Any]]) -> str:
    """Every request of the delivery in order: token requests, retries, lookups and updates."""
    if not exchanges:
        return ""
    rows = []
    for number, ex in enumerate(exchanges, 1):
        answer = ex.get("status") if ex.get("status") is not None else f"{ex.get('error')}: {ex.get('detail')}"
        headers = ", ".join(f"{k}: {v}" for k, v in (ex.get("headers") or {}).items())
        body = (
            f"<details><summary>Response body</summary><pre>{pretty(ex.get('body'))}</pre></details>"
            if ex.get("body") is not None
            else ""
        )
        rows.append(
            f'<tr><td class="num">{number}</td><td>{e(ex.get("step"))}</td>'
            f"<td><code>{e(ex.get('method'))} {e(ex.get('url'))}</code>{body}</td>"
            f'<td class="answer">{e(answer)}</td><td class="num">{e(ex.get("after_ms"))} ms</td>'
            f'<td class="num">{e(ex.get("ms"))} ms</td><td>{e(headers)}</td></tr>'
        )
    return (
        f'<h3>Every request, in order</h3><table class="exchanges"><thead><tr><th scope="col">#</th>'
        f'<th scope="col">Kind</th><th scope="col">Request</th><th scope="col">Answer</th>'
        f'<th scope="col" class="num">Sent after</th><th scope="col" class="num">Took</th>'
        f'<th scope="col">Rate-limit headers</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def dead_letters_page(
    groups: Mapping[str, Sequence[Mapping[str, Any]]],
    replayable: set[str],
    message: str | None,
    causes: Sequence[str] = (),
    cause: str | None = None,
    *,
    csrf: str,
    why_not: Mapping[str, str] | None = None,
) -> str:
    parts = []
    if message:
        parts.append(f'<p class="notice" role="status" id="notice">{e(message)}</p>')
    parts.append(
        f'<form class="filters" method="get" action="/console/dead-letters"><label>Cause '
        f'<select name="cause">{_options(causes, cause, "any")}</select></label>'
        f'<button type="submit">Filter</button></form>'
    )
    if not groups:
        parts.append('<p class="empty">No dead letters.</p>')
    for name, letters in sorted(groups.items()):
        rows = []
        for letter in letters:
            lid = e(letter.get("id"))
            last = letter.get("last_response") or {}
            detail = (
                f"<details><summary>Request and last response</summary>"
                f"<pre>{pretty(letter.get('request'))}</pre><p>Last response: HTTP {e(last.get('status'))}</p>"
                f"<pre>{pretty(last.get('body'))}</pre></details>"
            )
            button = f'<button type="submit" name="one" value="{lid}">Replay</button> ' if name in replayable else ""
            button += (
                f'<button type="submit" name="one" value="{lid}" class="danger" '
                f'formaction="/console/dead-letters/delete">Delete…</button>'
            )
            link = f"/console/dead-letters/{quote(str(letter.get('id')), safe='')}"
            rows.append(
                f'<tr><td><input type="checkbox" name="selected" value="{lid}" id="sel-{lid}" '
                f'aria-label="Select letter {e(letter.get("messageId"))}">'
                f"</td><td>{e(when(letter.get('dead_lettered_at')))}</td>"
                f'<td><a href="{e(link)}">{e(letter.get("messageId") or letter.get("id"))}</a></td>'
                f"<td>{e(letter.get('cause'))}</td><td>{e(letter.get('detail'))}{detail}</td>"
                f'<td class="num">{e(letter.get("attempts"))}</td><td>{button}</td></tr>'
            )
        every = f"Replay all {cause}" if cause else "Replay all"
        cause_field = f'<input type="hidden" name="cause" value="{e(cause)}">' if cause else ""
        delete = (
            '<button type="submit" class="danger" formaction="/console/dead-letters/delete">Delete selected…</button>'
        )
        actions = (
            f'<p class="actions"><button type="submit" name="mode" value="selected">Replay selected</button> '
            f'<button type="submit" name="mode" value="all">{e(every)}</button> {delete}</p>'
            if name in replayable
            else f'<p class="actions">{delete}</p><p class="note">Replay needs this integration\'s credentials: '
            f"{e((why_not or {}).get(name) or 'start the console with --config FILE naming it')}.</p>"
        )
        parts.append(
            f'<section class="integration"><h2>{e(name)} <small>{len(letters)} letter(s)</small></h2>'
            f'<form method="post" action="/console/dead-letters/replay">'
            f'<input type="hidden" name="csrf" value="{e(csrf)}">'
            f"{cause_field}"
            f'<input type="hidden" name="integration" '
            f'value="{e(name)}"><table class="letters"><thead><tr><th scope="col">Select</th>'
            f'<th scope="col">Dead-lettered</th><th scope="col">messageId</th><th scope="col">Cause</th>'
            f'<th scope="col">Detail</th><th scope="col">Attempts</th><th scope="col">Action</th></tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>{actions}</form></section>"
        )
    return page("Dead letters", "dead-letters", "".join(parts), csrf=csrf)


def letter_page(letter: Mapping[str, Any], replayable: bool, *, csrf: str) -> str:
    """One dead letter: why it gave up, the request it will replay, and the last request and answer."""
    last = letter.get("last_response") or {}
    facts = [
        ("Integration", letter.get("integration")),
        ("Preset", letter.get("preset")),
        ("messageId", letter.get("messageId")),
        ("Dead-lettered", when(letter.get("dead_lettered_at"))),
        ("Cause", letter.get("cause")),
        ("Detail", letter.get("detail")),
        ("Attempts", letter.get("attempts")),
        ("Action", letter.get("action")),
    ]
    summary = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in facts if v not in (None, ""))
    request = letter.get("request") or {}
    last_request = letter.get("last_request") or {}
    buttons = f'<button type="submit" name="one" value="{e(letter.get("id"))}">Replay</button> ' if replayable else ""
    buttons += (
        f'<button type="submit" name="one" value="{e(letter.get("id"))}" class="danger" '
        f'formaction="/console/dead-letters/delete">Delete…</button>'
    )
    body = (
        f'<p><a href="/console/dead-letters">← all dead letters</a></p><dl class="facts">{summary}</dl>'
        f'<form method="post" action="/console/dead-letters/replay" class="actions">'
        f'<input type="hidden" name="csrf" value="{e(csrf)}">'
        f'<input type="hidden" name="integration" value="{e(letter.get("integration"))}">{buttons}</form>'
        f'<section id="request"><h2>Request (replayed as is)</h2>'
        f'<p class="request-line"><code>{e(request.get("method"))} {e(request.get("url"))}</code></p>'
        f"<pre>{pretty(request.get('body') if 'body' in request else request)}</pre></section>"
        f'<section id="last-response"><h2>Last response</h2>'
        + (
            f'<p class="request-line">To <code>{e(last_request.get("method"))} {e(last_request.get("url"))}</code></p>'
            if last_request
            else ""
        )
        + f'<dl class="facts"><dt>Status</dt><dd id="last-status">{e(last.get("status") or "no answer")}</dd></dl>'
        f"<h3>Body (capped)</h3><pre>{pretty(last.get('body'))}</pre></section>"
    )
    return page(f"Dead letter {letter.get('messageId') or letter.get('id')}", "dead-letters", body, csrf=csrf)


def confirm_delete_page(integration: str, letters: Sequence[Mapping[str, Any]], *, csrf: str) -> str:
    """The confirmation step: the letters named, and a form that deletes only these, only when sent."""
    rows = "".join(
        f"<tr><td>{e(when(letter.get('dead_lettered_at')))}</td><td>{e(letter.get('messageId'))}</td>"
        f"<td>{e(letter.get('cause'))}</td><td>{e(letter.get('detail'))}</td></tr>"
        for letter in letters
    )
    ids = "".join(f'<input type="hidden" name="selected" value="{e(letter.get("id"))}">' for letter in letters)
    body = (
        f'<p class="warning" role="alert">Delete {len(letters)} dead letter(s) of <strong>{e(integration)}'
        f"</strong>? They are not sent and cannot be replayed afterwards.</p>"
        f'<table class="letters" id="to-delete"><thead><tr><th scope="col">Dead-lettered</th>'
        f'<th scope="col">messageId</th><th scope="col">Cause</th><th scope="col">Detail</th></tr></thead>'
        f"<tbody>{rows}</tbody></table>"
        f'<form method="post" action="/console/dead-letters/delete" class="actions">'
        f'<input type="hidden" name="csrf" value="{e(csrf)}">'
        f'<input type="hidden" name="integration" value="{e(integration)}">{ids}'
        f'<input type="hidden" name="confirmed" value="yes">'
        f'<button type="submit" class="danger" id="confirm-delete">Delete {len(letters)} letter(s)</button> '
        f'<a href="/console/dead-letters" id="cancel-delete">Cancel</a></form>'
    )
    return page("Delete dead letters?", "dead-letters", body, csrf=csrf)


def _lag(value: Any) -> str:
    if not isinstance(value, int):
        return '<span class="lag">Lag: not known (this store has no queue for it).</span>'
    return f'<span class="lag">Lag: {value} event(s) not finished yet.</span>'


def _configured(about: Mapping[str, Any] | None) -> str:
    """An integration of the integrations file: where it comes from, and that it is edited there, not here."""
    if not about:
        return ""
    state = "" if about.get("enabled") else " It is disabled (enabled: false)."
    replay = (
        "Its dead letters can be replayed from here, with its own settings."
        if about.get("replayable")
        else f"Its dead letters cannot be replayed from here: {about.get('why_not')}."
    )
    if about.get("origin") == "console":
        return (
            f'<p class="note configured">Set up in the console (preset <code>{e(about.get("preset"))}</code>): '
            f'<a href="/console/integrations/{quote(str(about.get("name") or ""), safe="")}/edit">edit</a> it '
            f"under Set up an integration. {e(replay)}</p>"
        )
    return (
        f'<p class="note configured">Defined in <code>{e(about.get("file"))}</code> (preset '
        f"<code>{e(about.get('preset'))}</code>): read-only here; change it in that file.{e(state)} "
        f"{e(replay)}</p>"
    )


SPARK_HEIGHT = 24
BAR_WIDTH, BAR_GAP = 4, 2
ZERO = ' class="zero"'


def spark(counts: Sequence[int], kind: str, window: str, bar_seconds: Any) -> str:
    """A small bar chart as inline SVG, drawn here: no script and no library, so the CSP and no network hold.

    Bars are scaled to the busiest bar of this chart; an empty bar is a thin
    baseline, so "none" still reads as a bar. The title carries the numbers.
    """
    if not counts:
        return ""
    top = max(max(counts), 1)
    width = len(counts) * (BAR_WIDTH + BAR_GAP) - BAR_GAP
    rects = []
    for i, count in enumerate(counts):
        height = max(1.0, round(count / top * (SPARK_HEIGHT - 2), 1)) if count else 1.0
        rects.append(
            f'<rect x="{i * (BAR_WIDTH + BAR_GAP)}" y="{SPARK_HEIGHT - height}" width="{BAR_WIDTH}" '
            f'height="{height}"{"" if count else ZERO}></rect>'
        )
    minutes = int(bar_seconds) // 60 if isinstance(bar_seconds, (int, float)) else None
    per = (
        ""
        if not minutes
        else f"per {minutes} minutes"
        if minutes < 60
        else "per hour"
        if minutes == 60
        else f"per {minutes // 60} hours"
    )
    label = f"{kind} {per}, {window}, oldest first: {', '.join(str(c) for c in counts)}"
    return (
        f'<svg class="spark {e(kind)}" width="{width}" height="{SPARK_HEIGHT}" '
        f'viewBox="0 0 {width} {SPARK_HEIGHT}" '
        f'role="img" aria-label="{e(label)}" data-counts="{e(",".join(str(c) for c in counts))}">'
        f"<title>{e(label)}</title>{''.join(rects)}</svg>"
    )


def _ms(value: Any) -> str:
    return f"{value:.0f} ms" if isinstance(value, (int, float)) else "—"


def last_error_text(last: Mapping[str, Any]) -> str:
    """ "failed: token_refresh_failed, HTTP 401", or "failed (no cause or status recorded)": never a blank detail."""
    outcome = str(last.get("outcome") or "failed")
    cause = str(last.get("cause") or "").strip()
    status = last.get("status")
    detail = [part for part in (cause, f"HTTP {status}" if status not in (None, "") else "") if part]
    return f"{outcome}: {', '.join(detail)}" if detail else f"{outcome} (no cause or status recorded)"


def integrations_page(figures: Sequence[Mapping[str, Any]], *, csrf: str) -> str:
    add = '<p><a href="/console/integrations/new" class="button">Set up an integration</a></p>'
    if not figures:
        return page("Integrations", "integrations", add + '<p class="empty">Nothing recorded yet.</p>', csrf=csrf)
    cards = []
    for item in figures:
        rows = []
        for label, w in item["windows"].items():
            chart = (item.get("series") or {}).get(label) or {}
            bars = "".join(
                f'<td class="num">{w[k]}{spark(chart.get(k) or [], k, label, chart.get("bar_seconds"))}</td>'
                for k in (DELIVERED, FAILED, DEAD_LETTERED, DROPPED)
            )
            rows.append(
                f'<tr><th scope="row">{e(label)}</th>{bars}<td class="num">{w["http_429"]}</td>'
                f'<td class="num">{w["token_requests"]}</td>'
                f'<td class="num">{_ms(w["p50_ms"])}</td><td class="num">{_ms(w["p95_ms"])}</td></tr>'
            )
        last = item.get("last_error")
        last_text = (
            "none"
            if not last
            else f'<a href="/console/events/{e(quote(str(last.get("id")), safe=""))}">{e(when(last.get("at")))}</a> '
            f"{e(last_error_text(last))}"
        )
        cards.append(
            f'<section class="integration" data-integration="{e(item["integration"])}">'
            f'<h2>{e(item["integration"])}</h2><table class="health"><thead><tr><th scope="col">Window</th>'
            f'<th scope="col">Delivered</th><th scope="col">Failed</th><th scope="col">Dead-lettered</th>'
            f'<th scope="col">Dropped</th><th scope="col">429s</th><th scope="col">Token requests</th>'
            f'<th scope="col">p50</th>'
            f'<th scope="col">p95</th></tr></thead><tbody>{"".join(rows)}</tbody></table>'
            f"<p>Last error: {last_text}. Dead letters waiting: "
            f'<a href="/console/dead-letters">{item["dead_letters"]}</a>. Last event: '
            f"{e(when(item.get('last_event_at')) or '—')}. {_lag(item.get('lag'))}</p>"
            f"{_configured(item.get('configured'))}</section>"
        )
    note = (
        '<p class="note">Figures come from the record of recent events (by default the last 10,000 per '
        "integration, at most 7 days); latency is from taking the event to its outcome, for delivered events.</p>"
    )
    return page("Integrations", "integrations", add + note + "".join(cards), csrf=csrf)


def login_page(problem: str | None, *, csrf: str) -> str:
    error = f'<p class="error" role="alert">{e(problem)}</p>' if problem else ""
    return page(
        "Sign in",
        "",
        f'{error}<form method="post" action="/console/login" class="login">'
        f'<label>Console token <input type="password" name="token" autocomplete="current-password" '
        f'required></label> <button type="submit">Sign in</button></form>',
        csrf=csrf,
    )


def playground_results(result: Mapping[str, Any]) -> tuple[str, str]:
    """The problems list and the outcomes, as the script renders them too (``console.js``)."""
    problems = [
        *(
            f"<li>{'line ' + str(p['line']) + ': ' if p.get('line') else ''}{e(p['message'])}</li>"
            for p in result.get("problems", [])
        ),
        *(f"<li>{e(p)}</li>" for p in result.get("event_problems", [])),
    ]
    outcomes = []
    for item in result.get("events", []):
        outcome = item.get("outcome") or {}
        outcomes.append(
            f'<section class="play-event"><h3>Event {e(item.get("index"))}: '
            f'<span class="badge {e(outcome.get("outcome"))}">{e(outcome.get("outcome"))}</span> '
            f"{e(outcome.get('reason') or outcome.get('cause') or '')}</h3>"
            f"<p>Decided by: {e(item.get('decided_by'))}</p>"
            + (
                f"<details open><summary>Request</summary><pre>{pretty(item.get('request'))}</pre></details>"
                if item.get("request") is not None
                else ""
            )
            + f"<details><summary>Explain trace</summary><pre>{pretty(item.get('steps'))}</pre></details>"
            f"</section>"
        )
    return "".join(problems), "".join(outcomes)


def playground_page(
    names: Sequence[str], chosen: str, source: str, events: str, result: Mapping[str, Any], *, csrf: str
) -> str:
    problems, outcomes = playground_results(result)
    options = "".join(f'<option value="{e(n)}"{" selected" if n == chosen else ""}>{e(n)}</option>' for n in names)
    body = (
        f'<p class="note">Edit a preset and events; each change is checked like <code>check</code> and dry-run '
        f"like <code>run --dry-run</code>. Nothing is sent and nothing is stored.</p>"
        f'<div class="playground" id="playground">'
        f'<div class="pane"><label>Start from a preset <select id="preset-choice">{options}</select></label>'
        f'<label for="yaml">Preset YAML</label><textarea id="yaml" spellcheck="false" rows="30">{e(source)}'
        f"</textarea></div>"
        f'<div class="pane"><label for="events-input">Events (NDJSON, one object, or a JSON array)</label>'
        f'<textarea id="events-input" spellcheck="false" rows="8">{e(events)}</textarea>'
        f'<p class="live" id="play-status" aria-live="polite">Checked.</p>'
        f'<h2>Problems</h2><ul id="problems" class="problems">{problems}</ul>'
        f'<h2>Outcomes</h2><div id="results">{outcomes}</div>'
        f'<h2>Golden cases</h2><p class="actions"><button type="button" id="run-golden">Run golden cases</button>'
        f'<span class="live" id="golden-status" aria-live="polite">Runs the preset\'s cases '
        f"(<code>golden/&lt;preset&gt;/</code>) against the YAML above; nothing is sent.</span></p>"
        f'<div id="golden"></div></div></div>'
    )
    return page("Playground", "playground", body, csrf=csrf)
