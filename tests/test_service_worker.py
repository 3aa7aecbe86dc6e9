"""The worker loop on the embedded queue, in one process: the order of an outcome line and its acknowledgement.

A kill -9 can land between the two. The line must already be out by then:
the restart re-reads an unacknowledged entry and prints it again, whereas an
entry acknowledged before its line was printed would never get one.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from engine.runtime import Engine
from engine.service.worker import Worker
from engine.state.sqlite.queue import SqliteQueue
from service_helpers import identify
from test_delivery_sandbox import unique_credentials


class HeldAcks(SqliteQueue):
    """Acknowledgements wait until released: the moment a kill would land in."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.acking = asyncio.Event()
        self.release = asyncio.Event()

    async def ack(self, done: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        self.acking.set()
        await self.release.wait()
        await super().ack(done)


def test_an_outcome_line_is_printed_before_its_entry_is_acknowledged(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[str], int, int]:
        queue = HeldAcks(tmp_path / "queue")
        await queue.append([json.dumps(identify(0, "w"))])
        printed: list[dict[str, Any]] = []
        settings = {**unique_credentials(), "base_url": "http://127.0.0.1:9"}  # an identify sends nothing
        async with Engine.from_preset("outreach/lead-capture", settings, state=tmp_path / "state") as engine:
            worker = Worker(engine, queue, "w1", emit=printed.append, read_block_seconds=0.01)
            stop = asyncio.Event()
            task = asyncio.ensure_future(worker.run(stop))
            await asyncio.wait_for(queue.acking.wait(), 10)
            seen_while_acking = [r["messageId"] for r in printed]
            still_queued = len(queue)
            queue.release.set()
            stop.set()
            await asyncio.wait_for(task, 10)
        left = len(queue)
        await queue.close()
        return seen_while_acking, still_queued, left

    seen, queued, left = asyncio.run(scenario())
    assert seen == ["w-id-0"]  # the line is out while the acknowledgement is still pending
    assert (queued, left) == (1, 0)
