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


def test_a_kept_body_and_headers_are_masked_and_kept_as_they_are_when_they_hold_no_secret() -> None:
    from engine.delivery.trail import _masked
    from engine.redaction import MASK, Redactor

    secret = 'tok"en-9f8e7d'  # JSON escapes the quote: the masking must find it as written in the text too
    redactor = Redactor([secret])
    body = {"data": {"id": 1, "attributes": {"note": f"x{secret}y", "tags": [secret]}}, secret: "key"}
    masked = _masked(body, redactor)
    assert masked == {"data": {"id": 1, "attributes": {"note": f"x{MASK}y", "tags": [MASK]}}, MASK: "key"}
    assert secret not in json.dumps(masked, ensure_ascii=False)
    clean = {"data": {"id": 2, "attributes": {"emails": ["ada@example.com"]}}}
    assert _masked(clean, redactor) is clean
    assert _masked(f"plain {secret}", redactor) == f"plain {MASK}"
    assert _masked({1: secret}, redactor) == {1: MASK}  # orjson cannot write it: masked string by string


def test_a_kept_response_body_short_or_cut_holds_no_secret() -> None:
    from engine.delivery.trail import _kept_body
    from engine.redaction import MASK, Redactor

    secret = "sk-live-4c1d9e"
    redactor = Redactor([secret])
    short = {"id": 7, "echo": f"Bearer {secret}"}
    assert _kept_body(short, redactor) == {"id": 7, "echo": f"Bearer {MASK}"}
    clean = {"id": 8}
    assert _kept_body(clean, redactor) is clean
    long = {"items": [f"{secret}-{i}" for i in range(BODY_CAP // 10)]}
    kept = _kept_body(long, redactor)
    assert isinstance(kept, str) and kept.endswith("more characters)") and secret not in kept
    assert _kept_body(f"text {secret}", redactor) == f"text {MASK}"
    assert _kept_body(None, redactor) is None


def test_the_trail_keeps_only_rate_limit_headers_masked() -> None:
    import asyncio

    from multidict import CIMultiDict

    from engine.delivery.trail import TrailingTransport, start_trail
    from engine.delivery.transport import HttpResponse
    from engine.envelope import HttpRequest
    from engine.redaction import MASK, Redactor

    secret = "rl-secret-77aa"
    answer = HttpResponse(
        429,
        CIMultiDict({"Content-Type": "application/json", "X-RateLimit-Remaining": f"0 {secret}", "Retry-After": "3"}),
        {"error": "slow down"},
    )

    class Answers:
        async def send(self, request: HttpRequest) -> HttpResponse:
            return answer

    transport = TrailingTransport(Answers(), Redactor([secret]))

    async def twice() -> list[dict]:
        trail = start_trail()
        for _ in range(2):  # the second answer's names are known already
            await transport.send(HttpRequest("POST", "https://x.test/api"))
        return list(trail)

    lines = asyncio.run(twice())
    for line in lines:
        assert line["headers"] == {"X-RateLimit-Remaining": f"0 {MASK}", "Retry-After": "3"}
        assert line["status"] == 429 and line["body"] == {"error": "slow down"}
