"""Tools for preset authors: `schema` for editors, `init` for a working skeleton, `golden --update`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from ruamel.yaml import YAML

from engine.cli import main
from engine.language import resources

REPO = Path(__file__).resolve().parents[1]
MODELINE = "# yaml-language-server: $schema="


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        env={**os.environ},
    )


def yaml_data(path: Path) -> object:
    return YAML(typ="safe").load(path.read_text(encoding="utf-8"))


# --- schema -------------------------------------------------------------------------------------


def test_schema_prints_the_preset_language(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((REPO / "schemas" / "preset.schema.json").read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(printed)
    for preset in sorted((REPO / "presets").rglob("*.yaml")):
        errors = list(Draft202012Validator(printed).iter_errors(yaml_data(preset)))
        assert not errors, f"{preset}: {errors[0].message}"
    # What an editor relies on: unknown keys are errors.
    assert list(
        Draft202012Validator(printed).iter_errors(
            {**yaml_data(REPO / "presets/outreach/lead-capture.yaml"), "delivry": {}}
        )
    )


def test_schema_output_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "preset.schema.json"
    assert main(["schema", "-o", str(target)]) == 0
    assert json.loads(target.read_text(encoding="utf-8"))["title"] == "Signal engine preset"
    assert main(["schema", "-o", str(tmp_path / "missing" / "x.json")]) == 2
    assert "cannot write" in capsys.readouterr().err


@pytest.mark.parametrize("preset", sorted((REPO / "presets").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_preset_starts_with_a_modeline_that_resolves(preset: Path) -> None:
    first = preset.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith(MODELINE), f"{preset} must start with the yaml-language-server modeline"
    target = (preset.parent / first[len(MODELINE) :]).resolve()
    assert target == (REPO / "schemas" / "preset.schema.json").resolve()


def test_the_modeline_also_resolves_in_the_installed_layout() -> None:
    """In a wheel, presets/ and schemas/ ship as engine/presets and engine/schemas: same relative path."""
    preset = resources.presets_dir() / "outreach" / "lead-capture.yaml"
    first = preset.read_text(encoding="utf-8").splitlines()[0]
    assert (preset.parent / first[len(MODELINE) :]).resolve() == resources.preset_schema_path().resolve()


# --- init ---------------------------------------------------------------------------------------


def test_init_writes_a_skeleton_that_passes_check_and_golden_as_generated(tmp_path: Path) -> None:
    project = tmp_path / "project"
    made = cli("init", "acme/contacts", "--dir", str(project), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    preset = project / "presets" / "acme" / "contacts.yaml"
    output_schema = project / "presets" / "acme" / "contacts.schema.json"
    case = project / "golden" / "acme" / "contacts" / "signed-up.json"
    expected = case.with_name("signed-up.expected.json")
    language = project / "schemas" / "preset.schema.json"
    for path in (preset, output_schema, case, expected, language):
        assert path.is_file(), path
        assert f"wrote {os.path.relpath(path, tmp_path)}" in made.stdout

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    checked = cli("check", str(preset), cwd=elsewhere)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.startswith(f"ok: {preset} (acme/contacts: 1 mapped track events, 1 action(s))")
    golden = cli("golden", str(project / "golden"), cwd=elsewhere)
    assert golden.returncode == 0, golden.stdout + golden.stderr
    assert golden.stdout.splitlines()[-1] == "1 golden case(s): 1 passed, 0 failed"

    # The modeline points at the language schema, which validates the preset.
    first = preset.read_text(encoding="utf-8").splitlines()[0]
    assert (preset.parent / first[len(MODELINE) :]).resolve() == language.resolve()
    assert not list(
        Draft202012Validator(json.loads(language.read_text(encoding="utf-8"))).iter_errors(yaml_data(preset))
    )
    # The output contract beside it is a valid schema, in use, that the case's document satisfies.
    contract = json.loads(output_schema.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(contract)
    sent = [o for o in json.loads(expected.read_text(encoding="utf-8")) if o["outcome"] == "would_send"]
    assert len(sent) == 1
    assert not list(Draft202012Validator(contract).iter_errors(sent[0]["request"]["body"]))
    assert "      schema: ./contacts.schema.json" in preset.read_text(encoding="utf-8")


def test_init_in_a_project_dry_runs_and_explains(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["init", "acme/leads"]) == 0
    capsys.readouterr()
    case = json.loads(Path("golden/acme/leads/signed-up.json").read_text(encoding="utf-8"))
    Path("events.ndjson").write_text("".join(json.dumps(e) + "\n" for e in case["events"]), encoding="utf-8")
    assert main(["run", "presets/acme/leads.yaml", "--events", "events.ndjson", "--dry-run"]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert out == json.loads(Path("golden/acme/leads/signed-up.expected.json").read_text(encoding="utf-8"))
    assert (
        main(["explain", "presets/acme/leads.yaml", "--event", "golden/acme/leads/signed-up.json", "--index", "1"]) == 0
    )
    text = capsys.readouterr().out
    assert 'email      "  Jane.Doe@Example.com " from remembered (userId user-1)' in text
    assert "presets/acme/leads.yaml:" in text


def test_init_refuses_to_overwrite_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", "acme/contacts", "--dir", str(tmp_path)]) == 0
    case = tmp_path / "golden" / "acme" / "contacts" / "signed-up.json"
    case.unlink()
    preset = tmp_path / "presets" / "acme" / "contacts.yaml"
    preset.write_text(preset.read_text(encoding="utf-8") + "# mine\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["init", "acme/contacts", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "contacts.yaml already exists" in err and "nothing was written" in err
    assert not case.exists()
    assert preset.read_text(encoding="utf-8").endswith("# mine\n")


@pytest.mark.parametrize("name", ["contacts", "Acme/Contacts", "acme/contacts/x", "acme/con tacts", "acme/-b", "acme/"])
def test_init_needs_a_destination_slash_name(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    assert main(["init", name, "--dir", str(tmp_path)]) == 2
    assert "a preset name is DESTINATION/NAME" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_init_keeps_an_existing_language_schema(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    language = tmp_path / "schemas" / "preset.schema.json"
    language.parent.mkdir()
    language.write_text("{}", encoding="utf-8")
    assert main(["init", "acme/a", "--dir", str(tmp_path)]) == 0
    assert main(["init", "acme/b", "--dir", str(tmp_path)]) == 0
    assert language.read_text(encoding="utf-8") == "{}"


# --- golden --update -------------------------------------------------------------------------


def test_golden_update_rewrites_only_what_changed_and_then_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = REPO / "golden" / "outreach" / "lead-capture"
    cases = tmp_path / "golden" / "outreach" / "lead-capture"
    cases.mkdir(parents=True)
    for stem in ("event-mapping-signed-up", "identity-phone"):
        for suffix in (".json", ".expected.json"):
            (cases / f"{stem}{suffix}").write_text(
                (source / f"{stem}{suffix}").read_text(encoding="utf-8"), encoding="utf-8"
            )
    contract = (cases / "event-mapping-signed-up.expected.json").read_text(encoding="utf-8")
    (cases / "event-mapping-signed-up.expected.json").write_text(
        contract.replace('"signup"', '"stale"'), encoding="utf-8"
    )
    untouched = cases / "identity-phone.expected.json"
    before = untouched.stat().st_mtime_ns
    (cases / "new-case.json").write_text(
        json.dumps({"description": "x", "spec": "x", "events": [{"type": "page"}]}), encoding="utf-8"
    )

    assert main(["golden", str(tmp_path / "golden")]) == 1
    capsys.readouterr()
    assert main(["golden", "--update", str(tmp_path / "golden")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert sorted(line for line in out if line.startswith("updated")) == [
        "updated outreach/lead-capture/event-mapping-signed-up",
        "updated outreach/lead-capture/new-case",
    ]
    assert out[-1] == "3 golden case(s): 2 updated"
    assert (cases / "event-mapping-signed-up.expected.json").read_text(encoding="utf-8") == contract
    assert untouched.stat().st_mtime_ns == before
    assert json.loads((cases / "new-case.expected.json").read_text(encoding="utf-8"))[0]["reason"] == "event_not_mapped"
    assert main(["golden", str(tmp_path / "golden")]) == 0


def test_golden_update_refuses_to_pin_a_new_failed_outcome_unless_told_to(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 404 answer fails the event: a new case pinning that is refused; --accept-failed pins it; then it is kept."""
    source = REPO / "golden" / "outreach" / "lead-capture" / "delivery-404-failed.json"
    cases = tmp_path / "golden" / "outreach" / "lead-capture"
    cases.mkdir(parents=True)
    case = cases / "delivery-new-404.json"
    case.write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    expected = cases / "delivery-new-404.expected.json"

    assert main(["golden", "--update", str(tmp_path / "golden")]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("REFUSED outreach/lead-capture/delivery-new-404: event 0 came out failed (http_404: ")
    assert out[0].endswith("run again with --update --accept-failed if that is the contract")
    assert not expected.exists()

    assert main(["golden", "--update", "--accept-failed", str(tmp_path / "golden")]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "updated outreach/lead-capture/delivery-new-404"
    pinned = json.loads(expected.read_text(encoding="utf-8"))
    assert [o["outcome"] for o in pinned["outcomes"]] == ["failed"]

    # Pinned once, it is the contract: an update around it needs no permission.
    expected.write_text(
        expected.read_text(encoding="utf-8").replace('"answered": 404', '"answered": 499'), encoding="utf-8"
    )
    assert main(["golden", "--update", str(tmp_path / "golden")]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "updated outreach/lead-capture/delivery-new-404"


def test_golden_cases_directly_in_a_golden_folder_are_told_where_to_go(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No folder names the preset: a clear one-line error, not "[Errno 21] Is a directory"."""
    flat = tmp_path / "golden"
    flat.mkdir()
    source = REPO / "golden" / "outreach" / "lead-capture" / "identity-phone.json"
    (flat / "identity-phone.json").write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    assert main(["golden", str(flat)]) == 2
    err = capsys.readouterr().err
    assert "Errno" not in err
    assert (
        f"{flat / 'identity-phone.json'}: golden cases must live under a golden/<destination>/<preset>/ folder" in err
    )
    assert main(["golden", str(flat), "--preset", "outreach/lead-capture"]) == 1  # no expected file yet
