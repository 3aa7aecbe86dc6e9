"""``signal-engine check``: validate presets and print every problem, located."""

from __future__ import annotations

import argparse
from typing import Any

from ..language import resources
from ..language.compiler import PresetError, load_preset
from .common import say


def register(sub: Any) -> None:
    check = sub.add_parser("check", help="validate presets (all built-in presets when none is named)")
    check.add_argument("presets", nargs="*", metavar="PRESET_OR_PATH")
    check.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    names = args.presets or resources.builtin_presets()
    failed = 0
    for name in names:
        try:
            preset = load_preset(name, strict=True)
        except PresetError as exc:
            failed += 1
            for line in exc.problems:
                say(line)
            continue
        say(f"ok: {name} ({preset.name}: {len(preset.events.track)} mapped track events, "
              f"{len(preset.actions)} action(s))")
    return 1 if failed else 0
