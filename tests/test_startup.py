"""Startup: a dry run imports only what it uses, and a preset that validated once is not validated again.

Import lists are checked in fresh processes, because the test session
itself has imported everything long ago.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.compile import preset_cache
from engine.compile.compiler import PresetError, load_preset
from engine.language import resources

REPO_ROOT = Path(__file__).resolve().parents[1]
BUILTIN = REPO_ROOT / "presets" / "outreach" / "lead-capture.yaml"

LEAD = {
    "type": "track",
    "event": "Signed Up",
    "userId": "u1",
    "messageId": "m1",
    "traits": {"email": "a@b.co", "phone": "+44 7700 900123"},
    "context": {"consent": {"canonical": {"marketing": True}}},
}
PAGE = {"type": "page", "anonymousId": "a1", "messageId": "m0"}

# What a dry run has no use for: the delivery machinery, the event loop, the
# reference JSONata engine, and (with the preset cached) YAML and jsonschema.
NEVER_IN_A_DRY_RUN = (
    "aiohttp",
    "asyncio",
    "engine.runtime",
    "engine.delivery.sender",
    "engine.delivery.auth",
    "engine.delivery.rate_limit",
    "engine.delivery.retry_policy",
    "engine.state.token_store",
    "engine.state.dead_letters",
    "logging",  # a dry run logs nothing; the package's NullHandler comes with its first logger (engine/loggers.py)
)
# Nothing imports shutil in a run: the preset cache writes without tempfile, and only
# argparse's help formatter would import shutil (with bz2 and lzma), unless told the width.
# The reference JSONata engine (jsonata) reads expressions for the static checks of a preset not yet in the cache.
ONLY_WHEN_VALIDATING = ("jsonschema", "ruamel", "yaml", "shutil", "jsonata", "engine.language.yaml_source")

PROBE = """
import json, sys
from engine.cli.main import main
code = main(sys.argv[1:])
sys.stdout.flush()
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
sys.exit(code)
"""


def modules_after(tmp_path: Path, cache: Path, *args: str, events: list[dict] | None = None) -> set[str]:
    """The modules a fresh ``signal-engine`` process had imported when it finished."""
    env = {**os.environ, "SIGNAL_ENGINE_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO_ROOT)}
    argv = list(args)
    if events is not None:
        path = tmp_path / "events.ndjson"
        path.write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
        argv += ["--events", str(path)]
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stderr.strip().splitlines()[-1]))


def loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


def test_a_dry_run_imports_nothing_it_does_not_use(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    run = ("run", "outreach/lead-capture", "--dry-run")
    first = modules_after(tmp_path, cache, *run, events=[])
    assert loaded(first, NEVER_IN_A_DRY_RUN) == []
    assert "yaml" in first and "jsonschema_rs" in first  # the preset was read (libyaml) and validated once
    # Its data was certain from libyaml, and nothing needed a line number: no round-trip parse.
    assert loaded(first, ("ruamel", "engine.language.yaml_source")) == []
    # jsonschema words problems; a preset that jsonschema-rs accepts has none, so it is never imported.
    assert loaded(first, ("jsonschema",)) == []

    again = modules_after(tmp_path, cache, *run, events=[])
    assert loaded(again, NEVER_IN_A_DRY_RUN + ONLY_WHEN_VALIDATING) == []
    # Nothing of the delivery code: the preset's response rules are compiled without it.
    assert loaded(again, ("engine.delivery",)) == []
    # Nothing that only a lead needs, while none came.
    assert loaded(again, ("phonenumbers", "jsonschema_rs")) == []
    # The cached preset's expressions compiled when it was stored: the JSONata engine waits for an event.
    assert loaded(again, ("jsonatapy",)) == []
    # Nothing read, nothing written: no JSON codec but the standard library's; digests without OpenSSL.
    assert loaded(again, ("orjson", "hashlib", "_hashlib")) == []

    leads = modules_after(tmp_path, cache, *run, events=[PAGE, LEAD])
    assert loaded(leads, NEVER_IN_A_DRY_RUN + ONLY_WHEN_VALIDATING) == []
    assert "phonenumbers" in leads and "jsonschema_rs" in leads and "orjson" in leads
    # The shipped mapping is a plain template: its plan, kept in the cache, maps the lead with no JSONata engine.
    assert loaded(leads, ("jsonatapy", "jsonata")) == []


def test_check_always_validates(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    modules_after(tmp_path, cache, "run", "outreach/lead-capture", "--dry-run", events=[])  # fills the cache
    checked = modules_after(tmp_path, cache, "check", "outreach/lead-capture")
    assert "jsonschema" in checked and "yaml" in checked
    assert "jsonata" in checked and "jsonatapy" in checked  # every expression checked afresh, whatever is kept


def test_the_command_line_still_knows_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    """A run builds only its own options; help and errors at the top level list them all."""
    from engine.cli.main import main

    with pytest.raises(SystemExit):
        main(["--help"])
    listed = capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["bogus"])
    refused = capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    run_help = capsys.readouterr().out
    for command in ("check", "run", "dlq", "sandbox", "golden"):
        assert f"    {command} " in listed
        assert f"'{command}'" in refused
    assert "usage: signal-engine run [-h] --events FILE|-" in run_help.replace("\n", " ")
    assert "--dry-run" in run_help


# --------------------------------------------------------------------------
# the preset cache
# --------------------------------------------------------------------------


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(preset_cache.CACHE_ENV, str(folder))
    return folder / "presets"


def copy_of_builtin(tmp_path: Path, old: str = "", new: str = "") -> Path:
    text = BUILTIN.read_text(encoding="utf-8")
    if old:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path = tmp_path / "preset.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_valid_preset_is_cached_and_loads_the_same_from_the_cache(tmp_path: Path, cache: Path) -> None:
    path = copy_of_builtin(tmp_path)
    fresh = load_preset(str(path))
    assert len(list(cache.glob(f"*{preset_cache.SUFFIX}"))) == 1
    cached = load_preset(str(path))
    assert cached.raw == fresh.raw
    assert cached.expression_limits == fresh.expression_limits
    assert sorted(cached.actions) == sorted(fresh.actions)
    assert cached.events.track == fresh.events.track


def test_an_edited_preset_is_read_again(tmp_path: Path, cache: Path) -> None:
    path = copy_of_builtin(tmp_path)
    load_preset(str(path))
    copy_of_builtin(tmp_path, "values: {tag: lead}", "values: {tag: lead-v2}")
    preset = load_preset(str(path))
    assert preset.events.track["Lead Submitted"].values == {"tag": "lead-v2"}
    assert len(list(cache.glob(f"*{preset_cache.SUFFIX}"))) == 2


def test_new_checking_code_checks_cached_presets_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The key covers the compiler and the static checks, wherever they live; a file it cannot read
    would quietly leave them out, so every one must be found."""
    engine = Path(preset_cache.__file__).resolve().parents[1]
    copy = tmp_path / "engine"
    for part in (
        "compile/compiler.py",
        "compile/expression_facts.py",
        "compile/preset_cache.py",
        "language/expression_check.py",
        "language/expressions.py",
        "language/template_fast_path.py",
        "language/predicate_fast_path.py",
    ):
        (copy / part).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(engine / part, copy / part)
    monkeypatch.setattr(preset_cache, "__file__", str(copy / "compile" / "preset_cache.py"))
    before = preset_cache._checks_digest()
    assert before  # found every file: not the empty digest of a failed read
    for part in (
        "compile/compiler.py",
        "compile/expression_facts.py",
        "language/expression_check.py",
        "language/expressions.py",
        "language/template_fast_path.py",
        "language/predicate_fast_path.py",
    ):
        with (copy / part).open("a", encoding="utf-8") as f:
            f.write("\n# changed\n")
        after = preset_cache._checks_digest()
        assert after and after != before, part
        before = after


def test_an_invalid_preset_is_never_cached(tmp_path: Path, cache: Path) -> None:
    path = copy_of_builtin(tmp_path, "preset: outreach/lead-capture", "preset: outreach/lead-capture\nbogus: 1")
    for _ in range(2):
        with pytest.raises(PresetError) as info:
            load_preset(str(path))
        assert info.value.problems[0].startswith(f"{path}:")
        assert "unknown key 'bogus'" in info.value.problems[0]
    assert not cache.exists() or not list(cache.glob(f"*{preset_cache.SUFFIX}"))


def test_a_problem_found_on_a_cached_preset_is_still_located(tmp_path: Path, cache: Path) -> None:
    """The compiler's own checks run on every load; a problem they find is located in the YAML."""
    path = copy_of_builtin(tmp_path)
    load_preset(str(path))
    source = preset_cache.read(path)
    assert source is not None
    entry = preset_cache.lookup(source)
    assert entry is not None
    entry.plain["events"]["track"]["Signed Up"]["action"] = "no_such_action"
    preset_cache.store(source, entry.plain, entry.schemas, entry.plans)
    with pytest.raises(PresetError) as info:
        load_preset(str(path))
    line = next(i for i, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if "Signed Up:" in text)
    assert info.value.problems == [
        f"{path}:{line + 1}:15: events.track.Signed Up.action: unknown action 'no_such_action' "
        "(defined: create_prospect, or drop)"
    ]


def test_a_changed_output_schema_is_checked_again(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    schemas = tmp_path / "schemas"
    (schemas / "outreach").mkdir(parents=True)
    (schemas / "preset.schema.json").write_bytes(resources.preset_schema_path().read_bytes())
    output = schemas / "outreach" / "prospect-request.schema.json"
    output.write_bytes(resources.output_schema_path("outreach/prospect-request").read_bytes())
    monkeypatch.setattr(resources, "schemas_dir", lambda: schemas)
    path = copy_of_builtin(tmp_path)
    load_preset(str(path))
    output.write_text(json.dumps({"type": "object", "properties": {"data": {"maxLength": -1}}}), encoding="utf-8")
    with pytest.raises(PresetError) as info:
        load_preset(str(path))
    assert "not a valid JSON Schema at /properties/data/maxLength" in info.value.problems[0]


def test_the_cache_can_be_turned_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(preset_cache.CACHE_ENV, "")
    assert preset_cache.cache_dir() is None
    load_preset(str(copy_of_builtin(tmp_path)))


def test_an_unusable_cache_costs_speed_not_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("", encoding="utf-8")
    monkeypatch.setenv(preset_cache.CACHE_ENV, str(blocker))
    path = copy_of_builtin(tmp_path)
    assert load_preset(str(path)).name == "outreach/lead-capture"
    assert load_preset(str(path)).name == "outreach/lead-capture"


def test_a_damaged_cache_entry_is_ignored(tmp_path: Path, cache: Path) -> None:
    path = copy_of_builtin(tmp_path)
    load_preset(str(path))
    for entry in cache.glob(f"*{preset_cache.SUFFIX}"):
        entry.write_text("{not json", encoding="utf-8")
    assert load_preset(str(path)).name == "outreach/lead-capture"


def test_old_entries_are_pruned(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preset_cache, "MAX_ENTRIES", 3)
    for tag in range(5):
        path = copy_of_builtin(tmp_path, "values: {tag: lead}", f"values: {{tag: lead-{tag}}}")
        load_preset(str(path))
    assert len(list(cache.glob(f"*{preset_cache.SUFFIX}"))) == 3


# --------------------------------------------------------------------------
# the preset language's gate (jsonschema-rs) and its judge (jsonschema)
# --------------------------------------------------------------------------


def _mutations(data: object, path: tuple = ()) -> list[tuple[tuple, object]]:
    """Each way to break one place of a preset: a key removed, a value of the wrong type, an unknown key."""
    out: list[tuple[tuple, object]] = []
    if isinstance(data, dict):
        for key, value in data.items():
            out.append((path + (key,), "<removed>"))
            out.append((path + (key,), 12 if not isinstance(value, int) or isinstance(value, bool) else "twelve"))
            out.extend(_mutations(value, path + (key,)))
        out.append((path + ("no_such_key",), True))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            out.append((path + (i,), {"unexpected": []}))
            out.extend(_mutations(value, path + (i,)))
    return out


def _apply(data: object, path: tuple, change: object) -> object:
    import marshal

    result = marshal.loads(marshal.dumps(data))  # a deep copy of plain data, fast
    node = result
    for part in path[:-1]:
        node = node[part]  # type: ignore[index]
    if change == "<removed>":
        del node[path[-1]]  # type: ignore[attr-defined]
    else:
        node[path[-1]] = change  # type: ignore[index]
    return result


@pytest.mark.parametrize(
    "preset", sorted(p.relative_to(REPO_ROOT / "presets") for p in (REPO_ROOT / "presets").rglob("*.yaml"))
)
def test_the_gate_and_jsonschema_agree_on_every_one_place_break(preset: Path) -> None:
    """A preset jsonschema-rs accepts is never shown to jsonschema, so the two must agree on what is valid:
    checked on each shipped preset and on every break of one place in it (a few thousand documents)."""
    from engine.compile.compiler import _preset_gate, _preset_validator
    from engine.language.yaml_source import load_yaml

    gate, judge = _preset_gate(), _preset_validator()
    assert gate is not None
    data = load_yaml(REPO_ROOT / "presets" / preset).data()
    assert gate.is_valid(data) and not list(judge.iter_errors(data))
    disagreements = []
    for path, change in _mutations(data):
        broken = _apply(data, path, change)
        if gate.is_valid(broken) != (next(judge.iter_errors(broken), None) is None):
            disagreements.append((path, change))
    assert disagreements == []


def test_the_cache_reads_no_more_of_a_preset_than_the_yaml_loader_would() -> None:
    from engine.language import yaml_source

    assert preset_cache.MAX_PRESET_BYTES == yaml_source.MAX_YAML_BYTES


def test_the_cache_digest_is_sha256() -> None:
    """FIPS 180-2 appendix B.1, without hashlib (whose import loads OpenSSL at every start)."""
    from engine.content_digest import sha256_hex

    assert sha256_hex(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


# --------------------------------------------------------------------------
# each expression's facts, kept by its text across edits
# --------------------------------------------------------------------------


def test_an_edit_that_leaves_the_expressions_alone_imports_no_jsonata_engine(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    path = copy_of_builtin(tmp_path)
    run = ("run", str(path), "--dry-run")
    first = modules_after(tmp_path, cache, *run, events=[])
    assert "jsonata" in first and "jsonatapy" in first  # each expression checked and compiled once
    copy_of_builtin(tmp_path, "values: {tag: lead}", "values: {tag: lead-v2}")  # a miss in the preset cache
    edited = modules_after(tmp_path, cache, *run, events=[])
    assert "yaml" in edited  # read from the YAML again
    assert "ruamel" not in edited  # by libyaml: nothing needed a line number
    # Every expression's checks are known from its text: the static checker is not even imported.
    assert loaded(edited, ("jsonata", "jsonatapy", "jsonschema", "engine.language.expression_check")) == []
    assert loaded(edited, ("tempfile", "shutil")) == []  # the cache's files are written without tempfile


def test_a_problem_found_in_an_expression_is_reported_again_from_its_facts(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.language import expression_check

    broken = copy_of_builtin(tmp_path, '"company": traits.company', '"company": traits.compnay')
    with pytest.raises(PresetError) as first:
        load_preset(str(broken))
    assert any("traits.compnay is not a declared trait" in p for p in first.value.problems)

    def never(*args: object) -> None:
        raise AssertionError("checked again, though the expression did not change")

    monkeypatch.setattr(expression_check, "analyse", never)
    monkeypatch.setattr(expression_check, "result_keys", never)
    text = broken.read_text(encoding="utf-8")
    broken.write_text(text.replace("values: {tag: lead}", "values: {tag: lead-v2}"), encoding="utf-8")
    with pytest.raises(PresetError) as again:
        load_preset(str(broken))
    assert again.value.problems == first.value.problems


def test_a_changed_expression_is_checked_again(tmp_path: Path, cache: Path) -> None:
    load_preset(str(copy_of_builtin(tmp_path)))
    broken = copy_of_builtin(tmp_path, '"title": traits.title', '"title": traits.titel')
    with pytest.raises(PresetError) as info:
        load_preset(str(broken))
    assert len(info.value.problems) == 1
    assert "traits.titel is not a declared trait" in info.value.problems[0]
    edited = copy_of_builtin(tmp_path, '"occupation": traits.title', '"occupation": traits.company')
    mapping = load_preset(str(edited)).actions
    assert mapping["create_prospect"].mapping._fast is not None  # the new text planned too


def test_a_problem_in_a_preset_read_by_libyaml_is_located_by_the_round_trip_parse(tmp_path: Path, cache: Path) -> None:
    """A preset not in the cache is read by libyaml (yaml_plain); a problem the compiler finds in it
    still names file:line:col, from ruamel.yaml's parse of the same text."""
    from engine.language import yaml_plain

    path = copy_of_builtin(
        tmp_path, "Signed Up:\n      action: create_prospect", "Signed Up:\n      action: no_such_action"
    )
    assert yaml_plain.plain_data(path.read_text(encoding="utf-8")) is not None  # the fast path reads it
    with pytest.raises(PresetError) as info:
        load_preset(str(path))
    line = next(
        i for i, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if "no_such_action" in text
    )
    column = path.read_text(encoding="utf-8").splitlines()[line - 1].index("no_such_action") + 1
    assert info.value.problems == [
        f"{path}:{line}:{column}: events.track.Signed Up.action: unknown action 'no_such_action' "
        "(defined: create_prospect, or drop)"
    ]
