"""Event JSON's fast path (orjson, depth from the brackets) takes and refuses exactly what the exact path does."""

from __future__ import annotations

import json

import pytest

from engine.service import event_json
from engine.service.event_json import MAX_DEPTH, EventJsonError


def nested(levels: int, inner: str = "1") -> bytes:
    return ("[" * levels + inner + "]" * levels).encode()


def test_an_integer_beyond_64_bits_keeps_every_digit() -> None:
    # JSON numbers have no size limit (RFC 8259 section 6); Python's int holds them exactly.
    big = 2**64 + 1
    assert event_json.loads(f'{{"seats": {big}, "debt": -{big}}}'.encode()) == {"seats": big, "debt": -big}
    assert type(event_json.loads(b"[12345678901234567890123]")[0]) is int


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    shallow = json.dumps({"note": "[" * 200 + "{" * 200, "list": [[1]] * 70}).encode()
    assert event_json.loads(shallow)["note"].startswith("[[[")


@pytest.mark.parametrize("inner", ['"]]]]]]]]"', '"\\\\"', '"\\"]]"', '"}}}}"'])
def test_a_body_too_deep_is_refused_whatever_its_strings_hold(inner: str) -> None:
    with pytest.raises(EventJsonError, match=f"more than {MAX_DEPTH} levels"):
        event_json.loads(nested(MAX_DEPTH + 1, inner))
    assert event_json.loads(nested(MAX_DEPTH, inner)) is not None


def test_escaped_quotes_and_backslashes_do_not_hide_a_level() -> None:
    # Each string ends in an escaped backslash: a reader that took \\" for an escaped quote would lose the level.
    body = "[" * MAX_DEPTH + ",".join(['"a\\\\"', '{"k\\"":["\\\\"]}']) + "]" * MAX_DEPTH
    with pytest.raises(EventJsonError, match="levels deep"):
        event_json.loads(body.encode())
    assert event_json.loads(("[" * (MAX_DEPTH - 2) + '"a\\\\",{"k\\"":["\\\\"]}' + "]" * (MAX_DEPTH - 2)).encode())


def test_text_and_bytes_read_the_same_and_bad_utf8_names_its_byte() -> None:
    text = '{"name": "Zoë \\ud83d\\ude00", "cut": "\\ud83d", "n": 1.5}'
    assert event_json.loads(text) == event_json.loads(text.encode()) == {"name": "Zoë 😀", "cut": "\\ud83d", "n": 1.5}
    with pytest.raises(UnicodeDecodeError) as caught:
        event_json.loads(b'{"a": "\xff"}')
    assert caught.value.start == 7
