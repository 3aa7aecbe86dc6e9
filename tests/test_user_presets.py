"""A preset in a user's own folder: its schema beside it, its golden cases, found by path or by name.

Everything runs through the real console entry (``python -m engine``) from a
working directory outside the repository, as a user's CI would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from language_fixtures import lead, write_acme

REPO = Path(__file__).resolve().parents[1]
KEY = "k-user-7d1e"


def cli(*args: object, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "engine", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env=environ,
    )


def make_user_repo(root: Path) -> Path:
    """``root/presets/acme/contacts.yaml`` with its schemas, and ``root/cases/`` golden cases."""
    preset = write_acme(root / "presets" / "acme")
    cases = root / "cases"
    cases.mkdir(parents=True)
    # A mapping case: the expected outcome is written out by hand from the preset's mapping
    # (email lower-cased by the email normaliser, country to ISO alpha-2, name cut to the
    # common schema's maxLength of 10, the credential shown as the mask).
    (cases / "mapping.json").write_text(
        json.dumps(
            {
                "description": "a lead becomes one contact document",
                "events": [lead("Jane@Acme.test", name="Jane Doe-Smithson", country="United Kingdom")],
            }
        ),
        encoding="utf-8",
    )
    (cases / "mapping.expected.json").write_text(
        json.dumps(
            [
                {
                    "index": 0,
                    "messageId": "m-1",
                    "outcome": "would_send",
                    "request": {
                        "method": "POST",
                        "url": "https://api.acme.test/v1/contacts?key=***",
                        "headers": {"Content-Type": "application/json", "Accept": "application/json"},
                        "body": {"email": "jane@acme.test", "name": "Jane Doe-S", "country": "GB", "source": "signup"},
                    },
                }
            ],
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    # A delivery case: a duplicate answered 409, merged by PATCH into the id the conflict names.
    (cases / "conflict.json").write_text(
        json.dumps(
            {
                "description": "a 409 DUPLICATE is merged into the id named in its message",
                "settings": {"api_key": KEY},
                "events": [lead("jane@acme.test")],
                "responses": [
                    {"status": 409, "body": {"code": "DUPLICATE", "message": "exists as id 31"}},
                    {"status": 200, "body": {"id": 31}},
                ],
            }
        ),
        encoding="utf-8",
    )
    body = {"email": "jane@acme.test", "source": "signup"}
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    (cases / "conflict.expected.json").write_text(
        json.dumps(
            {
                "exchanges": [
                    {
                        "method": "POST",
                        "url": "https://api.acme.test/v1/contacts?key=***",
                        "headers": headers,
                        "body": body,
                        "answered": 409,
                    },
                    {
                        "method": "PATCH",
                        "url": "https://api.acme.test/v1/contacts/31?key=***",
                        "headers": headers,
                        "body": body,
                        "answered": 200,
                    },
                ],
                "outcomes": [
                    {
                        "index": 0,
                        "messageId": "m-1",
                        "outcome": "delivered",
                        "detail": "merged into the existing contact (id 31)",
                        "attempts": 2,
                        "request": {
                            "method": "PATCH",
                            "url": "https://api.acme.test/v1/contacts/31?key=***",
                            "headers": headers,
                            "body": body,
                        },
                        "response": {"status": 200, "body": {"id": 31}},
                    }
                ],
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    return preset


def test_check_and_golden_on_a_preset_outside_the_repository(tmp_path: Path) -> None:
    preset = make_user_repo(tmp_path / "user-repo")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    check = cli("check", preset, cwd=elsewhere)
    assert check.returncode == 0, check.stdout + check.stderr
    golden = cli("golden", "--preset", preset, tmp_path / "user-repo" / "cases", cwd=elsewhere)
    assert golden.returncode == 0, golden.stdout + golden.stderr
    assert "2 passed, 0 failed" in golden.stdout
    assert KEY not in golden.stdout + golden.stderr


def test_golden_fails_and_shows_the_diff_when_the_contract_breaks(tmp_path: Path) -> None:
    preset = make_user_repo(tmp_path / "user-repo")
    expected = tmp_path / "user-repo" / "cases" / "conflict.expected.json"
    expected.write_text(
        expected.read_text(encoding="utf-8").replace('"answered": 409', '"answered": 422'), encoding="utf-8"
    )
    golden = cli("golden", "--preset", preset, tmp_path / "user-repo" / "cases", cwd=tmp_path)
    assert golden.returncode == 1
    assert '-      "answered": 422' in golden.stdout and '+      "answered": 409' in golden.stdout


def test_a_preset_name_is_found_in_a_preset_path_folder(tmp_path: Path) -> None:
    make_user_repo(tmp_path / "user-repo")
    events = tmp_path / "events.ndjson"
    events.write_text(json.dumps(lead()) + "\n", encoding="utf-8")
    folder = tmp_path / "user-repo" / "presets"
    by_flag = cli("run", "acme/contacts", "--preset-path", folder, "--events", events, "--dry-run", cwd=tmp_path)
    assert by_flag.returncode == 0, by_flag.stderr
    assert json.loads(by_flag.stdout)["outcome"] == "would_send"
    by_env = cli(
        "run",
        "acme/contacts",
        "--events",
        events,
        "--dry-run",
        cwd=tmp_path,
        env={"SIGNAL_ENGINE_PRESET_PATH": str(folder)},
    )
    assert by_env.returncode == 0, by_env.stderr
    assert by_env.stdout == by_flag.stdout
    unknown = cli("run", "acme/contacts", "--events", events, "--dry-run", cwd=tmp_path)
    assert unknown.returncode != 0 and "acme/contacts: no such preset file or preset name" in unknown.stderr


def test_an_output_schema_missing_beside_the_preset_is_reported_there(tmp_path: Path) -> None:
    preset = make_user_repo(tmp_path / "user-repo")
    (preset.parent / "common.schema.json").unlink()
    events = tmp_path / "events.ndjson"
    events.write_text(json.dumps(lead(name="Jane")) + "\n", encoding="utf-8")
    run = cli("run", preset, "--events", events, "--dry-run", cwd=tmp_path)
    # The $ref cannot be resolved: a configuration error at load, located at output.schema.
    assert run.returncode != 0 and run.stdout == ""
    [line] = run.stderr.splitlines()
    assert line.startswith(f"{preset}:") and "actions.upsert_contact.output.schema: cannot load output schema" in line
    assert "cannot resolve $ref './common.schema.json#/$defs/short_text'" in line


def test_a_schema_with_its_own_id_resolves_its_defs_and_its_siblings(tmp_path: Path) -> None:
    """A schema published with an https $id still finds #/$defs and sibling files beside it."""
    preset = make_user_repo(tmp_path / "user-repo")
    folder = preset.parent
    contact = json.loads((folder / "contact.schema.json").read_text(encoding="utf-8"))
    contact["$id"] = "https://schemas.acme.test/crm/contact.schema.json"
    contact["$defs"] = {"country": {"type": "string", "pattern": "^[A-Z]{2}$"}}
    contact["properties"]["country"] = {"$ref": "#/$defs/country"}
    (folder / "contact.schema.json").write_text(json.dumps(contact), encoding="utf-8")
    check = cli("check", preset, cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    golden = cli("golden", "--preset", preset, tmp_path / "user-repo" / "cases", cwd=tmp_path)
    assert golden.returncode == 0, golden.stdout
