"""The delivering half of the CLI: ``run`` without ``--dry-run``, and ``dlq``.

Kept apart from ``cli`` so that checking presets and dry runs never import
the network machinery.
"""

from __future__ import annotations

import asyncio
import argparse
import json
import logging
import sys
from typing import Any, AsyncIterator, Callable, Iterable

from . import outcome as oc
from .outcome import Outcome, dropped
from .preset import Preset
from .redaction import Redactor
from .runtime import Engine
from .settings import Settings


class _RedactingFormatter(logging.Formatter):
    def __init__(self, redactor: Redactor) -> None:
        super().__init__("signal-engine: %(message)s")
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        return self.redactor.redact(super().format(record))


def _configure_logging(engine: Engine, verbose: bool) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RedactingFormatter(engine.redactor))
    root = logging.getLogger("signal_engine")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    root.propagate = False
    return handler


def run_delivery(preset: Preset, settings: Settings, args: argparse.Namespace,
                 items: Iterable[tuple[int, Any, str | None]], emit: Callable[[Outcome], None]) -> int:
    async def main() -> int:
        counts: dict[str, int] = {}
        async with Engine(preset, settings, state=args.state) as engine:
            _configure_logging(engine, args.verbose)

            async def stream() -> AsyncIterator[tuple[int, Any]]:
                for index, event, problem in items:
                    yield index, (dropped(index, None, oc.INVALID_EVENT, problem) if problem else event)
                    await asyncio.sleep(0)

            async for result in engine.process_indexed(stream()):
                counts[result.outcome] = counts.get(result.outcome, 0) + 1
                emit(result)
            mints = engine.mints
        summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no events"
        print(f"signal-engine: {summary}; {mints} access token(s) minted", file=sys.stderr)
        return 1 if counts.get(oc.FAILED) or counts.get(oc.DEAD_LETTERED) else 0

    return asyncio.run(main())


def dlq_list(preset: Preset, settings: Settings, state: str) -> int:
    engine = Engine(preset, settings, state=state)
    entries = engine.dead_letters.entries()
    for entry in entries:
        print(json.dumps(engine.redactor.redact(entry), ensure_ascii=False))
    print(f"signal-engine: {len(entries)} dead letter(s) for {preset.name}", file=sys.stderr)
    return 0


def dlq_replay(preset: Preset, settings: Settings, state: str, verbose: bool) -> int:
    async def main() -> int:
        async with Engine(preset, settings, state=state) as engine:
            _configure_logging(engine, verbose)
            results = await engine.replay_dead_letters()
            left = len(engine.dead_letters.entries())
        for result in results:
            print(json.dumps(result.to_dict(), ensure_ascii=False))
        done = sum(1 for r in results if r.outcome == oc.DELIVERED)
        print(f"signal-engine: replayed {len(results)}, delivered {done}, {left} left in the dead-letter store",
              file=sys.stderr)
        return 0 if done == len(results) else 1

    return asyncio.run(main())
