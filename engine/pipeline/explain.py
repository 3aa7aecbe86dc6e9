"""Why one event came out as it did: the pipeline's decisions, step by step.

``explain`` walks the same stages as :meth:`Pipeline.prepare`, with the same
compiled objects (event table, consent gate, identity memory, normalisers,
mapping, output contract), but records what each stage saw and decided:
which consent shape decided, where each trait came from and what its
normaliser did, what the mapping produced, what was omitted or truncated
and why, the validation result and the request.

The outcome it reports is always the pipeline's own (``dry_run``), computed
after the trace, so an explanation can never disagree with a run; the
trace is read-only and leaves the identity memory exactly as a dry run of
the same event would.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .. import outcome as oc
from ..event_identity import message_id_of
from ..language.expressions import ExpressionError
from ..language.model import ActionSpec, TraitSpec
from .event_shape import shape_problem
from .identity import merged_traits
from .normalisers import InvalidValue
from .output_contract import ContractViolation, omit_empty
from .prepare import Pipeline

# Which step decided each outcome (drops by reason, failures by cause).
_DECIDED_BY = {
    oc.INVALID_EVENT: "shape",
    oc.EVENT_NOT_MAPPED: "event_table",
    oc.NO_CONSENT: "consent",
    oc.NOT_IDENTIFIED: "traits",
    oc.INVALID_EMAIL: "traits",
    oc.MAPPING_ERROR: "mapping",
    oc.OUTPUT_INVALID: "output",
}

_NORMALISER_DOES = {
    "text": "trims; numbers become text; empty, boolean and structured values are left out",
    "email": "trims and lower-cases; refuses what is not an email address",
    "phone_e164": "formats to E.164 (national numbers use the region_from trait); leaves out an impossible number",
}


def explain(pipeline: Pipeline, event: Any, index: int | None = None) -> dict[str, Any]:
    """The explanation of one event, as plain JSON-ready data; the pipeline then runs it for real."""
    steps: dict[str, Any] = {}
    try:
        _trace(pipeline, event, steps)
    except Exception as exc:  # noqa: BLE001 - an explanation must not cost the outcome
        steps["trace_error"] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
    result = pipeline.dry_run(event, index)  # the authority; also updates identity memory as a run would
    if result.request is not None:
        steps["request"] = result.request  # the masked envelope, exactly as run --dry-run prints it
    if result.requests is not None:
        steps["requests"] = result.requests  # everything sent before an answer is needed, in order
        action = pipeline.preset.actions.get(str((steps.get("event_table") or {}).get("action")))
        if action is not None and action.flow:
            steps["flow"] = {
                "steps": [step.name for step in action.flow],
                "shown": len(result.requests),
                "why": "the steps after these need an earlier step's answer, or their when is not true",
            }
    why = result.reason or result.cause
    decided = "request" if result.outcome == oc.WOULD_SEND else _DECIDED_BY.get(why or "", "internal")
    return {
        "preset": pipeline.preset.name,
        "index": index,
        "messageId": message_id_of(event),
        "outcome": result.to_dict(),
        "decided_by": decided,
        "steps": steps,
    }


# --------------------------------------------------------------------------
# the stages, in the order prepare() runs them
# --------------------------------------------------------------------------


def _trace(pipeline: Pipeline, event: Any, steps: dict[str, Any]) -> None:
    problem = shape_problem(event)
    steps["shape"] = {"ok": problem is None} if problem is None else {"ok": False, "problem": problem}
    if problem:
        return
    kind = event["type"]
    if kind == "identify":
        steps["identify"] = _identify(pipeline, event)

    name = event.get("event")
    route = pipeline.preset.events.route(kind, name)
    table: dict[str, Any] = {"type": kind}
    if kind == "track":
        table["event"] = name
    if route is None:
        table["matched"] = False
        table["why"] = (
            f"{name!r} is not in events.track (names match exactly), so defaults.action: drop applies"
            if kind == "track"
            else f"events.{kind} is not mapped, so defaults.action: drop applies"
        )
        steps["event_table"] = table
        return
    table.update(
        {
            "matched": True,
            "entry": f"events.track.{route.name}" if kind == "track" else f"events.{kind}",
            "action": route.action,
            "values": dict(route.values),
        }
    )
    if kind == "track" and name != route.name:
        table["alias"] = name
    steps["event_table"] = table

    consent = _consent(pipeline, event)
    steps["consent"] = consent
    if consent["missing"]:
        return

    traits_step, traits, stop = _traits(pipeline, event)
    steps["traits"] = traits_step
    if stop:
        return

    action = pipeline.preset.actions[route.action]
    context = {"event": event, "traits": traits, "values": route.values, "settings": pipeline.public_settings}
    spans = outline(action.mapping.source)
    mapping: dict[str, Any] = {"action": action.name, "expression": f"actions.{action.name}.mapping"}
    steps["mapping"] = mapping
    try:
        document = action.mapping.evaluate(context)
    except ExpressionError as exc:
        mapping["error"] = f"JSONata evaluation failed: {exc}"
        return
    mapping["output"] = document
    fields = []
    for path, (start, end) in spans.items():
        found, value = _at(document, path)
        item: dict[str, Any] = {"path": _dotted(path), "expression": action.mapping.source[start:end], "offset": start}
        if found:
            item["value"] = value
        else:
            item["written"] = False
            item["why"] = "the expression gave no value, so JSONata left the key out"
        fields.append(item)
    mapping["fields"] = fields
    steps["output"] = _output(action, document, spans)


def _identify(pipeline: Pipeline, event: Mapping[str, Any]) -> dict[str, Any]:
    memory = pipeline.memory
    ids = {key: event.get(key) for key in memory.keys if event.get(key) not in (None, "")}
    declared = {t.name for t in pipeline.preset.identity.traits}
    kept = sorted(k for k in merged_traits(event, {}) if k in declared)
    if not memory.keys:
        return {"remembered": False, "why": "identity.remember is empty: this preset remembers nothing"}
    refused = pipeline.gate.refused(event)
    if refused:
        return {
            "remembered": False,
            "refused": refused,
            "ids": ids,
            "why": f"consent refuses {', '.join(refused)}: nothing is remembered, and what was remembered "
            "for these ids is forgotten",
        }
    if not kept:
        return {"remembered": False, "ids": ids, "why": "no declared trait to remember"}
    return {
        "remembered": True,
        "ids": ids,
        "traits": kept,
        "why": "remembered for later events of these ids (identity.remember)",
    }


def _consent(pipeline: Pipeline, event: Mapping[str, Any]) -> dict[str, Any]:
    """Mirror of ConsentGate.missing that says which shape and which key decided each category."""
    gate = pipeline.gate
    context = event.get("context")
    consent = context.get("consent") if isinstance(context, dict) else None
    rows: list[dict[str, Any]] = []
    if not isinstance(consent, dict):
        shape = "none"
        rows = [
            {"category": c, "granted": False, "why": "no context.consent on the event: no consent"}
            for c in gate.required
        ]
    elif isinstance(consent.get("canonical"), dict):
        shape = "canonical"
        canonical = consent["canonical"]
        for c in gate.required:
            value = canonical.get(c)
            rows.append(
                {
                    "category": c,
                    "granted": value is True,
                    "by": f"context.consent.canonical.{c}",
                    "value": value,
                    "why": _grant_why(c, value, canonical),
                }
            )
    else:
        codes = consent.get("categories")
        granted_codes = {x.lower() for x in codes if isinstance(x, str)} if isinstance(codes, list) else set()
        shapes = set()
        for c in gate.required:
            value = consent.get(c)
            matched = sorted(gate.aliases[c] & granted_codes)
            if value is True:
                shapes.add("flat")
                rows.append(
                    {
                        "category": c,
                        "granted": True,
                        "by": f"context.consent.{c}",
                        "value": True,
                        "why": "flat legacy boolean: true",
                    }
                )
            elif matched:
                shapes.add("categories")
                rows.append(
                    {
                        "category": c,
                        "granted": True,
                        "by": "context.consent.categories",
                        "value": matched,
                        "why": f"code {matched[0]!r} is listed"
                        + ("" if matched[0] == c.lower() else f" (consent.aliases maps it to {c})"),
                    }
                )
            else:
                reasons = []
                if c in consent:
                    shapes.add("flat")
                    reasons.append(f"context.consent.{c}: {_grant_why(c, value, consent)}")
                if isinstance(codes, list):
                    shapes.add("categories")
                    known = sorted(gate.aliases[c])
                    reasons.append(f"context.consent.categories {_short(codes)} lists none of {known}")
                if not reasons:
                    reasons.append(f"neither context.consent.{c} nor context.consent.categories is given")
                rows.append({"category": c, "granted": False, "value": value, "why": "; ".join(reasons)})
        shape = "+".join(sorted(shapes)) or "none"
    missing = [r["category"] for r in rows if not r["granted"]]
    actual = gate.missing(event)
    if missing != actual:  # never expected; the gate is the authority
        missing = actual
    return {
        "setting": pipeline.preset.consent_setting,
        "required": list(gate.required),
        "shape": shape,
        "categories": rows,
        "missing": missing,
    }


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _grant_why(category: str, value: Any, source: Mapping[str, Any]) -> str:
    if value is True:
        return "true: granted"
    if category not in source:
        return "not given: no consent"
    if value is False:
        return "false: refused"
    return f"{value!r} is not JSON true: not consent"


def _traits(pipeline: Pipeline, event: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """Where each declared trait came from and what its normaliser did; and the traits the mapping sees."""
    ident = pipeline.preset.identity
    remembered = pipeline.memory.recall(event)
    user_id = event.get("userId")
    from_user = (
        pipeline.memory.recall({"userId": user_id})
        if "userId" in pipeline.memory.keys and user_id not in (None, "")
        else {}
    )
    context = event.get("context")
    layers = [
        ("traits", event.get("traits")),
        ("context.traits", context.get("traits") if isinstance(context, dict) else None),
    ]
    raw = merged_traits(event, remembered)
    rows: list[dict[str, Any]] = []
    clean: dict[str, Any] = {}
    stop = False
    required = next(t for t in ident.traits if t.name == ident.required)
    for spec in ident.traits:
        row = _trait_row(spec, raw, layers, remembered, from_user, event)
        rows.append(row)
        if spec.name == required.name:
            row["required"] = True
            if row.get("invalid"):
                stop = True
            elif row.get("result") is None:
                row["note"] = f"identity.required is {spec.name!r}: without it the event is not identified"
                stop = True
        if row.get("result") is not None:
            clean[spec.name] = row["result"]
    declared = {t.name for t in ident.traits}
    ignored = sorted({k for _, layer in layers if isinstance(layer, dict) for k in layer} - declared)
    step: dict[str, Any] = {"required": required.name, "traits": rows}
    if ignored:
        step["ignored"] = ignored
        step["ignored_why"] = "not declared in identity.traits: never reaches the mapping"
    if not stop:
        step["mapping_sees"] = clean
    return step, clean, stop


def _trait_row(
    spec: TraitSpec,
    raw: Mapping[str, Any],
    layers: list[tuple[str, Any]],
    remembered: Mapping[str, Any],
    from_user: Mapping[str, Any],
    event: Mapping[str, Any],
) -> dict[str, Any]:
    row: dict[str, Any] = {"name": spec.name}
    sources = []
    for label, layer in layers:
        if isinstance(layer, dict) and spec.name in layer:
            value = layer[spec.name]
            blank = value is None or (isinstance(value, str) and not value.strip())
            sources.append({"source": label, "value": value, **({"ignored": "blank"} if blank else {})})
    if spec.name in remembered:
        if spec.name in from_user and from_user[spec.name] == remembered[spec.name]:
            origin = f"remembered (userId {event.get('userId')})"
        else:
            origin = f"remembered (anonymousId {event.get('anonymousId')})"
        sources.append({"source": origin, "value": remembered[spec.name]})
    used = next((s for s in sources if "ignored" not in s), None)
    if used is None:
        row["source"] = None
        row["result"] = None
        row["why"] = "not on the event, in context.traits, or remembered" + (
            " (blank values say nothing)" if sources else ""
        )
        return row
    row["source"] = used["source"]
    row["value"] = used["value"]
    shadowed = [s for s in sources if s is not used and "ignored" not in s]
    if shadowed:
        row["overrides"] = shadowed
    if spec.normalise is None:
        row["result"] = used["value"]
        return row
    row["normaliser"] = spec.kind
    if spec.option:
        row["region_from"] = {"trait": spec.option, "value": raw.get(spec.option)}
    try:
        result = spec.normalise(raw.get(spec.name), dict(raw), spec.option)
    except InvalidValue as exc:
        row["result"] = None
        row["invalid"] = str(exc)
        row["why"] = f"{spec.kind} refused it: {exc}"
        return row
    row["result"] = result
    if result is None:
        row["why"] = f"{spec.kind} left it out ({_NORMALISER_DOES.get(spec.kind or '', 'no usable value')})"
    elif result != used["value"]:
        row["why"] = f"{spec.kind} changed it"
    else:
        row["why"] = "unchanged"
    return row


def _output(action: ActionSpec, document: Any, spans: Mapping[tuple[str, ...], tuple[int, int]]) -> dict[str, Any]:
    """What the output contract did to the mapped document: omitted, truncated, validated."""
    step: dict[str, Any] = {
        "contract": action.contract.name if action.contract else None,
        "omit_empty": action.omit_empty,
        "truncate_to_schema": action.truncate,
    }
    shaped = omit_empty(document) if action.omit_empty else document
    step["omitted"] = [
        {"path": _dotted(path), "value": value, **_expression_of(path, spans, action)}
        for path, value in _removed(document, shaped, ())
    ]
    truncated = []
    if action.contract is not None and action.truncate:
        cut = action.contract.truncate(shaped)
        for path, before, after in _shortened(shaped, cut, ()):
            truncated.append(
                {
                    "path": _dotted(path),
                    "from_length": len(before),
                    "to_length": len(after),
                    "why": f"the output schema's maxLength is {len(after)}",
                    **_expression_of(path, spans, action),
                }
            )
        shaped = cut
    step["truncated"] = truncated
    step["document"] = shaped
    if action.contract is None:
        step["validation"] = {"ok": True, "why": "no output.schema: the document is not checked"}
        return step
    try:
        action.contract.check(shaped)
    except ContractViolation as exc:
        field = [p for p in exc.field.split("/") if p]
        step["validation"] = {
            "ok": False,
            "field": exc.field,
            "message": str(exc).split(": ", 1)[-1][:300],
            **_expression_of(tuple(field), spans, action),
        }
        return step
    step["validation"] = {"ok": True}
    return step


def _removed(before: Any, after: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Paths present in ``before`` and gone from ``after`` (omit_empty only ever removes)."""
    if isinstance(before, dict) and isinstance(after, dict):
        for key, value in before.items():
            if key not in after:
                yield path + (str(key),), value
            else:
                yield from _removed(value, after[key], path + (str(key),))
    elif isinstance(before, list) and isinstance(after, list):
        # Items are named by their place in the mapped array; the ones kept line up with ``after`` in order.
        kept = iter(after)
        for i, item in enumerate(before):
            if _dropped_item(item):
                yield path + (str(i),), item
            else:
                yield from _removed(item, next(kept, None), path + (str(i),))


def _dropped_item(item: Any) -> bool:
    """Whether omit_empty drops this array item: empty, or a container that is empty once cleaned."""
    if item is None or (isinstance(item, (str, list, dict)) and not item):
        return True
    return isinstance(item, (list, dict)) and not omit_empty(item)


def _shortened(before: Any, after: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], str, str]]:
    if isinstance(before, str) and isinstance(after, str) and len(after) < len(before):
        yield path, before, after
    elif isinstance(before, dict) and isinstance(after, dict):
        for key in before:
            if key in after:
                yield from _shortened(before[key], after[key], path + (str(key),))
    elif isinstance(before, list) and isinstance(after, list):
        for i, (b, a) in enumerate(zip(before, after, strict=False)):  # a list the contract cut is shorter
            yield from _shortened(b, a, path + (str(i),))


def _expression_of(
    path: tuple[str, ...], spans: Mapping[tuple[str, ...], tuple[int, int]], action: ActionSpec
) -> dict[str, Any]:
    """The mapping expression that wrote ``path`` (or its nearest written parent)."""
    for cut in range(len(path), 0, -1):
        span = spans.get(path[:cut])
        if span is not None:
            return {"expression": action.mapping.source[span[0] : span[1]], "offset": span[0]}
    return {}


def _at(document: Any, path: tuple[str, ...]) -> tuple[bool, Any]:
    node = document
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(path) if path else "(document)"


# --------------------------------------------------------------------------
# the mapping's outline: which expression writes which output key
# --------------------------------------------------------------------------


@dataclass
class _Scanner:
    text: str
    pos: int = 0

    def skip(self) -> None:
        """Whitespace and /* comments */."""
        while self.pos < len(self.text):
            if self.text[self.pos].isspace():
                self.pos += 1
            elif self.text.startswith("/*", self.pos):
                end = self.text.find("*/", self.pos + 2)
                self.pos = len(self.text) if end < 0 else end + 2
            else:
                return

    def string(self) -> str | None:
        """A string literal at pos, decoded; None if there is none."""
        quote = self.text[self.pos] if self.pos < len(self.text) else ""
        if quote not in ("'", '"'):
            return None
        out, i = [], self.pos + 1
        while i < len(self.text):
            c = self.text[i]
            if c == "\\" and i + 1 < len(self.text):
                out.append({"n": "\n", "t": "\t"}.get(self.text[i + 1], self.text[i + 1]))
                i += 2
                continue
            if c == quote:
                self.pos = i + 1
                return "".join(out)
            out.append(c)
            i += 1
        return None

    def expression_end(self) -> int:
        """The end of the expression at pos: the next ',' or closing bracket at depth 0."""
        depth = 0
        while self.pos < len(self.text):
            c = self.text[self.pos]
            if c in "'\"":
                if self.string() is None:
                    return len(self.text)
                continue
            if c == "`":
                end = self.text.find("`", self.pos + 1)
                self.pos = len(self.text) if end < 0 else end + 1
                continue
            if self.text.startswith("/*", self.pos):
                self.skip()
                continue
            if c in "([{":
                depth += 1
            elif c in ")]}":
                if depth == 0:
                    return self.pos
                depth -= 1
            elif c == "," and depth == 0:
                return self.pos
            self.pos += 1
        return self.pos


def outline(source: str) -> dict[tuple[str, ...], tuple[int, int]]:
    """Spans of the expressions an object-constructor mapping assigns to each output key.

    ``{"data": {"name": traits.name}}`` gives ``{("data", "name"): span of
    traits.name}``. Nested constructors are followed; anything else is a
    leaf. A mapping that is not a plain object constructor gives ``{}``:
    the explanation then shows the output without attributing it.
    """
    scanner = _Scanner(source)
    scanner.skip()
    spans: dict[tuple[str, ...], tuple[int, int]] = {}
    if scanner.pos >= len(source) or source[scanner.pos] != "{":
        return {}
    if not _object(scanner, (), spans):
        return {}
    scanner.skip()
    return spans if scanner.pos == len(source) else {}


def _object(scanner: _Scanner, path: tuple[str, ...], spans: dict[tuple[str, ...], tuple[int, int]]) -> bool:
    """Read ``{ "key": value, ... }`` at pos; False if it is not a plain constructor."""
    text = scanner.text
    scanner.pos += 1  # {
    while True:
        scanner.skip()
        if scanner.pos >= len(text):
            return False
        if text[scanner.pos] == "}":
            scanner.pos += 1
            return True
        key = scanner.string()
        if key is None:
            return False
        scanner.skip()
        if scanner.pos >= len(text) or text[scanner.pos] != ":":
            return False
        scanner.pos += 1
        scanner.skip()
        start = scanner.pos
        nested = False
        if start < len(text) and text[start] == "{":
            trial = _Scanner(text, start)
            inner: dict[tuple[str, ...], tuple[int, int]] = {}
            if _object(trial, path + (key,), inner):
                trial.skip()
                if trial.pos < len(text) and text[trial.pos] in ",}":
                    spans.update(inner)
                    scanner.pos = trial.pos
                    nested = True
        if not nested:
            scanner.pos = start
            end = scanner.expression_end()
            spans[path + (key,)] = (start, len(text[start:end].rstrip()) + start)
        scanner.skip()
        if scanner.pos < len(text) and text[scanner.pos] == ",":
            scanner.pos += 1
            continue
        if scanner.pos < len(text) and text[scanner.pos] == "}":
            scanner.pos += 1
            return True
        return False
