"""``signal-engine golden``: run golden cases and show a diff for each mismatch."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..language.settings import SettingsError
from .common import UsageError, add_preset_path_option, say
from .report import EXIT_EVENTS_FAILED, EXIT_OK


def register(sub: Any) -> None:
    golden = sub.add_parser(
        "golden",
        help="run golden cases and show a diff for each mismatch",
        description="Run the golden cases under PATH (golden/<destination>/<preset>/<case>.json) and compare each "
        "with its <case>.expected.json. Exit status: 0 every case passed, 1 a case failed or could not "
        "run, 2 no such folder.",
    )
    golden.add_argument(
        "path",
        nargs="?",
        default="golden",
        metavar="PATH",
        help="a golden/ tree, one preset's folder or one case file (default: %(default)s)",
    )
    golden.add_argument(
        "--preset",
        metavar="PRESET",
        help="run the cases against this preset (a file or a name); without it the folder under "
        "golden/ names the preset, or a presets/ folder beside golden/ holds it",
    )
    golden.add_argument(
        "--update",
        action="store_true",
        help="rewrite the expected files with the actual output; read the diff before committing. "
        "A case whose output has a failed outcome its expected file does not already pin is "
        "refused (exit 1) unless --accept-failed is given too",
    )
    golden.add_argument(
        "--accept-failed",
        action="store_true",
        help="with --update: pin failed outcomes as the contract too (they usually mean a broken preset or case)",
    )
    add_preset_path_option(golden)
    golden.set_defaults(func=cmd_golden)


def cmd_golden(args: argparse.Namespace) -> int:
    from .. import golden

    root = Path(args.path)
    if not root.exists():
        raise UsageError(f"{args.path}: no such golden folder or case")
    try:
        cases = golden.discover(root, args.preset)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    presets: dict[str, Any] = {}
    failures = updated = 0
    for case in cases:
        try:
            result = golden.run_case(case, presets, args.preset_path)
        except (ValueError, OSError, SettingsError) as exc:
            failures += 1
            say(f"ERROR {case.name}: {(str(exc).splitlines() or [type(exc).__name__])[0]}")
            continue
        if args.update:
            failed = golden.new_failures(result) if not args.accept_failed else []
            if failed:
                failures += 1
                first = failed[0]
                say(
                    f"REFUSED {case.name}: event {first.get('index')} came out failed "
                    f"({first.get('cause')}: {first.get('detail')}), which its expected file does not pin"
                    + (f" (and {len(failed) - 1} more)" if len(failed) > 1 else "")
                    + "; fix the preset or the case, or run again with --update --accept-failed if that is the "
                    "contract"
                )
                continue
            if golden.update(result):
                updated += 1
                say(f"updated {case.name}")
            continue
        if result.passed:
            say(f"ok    {case.name}")
        else:
            failures += 1
            say(f"FAIL  {case.name}" + ("  (no expected file; run with --update)" if result.expected is None else ""))
            say(result.diff())
    summary = f"{len(cases)} golden case(s): "
    summary += (
        (f"{updated} updated" + (f", {failures} refused or failed" if failures else ""))
        if args.update
        else f"{len(cases) - failures} passed, {failures} failed"
    )
    say(summary)
    return EXIT_EVENTS_FAILED if failures else EXIT_OK
