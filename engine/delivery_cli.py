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
from pathlib import Path
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
    check_state_dir(args.state)

    async def main() -> int:
        counts: dict[str, int] = {}
        async with Engine(preset, settings, state=args.state) as engine:
            _configure_logging(engine, args.verbose)

            async def stream() -> AsyncIterator[tuple[int, Any]]:
                # Lines are read in a worker thread: a live pipe (--events -)
                # must not stall deliveries already under way.
                loop = asyncio.get_running_loop()
                source = iter(items)
                while (item := await loop.run_in_executor(None, next, source, None)) is not None:
                    index, event, problem = item
                    yield index, (dropped(index, None, oc.INVALID_EVENT, problem) if problem else event)

            async for result in engine.process_indexed(stream()):
                counts[result.outcome] = counts.get(result.outcome, 0) + 1
                emit(result)
            mints = engine.mints
        summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no events"
        print(f"signal-engine: {summary}; {mints} access token(s) minted", file=sys.stderr)
        return 1 if counts.get(oc.FAILED) or counts.get(oc.DEAD_LETTERED) else 0

    return asyncio.run(main())


def check_state_dir(state: str) -> None:
    """Fail before the first event, not after, when the state directory is unusable."""
    from .cli import UsageError

    path = Path(state)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--state {state}: not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        probe = path / ".write-test"
        probe.write_text("", encoding="utf-8")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"--state {state}: cannot be used as the state directory ({exc.strerror or type(exc).__name__})") from None


def dlq_list(preset: Preset, settings: Settings, state: str) -> int:
    engine = Engine(preset, settings, state=state)
    entries = engine.dead_letters.entries()
    for entry in entries:
        print(json.dumps(engine.redactor.redact(entry), ensure_ascii=False))
    print(f"signal-engine: {len(entries)} dead letter(s) for {preset.name}", file=sys.stderr)
    return 0


def dlq_replay(preset: Preset, settings: Settings, state: str, verbose: bool) -> int:
    check_state_dir(state)

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
