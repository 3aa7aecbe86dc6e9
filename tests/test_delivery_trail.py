"""The exchanges kept with an outcome hold each response body up to BODY_CAP characters of its JSON text."""

from __future__ import annotations

import json

from engine.delivery.trail import BODY_CAP, _capped


def test_a_small_json_body_is_kept_as_it_is() -> None:
    body = {"data": {"id": 12, "attributes": {"emails": ["ada@example.com"], "tags": ["Signal"]}}}
    assert _capped(body) is body


def test_a_body_over_the_cap_is_cut_and_says_how_much_is_missing() -> None:
    body = {"errors": [{"detail": "x" * BODY_CAP}]}
    text = json.dumps(body, ensure_ascii=False)
    assert _capped(body) == text[:BODY_CAP] + f"… ({len(text) - BODY_CAP} more characters)"


def test_the_cap_counts_the_text_as_json_dumps_writes_it() -> None:
    # Compact, this is within the cap; with the standard separators and float forms it is not.
    body = [1e16] * (BODY_CAP * 3 // 20)  # 307 numbers: 1,843 characters compact, 2,149 as json.dumps writes them
    assert len(json.dumps(body, separators=(",", ":"))) <= BODY_CAP < len(json.dumps(body))
    assert isinstance(_capped(body), str) and _capped(body).endswith("more characters)")
    small = [1e16] * 10
    assert _capped(small) is small
