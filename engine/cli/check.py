"""``signal-engine check``: validate presets and print every problem, located.

``check`` is a verdict, like a linter's: exit 0 when every preset is valid,
1 when it found problems (printed on stdout, one per line), 2 when a preset
it was asked about does not exist (a usage error, on stderr).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..language import resources
from ..language.compiler import PresetError, load_preset
from .common import add_preset_path_option, say
from .report import EXIT_EVENTS_FAILED, EXIT_OK, EXIT_USAGE


def register(sub: Any) -> None:
    check = sub.add_parser(
        "check", help="validate presets (all built-in presets when none is named)",
        description="Validate presets against the preset language and compile every expression. Every problem is "
                    "printed as file:line:col: yaml.path: message. Exit status: 0 all valid, 1 problems found, "
                    "2 a named preset does not exist.")
    check.add_argument("presets", nargs="*", metavar="PRESET_OR_PATH",
                       help="built-in names (destination/preset) or paths to YAML presets")
    add_preset_path_option(check)
    check.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    names = args.presets or resources.builtin_presets()
    failed = missing = 0
    for name in names:
        try:
            preset = load_preset(name, args.preset_path, strict=True)
        except PresetError as exc:
            if not resources.find_preset(name, args.preset_path).exists():
                missing += 1
                for line in exc.problems:
                    print(f"signal-engine: {line}", file=sys.stderr)
                continue
            failed += 1
            for line in exc.problems:
                say(line)
            continue
        say(f"ok: {name} ({preset.name}: {len(preset.events.track)} mapped track events, "
            f"{len(preset.actions)} action(s))")
    if missing:
        return EXIT_USAGE
    return EXIT_EVENTS_FAILED if failed else EXIT_OK
