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


def test_the_trail_keeps_raw_values_and_its_masked_view_masks_every_string() -> None:
    import asyncio

    from multidict import CIMultiDict

    from engine.delivery.trail import TrailingTransport, start_trail
    from engine.delivery.transport import HttpResponse
    from engine.envelope import HttpRequest
    from engine.redaction import MASK, Redactor

    secret = 'tok"en-9f8e7d'  # JSON escapes the quote: the masking must find it as written in the text too
    body = {"data": {"id": 1, "attributes": {"note": f"x{secret}y", "tags": [secret]}}, secret: "key"}
    answer = HttpResponse(201, CIMultiDict({"X-RateLimit-Remaining": f"9 {secret}"}), body)

    class Answers:
        async def send(self, request: HttpRequest) -> HttpResponse:
            return answer

    redactor = Redactor([secret])
    transport = TrailingTransport(Answers(), redactor)

    async def one() -> object:
        trail = start_trail()
        await transport.send(HttpRequest("POST", f"https://x.test/{secret}/api", {"Authorization": f"Bearer {secret}"}))
        return trail

    trail = asyncio.run(one())
    (raw,) = trail.unmasked_lines()  # what the record masks with the rest of its batch
    assert raw["body"] is body and raw["url"] == f"https://x.test/{secret}/api"
    (line,) = trail.lines(redactor)
    assert line["url"] == f"https://x.test/{MASK}/api" and line["headers"] == {"X-RateLimit-Remaining": f"9 {MASK}"}
    assert line["body"] == {"data": {"id": 1, "attributes": {"note": f"x{MASK}y", "tags": [MASK]}}, MASK: "key"}
    assert secret not in json.dumps(trail.lines(redactor), ensure_ascii=False)
    assert "Authorization" not in json.dumps(line)  # request headers are not kept: the outcome holds the masked ones


def test_a_body_over_the_cap_is_masked_before_it_is_cut() -> None:
    """A cut could leave part of a secret that no later mask would find: the whole text is masked first."""
    from engine.delivery.trail import _kept_body
    from engine.redaction import MASK, Redactor

    secret = "sk-live-4c1d9e"
    redactor = Redactor([secret])
    clean = {"id": 8}
    assert _kept_body(clean, redactor) is clean
    short = {"id": 7, "echo": f"Bearer {secret}"}
    assert _kept_body(short, redactor) is short  # kept as it is: the record masks it with its batch
    # The secret straddles the cut: its text starts 3 characters before it ('{"pad": "' is 9).
    long = {"pad": "p" * (BODY_CAP - 12) + secret + "q" * 100}
    kept = _kept_body(long, redactor)
    assert isinstance(kept, str) and kept.endswith("more characters)")
    assert kept[: BODY_CAP - 3].endswith("p" * 10) and "sk-" not in kept
    assert _kept_body(f"text {secret}" + "x" * BODY_CAP, redactor).startswith(f"text {MASK}x")
    assert _kept_body(None, redactor) is None


def test_the_trail_keeps_only_rate_limit_headers() -> None:
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

    redactor = Redactor([secret])
    transport = TrailingTransport(Answers(), redactor)

    async def twice() -> list[dict]:
        trail = start_trail()
        for _ in range(2):  # the second answer's names are known already
            await transport.send(HttpRequest("POST", "https://x.test/api"))
        return trail.lines(redactor)

    lines = asyncio.run(twice())
    for line in lines:
        assert line["headers"] == {"X-RateLimit-Remaining": f"0 {MASK}", "Retry-After": "3"}
        assert line["status"] == 429 and line["body"] == {"error": "slow down"}


def test_rate_limit_headers_keep_their_order_the_last_value_and_names_not_seen_before() -> None:
    from multidict import CIMultiDict

    from engine.delivery.trail import TrailingTransport
    from engine.redaction import Redactor

    transport = TrailingTransport(None, Redactor())  # type: ignore[arg-type] - only its header names are used
    first = CIMultiDict([("Retry-After", "3"), ("Date", "x"), ("X-RateLimit-Limit", "10"), ("Retry-After", "4")])
    assert transport.rate_headers(first) == {"Retry-After": "4", "X-RateLimit-Limit": "10"}
    # Known names, and one never seen: learned from this answer, not skipped.
    second = CIMultiDict([("Date", "y"), ("X-RateLimit-Reset", "99"), ("X-RateLimit-Limit", "10")])
    assert transport.rate_headers(second) == {"X-RateLimit-Reset": "99", "X-RateLimit-Limit": "10"}
    assert transport.rate_headers({"Server": "s"}) == {}
