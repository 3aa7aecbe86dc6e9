"""``signal-engine dlq list|replay``: the dead letters of a preset."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .. import outcome as oc
from ..language.compiler import load_preset
from ..language.model import Preset
from ..language.settings import Settings
from .common import check_state_dir, settings_for


def register(sub: Any) -> None:
    dlq = sub.add_parser("dlq", help="list or replay dead letters")
    dlq.set_defaults(func=lambda _args: (dlq.print_help(sys.stderr), 2)[1])
    dlq_sub = dlq.add_subparsers(metavar="ACTION")
    for name, helptext in (("list", "print the dead letters of a preset"),
                           ("replay", "re-send dead letters; those delivered are removed")):
        cmd = dlq_sub.add_parser(name, help=helptext)
        cmd.add_argument("preset", metavar="PRESET")
        cmd.add_argument("--settings", metavar="FILE", help="YAML mapping of setting values (replay needs credentials)")
        cmd.add_argument("--state", metavar="DIR", default=".signal-state")
        cmd.add_argument("--verbose", action="store_true")
        cmd.set_defaults(func=cmd_dlq, dlq_action=name)


def cmd_dlq(args: argparse.Namespace) -> int:
    preset = load_preset(args.preset)
    replaying = args.dlq_action == "replay"
    settings = settings_for(args, preset.settings, require=replaying)
    if replaying:
        return dlq_replay(preset, settings, args.state, args.verbose)
    return dlq_list(preset, settings, args.state)


def dlq_list(preset: Preset, settings: Settings, state: str) -> int:
    from ..runtime import Engine

    engine = Engine(preset, settings, state=state)
    entries = engine.dead_letters.entries()
    for entry in entries:
        print(json.dumps(engine.redactor.redact(entry), ensure_ascii=False))
    print(f"signal-engine: {len(entries)} dead letter(s) for {preset.name}", file=sys.stderr)
    return 0


def dlq_replay(preset: Preset, settings: Settings, state: str, verbose: bool) -> int:
    import asyncio  # not at module level: every command imports this module, and a dry run needs no event loop

    from .logs import configure_logging

    check_state_dir(state)

    async def main() -> int:
        from ..runtime import Engine

        async with Engine(preset, settings, state=state) as engine:
            configure_logging(engine.redactor, verbose)
            results = await engine.replay_dead_letters()
            left = len(engine.dead_letters.entries())
        for result in results:
            print(json.dumps(result.to_dict(), ensure_ascii=False))
        done = sum(1 for r in results if r.outcome == oc.DELIVERED)
        print(f"signal-engine: replayed {len(results)}, delivered {done}, {left} left in the dead-letter store",
              file=sys.stderr)
        return 0 if done == len(results) else 1

    return asyncio.run(main())
