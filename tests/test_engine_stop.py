"""``Engine.stop``: a stream ended early still gives every event it took one outcome, and records it.

A transport that holds each request until the test lets it go stands in for
the network, so "on the wire", "waiting for a slot" and "waiting for a
token" are exact states, not timing guesses. What the CLI does with signals
and a closed stdout, with real processes, is in ``test_shutdown_cli.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from engine import outcome as oc
from engine.compile.compiler import load_preset
from engine.delivery.transport import HttpResponse, TransportError
from engine.envelope import HttpRequest
from engine.runtime import Engine
from engine.state.dead_letters import MemoryDeadLetters
from engine.state.journal import MemoryJournal, event_key
from engine.state.token_store import MemoryTokenStore

PRESET = load_preset("outreach/lead-capture")
BASE = "https://api.outreach.test"
SETTINGS = {"client_id": "cid", "client_secret": "cs-secret", "refresh_token": "rt-first", "base_url": BASE}


def lead(i: int) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Demo Requested",
        "userId": f"u{i}",
        "messageId": f"m{i}",
        "traits": {"email": f"lead{i}@acme.com"},
        "context": {"consent": {"canonical": {"marketing": True}}},
    }


class HeldTransport:
    """Answers token requests at once (unless ``hold_tokens``) and holds every API request until released."""

    def __init__(self, *, hold_tokens: bool = False) -> None:
        self.hold_tokens = hold_tokens
        self.api: list[HttpRequest] = []
        self.tokens = 0
        self.cancelled = 0
        self._gates: list[asyncio.Future[HttpResponse]] = []
        self.changed = asyncio.Event()

    async def send(self, request: HttpRequest) -> HttpResponse:
        is_token = request.url.endswith("/oauth/token")
        if is_token:
            self.tokens += 1
        else:
            self.api.append(request)
        self.changed.set()
        if is_token and not self.hold_tokens:
            return self._token_answer()
        gate: asyncio.Future[HttpResponse] = asyncio.get_running_loop().create_future()
        self._gates.append(gate)
        try:
            return await gate
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    def _token_answer(self) -> HttpResponse:
        self.tokens_answered = getattr(self, "tokens_answered", 0) + 1
        return HttpResponse(
            200, {}, {"access_token": f"at-{self.tokens}", "refresh_token": f"rt-{self.tokens}", "expires_in": 7200}
        )

    def release(self, count: int | None = None, *, token: bool = False) -> int:
        """Answer the held requests (a created prospect, or a token); how many were answered."""
        waiting = [g for g in self._gates if not g.done()]
        for gate in waiting[:count]:
            gate.set_result(
                self._token_answer()
                if token
                else HttpResponse(201, {}, {"data": {"type": "prospect", "id": len(self.api)}})
            )
        return len(waiting[:count])

    def held(self) -> int:
        return sum(1 for g in self._gates if not g.done())

    async def until(self, condition: Any) -> None:
        for _ in range(1000):
            if condition():
                return
            await asyncio.sleep(0.001)
        raise AssertionError("condition never held")


def run(scenario: Any) -> None:
    """Run a scenario with a ceiling, so a stop that never ends fails the test instead of hanging it."""
    asyncio.run(asyncio.wait_for(scenario(), 20))


def engine(transport: HeldTransport, *, concurrency: int = 2, tokens: MemoryTokenStore | None = None) -> Engine:
    return Engine.from_preset(
        PRESET,
        SETTINGS,
        transport=transport,
        concurrency=concurrency,
        dead_letters=MemoryDeadLetters(),
        journal=MemoryJournal(86400),
        token_store=tokens or MemoryTokenStore(),
    )


async def batches(
    *groups: list[dict[str, Any]], then_wait: asyncio.Event | None = None, closed: list[bool] | None = None
) -> AsyncIterator[list[tuple[int, Any]]]:
    index = 0
    try:
        for group in groups:
            yield [(index + i, event) for i, event in enumerate(group)]
            index += len(group)
        if then_wait is not None:
            await then_wait.wait()  # a live pipe with nothing more to say yet
    finally:
        if closed is not None:
            closed.append(True)


def test_stop_dead_letters_what_was_not_sent_and_lets_the_wire_finish() -> None:
    async def scenario() -> None:
        transport = HeldTransport()
        closed: list[bool] = []
        async with engine(transport, concurrency=2) as eng:
            stream = eng.process_batches(batches([lead(i) for i in range(6)], then_wait=asyncio.Event(), closed=closed))
            collected: list[Any] = []
            consumer = asyncio.ensure_future(_collect(stream, collected))
            await transport.until(lambda: transport.held() == 2)  # two on the wire, four waiting for a slot
            assert eng.in_flight() == 2
            eng.stop(grace=30, reason="SIGTERM")
            await asyncio.sleep(0)
            assert transport.release() == 2  # the wire finishes within the grace period
            await asyncio.wait_for(consumer, 5)
            assert [o.index for o in collected] == list(range(6))  # one outcome each, in input order
            assert [(o.outcome, o.cause) for o in collected] == [(oc.DELIVERED, None)] * 2 + [
                (oc.DEAD_LETTERED, oc.NOT_SENT)
            ] * 4
            assert len(transport.api) == 2  # nothing was sent after the stop
            assert closed == [True]  # the source was closed, not left waiting on its input
            assert all(o.attempts == 0 and "SIGTERM" in (o.detail or "") and o.request for o in collected[2:])
            letters = eng.dead_letters.entries(PRESET.name)
            assert sorted(e["messageId"] for e in letters) == ["m2", "m3", "m4", "m5"]
            assert {e["cause"] for e in letters} == {oc.NOT_SENT}
            assert all(e["request"]["body"]["data"]["attributes"]["emails"] for e in letters)
            delivered = [i for i in range(6) if eng.journal.delivered_at(event_key(lead(i))) is not None]
            assert delivered == [0, 1]  # each delivered event is in the journal before its outcome is out

    run(scenario)


async def _collect(stream: AsyncIterator[Any], into: list[Any]) -> None:
    async for outcome in stream:
        into.append(outcome)


def test_what_is_still_on_the_wire_when_the_grace_runs_out_is_dead_lettered_as_interrupted() -> None:
    async def scenario() -> None:
        transport = HeldTransport()
        async with engine(transport, concurrency=3) as eng:
            collected: list[Any] = []
            consumer = asyncio.ensure_future(
                _collect(eng.process_batches(batches([lead(i) for i in range(3)])), collected)
            )
            await transport.until(lambda: transport.held() == 3)
            eng.stop(grace=0.05, reason="SIGINT")
            transport.release(1)  # one answer arrives in time; two never do
            await asyncio.wait_for(consumer, 5)
            assert [(o.outcome, o.cause, o.attempts) for o in collected] == [
                (oc.DELIVERED, None, 1),
                (oc.DEAD_LETTERED, oc.INTERRUPTED, 1),
                (oc.DEAD_LETTERED, oc.INTERRUPTED, 1),
            ]
            assert "may have it" in (collected[1].detail or "")
            assert transport.cancelled == 2  # the requests were cut off, not left running
            assert {e["cause"] for e in eng.dead_letters.entries(PRESET.name)} == {oc.INTERRUPTED}

    run(scenario)


def test_stopping_again_cuts_the_grace_short() -> None:
    async def scenario() -> None:
        transport = HeldTransport()
        async with engine(transport, concurrency=1) as eng:
            collected: list[Any] = []
            consumer = asyncio.ensure_future(_collect(eng.process_batches(batches([lead(0)])), collected))
            await transport.until(lambda: transport.held() == 1)
            eng.stop(grace=3600, reason="SIGTERM")
            await asyncio.sleep(0.02)
            assert not consumer.done()  # waiting within the grace period
            eng.stop(grace=0, reason="SIGTERM")
            await asyncio.wait_for(consumer, 5)
            assert [(o.outcome, o.cause) for o in collected] == [(oc.DEAD_LETTERED, oc.INTERRUPTED)]

    run(scenario)


def test_a_batch_handed_over_as_the_stop_comes_still_gets_its_outcomes() -> None:
    async def scenario() -> None:
        transport = HeldTransport()
        release_second = asyncio.Event()

        async def source() -> AsyncIterator[list[tuple[int, Any]]]:
            yield [(0, lead(0))]
            await release_second.wait()
            yield [(1, lead(1)), (2, {"type": "page"})]

        async with engine(transport) as eng:
            collected: list[Any] = []
            consumer = asyncio.ensure_future(_collect(eng.process_batches(source()), collected))
            await transport.until(lambda: transport.held() == 1)
            release_second.set()  # the second batch is ready, but not yet taken...
            eng.stop(grace=30, reason="SIGTERM")  # ...when the stop comes
            transport.release()
            await asyncio.wait_for(consumer, 5)
            assert next((o.index, o.outcome) for o in collected) == (0, oc.DELIVERED)
            # Whether or not the loop took the second batch before it saw the stop, nothing is half-read:
            assert [o.index for o in collected] in ([0], [0, 1, 2])
            if len(collected) == 3:
                assert (collected[1].cause, collected[2].reason) == (oc.NOT_SENT, oc.EVENT_NOT_MAPPED)

    run(scenario)


def test_a_host_cancelling_an_event_is_not_turned_into_an_outcome() -> None:
    async def scenario() -> None:
        transport = HeldTransport()
        async with engine(transport) as eng:
            task = asyncio.ensure_future(eng.process(lead(0)))
            await transport.until(lambda: transport.held() == 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert eng.dead_letters.entries() == []

    run(scenario)


def test_process_after_stop_returns_a_not_sent_dead_letter_at_once() -> None:
    async def scenario() -> None:
        transport = HeldTransport()
        async with engine(transport) as eng:
            eng.stop(grace=30, reason="shutdown")
            outcome = await eng.process(lead(0))
            assert (outcome.outcome, outcome.cause) == (oc.DEAD_LETTERED, oc.NOT_SENT)
            assert transport.api == [] and transport.tokens == 0
            assert [e["messageId"] for e in eng.dead_letters.entries()] == ["m0"]

    run(scenario)


def test_a_replay_that_is_stopped_leaves_its_unsent_letters_as_they_were() -> None:
    async def scenario() -> None:
        transport = HeldTransport()
        letters = MemoryDeadLetters()
        eng = Engine.from_preset(
            PRESET,
            SETTINGS,
            transport=transport,
            concurrency=1,
            dead_letters=letters,
            journal=MemoryJournal(86400),
            token_store=MemoryTokenStore(),
        )
        async with eng:
            eng.stop(grace=0, reason="first run")
            for i in range(3):
                await eng.process(lead(i))
        before = {e["id"]: e for e in letters.entries()}
        assert len(before) == 3
        transport = HeldTransport()
        eng = Engine.from_preset(
            PRESET,
            SETTINGS,
            transport=transport,
            concurrency=1,
            dead_letters=letters,
            journal=MemoryJournal(86400),
            token_store=MemoryTokenStore(),
        )
        async with eng:
            replay = asyncio.ensure_future(eng.replay_dead_letters())
            await transport.until(lambda: transport.held() == 1)
            eng.stop(grace=30, reason="SIGTERM")
            transport.release()
            results = await asyncio.wait_for(replay, 5)
        assert sorted((r.outcome, r.cause) for r in results) == [
            (oc.DEAD_LETTERED, oc.NOT_SENT),
            (oc.DEAD_LETTERED, oc.NOT_SENT),
            (oc.DELIVERED, None),
        ]
        after = {e["id"]: e for e in letters.entries()}
        assert len(after) == 2 and all(after[i] == before[i] for i in after)  # untouched, not rewritten

    run(scenario)


def test_closing_waits_for_a_token_request_on_the_wire_and_keeps_its_rotated_token() -> None:
    async def scenario() -> None:
        transport = HeldTransport(hold_tokens=True)
        tokens = MemoryTokenStore()
        eng = engine(transport, tokens=tokens)
        await eng.start()
        task = asyncio.ensure_future(eng.process(lead(0)))
        await transport.until(lambda: transport.held() == 1 and transport.tokens == 1)
        eng.stop(grace=0, reason="SIGTERM")  # the event waits for its token: it was not sent
        outcome = await asyncio.wait_for(task, 5)
        assert (outcome.outcome, outcome.cause) == (oc.DEAD_LETTERED, oc.NOT_SENT)
        closing = asyncio.ensure_future(eng.close())
        await asyncio.sleep(0.05)
        assert not closing.done()  # the refresh token is spent upstream: its answer must be saved
        transport.release(token=True)
        await asyncio.wait_for(closing, 5)
        saved = tokens.load("rt-first")
        assert saved is not None and saved.refresh_token == "rt-1"
        assert transport.tokens == 1 and transport.api == []

    run(scenario)


def test_closing_drops_a_mint_that_only_waits_to_try_again() -> None:
    async def scenario() -> None:
        class Failing(HeldTransport):
            async def send(self, request: HttpRequest) -> HttpResponse:
                if request.url.endswith("/oauth/token"):
                    self.tokens += 1
                    raise TransportError("connection", "refused")
                return await super().send(request)

        transport = Failing()
        sleeps: list[float] = []
        forever = asyncio.Event()

        async def sleep(delay: float) -> None:
            sleeps.append(delay)
            await forever.wait()  # a backoff that has not run out

        eng = Engine.from_preset(
            PRESET,
            SETTINGS,
            transport=transport,
            dead_letters=MemoryDeadLetters(),
            journal=MemoryJournal(86400),
            token_store=MemoryTokenStore(),
            sleep=sleep,
        )
        await eng.start()
        task = asyncio.ensure_future(eng.process(lead(0)))
        await transport.until(lambda: bool(sleeps))  # the first token request failed; the mint waits
        eng.stop(grace=0, reason="SIGTERM")
        assert (await asyncio.wait_for(task, 5)).cause == oc.NOT_SENT
        await asyncio.wait_for(eng.close(), 5)
        assert transport.tokens == 1  # no new token request after the stop

    run(scenario)


def test_a_rerun_that_delivers_a_not_sent_event_removes_its_letter() -> None:
    async def scenario() -> None:
        letters, journal = MemoryDeadLetters(), MemoryJournal(86400)

        def fresh(transport: HeldTransport) -> Engine:
            return Engine.from_preset(
                PRESET,
                SETTINGS,
                transport=transport,
                concurrency=2,
                dead_letters=letters,
                journal=journal,
                token_store=MemoryTokenStore(),
            )

        async with fresh(HeldTransport()) as first:
            first.stop(grace=0, reason="SIGTERM")
            for i in range(3):
                await first.process(lead(i))
        assert sorted(e["messageId"] for e in letters.entries()) == ["m0", "m1", "m2"]
        transport = HeldTransport()
        async with fresh(transport) as rerun:
            task = asyncio.ensure_future(rerun.process(lead(1)))
            await transport.until(lambda: transport.held() == 1)
            transport.release()
            assert (await task).outcome == oc.DELIVERED
        # Delivered or dead-lettered, never both: the rerun's delivery took its letter away.
        assert sorted(e["messageId"] for e in letters.entries()) == ["m0", "m2"]

    run(scenario)
