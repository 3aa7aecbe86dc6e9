"""The docs site's reference pages: generated from the parsers and the schema, committed, and complete.

A command, an option or a preset key that the reference does not list is one
a user cannot find; a committed page that differs from what the sources give
is stale (run ``python docs/gen_reference.py``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pages() -> dict[str, str]:
    return {path.relative_to(DOCS).as_posix(): text for path, text in generator().generate().items()}


def test_the_committed_reference_pages_are_what_the_sources_give(pages: dict[str, str]) -> None:
    for name, text in pages.items():
        committed = (DOCS / name).read_text(encoding="utf-8")
        assert committed == text, f"docs/{name} is stale: run python docs/gen_reference.py"


def parsers() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every command line a user can type, found here independently of the generator."""
    from engine.cli.main import COMMANDS, _parser
    from engine.cli.sandbox import available

    top = _parser()
    (commands,) = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
    assert sorted(commands.choices) == sorted(name for name, _ in COMMANDS)
    for name, parser in commands.choices.items():
        yield f"signal-engine {name}", parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    yield f"signal-engine {name} {sub_name}", sub
    for name in available():
        module = importlib.import_module(f"engine.sandbox.{name}")
        yield f"signal-engine sandbox {name}", module.build_parser()


def section(page: str, command: str) -> str:
    match = re.search(rf"^## `{re.escape(command)}`\n(.*?)(?=^## |\Z)", page, re.S | re.M)
    assert match, f"the CLI reference has no section for {command}"
    return match.group(1)


def test_every_command_and_option_is_in_the_cli_reference(pages: dict[str, str]) -> None:
    page = pages["reference/cli.md"]
    seen = 0
    for command, parser in parsers():
        text = section(page, command)
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            for flag in action.option_strings:
                assert f"`{flag}" in text, f"{command}: {flag} is missing from docs/reference/cli.md"
            if action.help and not isinstance(action, argparse._SubParsersAction):
                assert " ".join(action.help.split())[:20].replace("<", "&lt;").replace(">", "&gt;") in text, (
                    f"{command}: the help of {action.dest} is missing"
                )
            seen += 1
    assert seen > 60


def schema_keys(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key in node.get("properties", {}):
            yield key, f"{path}.{key}"
        for key, child in node.items():
            yield from schema_keys(child, f"{path}.{key}")
    elif isinstance(node, list):
        for child in node:
            yield from schema_keys(child, path)


def test_every_schema_key_is_in_the_preset_language_reference(pages: dict[str, str]) -> None:
    page = pages["reference/preset-language.md"]
    schema = json.loads((REPO / "schemas" / "preset.schema.json").read_text(encoding="utf-8"))
    listed = set()
    for token in re.findall(r"`([^`\n]+)`", page):
        listed.update(part.removesuffix("[]") for part in token.split("."))
    keys = list(schema_keys(schema))
    assert len(keys) > 100
    missing = sorted({f"{where}" for key, where in keys if key not in listed})
    assert not missing, f"schema keys missing from docs/reference/preset-language.md: {missing}"
    for name in schema["$defs"]:
        assert f"### `{name}` {{#def-" in page, f"the definition {name} has no section"


def test_every_schema_description_is_in_the_reference(pages: dict[str, str]) -> None:
    page = pages["reference/preset-language.md"]
    schema = json.loads((REPO / "schemas" / "preset.schema.json").read_text(encoding="utf-8"))

    def descriptions(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            if isinstance(node.get("description"), str):
                yield node["description"]
            for child in node.values():
                yield from descriptions(child)
        elif isinstance(node, list):
            for child in node:
                yield from descriptions(child)

    for text in descriptions(schema):
        shown = " ".join(text.split()).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        assert shown in page.replace("\\|", "|"), f"description missing from the reference: {text[:80]!r}"


def test_every_built_in_preset_has_a_destination_page_with_its_settings_events_auth_and_rules(
    pages: dict[str, str],
) -> None:
    from ruamel.yaml import YAML

    presets = sorted((REPO / "presets").glob("*/*.yaml"))
    assert len(presets) >= 4
    nav = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    for path in presets:
        name = f"destinations/{path.parent.name}-{path.stem}.md"
        assert name in pages, f"{path.relative_to(REPO)} has no destination page"
        assert name in nav, f"docs/{name} is not in mkdocs.yml's nav"
        page = pages[name]
        preset = YAML(typ="safe", pure=True).load(path.read_text(encoding="utf-8"))
        assert f"`{preset['preset']}`" in page
        for setting in preset["settings"]:
            assert f"| `{setting}` |" in page, f"{name}: the setting {setting} is missing"
        for event in preset["events"].get("track", {}):
            assert f"track `{event}`" in page, f"{name}: the event {event} is missing"
        assert f"Kind: `{preset['auth']['type']}`" in page
        for action in preset["actions"]:
            assert f"## Action `{action}`" in page
        rules = preset["delivery"]["responses"] + preset["auth"].get("errors", [])
        rows = [line for line in page.splitlines() if line.startswith("| ") and "` | `" in line]
        for rule in rules:
            message = " ".join(rule.get("message", "").split())[:30]
            assert any(f"| `{rule['then']}` |" in row and message in row for row in rows), (
                f"{name}: the rule {rule['when']} -> {rule['then']} is missing"
            )
        for case in (REPO / "golden" / preset["preset"]).glob("*.json"):
            if not case.name.endswith(".expected.json"):
                assert f"| `{case.stem}` |" in page, f"{name}: the golden case {case.stem} is missing"


def test_every_integrations_file_key_and_description_is_in_its_reference(pages: dict[str, str]) -> None:
    page = pages["reference/integrations-file.md"]
    schema = json.loads((REPO / "schemas" / "integrations.schema.json").read_text(encoding="utf-8"))
    listed = set()
    for token in re.findall(r"`([^`\n]+)`", page):
        listed.update(part.removesuffix("[]") for part in token.split("."))
    keys = list(schema_keys(schema))
    assert len(keys) > 5
    missing = sorted(where for key, where in keys if key not in listed)
    assert not missing, f"keys missing from docs/reference/integrations-file.md: {missing}"
    assert "reference/integrations-file.md" in (REPO / "mkdocs.yml").read_text(encoding="utf-8")


def test_every_outcome_reason_cause_and_exit_status_is_in_the_reference(pages: dict[str, str]) -> None:
    """Found by reading the modules, not the generator's tables: a constant added without a meaning fails too."""
    import engine.cli
    from engine import outcome

    page = pages["reference/outcomes.md"]
    constants = {name: value for name, value in vars(outcome).items() if name.isupper() and isinstance(value, str)}
    assert {"DROPPED", "DELIVERED", "NO_CONSENT", "NOT_SENT", "AUTH_REJECTED"} <= set(constants)
    for name, value in constants.items():
        # A family's prefix (http_) is listed as its pattern (http_<status>).
        shown = next((key for key in outcome.CAUSE_PATTERNS if key.startswith(value + "<")), value)
        assert re.search(rf"^\| `{re.escape(shown)}` \| \S", page, re.M), (
            f"outcome.{name} ({value}) is missing from the page"
        )
    statuses = set()
    for module_path in (p for p in (REPO / "engine" / "cli").glob("*.py") if p.stem != "__main__"):
        module = importlib.import_module(f"engine.cli.{module_path.stem}")
        statuses.update(
            value for name, value in vars(module).items() if name.startswith("EXIT_") and isinstance(value, int)
        )
    assert {0, 1, 2, 70, 130, 141, 143} <= statuses
    exit_section = page.split("## Exit status", 1)[1]
    for status in statuses:
        assert re.search(rf"^\| `{status}` \| \S", exit_section, re.M), f"exit status {status} is missing"
    assert engine.cli and "reference/outcomes.md" in (REPO / "mkdocs.yml").read_text(encoding="utf-8")


def test_every_metric_is_in_the_reference_with_its_type_labels_and_help(pages: dict[str, str]) -> None:
    from engine.service.metrics import Metrics

    page = pages["reference/metrics.md"]
    metrics = Metrics()
    families = list(metrics.registry.collect())
    assert len(families) >= 10
    for family in families:
        name = family.name + ("_total" if family.type == "counter" else "")
        rows = [line for line in page.splitlines() if line.startswith(f"| `{name}` |")]
        assert rows, f"the metric {name} is missing from docs/reference/metrics.md"
        assert f"| {family.type} |" in rows[0] and family.documentation in rows[0], rows[0]
    # A labelled metric has no samples before its first use: its label names are read off the objects.
    for collector in vars(metrics).values():
        for label in getattr(collector, "_labelnames", ()):
            name = collector._name + ("_total" if collector._type == "counter" else "")
            (row,) = [line for line in page.splitlines() if line.startswith(f"| `{name}` |")]
            assert f"`{label}`" in row, f"{name}: the label {label} is missing"
    assert "reference/metrics.md" in (REPO / "mkdocs.yml").read_text(encoding="utf-8")


def test_every_http_route_of_the_intake_and_the_console_is_in_the_reference_with_what_it_does(
    pages: dict[str, str],
) -> None:
    """The routes are found in the source text here, not through the generator's route tables."""
    page = pages["reference/http-api.md"]
    declared = []
    for path in [REPO / "engine" / "service" / "intake.py", *sorted((REPO / "engine" / "console").glob("*.py"))]:
        prefix = "/console" if path.parent.name == "console" else ""
        for method, route in re.findall(r'router\.add_(get|post|delete|put)\(r?f?"([^"]+)"', path.read_text()):
            if "{kind}" in route:
                declared += [("POST", f"/v1/{kind}") for kind in ("track", "identify", "page", "screen", "group")]
            else:
                declared.append((method.upper(), prefix + re.sub(r"\{(\w+):[^}]+\}", r"{\1}", route)))
    assert len(declared) > 30
    for method, route in declared:
        rows = [line for line in page.splitlines() if line.startswith(f"| {method} | `{route}` | ")]
        assert rows, f"{method} {route} is missing from docs/reference/http-api.md"
        assert rows[0].removeprefix(f"| {method} | `{route}` | ").strip(" |"), f"{method} {route}: no description"
    assert "reference/http-api.md" in (REPO / "mkdocs.yml").read_text(encoding="utf-8")


def test_every_key_and_definition_of_the_preset_schema_has_a_description() -> None:
    """The preset-language reference is the schema's descriptions: a key without one is a blank cell there."""
    schema = json.loads((REPO / "schemas" / "preset.schema.json").read_text(encoding="utf-8"))
    missing = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, child in node.get("properties", {}).items():
                if not (isinstance(child, dict) and str(child.get("description", "")).strip()):
                    missing.append(f"{path}.{key}".lstrip("."))
            for key, child in node.items():
                if key != "if":  # an if's properties are a condition (auth.type: bearer), not keys to document
                    walk(child, f"{path}.{key}" if key != "properties" else path)
        elif isinstance(node, list):
            for child in node:
                walk(child, path)

    walk(schema, "")
    assert len(schema["$defs"]) > 15
    missing += [f"$defs.{name}" for name, node in schema["$defs"].items() if not node.get("description")]
    assert not missing, f"schemas/preset.schema.json: keys without a description: {missing}"
