"""The redactor: known secrets are masked wherever they appear."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.redaction import MASK, Redactor

SECRET = "cs-0123456789abcdef"
REFRESH = "rt-fedcba9876543210"
ACCESS = "at-AAAABBBBCCCCDDDD"


def test_masks_secrets_inside_strings() -> None:
    redactor = Redactor([SECRET, REFRESH])
    assert redactor.redact(f"client_secret={SECRET}&refresh_token={REFRESH}") == (
        f"client_secret={MASK}&refresh_token={MASK}"
    )
    assert redactor.redact(f"{SECRET}{SECRET}") == MASK + MASK
    assert redactor.redact("nothing to hide") == "nothing to hide"


def test_masks_secrets_in_nested_structures() -> None:
    redactor = Redactor([SECRET, REFRESH])
    value = {
        "headers": {"Authorization": f"Bearer {SECRET}", "Accept": "application/vnd.api+json"},
        "body": [{"grant": "refresh_token", "token": REFRESH}, [f"x {SECRET} y", 42, None, True]],
        SECRET: "a secret used as a key",
        "n": 3.5,
    }
    assert redactor.redact(value) == {
        "headers": {"Authorization": f"Bearer {MASK}", "Accept": "application/vnd.api+json"},
        "body": [{"grant": "refresh_token", "token": MASK}, [f"x {MASK} y", 42, None, True]],
        MASK: "a secret used as a key",
        "n": 3.5,
    }
    # The input is left untouched.
    assert value["headers"]["Authorization"] == f"Bearer {SECRET}"


def test_secrets_learnt_later_are_masked_too() -> None:
    redactor = Redactor([SECRET])
    assert redactor.redact(ACCESS) == ACCESS
    redactor.add(ACCESS)  # a freshly minted access token
    assert redactor.redact({"access_token": ACCESS}) == {"access_token": MASK}


def test_longest_secret_is_masked_first() -> None:
    short = "abcdef12"
    long = short + "-rotated"
    redactor = Redactor([short, long])
    assert redactor.redact(f"old={short} new={long}") == f"old={MASK} new={MASK}"
    assert "-rotated" not in redactor.redact(long)


def test_very_short_and_empty_values_are_not_treated_as_secrets() -> None:
    redactor = Redactor(["", "abc", "12345", None])  # type: ignore[list-item]
    assert redactor.redact("abc 12345 text") == "abc 12345 text"
    redactor.add("123456")
    assert redactor.redact("id 123456") == f"id {MASK}"


def test_without_secrets_values_pass_through() -> None:
    value = {"a": ["b", {"c": "d"}]}
    assert Redactor().redact(value) == value


def test_non_string_scalars_are_kept() -> None:
    redactor = Redactor([SECRET])
    assert redactor.redact(123456789) == 123456789
    assert redactor.redact(None) is None
    assert redactor.redact([1.5, False]) == [1.5, False]


def test_a_value_that_is_exactly_the_shortest_secret_is_masked() -> None:
    redactor = Redactor(["s3cret-long-client-secret", "tok123"])
    assert redactor.redact("tok123") == "***"
    assert redactor.redact(["tok12", {"tok123": "x"}]) == ["tok12", {"***": "x"}]


# Secrets with characters JSON escapes (quote, backslash, control, non-ASCII, slash): the
# structure check searches the compact JSON text, so each must still be found there.
AWKWARD = ['pa"ss\\word-1', "tab\there-secret", "clé-sécrète-ünï", "sl/ash/secret", "emoji-🔑-secret"]


def test_secrets_json_escapes_are_found_in_nested_structures() -> None:
    redactor = Redactor(AWKWARD)
    for secret in AWKWARD:
        value = {"outer": [{"k": f"before {secret} after"}], f"key {secret}": 1}
        assert redactor.redact(value) == {"outer": [{"k": f"before {MASK} after"}], f"key {MASK}": 1}


def test_structures_json_cannot_hold_are_still_walked() -> None:
    redactor = Redactor([SECRET])
    assert redactor.redact({1: SECRET, "big": 2**70}) == {1: MASK, "big": 2**70}
    assert redactor.redact([f"x{SECRET}", "\ud800 lone surrogate"]) == [f"x{MASK}", "\ud800 lone surrogate"]


def _reference(value: object, secrets: list[str]) -> object:
    """The rule, written plainly: every string (key or value, at any depth) with each secret masked, longest first."""
    if isinstance(value, str):
        for secret in sorted(secrets, key=len, reverse=True):
            value = value.replace(secret, MASK)
        return value
    if isinstance(value, dict):
        return {_reference(k, secrets): _reference(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_reference(v, secrets) for v in value]
    return value


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_structures_are_masked_as_the_plain_rule_says(data: st.DataObject) -> None:
    secrets = data.draw(st.lists(st.sampled_from([SECRET, REFRESH, *AWKWARD]), min_size=1, max_size=3, unique=True))
    pieces = st.sampled_from([*secrets, "x", " ", '"', "\\", "\n", "é", "/", "🔑", secrets[0][:5]])
    text = st.lists(pieces, max_size=6).map("".join) | st.text(max_size=8)
    scalar = text | st.integers() | st.floats(allow_nan=True) | st.booleans() | st.none()
    value = data.draw(
        st.recursive(
            scalar,
            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
            max_leaves=20,
        )
    )
    assert Redactor(secrets).redact(value) == _reference(value, secrets)
