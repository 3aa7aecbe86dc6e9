"""``signal-engine schema``: the preset language as JSON Schema, for editors.

YAML editors that speak the YAML language server (VS Code's YAML extension,
JetBrains IDEs, Neovim with yamlls) read a modeline at the top of a preset::

    # yaml-language-server: $schema=../../schemas/preset.schema.json

and then complete keys, show each key's description and mark errors as you
type. This command prints the schema the installed engine validates with,
so a preset kept outside this repository can point at a copy of it;
``schema integrations`` prints the integrations file's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..language import resources
from .common import UsageError


def register(sub: Any) -> None:
    schema = sub.add_parser(
        "schema",
        help="print the preset language's (or the integrations file's) JSON Schema, for editors",
        description="Print the JSON Schema of the preset language, or of the integrations file (schema "
        "integrations). Save it and point a modeline at it, as the first line of the YAML file: "
        "# yaml-language-server: $schema=path/to/preset.schema.json",
    )
    schema.add_argument(
        "which",
        nargs="?",
        choices=("preset", "integrations"),
        default="preset",
        help="which schema (default: %(default)s)",
    )
    schema.add_argument("--output", "-o", metavar="FILE", help="write the schema to FILE instead of stdout")
    schema.set_defaults(func=cmd_schema)


def schema_text(which: str = "preset") -> str:
    path = resources.integrations_schema_path() if which == "integrations" else resources.preset_schema_path()
    return path.read_text(encoding="utf-8")


def cmd_schema(args: argparse.Namespace) -> int:
    text = schema_text(args.which)
    if not text.endswith("\n"):
        text += "\n"
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--output {args.output}: cannot write: {exc.strerror or exc}") from None
        return 0
    sys.stdout.write(text)
    sys.stdout.flush()
    return 0
