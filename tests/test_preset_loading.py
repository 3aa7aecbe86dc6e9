"""Loading presets and ``signal-engine check``: every problem located as file:line:col: yaml.path: message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import main
from engine.compile.compiler import PresetError, load_preset

REPO_ROOT = Path(__file__).resolve().parents[1]
BUILTIN = REPO_ROOT / "presets" / "outreach" / "lead-capture.yaml"


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def write_preset(tmp_path: Path, *edits: tuple[str, str], name: str = "preset.yaml") -> Path:
    """A copy of the built-in preset with each ``(old, new)`` text edit applied exactly once."""
    text = BUILTIN.read_text(encoding="utf-8")
    for old, new in edits:
        assert text.count(old) == 1, f"edit anchor not unique in the built-in preset: {old!r}"
        text = text.replace(old, new)
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def line_no(path: Path, needle: str) -> int:
    """1-based number of the only line containing ``needle``."""
    hits = [i + 1 for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()) if needle in line]
    assert len(hits) == 1, f"{needle!r} found on lines {hits}"
    return hits[0]


def col_of(path: Path, needle: str, at: str | None = None) -> int:
    """1-based column of ``at`` (default: ``needle``) on the only line containing ``needle``."""
    line = path.read_text(encoding="utf-8").splitlines()[line_no(path, needle) - 1]
    return line.index(at if at is not None else needle) + 1


def run_check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], str]:
    code = main(["check", *args])
    out, err = capsys.readouterr()
    assert "Traceback" not in out and "Traceback" not in err
    return code, out.splitlines(), err


# --------------------------------------------------------------------------
# the built-in preset
# --------------------------------------------------------------------------


def test_builtin_preset_loads_with_the_spec_event_table() -> None:
    preset = load_preset("outreach/lead-capture")
    assert preset.name == "outreach/lead-capture"
    # "Event Mapping" table of the product page: event -> tag.
    expected_tags = {
        "Lead Submitted": "lead",
        "Form Submitted": "form",
        "Signed Up": "signup",
        "Demo Requested": "demo-request",
    }
    for event, tag in expected_tags.items():
        route = preset.events.route("track", event)
        assert route is not None, event
        assert route.action == "create_prospect"
        assert route.values == {"tag": tag}
    assert preset.events.route("track", "Order Completed") is None
    assert preset.events.route("page", None) is None
    assert preset.events.route("identify", None) is None


def test_builtin_preset_settings_match_the_configuration_fields_table() -> None:
    preset = load_preset("outreach/lead-capture")
    for name in ("client_id", "client_secret", "refresh_token"):
        assert preset.settings[name].required is True, name
    assert preset.settings["client_secret"].secret is True
    assert preset.settings["refresh_token"].secret is True
    assert preset.settings["client_id"].secret is False
    assert preset.identity.required == "email"
    assert preset.auth is not None
    assert preset.auth.client_secret_setting == "client_secret"
    assert preset.auth.refresh_token_setting == "refresh_token"


def test_builtin_preset_loads_by_path_too() -> None:
    preset = load_preset(str(BUILTIN))
    assert preset.name == "outreach/lead-capture"
    assert preset.path == str(BUILTIN)


def test_check_without_arguments_checks_every_builtin_preset(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, err = run_check(capsys)
    assert code == 0
    assert err == ""
    assert "ok: outreach/lead-capture (outreach/lead-capture: 4 mapped track events, 1 action(s))" in lines
    assert all(line.startswith("ok: ") for line in lines)


def test_check_a_valid_copy_by_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_preset(tmp_path)
    code, lines, err = run_check(capsys, str(path))
    assert code == 0
    assert lines == [f"ok: {path} (outreach/lead-capture: 4 mapped track events, 1 action(s))"]
    assert err == ""


# --------------------------------------------------------------------------
# one problem each
# --------------------------------------------------------------------------


def test_unknown_top_level_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_preset(tmp_path, ("\nmetadata:\n", "\nbogus: 1\nmetadata:\n"))
    code, lines, err = run_check(capsys, str(path))
    assert code == 1
    assert len(lines) == 1
    line = line_no(path, "bogus: 1")
    assert lines[0].startswith(f"{path}:{line}:1: bogus: unknown key 'bogus' (allowed: ")
    assert "metadata" in lines[0] and "settings" in lines[0]
    assert err == ""


def test_unknown_nested_key_points_at_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_preset(tmp_path, ("      multiplier: 2\n", "      multiplier: 2\n      multipler: 3\n"))
    code, lines, _ = run_check(capsys, str(path))
    assert code == 1
    line = line_no(path, "multipler: 3")
    assert lines == [
        f"{path}:{line}:7: delivery.retries.backoff.multipler: unknown key 'multipler' "
        "(allowed: initial_seconds, jitter, max_seconds, multiplier)"
    ]


def test_unknown_key_in_an_event_entry_keeps_the_spaced_event_name_in_the_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_preset(
        tmp_path, ("      values: {tag: demo-request}\n", "      values: {tag: demo-request}\n      valuez: {}\n")
    )
    code, lines, _ = run_check(capsys, str(path))
    assert code == 1
    line = line_no(path, "valuez:")
    assert len(lines) == 1
    assert lines[0].startswith(f"{path}:{line}:7: events.track.Demo Requested.valuez: unknown key 'valuez'")


def test_jsonata_syntax_error_in_block_mapping_is_located_at_the_offending_character(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_preset(tmp_path, ('"emails": [traits.email],', '"emails": [traits.email +],'))
    code, lines, err = run_check(capsys, str(path))
    assert code == 1
    assert len(lines) == 1
    line = line_no(path, "[traits.email +]")
    col = col_of(path, "[traits.email +]", at="+]") + 1  # the "]" after the dangling "+"
    prefix = f"{path}:{line}:{col}: actions.create_prospect.mapping: JSONata syntax error"
    assert lines[0].startswith(prefix), lines[0]
    assert "]" in lines[0][len(prefix) :]
    assert err == ""


def test_jsonata_syntax_error_in_quoted_scalar_is_located_at_the_offending_character(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_preset(tmp_path, ("found: lookup.body.data[0]", 'found: "data[0 +]"'))
    code, lines, _ = run_check(capsys, str(path))
    assert code == 1
    line = line_no(path, 'found: "data[0 +]"')
    col = col_of(path, 'found: "data[0 +]"', at="+]") + 1
    assert len(lines) == 1
    assert lines[0].startswith(
        f"{path}:{line}:{col}: actions.create_prospect.upsert.found: JSONata syntax error at position "
    )


def test_jsonata_syntax_error_in_folded_block_is_located_at_the_offending_character(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_preset(tmp_path, ("found: lookup.body.data[0]", "found: >\n          data[0]\n          .x + ]"))
    code, lines, _ = run_check(capsys, str(path))
    assert code == 1
    line = line_no(path, ".x + ]")
    col = col_of(path, ".x + ]", at="]")
    assert len(lines) == 1
    assert lines[0].startswith(f"{path}:{line}:{col}: actions.create_prospect.upsert.found: JSONata syntax error")


def test_jsonata_syntax_error_in_folded_block_with_a_blank_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_preset(tmp_path, ("found: lookup.body.data[0]", "found: >-\n          data[0]\n\n          .x + ]"))
    code, lines, _ = run_check(capsys, str(path))
    assert code == 1
    line = line_no(path, ".x + ]")
    col = col_of(path, ".x + ]", at="]")
    assert len(lines) == 1
    assert lines[0].startswith(f"{path}:{line}:{col}: actions.create_prospect.upsert.found: JSONata syntax error")


def test_jsonata_syntax_error_in_multi_line_plain_scalar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_preset(tmp_path, ("found: lookup.body.data[0]", "found: data[0]\n          .x\n          + ]"))
    code, lines, _ = run_check(capsys, str(path))
    assert code == 1
    line = line_no(path, "          + ]")
    col = col_of(path, "          + ]", at="]")
    assert len(lines) == 1
    assert lines[0].startswith(f"{path}:{line}:{col}: actions.create_prospect.upsert.found: JSONata syntax error")


def test_unknown_action_referenced_by_an_event(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_preset(
        tmp_path,
        (
            "    Form Submitted:\n      action: create_prospect\n",
            "    Form Submitted:\n      action: create_prospekt\n",
        ),
    )
    code, lines, _ = run_check(capsys, str(path))
    assert code == 1
    line = line_no(path, "create_prospekt")
    col = col_of(path, "create_prospekt")
    assert lines == [
        f"{path}:{line}:{col}: events.track.Form Submitted.action: unknown action "
        "'create_prospekt' (defined: create_prospect, or drop)"
    ]


def test_required_setting_with_a_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_preset(
        tmp_path,
        (
            "  client_id:\n    type: string\n    required: true\n",
            "  client_id:\n    type: string\n    required: true\n    default: abc\n",
        ),
    )
    code, lines, _ = run_check(capsys, str(path))
    assert code == 1
    # Located at the setting's own mapping (its first line), not somewhere else in the file.
    line = line_no(path, "  client_id:") + 1
    assert lines == [f"{path}:{line}:5: settings.client_id: a required setting cannot have a default"]


def test_region_from_naming_an_undeclared_trait(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_preset(tmp_path, ("region_from: country", "region_from: nation"))
    code, lines, _ = run_check(capsys, str(path))
    assert code == 1
    line = line_no(path, "region_from: nation")
    col = col_of(path, "region_from: nation", at="nation")
    assert lines == [f"{path}:{line}:{col}: identity.traits.phone.region_from: 'nation' is not a declared trait"]


def test_unknown_template_placeholder_in_a_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_preset(
        tmp_path,
        (
            'url: "{settings.base_url}/api/v2/prospects"\n      headers',
            'url: "{settings.base_uri}/api/v2/prospects"\n      headers',
        ),
    )
    code, lines, _ = run_check(capsys, str(path))
    assert code == 1
    line = line_no(path, "{settings.base_uri}")
    col = col_of(path, "{settings.base_uri}", at='"')
    assert len(lines) == 1
    prefix = f"{path}:{line}:{col}: actions.create_prospect.request.url: unknown placeholder {{settings.base_uri}}"
    assert lines[0].startswith(prefix), lines[0]
    assert "{settings.base_url}" in lines[0]


def test_secret_settings_are_not_allowed_in_a_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_preset(
        tmp_path,
        (
            'url: "{settings.base_url}/api/v2/prospects"\n      headers',
            'url: "{settings.base_url}/api/v2/prospects/{settings.client_secret}"\n      headers',
        ),
    )
    code, lines, _ = run_check(capsys, str(path))
    assert code == 1
    assert len(lines) == 1
    assert (
        ": actions.create_prospect.request.url: {settings.client_secret} is a secret setting; "
        "secrets are only usable in auth:"
    ) in lines[0]


def test_auth_refresh_token_setting_must_be_marked_secret(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_preset(
        tmp_path,
        (
            "    required: true\n    secret: true\n    description: The refresh token",
            "    required: true\n    description: The refresh token",
        ),
    )
    code, lines, _ = run_check(capsys, str(path))
    assert code == 1
    line = line_no(path, "  refresh_token:") + 1
    assert lines == [
        f"{path}:{line}:5: settings.refresh_token: used as auth.refresh_token_setting, "
        "so it must be marked secret: true"
    ]


def test_invalid_yaml_is_one_located_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_preset(tmp_path, ("  title: Outreach — Lead Capture", "  title: Outreach: Lead Capture"))
    code, lines, err = run_check(capsys, str(path))
    assert code == 1
    line = line_no(path, "title: Outreach: Lead")
    col = col_of(path, "title: Outreach: Lead", at=": Lead")  # the second colon
    assert lines == [
        f"{path}:{line}:{col}: mapping values are not allowed here; a ': ' inside an unquoted value "
        'starts a new key: put the whole value in quotes ("...") or write it as a block scalar (>-)'
    ]
    assert err == ""


def test_duplicate_key_is_one_located_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_preset(tmp_path, ("  timeout_seconds: 30\n", "  timeout_seconds: 30\n  timeout_seconds: 31\n"))
    code, lines, _ = run_check(capsys, str(path))
    assert code == 1
    line = line_no(path, "timeout_seconds: 31")
    assert len(lines) == 1
    assert lines[0].startswith(f"{path}:{line}:3: ")
    assert "duplicate key" in lines[0] and "timeout_seconds" in lines[0]


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A preset that does not exist is a usage error (exit 2, on stderr), not a verdict on a preset."""
    missing = tmp_path / "nope.yaml"
    code, lines, err = run_check(capsys, str(missing))
    assert code == 2
    assert lines == []
    assert len(err.splitlines()) == 1
    assert err.startswith(f"signal-engine: {missing}: no such preset file or preset name (known: ")


def test_unknown_builtin_name_lists_the_builtins(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, err = run_check(capsys, "outreach/nope")
    assert code == 2
    assert lines == []
    assert err.startswith("signal-engine: outreach/nope: no such preset file or preset name")
    assert "outreach/lead-capture" in err


def test_load_preset_raises_preset_error_with_the_problems(tmp_path: Path) -> None:
    path = write_preset(tmp_path, ("region_from: country", "region_from: nation"))
    with pytest.raises(PresetError) as info:
        load_preset(str(path))
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(f"{path}:{line_no(path, 'region_from: nation')}:")


# --------------------------------------------------------------------------
# all problems at once
# --------------------------------------------------------------------------


def test_several_structural_errors_are_all_printed_in_file_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_preset(
        tmp_path,
        ("\nmetadata:\n", "\nbogus: 1\nmetadata:\n"),
        ('"emails": [traits.email],', '"emails": [traits.email +],'),
        ("  concurrency: 8\n", "  concurrency: 0\n"),
        ("      multiplier: 2\n", "      multiplier: 2\n      multipler: 3\n"),
    )
    code, lines, _ = run_check(capsys, str(path))
    assert code == 1
    assert len(lines) == 4, lines
    expected_starts = [
        f"{path}:{line_no(path, 'bogus: 1')}:1: bogus: unknown key 'bogus'",
        f"{path}:{line_no(path, '[traits.email +]')}:",
        f"{path}:{line_no(path, 'concurrency: 0')}:16: delivery.concurrency: ",
        f"{path}:{line_no(path, 'multipler: 3')}:7: delivery.retries.backoff.multipler: unknown key 'multipler'",
    ]
    for line, start in zip(lines, expected_starts, strict=True):
        assert line.startswith(start), (line, start)
    assert "actions.create_prospect.mapping: JSONata syntax error" in lines[1]


def test_several_semantic_errors_are_all_printed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_preset(
        tmp_path,
        (
            "  client_id:\n    type: string\n    required: true\n",
            "  client_id:\n    type: string\n    required: true\n    default: abc\n",
        ),
        (
            "    required: true\n    secret: true\n    description: The refresh token",
            "    required: true\n    description: The refresh token",
        ),
        ("region_from: country", "region_from: nation"),
        (
            "    Form Submitted:\n      action: create_prospect\n",
            "    Form Submitted:\n      action: create_prospekt\n",
        ),
        (
            'url: "{settings.base_url}/api/v2/prospects"\n      headers',
            'url: "{settings.base_uri}/api/v2/prospects"\n      headers',
        ),
    )
    code, lines, _ = run_check(capsys, str(path))
    assert code == 1
    expected = [
        ("settings.client_id: a required setting cannot have a default", line_no(path, "  client_id:") + 1),
        ("settings.refresh_token: used as auth.refresh_token_setting", line_no(path, "  refresh_token:") + 1),
        ("identity.traits.phone.region_from: 'nation' is not a declared trait", line_no(path, "region_from: nation")),
        ("events.track.Form Submitted.action: unknown action 'create_prospekt'", line_no(path, "create_prospekt")),
        (
            "actions.create_prospect.request.url: unknown placeholder {settings.base_uri}",
            line_no(path, "{settings.base_uri}"),
        ),
    ]
    assert len(lines) == len(expected), lines
    for message, line in expected:
        matching = [text for text in lines if f": {message}" in text]
        assert len(matching) == 1, (message, lines)
        assert matching[0].startswith(f"{path}:{line}:"), (matching[0], line)
    # Printed in file order.
    numbers = [int(text[len(str(path)) + 1 :].split(":", 1)[0]) for text in lines]
    assert numbers == sorted(numbers)


def test_structural_and_semantic_errors_are_printed_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_preset(
        tmp_path,
        ("      multiplier: 2\n", "      multiplier: 2\n      multipler: 3\n"),
        ("region_from: country", "region_from: nation"),
    )
    code, lines, _ = run_check(capsys, str(path))
    assert code == 1
    assert any("delivery.retries.backoff.multipler: unknown key" in line for line in lines)
    assert any("identity.traits.phone.region_from: 'nation' is not a declared trait" in line for line in lines)


def test_check_reports_each_named_preset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write_preset(tmp_path, ("region_from: country", "region_from: nation"), name="bad.yaml")
    code, lines, _ = run_check(capsys, "outreach/lead-capture", str(bad))
    assert code == 1
    assert lines[0] == "ok: outreach/lead-capture (outreach/lead-capture: 4 mapped track events, 1 action(s))"
    assert len(lines) == 2
    assert lines[1].startswith(f"{bad}:{line_no(bad, 'region_from: nation')}:")


# --------------------------------------------------------------------------
# the installed command, as a user runs it
# --------------------------------------------------------------------------


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_check_subprocess_ok(tmp_path: Path) -> None:
    proc = _cli("check", "outreach/lead-capture", cwd=tmp_path)
    assert proc.returncode == 0
    assert proc.stdout.splitlines() == [
        "ok: outreach/lead-capture (outreach/lead-capture: 4 mapped track events, 1 action(s))"
    ]
    assert "Traceback" not in proc.stderr


def test_check_subprocess_reports_problems_without_traceback(tmp_path: Path) -> None:
    path = write_preset(
        tmp_path,
        ("\nmetadata:\n", "\nbogus: 1\nmetadata:\n"),
        ('"emails": [traits.email],', '"emails": [traits.email +],'),
    )
    proc = _cli("check", str(path), cwd=tmp_path)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{path}:{line_no(path, 'bogus: 1')}:1: bogus: unknown key 'bogus'")
    col = col_of(path, "[traits.email +]", at="+]") + 1
    assert lines[1].startswith(
        f"{path}:{line_no(path, '[traits.email +]')}:{col}: actions.create_prospect.mapping: JSONata syntax error"
    )
    assert "Traceback" not in proc.stderr


def test_check_subprocess_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = write_preset(tmp_path, ("  concurrency: 8\n", "  concurrency: [8\n"))
    missing = tmp_path / "missing.yaml"
    proc = _cli("check", str(bad), str(missing), cwd=tmp_path)
    assert proc.returncode == 2  # a missing preset outranks the verdict on the other
    lines = proc.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"{bad}:")
    line, col = lines[0][len(str(bad)) + 1 :].split(":")[:2]
    assert line.isdigit() and col.isdigit()
    assert proc.stderr.startswith(f"signal-engine: {missing}: no such preset file")
    assert "Traceback" not in proc.stderr
