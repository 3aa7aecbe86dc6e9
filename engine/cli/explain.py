"""``signal-engine explain``: why one event came out as it did.

It runs the event as ``run --dry-run`` would and prints every decision on
the way: the shape check, the event-table match, the consent decision,
where each trait came from and what its normaliser did, the mapping's
output (each field with the expression that wrote it, at file:line), what
was omitted or truncated, the validation result and the request.

``--event`` takes JSON, a file or ``-``. A file may hold one JSON object,
a JSON array, a golden case (its ``events``) or NDJSON. With ``--index N``
the events before N run first, so identify memory is what it would be.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

from .. import outcome as oc
from ..language.model import Preset
from ..language.settings import resolve
from ..language.yaml_source import YamlSourceError, load_yaml
from ..pipeline.explain import explain
from ..pipeline.prepare import Pipeline
from .common import UsageError, add_preset_path_option, load_preset_arg, settings_for
from .events_input import events_from
from .report import EXIT_EVENTS_FAILED, EXIT_OK


def register(sub: Any) -> None:
    cmd = sub.add_parser(
        "explain",
        help="show why one event came out as it did (every decision of a dry run)",
        description="Run one event as run --dry-run would and print each decision: shape, event table, consent, "
        "traits (source and normaliser), mapping output by expression, omitted and truncated fields, "
        "validation and the request. Exit status: 0, or 1 when the event failed.",
    )
    cmd.add_argument("preset", metavar="PRESET", help="built-in name (destination/preset) or path to a YAML preset")
    cmd.add_argument(
        "--event",
        required=True,
        metavar="JSON|FILE|-",
        help="the event as JSON text, a file (one JSON object, a JSON array, a golden case or NDJSON) or - for stdin",
    )
    cmd.add_argument(
        "--index",
        type=int,
        metavar="N",
        help="which event of the file: the 0-based line of NDJSON (as run prints it) or position in "
        "a list; the events before it run first, so identify memory is as in a run",
    )
    cmd.add_argument("--settings", metavar="FILE", help="YAML mapping of setting values (no credentials needed)")
    cmd.add_argument("--json", action="store_true", help="print the explanation as one JSON object, for tools")
    add_preset_path_option(cmd)
    cmd.set_defaults(func=cmd_explain)


def cmd_explain(args: argparse.Namespace) -> int:
    preset = load_preset_arg(args)
    items, case_settings = read_event_source(args.event)
    if args.settings or not case_settings:
        settings = settings_for(args, preset.settings, require=False)
    else:
        settings = resolve(preset.settings, case_settings, require=False)
    chosen = _choose(items, args.index, args.event)
    pipeline = Pipeline(preset, settings)
    for index, event, problem in items:
        if index == chosen:
            break
        if problem is None:
            pipeline.dry_run(event, index)  # earlier events: identify memory as a run would leave it
    index, event, problem = next(item for item in items if item[0] == chosen)
    if problem is not None:
        result = {
            "preset": preset.name,
            "index": index,
            "messageId": None,
            "outcome": oc.dropped(index, None, oc.INVALID_EVENT, problem).to_dict(),
            "decided_by": "shape",
            "steps": {"shape": {"ok": False, "problem": problem}},
        }
    else:
        result = explain(pipeline, event, index)
        _locate_expressions(preset, result)
    if args.json:
        sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(render(result))
    sys.stdout.flush()
    failed = result["outcome"]["outcome"] in (oc.FAILED, oc.DEAD_LETTERED)
    return EXIT_EVENTS_FAILED if failed else EXIT_OK


# --------------------------------------------------------------------------
# input
# --------------------------------------------------------------------------


def read_event_source(value: str) -> tuple[list[tuple[int, Any, str | None]], dict[str, Any] | None]:
    """(index, event, problem) items from --event, and a golden case's settings if it is one."""
    if value == "-":
        stdin = sys.stdin
        if stdin is None:
            raise UsageError("--event -: there is no standard input")
        raw = getattr(stdin, "buffer", stdin).read()
        data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogateescape")
        label = "--event -"
    elif value.lstrip().startswith(("{", "[")):
        data = value.encode("utf-8", "surrogateescape")
        label = "--event"
    else:
        path = Path(value)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UsageError(
                f"--event {value}: cannot read: {exc.strerror or exc} (--event takes JSON text, a file or -)"
            ) from None
        label = f"--event {value}"
    try:
        whole = json.loads(data.decode("utf-8-sig"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        whole = None
        parsed = False
    else:
        parsed = True
    if parsed:
        if isinstance(whole, dict) and "type" not in whole and isinstance(whole.get("events"), list):
            settings = whole.get("settings") if isinstance(whole.get("settings"), dict) else None
            return [(i, e, None) for i, e in enumerate(whole["events"])], settings
        if isinstance(whole, list):
            return [(i, e, None) for i, e in enumerate(whole)], None
        return [(0, whole, None)], None
    items = list(events_from(io.BytesIO(data), label))
    if not items:
        raise UsageError(f"{label}: no events: the input is empty")
    return items, None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _choose(items: list[tuple[int, Any, str | None]], index: int | None, source: str) -> int:
    indexes = [item[0] for item in items]
    if not indexes:
        raise UsageError(f"--event {source}: no events: the input is empty")
    if index is None:
        if len(indexes) > 1:
            raise UsageError(
                f"--event holds {len(indexes)} events; choose one with --index N (N is one of {_range_text(indexes)})"
            )
        return indexes[0]
    if index not in indexes:
        raise UsageError(f"--index {index}: no event there (the input's events are at {_range_text(indexes)})")
    return index


def _range_text(indexes: list[int]) -> str:
    if indexes == list(range(indexes[0], indexes[-1] + 1)):
        return f"{indexes[0]}..{indexes[-1]}" if len(indexes) > 1 else str(indexes[0])
    shown = ", ".join(map(str, indexes[:8]))
    return shown + (", …" if len(indexes) > 8 else "")


def _locate_expressions(preset: Preset, result: dict[str, Any]) -> None:
    """Turn each expression's offset in the mapping into file:line, for the reader to jump to."""
    steps = result["steps"]
    action = (steps.get("mapping") or {}).get("action")
    if not action:
        return
    try:
        doc = load_yaml(preset.path)
    except (YamlSourceError, OSError):
        return
    path = ["actions", action, "mapping"]

    shown = _shown_path(preset.path)

    def where(offset: int) -> str:
        loc = doc.locate_in_scalar(path, offset)
        return f"{shown}:{loc.line}"

    for item in steps["mapping"].get("fields", []):
        item["at"] = where(item.pop("offset"))
    output = steps.get("output") or {}
    for item in [*output.get("omitted", []), *output.get("truncated", []), output.get("validation") or {}]:
        if "offset" in item:
            item["at"] = where(item.pop("offset"))


def _shown_path(path: str) -> str:
    """Relative to the current folder when the file is below it; absolute otherwise."""
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if relative.startswith("..") else relative


# --------------------------------------------------------------------------
# text
# --------------------------------------------------------------------------


def _j(value: Any, limit: int = 120) -> str:
    """Compact JSON, cut for a person to read (--json keeps everything)."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else f"{text[: limit - 20]}... ({len(text)} characters)"


def render(result: dict[str, Any]) -> str:
    """The explanation for a person: one numbered section per stage that ran."""
    out: list[str] = []
    outcome = result["outcome"]
    head = f"{result['preset']}, event {result['index']}"
    if result.get("messageId"):
        head += f" (messageId {result['messageId']})"
    verdict = outcome["outcome"]
    if outcome.get("reason") or outcome.get("cause"):
        verdict += f" {outcome.get('reason') or outcome.get('cause')}"
    out.append(f"{head}: {verdict}, decided by: {result['decided_by'].replace('_', ' ')}")
    if outcome.get("detail"):
        out.append(f"  {outcome['detail']}")
    steps = result["steps"]
    n = 0

    def section(title: str) -> None:
        nonlocal n
        n += 1
        out.append("")
        out.append(f"{n}. {title}")

    shape = steps.get("shape", {})
    section("shape: " + ("ok" if shape.get("ok") else f"invalid_event: {shape.get('problem')}"))

    if "identify" in steps:
        ident = steps["identify"]
        section("identify memory: " + ("remembered" if ident.get("remembered") else "not remembered"))
        out.append(f"   {ident.get('why')}")
        if ident.get("ids"):
            out.append("   ids: " + ", ".join(f"{k} {v}" for k, v in ident["ids"].items()))
        if ident.get("traits"):
            out.append("   traits: " + ", ".join(ident["traits"]))

    table = steps.get("event_table")
    if table is not None:
        name = f"{table['type']} {_j(table['event'])}" if "event" in table else table["type"]
        if table["matched"]:
            section(
                f"event table: {name} -> action {table['action']} ({table['entry']}"
                + (f", alias {_j(table['alias'])}" if "alias" in table else "")
                + ")"
            )
            if table.get("values"):
                out.append(f"   values: {_j(table['values'])}")
        else:
            section(f"event table: {name} is not mapped")
            out.append(f"   {table['why']}")

    consent = steps.get("consent")
    if consent is not None:
        state = "granted" if not consent["missing"] else f"not granted for {', '.join(consent['missing'])}"
        section(
            f"consent: {state} (shape: {consent['shape']}; setting {consent['setting']} requires "
            f"{', '.join(consent['required'])})"
        )
        for row in consent["categories"]:
            by = f"{row['by']}: " if row.get("by") else ""
            out.append(f"   {row['category']}: {'granted' if row['granted'] else 'NOT granted'} - {by}{row['why']}")

    traits = steps.get("traits")
    if traits is not None:
        section(f"traits (identity.required: {traits['required']})")
        width = max((len(r["name"]) for r in traits["traits"]), default=0)
        for row in traits["traits"]:
            label = row["name"].ljust(width)
            if row.get("source") is None:
                out.append(f"   {label}  -  {row['why']}" + ("  <- required" if row.get("required") else ""))
                continue
            line = f"   {label}  {_j(row['value'])} from {row['source']}"
            if row.get("normaliser"):
                region = row.get("region_from")
                extra = ""
                if region:
                    extra = (
                        f", default region from {region['trait']}: {_j(region['value'])}"
                        if region["value"] is not None
                        else f", no default region ({region['trait']} not given)"
                    )
                line += f"; {row['normaliser']}{extra}: "
                line += _j(row["result"]) + f" ({row['why']})" if row.get("result") is not None else row["why"]
            out.append(line)
            for other in row.get("overrides", []):
                out.append(f"   {' ' * width}  (overrides {_j(other['value'])} from {other['source']})")
            if row.get("note"):
                out.append(f"   {' ' * width}  {row['note']}")
        if traits.get("ignored"):
            out.append(f"   ignored: {', '.join(traits['ignored'])} ({traits['ignored_why']})")

    mapping = steps.get("mapping")
    if mapping is not None:
        section(f"mapping: {mapping['expression']}")
        if "error" in mapping:
            out.append(f"   {mapping['error']}")
        elif mapping.get("fields"):
            for item in mapping["fields"]:
                at = f"  ({item['at']})" if item.get("at") else ""
                shown = _j(item["value"]) if "value" in item else "(not written: the expression gave no value)"
                out.append(f"   {item['path']} = {shown}")
                out.append(f"       <- {_one_line(item['expression'])}{at}")
        else:
            for line in json.dumps(mapping.get("output"), indent=2, ensure_ascii=False).splitlines():
                out.append(f"   {line}")

    output = steps.get("output")
    if output is not None:
        section("output" + (f" contract {output['contract']}" if output["contract"] else " (no output.schema)"))
        if output["omitted"]:
            out.append("   omitted (omit_empty: empty values are left out, never sent as null):")
            for item in output["omitted"]:
                out.append(f"     {item['path']} = {_j(item['value'])}{_written_by(item)}")
        else:
            out.append("   omitted: nothing")
        if output["truncated"]:
            out.append("   truncated (truncate_to_schema):")
            for item in output["truncated"]:
                out.append(
                    f"     {item['path']}: {item['from_length']} -> {item['to_length']} characters "
                    f"({item['why']}){_written_by(item)}"
                )
        else:
            out.append("   truncated: nothing")
        validation = output["validation"]
        if validation["ok"]:
            out.append("   validation: ok" + (f" ({validation['why']})" if validation.get("why") else ""))
        else:
            out.append(
                f"   validation: FAILED at {validation['field']}: {validation['message']}{_written_by(validation)}"
            )

    request = steps.get("request")
    if request is not None:
        if "error" in request:
            section(f"request: {request['error']}")
        else:
            section(f"request: {request['method']} {request['url']}")
            for key, value in request.get("headers", {}).items():
                out.append(f"   {key}: {value}")
            for line in json.dumps(request.get("body"), indent=2, ensure_ascii=False).splitlines():
                out.append(f"   {line}")
    sequence = steps.get("requests")
    if sequence and (len(sequence) > 1 or steps.get("flow")):
        section("requests, in the order they are sent")
        for number, item in enumerate(sequence, 1):
            out.append(f"   {number}. {item['method']} {item['url']}")
        flow = steps.get("flow")
        if flow and flow["shown"] < len(flow["steps"]):
            out.append(f"   then: {', '.join(flow['steps'][flow['shown'] :])} ({flow['why']})")
        elif not flow:
            out.append(
                "   (an upsert's lookup first: the create goes only when it finds nothing, "
                "else the record it finds is updated)"
            )
    if steps.get("trace_error"):
        out.append("")
        out.append(f"(the explanation stopped early: {steps['trace_error']}; the outcome above is the run's own)")
    return "\n".join(out) + "\n"


def _written_by(item: dict[str, Any]) -> str:
    if not item.get("expression"):
        return ""
    at = f" at {item['at']}" if item.get("at") else ""
    return f"  <- {_one_line(item['expression'])}{at}"


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= 100 else flat[:97] + "..."
