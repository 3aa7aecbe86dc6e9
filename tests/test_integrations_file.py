"""The integrations file: its schema, ${NAME} expansion, and `check --config` naming every mistake with its line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from ruamel.yaml import YAML

from engine.service.integrations import IntegrationsError, load_integrations, name_for_preset, read_integrations

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "integrations.yaml"


def cli(*args: str | Path, env: dict[str, str] | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def line_of(text: str, marker: str) -> int:
    """The 1-based line holding ``marker`` (the file is typed out below: the lines are not guessed)."""
    hits = [n for n, line in enumerate(text.splitlines(), 1) if marker in line]
    assert len(hits) == 1, (marker, hits)
    return hits[0]


PLANTED = """\
intake:
  write_keys: ["${SIGNAL_WRITE_KEY}"]
integrations:
  outreach:
    preset: outreach/lead-capture
    settings:
      client_id: the-client                 # client_secret is missing
      base_url: http://127.0.0.1:8765
  hubspot:
    preset: hubspot/contacts
    settings:
      access_token: "${UNSET_HUBSPOT_TOKEN_FOR_TEST}"
  crm:
    preset: nowhere/no-such-preset
  Bad_Name:
    preset: hubspot/contacts
  outreach:
    preset: outreach/lead-capture
"""


def test_check_config_names_every_planted_mistake_with_its_line(tmp_path: Path) -> None:
    config = tmp_path / "integrations.yaml"
    config.write_text(PLANTED, encoding="utf-8")
    env = {"SIGNAL_WRITE_KEY": "wk-check-test-1"}
    env_without = {k: v for k, v in os.environ.items() if k != "UNSET_HUBSPOT_TOKEN_FOR_TEST"}
    result = subprocess.run(
        [sys.executable, "-m", "engine", "check", "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**env_without, **env},
    )
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    where = f"{config}:"

    def reported(line: int, *words: str) -> bool:
        return any(text.startswith(f"{where}{line}:") and all(w in text for w in words) for text in lines)

    # A missing setting points at the mapping that should hold it: outreach's `settings:`.
    outreach_settings = line_of(PLANTED, "client_secret is missing") - 1
    assert PLANTED.splitlines()[outreach_settings - 1] == "    settings:"
    assert reported(outreach_settings, "outreach", "client_secret", "missing"), lines
    assert reported(
        line_of(PLANTED, "UNSET_HUBSPOT_TOKEN_FOR_TEST"), "hubspot", "UNSET_HUBSPOT_TOKEN_FOR_TEST", "not set"
    ), lines
    assert reported(line_of(PLANTED, "  crm:") + 1, "crm", "unknown preset", "nowhere/no-such-preset"), lines
    assert reported(line_of(PLANTED, "Bad_Name"), "Bad_Name", "invalid"), lines
    first, second = [n for n, line in enumerate(PLANTED.splitlines(), 1) if line == "  outreach:"]
    assert reported(second, "outreach", "declared twice", f"line {first}"), lines
    assert len(lines) == 5, lines  # one line per problem, nothing else
    # serve refuses the same file with the same lines, and starts nothing.
    state = tmp_path / "state"
    served = subprocess.run(
        [sys.executable, "-m", "engine", "serve", "--config", str(config), "--state", str(state), "--port", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**env_without, **env},
    )
    assert served.returncode == 2
    assert [line for line in served.stderr.splitlines() if line.startswith(where)] == lines
    assert not state.exists()


def test_a_literal_secret_works_but_check_warns_with_its_line(tmp_path: Path) -> None:
    text = (
        "integrations:\n"
        "  hubspot:\n"
        "    preset: hubspot/contacts\n"
        "    settings:\n"
        "      access_token: pat-literal-secret-123456\n"
    )
    config = tmp_path / "integrations.yaml"
    config.write_text(text, encoding="utf-8")
    result = cli("check", "--config", config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == ["ok: hubspot (hubspot/contacts)"]
    warning = [line for line in result.stderr.splitlines() if "literal" in line]
    assert len(warning) == 1 and f"{config}:5:" in warning[0] and "access_token" in warning[0]
    assert "pat-literal-secret-123456" not in result.stdout + result.stderr
    loaded = load_integrations(config, {})
    assert loaded.get("hubspot").settings["access_token"] == "pat-literal-secret-123456"
    assert "pat-literal" not in repr(loaded.get("hubspot"))


def test_references_are_read_from_the_environment_and_relative_paths_from_the_file(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "outreach.yaml").write_text(
        "client_id: c-1\nclient_secret: ${OUTREACH_SECRET}\nrefresh_token: r-1\nbase_url: http://127.0.0.1:1\n",
        encoding="utf-8",
    )
    config = tmp_path / "conf" / "integrations.yaml"
    config.write_text(
        'intake:\n  write_keys: ["${WK}"]\n  signing_secret: ${SIG}\n'
        "integrations:\n  outreach:\n    preset: outreach/lead-capture\n"
        "    settings_file: outreach.yaml\n  hubspot:\n    preset: hubspot/contacts\n"
        "    enabled: false\n",
        encoding="utf-8",
    )
    loaded = load_integrations(config, {"OUTREACH_SECRET": "sec-from-env", "WK": "wk-1,wk-2", "SIG": "sig-1"})
    assert loaded.names() == ["outreach", "hubspot"]
    assert [i.name for i in loaded.enabled()] == ["outreach"]
    assert loaded.get("outreach").settings["client_secret"] == "sec-from-env"
    assert loaded.write_keys == ["wk-1", "wk-2"] and loaded.signing_secret == "sig-1"
    # Listing them needs no credential, in file order, each with its preset, settings and state.
    listed = read_integrations(config, {"WK": "x", "SIG": "y"})
    assert [(i.name, i.preset.name, i.enabled) for i in listed] == [
        ("outreach", "outreach/lead-capture", True),
        ("hubspot", "hubspot/contacts", False),
    ]
    assert listed[0].settings["client_id"] == "c-1" and listed[0].settings["client_secret"] is None
    # A disabled integration's credentials are not required; an enabled one's are.
    with pytest.raises(IntegrationsError) as caught:
        load_integrations(config, {"WK": "x", "SIG": "y"})
    assert caught.value.problems == [
        (
            f"{tmp_path / 'conf' / 'outreach.yaml'}:2: integration 'outreach': setting "
            "'client_secret': environment variable OUTREACH_SECRET is not set"
        )
    ]
    with pytest.raises(IntegrationsError) as caught:
        load_integrations(config, {"OUTREACH_SECRET": "s"})
    assert caught.value.problems == [
        f"{config}:2: intake.write_keys: environment variable WK is not set",
        f"{config}:3: intake.signing_secret: environment variable SIG is not set",
    ]


@pytest.mark.parametrize(
    "ref, name",
    [
        ("outreach/lead-capture", "outreach-lead-capture"),
        ("My Leads.yaml", "my-leads"),
        ("Acme_CRM--Leads__V2.yaml", "acme-crm-leads-v2"),
    ],
)
def test_the_one_preset_form_is_named_after_the_preset(tmp_path: Path, ref: str, name: str) -> None:
    """README: the name lower-cased, each run outside [a-z0-9] one '-'; a preset file goes by its file stem."""
    from engine.compile import load_preset

    builtin = load_preset("outreach/lead-capture")
    if ref.endswith(".yaml"):
        (tmp_path / ref).write_text(Path(builtin.path).read_text(encoding="utf-8"), encoding="utf-8")
        ref = str(tmp_path / ref)
    assert name_for_preset(load_preset(ref)) == name


def test_the_schema_is_exported_and_the_example_follows_it(tmp_path: Path) -> None:
    result = cli("schema", "integrations")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert schema["title"] == "Signal engine integrations file"
    document = YAML(typ="safe").load(EXAMPLE.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator(schema).validate(document)
    first = EXAMPLE.read_text(encoding="utf-8").splitlines()[0]
    assert first == "# yaml-language-server: $schema=../schemas/integrations.schema.json"
    assert (EXAMPLE.parent / "../schemas/integrations.schema.json").resolve().is_file()
    # The schema refuses what the loader refuses: an invalid name, an unknown key.
    validator = jsonschema.Draft202012Validator(schema)
    assert list(validator.iter_errors({"integrations": {"Bad_Name": {"preset": "x/y"}}}))
    assert list(validator.iter_errors({"integrations": {"ok": {"preset": "x/y", "colour": 1}}}))
    # And the example checks clean once its variables are set.
    checked = cli("check", "--config", EXAMPLE, env={"SIGNAL_WRITE_KEY": "wk-x", "HUBSPOT_TOKEN": "tok-x"})
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.splitlines() == ["ok: outreach (outreach/lead-capture)", "ok: hubspot (hubspot/contacts)"]


def test_every_log_line_a_worker_causes_names_its_integration(capsys: pytest.CaptureFixture[str]) -> None:
    """The worker sets the integration in its task; tasks it starts inherit it, and both formats show it."""
    import asyncio
    import logging

    from engine.cli.log_handlers import configure_logging
    from engine.log_context import current_integration
    from engine.redaction import Redactor

    log = logging.getLogger("engine.delivery.sender")

    async def worker(name: str) -> None:
        current_integration.set(name)

        async def delivery() -> None:  # a task the engine starts, as a delivery is
            log.warning("event 3: answered 503; retrying with token tok-secret-123456")

        await asyncio.ensure_future(delivery())

    async def both() -> None:
        await asyncio.gather(worker("hubspot"), worker("outreach"))

    for fmt in ("text", "json"):
        configure_logging(Redactor(["tok-secret-123456"]), False, fmt)
        asyncio.run(both())
        lines = capsys.readouterr().err.splitlines()
        if fmt == "text":
            assert sorted(lines) == sorted(
                f"signal-engine: [{name}] event 3: answered 503; retrying with token ***"
                for name in ("hubspot", "outreach")
            )
        else:
            assert sorted(json.loads(line)["integration"] for line in lines) == ["hubspot", "outreach"]
            assert all("tok-secret" not in line for line in lines)
    log.warning("outside any integration")
    assert capsys.readouterr().err.count('"integration"') == 0
    root = logging.getLogger("engine")
    root.handlers[:] = []
    root.propagate = True
    root.setLevel(logging.NOTSET)
