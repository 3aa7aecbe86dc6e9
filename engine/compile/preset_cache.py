"""A disk cache of presets that passed validation, so that a start does not validate them again.

Reading a preset with line numbers (ruamel.yaml) and validating it against
the preset language (jsonschema) costs more than everything else a dry run
does before its first event. Neither can change its verdict while the
preset file and the preset schema are the same bytes, so the plain data of
a preset that loaded without a problem is kept, keyed by a digest of both.
The compiler still runs its own checks and compiles every expression on a
hit; only if one of those finds a problem is the YAML parsed, to say where.

The digests of the output schemas the preset names are kept too: a schema
whose bytes are unchanged was already checked against its meta-schema, so
its validator can wait until the first document needs it.

The cache lives in ``$SIGNAL_ENGINE_CACHE_DIR`` (default
``$XDG_CACHE_HOME/signal-engine`` or ``~/.cache/signal-engine``); an empty
value turns it off. A cache that cannot be read or written is ignored.
"""

from __future__ import annotations

import marshal
import os
from pathlib import Path
from typing import Any, NamedTuple

from ..content_digest import sha256_hex
from ..language import resources

CACHE_ENV = "SIGNAL_ENGINE_CACHE_DIR"
FORMAT = b"signal-engine preset cache 2\0"
MAX_ENTRIES = 256
# yaml_source.MAX_YAML_BYTES (a test holds them equal), not imported: a start that hits the cache loads no YAML code.
MAX_PRESET_BYTES = 1 << 20
# Entries are marshal data (plain dicts, lists, strings and numbers): read back faster than JSON, with no
# import at all (orjson's costs several milliseconds at every start).
SUFFIX = ".marshal"


class Source(NamedTuple):
    """A preset file's bytes, read once, and the cache key they give."""

    path: Path
    text: str | None  # None when not UTF-8: the YAML loader then says so
    key: str


class CachedDocument:
    """Stands in for a parsed YAML document; parses the file only when something must be located.

    A plain class, as ``Source`` is a named tuple: a dataclass costs about half a millisecond of every start.
    """

    __slots__ = ("_parsed", "path", "plain", "plans", "schemas", "text")

    def __init__(
        self,
        path: str,
        text: str,
        plain: Any,
        schemas: dict[str, str] | None = None,  # output schema name -> digest
        plans: dict[str, Any] | None = None,  # expression text -> its fast-path plan
    ) -> None:
        self.path = path
        self.text = text
        self.plain = plain
        self.schemas = schemas if schemas is not None else {}
        self.plans = plans if plans is not None else {}
        self._parsed: Any = None

    def data(self) -> Any:
        return self.plain

    def locate(self, path: Any, *, key: bool = False) -> Any:
        return self._yaml().locate(path, key=key)

    def locate_in_scalar(self, path: Any, offset: int) -> Any:
        return self._yaml().locate_in_scalar(path, offset)

    def _yaml(self) -> Any:
        if self._parsed is None:
            from ..language.yaml_source import load_yaml

            self._parsed = load_yaml(self.path, self.text)
        return self._parsed


def cache_dir() -> Path | None:
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return Path(value) / "presets" if value.strip() else None
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    try:
        root = Path(base) if base else Path.home() / ".cache"
    except (RuntimeError, KeyError):  # no home directory
        return None
    return root / "signal-engine" / "presets" if root.is_absolute() else None


def digest(data: bytes) -> str:
    return sha256_hex(data)


def read(path: Path) -> Source | None:
    """The preset's bytes and key; None if the file cannot be read or is too large (the loader reports why)."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_PRESET_BYTES + 1)  # a file over the size limit is not read whole
        language = resources.preset_schema_path().read_bytes()
    except OSError:
        return None
    if len(raw) > MAX_PRESET_BYTES:
        return None
    try:
        # As Path.read_text does: universal newlines, so locations match a fresh read.
        text: str | None = raw.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError:
        text = None
    key = sha256_hex(FORMAT + digest(language).encode() + b"\0" + _checks_digest() + b"\0" + raw)
    return Source(path, text, key)


def checks_digest() -> bytes:
    """The digest of the code that checks presets (see :func:`_checks_digest`)."""
    return _checks_digest()


def _checks_digest() -> bytes:
    """The code that decides whether a preset is sound: a new engine version, or another jsonatapy
    (which a cached preset's expressions are compiled by only when first used), re-checks cached presets."""
    here = Path(__file__).resolve().parent
    language = here.parent / "language"
    try:
        code = b"".join(
            path.read_bytes()
            for path in (
                here / "compiler.py",
                here / "expression_facts.py",
                language / "expression_check.py",
                language / "expressions.py",
                language / "template_fast_path.py",
                language / "predicate_fast_path.py",
            )
        )
        return digest(code + _jsonatapy_files()).encode()
    except OSError:
        return b""


def _jsonatapy_files() -> bytes:
    """The installed jsonatapy's file names and sizes, found without importing it (its import costs ~9 ms)."""
    from importlib.util import find_spec

    spec = find_spec("jsonatapy")
    if spec is None or not spec.submodule_search_locations:
        return b""
    folder = Path(next(iter(spec.submodule_search_locations)))
    return "\0".join(f"{p.name}:{p.stat().st_size}" for p in sorted(folder.iterdir()) if p.is_file()).encode()


def lookup(source: Source) -> CachedDocument | None:
    """The validated preset for these bytes, if an earlier load left it here."""
    folder = cache_dir()
    if folder is None or source.text is None:
        return None
    try:
        entry = marshal.loads((folder / f"{source.key}{SUFFIX}").read_bytes())
    except (OSError, ValueError, EOFError, TypeError):
        return None
    if (
        not isinstance(entry, dict)
        or not isinstance(entry.get("data"), dict)
        or not isinstance(entry.get("schemas"), dict)
        or not isinstance(entry.get("plans"), dict)
    ):
        return None
    return CachedDocument(str(source.path), source.text, entry["data"], dict(entry["schemas"]), dict(entry["plans"]))


def store(source: Source, data: Any, schemas: dict[str, str], plans: dict[str, Any] | None = None) -> None:
    """Keep a preset that loaded without a problem; silently skip what does not come back equal."""
    folder = cache_dir()
    if folder is None or source.text is None:
        return
    try:
        entry = {"data": data, "schemas": schemas, "plans": {k: v for k, v in (plans or {}).items() if v is not None}}
        blob = marshal.dumps(entry, 4)
        if marshal.loads(blob) != entry:
            return  # e.g. a NaN in the YAML (never equal to itself): not worth a cache entry
    except (ValueError, EOFError, TypeError):
        return  # a value marshal cannot hold (a timestamp ruamel.yaml turned into a date)
    try:
        write_atomically(folder, f"{source.key}{SUFFIX}", blob)
        _prune(folder)
    except OSError:
        return  # a read-only home or a full disk costs speed, never a run


def write_atomically(folder: Path, name: str, blob: bytes) -> None:
    """``folder/name`` holds ``blob`` whole or not at all, whatever another process writes at the same time.

    A private temporary file beside it, then a rename. Not with tempfile, whose import (shutil,
    random and theirs) costs a first run after an edit about 5 ms.
    """
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    for _ in range(100):
        temporary = folder / f".{name}.{os.getpid()}-{os.urandom(6).hex()}.tmp"
        try:
            handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"no free temporary name in {folder}")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(blob)
        os.replace(temporary, folder / name)
    except BaseException:
        os.unlink(temporary)
        raise


def _prune(folder: Path) -> None:
    """Keep the newest entries only: every edit of a preset leaves one behind."""
    entries = [(e.stat().st_mtime, e.path) for e in os.scandir(folder) if e.name.endswith((SUFFIX, ".json"))]
    if len(entries) <= MAX_ENTRIES:
        return
    for _, path in sorted(entries)[: len(entries) - MAX_ENTRIES]:
        try:
            os.unlink(path)
        except OSError:
            pass
