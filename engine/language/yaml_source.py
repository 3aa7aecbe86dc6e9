"""YAML loading that remembers where every value came from.

Preset authors fix errors by line number, so the loader keeps ruamel.yaml's
round-trip nodes long enough to map a YAML path back to file:line:col, then
hands the rest of the engine plain dicts and lists.

ruamel.yaml is imported on first use: a start that finds its preset in the
preset cache parses no YAML at all.

A hostile file must not cost unbounded time or memory: a file over
:data:`MAX_YAML_BYTES` is refused before it is read whole, and a document
whose aliases would expand past :data:`MAX_ALIAS_EXPANSION` (an alias bomb,
a "billion laughs") is refused before anything walks it. The parser stops
after :data:`MAX_YAML_VALUES` values, and brackets nested past
:data:`MAX_FLOW_DEPTH` are refused before it starts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PathPart = str | int

# A preset or settings file larger than this is refused (the built-in presets are about 10 KB).
MAX_YAML_BYTES = 1 << 20
# What aliases may add to a document: values plus the characters of strings, counted each time an
# alias repeats them. As much as a whole file at the size limit, so an alias never costs more than
# writing the values out would.
MAX_ALIAS_EXPANSION = 1_000_000
# Values (scalars, mappings, sequences, aliases) in one file. The built-in presets hold about 450;
# ruamel.yaml's round-trip parser spends up to 100 µs and 1 KB on each, so this bounds a hostile
# file to a few seconds and tens of MB where 1 MB of tiny values would cost a minute and 600 MB.
MAX_YAML_VALUES = 50_000
# Brackets ([ and {) open at once. ruamel.yaml's scanner costs the square of the flow nesting depth
# (about 6 s before its parser gives up); no preset comes near this.
MAX_FLOW_DEPTH = 256
_BRACKETS = re.compile(r"[\[\]{}]")


class YamlSourceError(Exception):
    """The file is not readable YAML; the message is one line with file:line:col."""


@dataclass(frozen=True)
class Location:
    line: int  # 1-based
    col: int  # 1-based


@dataclass
class YamlDocument:
    """A parsed YAML file plus the ability to locate any path inside it."""

    path: str
    root: Any
    lines: list[str]

    def data(self) -> Any:
        return _plain(self.root)

    def locate(self, path: Iterable[PathPart], *, key: bool = False) -> Location:
        """Where ``path`` sits in the file; ``key=True`` points at the mapping key itself.

        Falls back to the deepest ancestor that exists, so a message about a
        missing key points at the mapping that should hold it.
        """
        from ruamel.yaml.comments import CommentedMap, CommentedSeq

        node = self.root
        where = Location(1, 1)
        parts = list(path)
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, CommentedMap) and part in node:
                line, col = node.lc.key(part) if (last and key) else node.lc.value(part)
                where = Location(line + 1, col + 1)
                node = node[part]
            elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
                line, col = node.lc.item(part)
                where = Location(line + 1, col + 1)
                node = node[part]
            else:
                if isinstance(node, (CommentedMap, CommentedSeq)) and i == 0 and node.lc.line is not None:
                    where = Location(node.lc.line + 1, node.lc.col + 1)
                break
        return where

    def locate_in_scalar(self, path: list[PathPart], offset: int) -> Location:
        """Map a character offset inside a string value to file:line:col.

        Used for JSONata syntax errors, which report a position within the
        expression; for block scalars (``|``) that is a line below the key.
        """
        from ruamel.yaml.scalarstring import FoldedScalarString, LiteralScalarString

        start = self.locate(path)
        value = self._value(path)
        text = str(value) if value is not None else ""
        offset = max(0, min(offset, len(text)))
        before = text[:offset]
        line_in_value = before.count("\n")
        col_in_line = offset - (before.rfind("\n") + 1)
        if isinstance(value, FoldedScalarString):
            first = start.line + 1  # the line after the '>' indicator
            indent = next((len(l) - len(l.lstrip(" ")) for l in self.lines[start.line :] if l.strip()), 0)
            return self._walk_folded(first, indent, offset, indent)
        if isinstance(value, LiteralScalarString):
            file_line = start.line + 1 + line_in_value
            source = self.lines[file_line - 1] if 0 < file_line <= len(self.lines) else ""
            value_line = text.splitlines()[line_in_value] if line_in_value < len(text.splitlines()) else ""
            # YAML strips the block's own indentation from the value; add it back.
            block_indent = (len(source) - len(source.lstrip(" "))) - (len(value_line) - len(value_line.lstrip(" ")))
            return Location(file_line, max(block_indent, 0) + col_in_line + 1)
        source = self.lines[start.line - 1] if 0 < start.line <= len(self.lines) else ""
        quoted = start.col - 1 < len(source) and source[start.col - 1] in "\"'"
        # Plain and quoted scalars fold like '>' blocks when they span lines.
        return self._walk_folded(start.line, start.col - 1 + (1 if quoted else 0), offset, None)

    def _walk_folded(self, first_line: int, first_col: int, offset: int, indent: int | None) -> Location:
        """Map an offset in a folded value (each line break became one space) back to the source.

        A blank source line adds nothing: it turns the preceding break into
        the newline it stands for. ``indent`` is the block's indentation, or
        None for flow scalars whose continuation lines are simply stripped.
        """
        consumed = 0
        for line_no in range(first_line, len(self.lines) + 1):
            raw = self.lines[line_no - 1]
            if line_no == first_line:
                col = first_col
            elif not raw.strip():
                continue
            else:
                col = indent if indent is not None else len(raw) - len(raw.lstrip(" "))
            content = raw[col:].rstrip()
            if offset <= consumed + len(content):
                return Location(line_no, col + (offset - consumed) + 1)
            consumed += len(content) + 1
        return Location(first_line, first_col + 1)

    def _value(self, path: list[PathPart]) -> Any:
        node = self.root
        for part in path:
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                return None
        return node


def read_source(path: str | Path, limit: int = MAX_YAML_BYTES) -> bytes:
    """A YAML file's bytes; one larger than ``limit`` is refused before it is read whole."""
    shown = str(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
            if len(data) > limit:
                size = _size(handle)
                what = f"{size:,} bytes" if size > limit else f"more than {limit:,} bytes"
                raise YamlSourceError(f"{shown}: {what}: a preset or settings file may hold at most {limit:,} bytes")
    except FileNotFoundError:
        raise YamlSourceError(f"{shown}: file not found") from None
    except OSError as exc:
        raise YamlSourceError(f"{shown}: cannot read: {exc}") from None
    return data


def _size(handle: Any) -> int:
    import os

    try:
        return os.fstat(handle.fileno()).st_size
    except OSError:
        return 0


def load_yaml(path: str | Path, text: str | None = None) -> YamlDocument:
    """Parse one YAML document, raising :class:`YamlSourceError` with a located message."""
    shown = str(path)
    if text is None:
        try:
            # Universal newlines, as Path.read_text reads them.
            text = read_source(path).decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
        except UnicodeDecodeError as exc:
            raise YamlSourceError(f"{shown}: cannot read: {exc}") from None
    elif len(text) > MAX_YAML_BYTES and len(text.encode("utf-8", "surrogatepass")) > MAX_YAML_BYTES:
        raise YamlSourceError(
            f"{shown}: more than {MAX_YAML_BYTES:,} bytes: a preset or settings file may hold at "
            f"most {MAX_YAML_BYTES:,} bytes"
        )
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    _check_flow_depth(text, shown)
    yaml = YAML(typ="rt")
    yaml.Composer = _counting_composer()
    yaml.allow_duplicate_keys = False
    # The reused-anchor warning goes straight to stderr and quotes the anchor
    # name and the source lines; a plain value such as "&Zk9..." is an anchor.
    yaml.composer.warn_double_anchors = False
    try:
        root = yaml.load(text)
    except RecursionError:
        raise YamlSourceError(f"{shown}:1:1: nested too deeply") from None
    except _TooManyValues as exc:
        raise YamlSourceError(
            f"{shown}:{exc.line}:{exc.col}: more than {MAX_YAML_VALUES:,} values: a preset or "
            f"settings file may hold at most {MAX_YAML_VALUES:,}"
        ) from None
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{mark.line + 1}:{mark.column + 1}" if mark else "1:1"
        problem = exc.problem or exc.context or "invalid YAML"
        if "duplicate key" in problem:
            # ruamel quotes both values; in a settings file those may be secrets.
            key = re.search(r'duplicate key "(.*?)"', problem)
            problem = f"duplicate key {key.group(1)!r}" if key else "duplicate key"
        else:
            problem = _without_names(problem, exc.context or "")
        if problem.startswith("mapping values are not allowed"):
            # The usual cause: a sentence with ": " in it, written without quotes.
            problem += (
                "; a ': ' inside an unquoted value starts a new key: put the whole value in quotes "
                '("...") or write it as a block scalar (>-)'
            )
        raise YamlSourceError(f"{shown}:{where}: {problem}") from None
    except YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid YAML"
        raise YamlSourceError(f"{shown}:1:1: {first}") from None
    _check_aliases(root, shown)
    return YamlDocument(shown, root, text.splitlines())


class _TooManyValues(Exception):
    def __init__(self, line: int, col: int) -> None:
        super().__init__(line, col)
        self.line = line
        self.col = col


def _counting_composer() -> Any:
    """ruamel.yaml's composer, stopping once the document holds :data:`MAX_YAML_VALUES` values."""
    from ruamel.yaml.composer import Composer

    class CountingComposer(Composer):
        values = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            self.values += 1
            if self.values > MAX_YAML_VALUES:
                mark = self.parser.peek_event().start_mark
                raise _TooManyValues(mark.line + 1, mark.column + 1)
            return super().compose_node(parent, index)

    return CountingComposer


def _check_flow_depth(text: str, shown: str) -> None:
    """Refuse brackets nested past :data:`MAX_FLOW_DEPTH` before the YAML scanner meets them.

    Every bracket counts, even one inside a string or a comment: a file that
    opens hundreds of them without closing any is not a preset.
    """
    if text.count("[") + text.count("{") <= MAX_FLOW_DEPTH:
        return
    depth = 0
    for match in _BRACKETS.finditer(text):
        if match.group() in "[{":
            depth += 1
            if depth > MAX_FLOW_DEPTH:
                line = text.count("\n", 0, match.start()) + 1
                col = match.start() - (text.rfind("\n", 0, match.start()) + 1) + 1
                raise YamlSourceError(f"{shown}:{line}:{col}: brackets nested more than {MAX_FLOW_DEPTH} deep")
        elif depth:
            depth -= 1


def _check_aliases(root: Any, shown: str) -> None:
    """Refuse a document whose aliases expand past :data:`MAX_ALIAS_EXPANSION`, or contain themselves.

    An alias is the same Python object met again; each meeting adds the
    size of what it stands for. Every object is walked once, so this costs
    the size of the file, never of its expansion; the walk uses no recursion,
    so nesting depth costs nothing either.
    """
    sizes: dict[int, int] = {}  # id of a mapping, sequence or string -> its size, aliases expanded
    open_ids: set[int] = set()  # containers being walked (an alias to one of these is a cycle)
    added = 0
    # (node, parent, key, finishing): finishing=True sums the children once they have sizes.
    stack: list[tuple[Any, Any, Any, bool]] = [(root, None, None, False)]
    while stack:
        node, parent, key, finishing = stack.pop()
        is_map = isinstance(node, dict)
        if not (is_map or isinstance(node, (list, str))):
            continue
        ident = id(node)
        if finishing:
            open_ids.discard(ident)
            children = node.values() if is_map else node
            total = 1 + sum(sizes.get(id(child), 1) for child in children)
            if is_map:
                total += sum(len(k) if isinstance(k, str) else 1 for k in node)
            sizes[ident] = total
            continue
        if ident in open_ids:
            raise YamlSourceError(f"{_where(shown, parent, key)}: an alias refers to a value that contains it")
        if ident in sizes:
            added += sizes[ident]
            if added > MAX_ALIAS_EXPANSION:
                raise YamlSourceError(
                    f"{_where(shown, parent, key)}: YAML aliases expand to more than "
                    f"{MAX_ALIAS_EXPANSION:,} values and characters (an alias bomb?); write the "
                    "values out, or use fewer aliases"
                )
            continue
        if isinstance(node, str):
            sizes[ident] = 1 + len(node)
            continue
        open_ids.add(ident)
        stack.append((node, parent, key, True))
        items = list(node.items() if is_map else enumerate(node))
        stack.extend((child, node, k, False) for k, child in reversed(items))  # met in document order


def _where(shown: str, parent: Any, key: Any) -> str:
    """``file:line:col`` of the mapping or sequence holding the alias.

    ruamel.yaml gives an alias item the position of its anchor, so the
    container's own start is the closest place that is the alias's.
    """
    try:
        return f"{shown}:{parent.lc.line + 1}:{parent.lc.col + 1}"
    except (AttributeError, TypeError):
        return f"{shown}:1:1"


# Python reprs of strings, as ruamel puts them in its messages.
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'" r'|"(?:[^"\\]|\\.)*"')
_NAMED = re.compile(r"\b(alias|anchor|tag)\b")
_QUOTE_IT = "put the value in quotes if it is meant literally"


def _without_names(problem: str, context: str) -> str:
    """The problem of an alias, anchor or tag error without the name ruamel quotes.

    A plain value that starts with ``*``, ``&`` or ``!`` is read as an alias,
    anchor or tag, so the "name" is the rest of the value, and in a settings
    file that value may be a secret.
    """
    if problem.startswith("found undefined alias"):
        return f"found undefined alias (a value starting with '*' is read as a YAML alias; {_QUOTE_IT})"
    if problem.startswith("found undefined tag handle"):
        return f"found undefined tag handle (a value starting with '!' is read as a YAML tag; {_QUOTE_IT})"
    scanning = re.match(r"while (?:scanning|parsing) an? (alias|anchor|tag)\b", context)
    if scanning:
        what = scanning.group(1)
        start = {"alias": "*", "anchor": "&", "tag": "!"}[what]
        return f"invalid {what} (a value starting with '{start}' is read as a YAML {what}; {_QUOTE_IT})"
    if _NAMED.search(problem) or _NAMED.search(context):
        return _QUOTED.sub("(name not shown)", problem)
    return problem


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    if isinstance(node, str):
        return str(node)
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    return node


def format_path(path: Iterable[PathPart]) -> str:
    """Render a YAML path the way authors read it: ``events.track.Demo Requested.values``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(root)"
