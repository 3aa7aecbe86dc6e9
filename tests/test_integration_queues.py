"""One queue, several integrations: each event stored once, each integration with its own position and lag.

The embedded queue (a row per integration) and Redis (a consumer group per
integration on one stream) keep the same promises: an integration's
acknowledgements never take an event from another; a slow integration holds
the stored events back (its lag) but nobody else's position; an integration
added later starts with the events after it appeared; one removed no longer
holds anything back.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from engine.state.redis import RedisState
from engine.state.redis.queue import create_group, groups
from engine.state.sqlite.queue import SqliteQueue
from redis_server import redis_server, redis_url  # noqa: F401 - fixtures


def bodies(entries: list) -> list[int]:
    return [json.loads(e.body)["n"] for e in entries]


def test_the_embedded_queue_gives_each_integration_every_event_and_keeps_a_body_until_all_are_done(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        queue = SqliteQueue(tmp_path, integrations=["outreach", "hubspot"])
        outreach, hubspot = queue.view("outreach"), queue.view("hubspot")
        await queue.append([json.dumps({"n": n}) for n in range(3)])
        assert (await queue.backlog(), await outreach.backlog(), await hubspot.backlog()) == (3, 3, 3)
        first = await outreach.read("embedded", 10, 0)
        await outreach.ack([(e.id, {}) for e in first])
        assert bodies(first) == [0, 1, 2]
        # Outreach is done; HubSpot has not read a thing, and still gets every event, bodies intact.
        assert (await queue.backlog(), await outreach.backlog(), await hubspot.backlog()) == (3, 0, 3)
        assert await outreach.read("embedded", 10, 0) == []
        taken = await hubspot.read("embedded", 2, 0)
        assert bodies(taken) == [0, 1]
        await hubspot.ack([(taken[0].id, {})])
        assert (await queue.backlog(), await hubspot.backlog()) == (2, 2)
        await queue.close()
        # A restart (kill -9: the process's leases are void): HubSpot re-reads exactly what it had not finished.
        queue = SqliteQueue(tmp_path, integrations=["outreach", "hubspot"])
        assert bodies(await queue.view("hubspot").read("embedded", 10, 0)) == [1, 2]
        assert await queue.view("outreach").read("embedded", 10, 0) == []
        await queue.close()
        # HubSpot removed from the file: its rows go, and the bodies only it needed with them.
        queue = SqliteQueue(tmp_path, integrations=["outreach"])
        assert await queue.backlog() == 0
        # Salesloft added: it starts with the events accepted from now on.
        await queue.close()
        queue = SqliteQueue(tmp_path, integrations=["outreach", "salesloft"])
        assert await queue.view("salesloft").backlog() == 0
        await queue.append([json.dumps({"n": 7})])
        assert bodies(await queue.view("salesloft").read("embedded", 10, 0)) == [7]
        assert bodies(await queue.view("outreach").read("embedded", 10, 0)) == [7]
        await queue.close()

    asyncio.run(main())


def test_a_waiting_reader_of_one_integration_is_woken_by_an_append(tmp_path: Path) -> None:
    async def main() -> None:
        queue = SqliteQueue(tmp_path, integrations=["a", "b"])
        readers = [asyncio.ensure_future(queue.view(name).read("embedded", 10, 5)) for name in ("a", "b")]
        await asyncio.sleep(0.05)
        await queue.append([json.dumps({"n": 1})])
        got = await asyncio.wait_for(asyncio.gather(*readers), 2)
        assert [bodies(entries) for entries in got] == [[1], [1]]
        await queue.close()

    asyncio.run(main())


def test_one_stream_a_group_per_integration_trimmed_to_what_the_slowest_still_needs(redis_url: str) -> None:
    async def main() -> None:
        state = RedisState(redis_url)
        client = state.async_client()
        stream = state.keys.events()
        for name in ("outreach", "hubspot"):
            assert await create_group(client, stream, name, "$")
        queues = {name: state.queue(name, stream=stream, group=name, start="$") for name in ("outreach", "hubspot")}
        await queues["outreach"].append([json.dumps({"n": n}) for n in range(4)])
        assert await client.xlen(stream) == 4  # stored once
        taken = await queues["outreach"].read("w1", 10, 0.1)
        await queues["outreach"].ack([(e.id, {"outcome": "delivered", "integration": "outreach"}) for e in taken])
        # Outreach is done; the events stay for HubSpot, whose lag is all four.
        assert await client.xlen(stream) == 4
        assert (await queues["outreach"].lag(), await queues["hubspot"].lag()) == (0, 4)
        slow = await queues["hubspot"].read("w1", 3, 0.1)
        await queues["hubspot"].ack([(slow[1].id, {}), (slow[2].id, {})])
        # Its oldest entry is still pending: nothing can go yet.
        assert await client.xlen(stream) == 4 and await queues["hubspot"].lag() == 2
        await queues["hubspot"].ack([(slow[0].id, {})])
        assert await client.xlen(stream) == 1  # only the one HubSpot has not read
        rest = await queues["hubspot"].read("w1", 10, 0.1)
        assert bodies(rest) == [3]
        await queues["hubspot"].ack([(rest[0].id, {})])
        assert await client.xlen(stream) == 0
        # Each integration's outcomes in a stream of its own.
        assert await client.xlen(state.keys.outcomes("outreach")) == 4
        assert await client.xlen(state.keys.outcomes("hubspot")) == 4
        # An integration added now starts with the next event, not the history.
        await queues["outreach"].append([json.dumps({"n": 10})])
        late = state.queue("salesloft", stream=stream, group="salesloft", start="$")
        assert await late.read("w1", 10, 0.1) == []
        await queues["outreach"].append([json.dumps({"n": 11})])
        assert bodies(await late.read("w1", 10, 0.1)) == [11]
        assert sorted(await groups(client, stream)) == ["hubspot", "outreach", "salesloft"]
        for queue in [*queues.values(), late]:
            await queue.close()
        await client.aclose()
        state.close()

    asyncio.run(main())


def test_a_failure_and_a_delivery_count_belong_to_one_integration(tmp_path: Path) -> None:
    """A poison entry for one integration (its worker keeps stopping on it) is nobody else's problem."""

    async def main() -> None:
        queue = SqliteQueue(tmp_path, integrations=["outreach", "hubspot"])
        outreach, hubspot = queue.view("outreach"), queue.view("hubspot")
        await queue.append([json.dumps({"n": 1})])
        held = await hubspot.read("embedded", 10, 0)
        await hubspot.fail("embedded", [e.id for e in held], "RecursionError: the mapping never ends")
        await queue.close()
        queue = SqliteQueue(tmp_path, integrations=["outreach", "hubspot"])  # the restart after the crash
        outreach, hubspot = queue.view("outreach"), queue.view("hubspot")
        again = await hubspot.read("embedded", 10, 0)
        assert (again[0].deliveries, again[0].failure) == (2, "RecursionError: the mapping never ends")
        fresh = await outreach.read("embedded", 10, 0)
        assert (fresh[0].deliveries, fresh[0].failure) == (1, None)
        # Given back unworked (the worker was told to stop): the count is not spent.
        await hubspot.release("embedded", again)
        assert (await hubspot.read("embedded", 10, 0))[0].deliveries == 2
        assert await outreach.writable() and await hubspot.writable()
        await queue.close()

    asyncio.run(main())


def test_the_intake_gives_each_named_integration_a_group_and_removes_the_group_of_one_removed(redis_url: str) -> None:
    from engine.service.serving import _align_groups

    async def main() -> None:
        state = RedisState(redis_url)
        client = state.async_client()
        stream = state.keys.events()
        await _align_groups(client, stream, ["outreach", "hubspot"])
        writer = state.queue("outreach", stream=stream, group="outreach", start="$")
        await writer.append([json.dumps({"n": n}) for n in range(3)])
        # HubSpot removed from the file: its group goes, so it holds nothing back; Outreach keeps its position.
        await _align_groups(client, stream, ["outreach"])
        assert await groups(client, stream) == ["outreach"]
        assert bodies(await writer.read("w", 10, 0.1)) == [0, 1, 2]
        # Added again later: it starts with the events from then on.
        await _align_groups(client, stream, ["outreach", "hubspot"])
        await writer.append([json.dumps({"n": 9})])
        hubspot = state.queue("hubspot", stream=stream, group="hubspot", start="$")
        assert bodies(await hubspot.read("w", 10, 0.1)) == [9]
        await writer.close()
        await hubspot.close()
        await client.aclose()
        state.close()

    asyncio.run(main())
