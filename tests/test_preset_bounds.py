"""Bounded presets: a hostile YAML file costs seconds and tens of MB, never minutes or gigabytes.

* a file over 1 MiB (preset or settings) is refused with one line, before it is read whole;
* YAML aliases may add at most 1,000,000 values and characters (an alias bomb is refused);
* brackets nested past 256, or more than 50,000 values, stop the parser early;
* one JSONata expression may hold 16,384 characters, all of a preset's 131,072 together;
  the static checks report 20 problems per expression and count the rest.

Time and memory are measured on real ``signal-engine check`` processes (peak
RSS as the kernel counts it); the time limit only catches a hang.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.compile.compiler import PresetError, load_preset
from engine.language import yaml_source
from engine.language.yaml_source import YamlSourceError, _check_aliases, load_yaml

REPO = Path(__file__).resolve().parents[1]
BUILTIN = (REPO / "presets" / "outreach" / "lead-capture.yaml").read_text(encoding="utf-8")
MAPPING_LINE = '            "firstName": traits.firstName,\n'


def check(path: Path, *extra: str) -> tuple[int, str, float, int]:
    """Exit status, stdout+stderr, seconds and peak RSS (KiB) of ``signal-engine check`` in its own process."""
    code = (
        "import resource, subprocess, sys, time; t = time.monotonic(); "
        f"p = subprocess.run([sys.executable, '-m', 'engine', 'check', {str(path)!r}, *{list(extra)!r}], "
        "capture_output=True, text=True); "
        "print(p.returncode, time.monotonic() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
        "print(p.stdout + p.stderr, end='')"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    head, _, output = done.stdout.partition("\n")
    status, seconds, peak = head.split()
    return int(status), output, float(seconds), int(peak)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def billion_laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def with_mapping_expression(expression: str) -> str:
    assert MAPPING_LINE in BUILTIN
    return BUILTIN.replace(MAPPING_LINE, f'            "firstName": {expression},\n', 1)


# --------------------------------------------------------------------------
# alias expansion
# --------------------------------------------------------------------------


def test_an_alias_bomb_is_refused_in_one_line_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "bomb.yaml", billion_laughs(9))  # 9^10 "lol"s once expanded
    status, output, seconds, peak = check(path)
    assert status == 1
    where, _, message = output.partition(": YAML")
    assert where.startswith(f"{path}:") and 2 <= int(where.split(":")[-2]) <= 10  # one of the alias lines
    assert message == (
        " aliases expand to more than 1,000,000 values and characters (an alias bomb?); write the "
        "values out, or use fewer aliases\n"
    )
    assert seconds < 60 and peak < 150 * 1024


def test_an_aliased_long_string_counts_its_characters(tmp_path: Path) -> None:
    text = 'a: &a "' + "x" * 400_000 + '"\nb: [*a, *a, *a]\n'
    with pytest.raises(YamlSourceError, match=r":2:4: YAML aliases expand to more than 1,000,000"):
        load_yaml(write(tmp_path, "strings.yaml", text))


def test_ordinary_aliases_and_merge_keys_still_load(tmp_path: Path) -> None:
    defaults = "defaults: &defaults {action: create_prospect, values: {tag: signup}}\n"
    rows = "".join(f"  Event {i}: {{<<: *defaults}}\n" for i in range(200))
    doc = load_yaml(write(tmp_path, "ok.yaml", defaults + "rows:\n" + rows))
    assert doc.data()["rows"]["Event 199"] == {"action": "create_prospect", "values": {"tag": "signup"}}


def test_a_value_that_contains_itself_is_refused() -> None:
    looped: list[object] = [1]
    looped.append(looped)  # ruamel.yaml turns a recursive alias into null; another loader might not
    with pytest.raises(YamlSourceError, match="an alias refers to a value that contains it"):
        _check_aliases({"a": looped}, "x.yaml")


# --------------------------------------------------------------------------
# file size
# --------------------------------------------------------------------------


def test_a_preset_file_over_one_mebibyte_is_refused_in_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "big.yaml", BUILTIN + "# " + "x" * (1 << 20) + "\n")
    size = path.stat().st_size
    status, output, _, peak = check(path)
    assert status == 1
    assert output == f"{path}: {size:,} bytes: a preset or settings file may hold at most 1,048,576 bytes\n"
    # One just under the limit is read (and here is valid).
    fits = write(tmp_path, "fits.yaml", BUILTIN + "#" + "x" * ((1 << 20) - len(BUILTIN.encode()) - 3) + "\n")
    assert fits.stat().st_size <= 1 << 20
    assert load_preset(str(fits)).name == "outreach/lead-capture"


def test_an_endless_file_is_not_read_whole() -> None:
    status, output, seconds, peak = check(Path("/dev/zero"))
    assert status == 1
    assert (
        output == "/dev/zero: more than 1,048,576 bytes: a preset or settings file may hold at most 1,048,576 bytes\n"
    )
    assert peak < 150 * 1024


def test_a_settings_file_over_one_mebibyte_is_refused_in_one_line(tmp_path: Path) -> None:
    settings = write(tmp_path, "settings.yaml", "client_id: x\n# " + "x" * (1 << 20) + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "engine", "run", "outreach/lead-capture", "--events", "-", "--settings", str(settings)],
        cwd=REPO,
        capture_output=True,
        text=True,
        input="",
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.endswith("a preset or settings file may hold at most 1,048,576 bytes\n")
    assert len(done.stderr.splitlines()) == 1


# --------------------------------------------------------------------------
# nesting and value count
# --------------------------------------------------------------------------


def test_brackets_nested_too_deep_are_refused_before_parsing(tmp_path: Path) -> None:
    path = write(tmp_path, "deep.yaml", "preset: " + "[" * 300_000 + "\n")
    status, output, seconds, _ = check(path)
    assert (status, output) == (1, f"{path}:1:265: brackets nested more than 256 deep\n")
    assert seconds < 30  # the scanner alone would spend about 6 s on it


def test_block_nesting_too_deep_is_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "deep-block.yaml", "preset:\n" + "".join(" " * i + "- \n" for i in range(1400)))
    status, output, seconds, _ = check(path)
    assert (status, output) == (1, f"{path}:1:1: nested too deeply\n")
    assert seconds < 30


def test_more_than_fifty_thousand_values_stop_the_parser(tmp_path: Path) -> None:
    path = write(tmp_path, "values.yaml", "preset:\n" + "- a\n" * 60_000)
    with pytest.raises(
        YamlSourceError,
        match=r"values.yaml:\d+:3: more than 50,000 values: a preset or settings file may hold at most 50,000$",
    ):
        load_yaml(path)
    # A preset of ordinary size is far below it.
    assert 100 * BUILTIN.count("\n") < yaml_source.MAX_YAML_VALUES


# --------------------------------------------------------------------------
# expressions
# --------------------------------------------------------------------------


def test_an_over_long_expression_is_a_problem_not_a_minute_of_parsing(tmp_path: Path) -> None:
    path = write(tmp_path, "sum.yaml", with_mapping_expression("+".join(["1"] * 150_000)))
    status, output, seconds, peak = check(path)
    assert status == 1
    assert output.splitlines() == [
        f"{path}:87:14: actions.create_prospect.mapping: the expression holds 300,529 "
        "characters; an expression may hold at most 16,384"
    ]


def test_the_expressions_of_a_preset_share_a_budget(tmp_path: Path) -> None:
    rule = RULE % ("1+" * 7_000 + "1")
    path = write(tmp_path, "rules.yaml", BUILTIN.replace("  responses:\n", "  responses:\n" + rule * 12, 1))
    with pytest.raises(PresetError) as raised:
        load_preset(str(path))
    over = [p for p in raised.value.problems if "together" in p]
    assert len(over) == 1 and "delivery.responses[" in over[0]
    assert over[0].endswith(
        "the preset's expressions hold more than 131,072 characters together; this one and "
        "the ones after it are not compiled"
    )


def test_static_check_problems_are_capped_per_expression(tmp_path: Path) -> None:
    fields = ", ".join(f'"f{i}": traits.missing{i}' for i in range(30))
    path = write(tmp_path, "many.yaml", with_mapping_expression("{" + fields + "}"))
    with pytest.raises(PresetError) as raised:
        load_preset(str(path))
    lines = [p for p in raised.value.problems if "create_prospect.mapping" in p]
    assert len(lines) == 21
    assert sum("is not a declared trait" in p for p in lines) == 20
    assert lines[-1].endswith("and 10 more problem(s) like these in this expression")


# --------------------------------------------------------------------------
# the worst shapes near the limits: bounded time and memory
# --------------------------------------------------------------------------

RULE = "    - when: {status: 599, match: '%s'}\n      then: retry\n"
HOSTILE: dict[str, Callable[[], str]] = {
    "a flow sequence of 500,000 numbers": lambda: "preset: [" + "1," * 500_000 + "]\n",
    "80,000 small mappings": lambda: "preset:\n" + "".join(f"  k{i}: {{}}\n" for i in range(80_000)),
    "nine 16 KB expressions the reference parser must locate": lambda: BUILTIN.replace(
        "  responses:\n", "  responses:\n" + RULE % ("1+" * 7_999 + "1") * 9, 1
    ),
}


@pytest.mark.parametrize("shape", sorted(HOSTILE))
def test_hostile_files_near_the_limits_cost_seconds_and_tens_of_megabytes(shape: str, tmp_path: Path) -> None:
    text = HOSTILE[shape]()
    assert len(text.encode()) <= 1 << 20
    path = write(tmp_path, "hostile.yaml", text)
    status, output, seconds, peak = check(path)
    assert status == 1 and "Traceback" not in output and "internal error" not in output
    # Without the bounds: 55 s and 620 MB, 20 s and 210 MB, and minutes for the expressions.
    assert seconds < 60, f"{shape}: {seconds:.1f}s"
    assert peak < 250 * 1024, f"{shape}: peak RSS {peak // 1024} MB"
