"""What the compiler learnt about each JSONata expression, kept by its text, so an edit re-checks only what changed.

A preset that is not in the preset cache (the first run after an edit) is
compiled from its YAML, and each expression costs the imports of both
JSONata engines, a jsonatapy compile, and the static checks on the reference
parser's syntax tree. None of that depends on anything but the expression's
text and what it is checked against (its inputs, the secret settings, the
limits, the engine): edit one value of a preset and every other expression
gives the same answers. So those answers are kept here, beside the preset
cache and keyed the same way by the checking code and the installed JSONata
engines; an expression whose facts are all known is compiled on first use,
as a cached preset's are, and no JSONata engine is imported to load it.

The facts are marshal data in one file, rewritten (atomically) when a load
learnt something new, and bounded to the newest :data:`MAX_FACTS`.
"""

from __future__ import annotations

import marshal
from pathlib import Path
from typing import Any

from ..content_digest import sha256_hex
from . import preset_cache

FILE = "expression-facts.bin"  # not a preset entry: preset_cache's pruning leaves it alone
FORMAT = b"signal-engine expression facts 1\0"
MAX_FACTS = 4096
MISSING: Any = object()


class ExpressionFacts:
    """One load's view of the kept facts: read once, written back once if it learnt any."""

    def __init__(self, folder: Path | None, code_key: str) -> None:
        self.folder = folder
        self.code_key = code_key
        self.facts: dict[str, Any] = {}
        self.learnt = False
        if folder is None:
            return
        try:
            entry = marshal.loads((folder / FILE).read_bytes())
        except (OSError, ValueError, EOFError, TypeError):
            return
        if isinstance(entry, dict) and entry.get("code") == code_key and isinstance(entry.get("facts"), dict):
            self.facts = entry["facts"]

    @classmethod
    def for_backend(cls, backend: str | None) -> ExpressionFacts:
        """The facts for expressions checked by this code and compiled on ``backend``."""
        folder = preset_cache.cache_dir()
        if folder is None:
            return cls(None, "")
        code = FORMAT + preset_cache.checks_digest() + b"\0" + _package_files("jsonata") + b"\0" + str(backend).encode()
        return cls(folder, sha256_hex(code))

    def get(self, *key: Any) -> Any:
        """The fact kept under ``key`` (strings, numbers, None and tuples of them), or :data:`MISSING`."""
        return self.facts.get(self._name(key), MISSING) if self.folder is not None else MISSING

    def put(self, value: Any, *key: Any) -> None:
        if self.folder is None:
            return
        name = self._name(key)
        if self.facts.get(name, MISSING) != value:
            self.facts.pop(name, None)  # re-inserted last: the newest are kept
            self.facts[name] = value
            self.learnt = True

    def save(self) -> None:
        """Write the facts back if this load learnt any; a cache that cannot be written costs speed only."""
        if self.folder is None or not self.learnt:
            return
        facts = self.facts
        if len(facts) > MAX_FACTS:
            facts = dict(list(facts.items())[-MAX_FACTS:])
        try:
            blob = marshal.dumps({"code": self.code_key, "facts": facts}, 4)
        except ValueError:
            return  # a value marshal cannot hold: never expected, never fatal
        try:
            preset_cache.write_atomically(self.folder, FILE, blob)
        except OSError:
            return

    @staticmethod
    def _name(key: tuple[Any, ...]) -> str:
        # repr, not marshal: marshal's bytes for equal strings differ with whether they are interned.
        return sha256_hex(repr(key).encode("utf-8", "surrogatepass"))


def roots_key(roots: Any) -> tuple[Any, ...]:
    """An expression's inputs as plain data for a key: names in their order, each one's known fields sorted."""
    return tuple(
        (name, None if known is None else tuple(sorted(str(k) for k in known))) for name, known in roots.items()
    )


def _package_files(name: str) -> bytes:
    """An installed package's file names and sizes, found without importing it."""
    from importlib.util import find_spec

    try:
        spec = find_spec(name)
    except (ImportError, ValueError):
        return b""
    if spec is None or not spec.submodule_search_locations:
        return b""
    folder = Path(next(iter(spec.submodule_search_locations)))
    try:
        return "\0".join(f"{p.name}:{p.stat().st_size}" for p in sorted(folder.iterdir()) if p.is_file()).encode()
    except OSError:
        return b""
