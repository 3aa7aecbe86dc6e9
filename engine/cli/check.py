"""``signal-engine check``: validate presets and print every problem, located.

``check`` is a verdict, like a linter's: exit 0 when every preset is valid,
1 when it found problems (printed on stdout, one per line), 2 when a preset
it was asked about does not exist (a usage error, on stderr).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..compile.compiler import PresetError, load_preset
from ..language import resources
from .common import add_preset_path_option, say
from .report import EXIT_EVENTS_FAILED, EXIT_OK, EXIT_USAGE


def register(sub: Any) -> None:
    check = sub.add_parser(
        "check",
        help="validate presets (all built-in presets when none is named)",
        description="Validate presets against the preset language and compile every expression. Every problem is "
        "printed as file:line:col: yaml.path: message. Exit status: 0 all valid, 1 problems found, "
        "2 a named preset does not exist.",
    )
    check.add_argument(
        "presets",
        nargs="*",
        metavar="PRESET_OR_PATH",
        help="built-in names (destination/preset) or paths to YAML presets",
    )
    check.add_argument(
        "--config",
        metavar="FILE",
        help="check an integrations file instead: the file, every preset it names, and each "
        "integration's settings (missing, unknown, ${VAR} unset); literal secrets are warned about",
    )
    add_preset_path_option(check)
    check.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    if args.config:
        return _check_config(args)
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
        say(
            f"ok: {name} ({preset.name}: {len(preset.events.track)} mapped track events, "
            f"{len(preset.actions)} action(s))"
        )
    if missing:
        return EXIT_USAGE
    return EXIT_EVENTS_FAILED if failed else EXIT_OK


def _check_config(args: argparse.Namespace) -> int:
    """Every problem of the file on stdout, one located line each; warnings on stderr."""
    import os

    from ..service.integrations import check_integrations, load_integrations
    from .common import UsageError

    if args.presets:
        raise UsageError("check --config FILE takes no presets: the file names them")
    if not os.path.isfile(args.config):
        raise UsageError(f"--config {args.config}: no such file")
    problems, warnings = check_integrations(args.config, os.environ, preset_path=args.preset_path)
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    for line in problems:
        say(line)
    if problems:
        return EXIT_EVENTS_FAILED
    for integration in load_integrations(args.config, os.environ, preset_path=args.preset_path).integrations:
        state = "" if integration.enabled else ", disabled"
        say(f"ok: {integration.name} ({integration.preset.name}{state})")
    return EXIT_OK
