"""YAML loading that remembers where every value came from.

Preset authors fix errors by line number, so the loader keeps ruamel.yaml's
round-trip nodes long enough to map a YAML path back to file:line:col, then
hands the rest of the engine plain dicts and lists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.scalarstring import FoldedScalarString, LiteralScalarString

PathPart = str | int


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
        start = self.locate(path)
        value = self._value(path)
        text = str(value) if value is not None else ""
        offset = max(0, min(offset, len(text)))
        before = text[:offset]
        line_in_value = before.count("\n")
        col_in_line = offset - (before.rfind("\n") + 1)
        if isinstance(value, FoldedScalarString):
            return self._locate_in_folded(start, offset)
        if isinstance(value, LiteralScalarString):
            file_line = start.line + 1 + line_in_value
            source = self.lines[file_line - 1] if 0 < file_line <= len(self.lines) else ""
            value_line = text.splitlines()[line_in_value] if line_in_value < len(text.splitlines()) else ""
            # YAML strips the block's own indentation from the value; add it back.
            block_indent = (len(source) - len(source.lstrip(" "))) - (len(value_line) - len(value_line.lstrip(" ")))
            return Location(file_line, max(block_indent, 0) + col_in_line + 1)
        if line_in_value == 0:
            quoted = start.col - 1 < len(self.lines[start.line - 1]) and self.lines[start.line - 1][start.col - 1] in "\"'"
            return Location(start.line, start.col + col_in_line + (1 if quoted else 0))
        return Location(start.line + line_in_value, col_in_line + 1)

    def _locate_in_folded(self, start: Location, offset: int) -> Location:
        """Folding turns each line break into one space, so walk the source lines instead."""
        first = start.line  # the line after the '>' indicator is the first content line
        lines = self.lines[first:]
        indent = next((len(l) - len(l.lstrip(" ")) for l in lines if l.strip()), 0)
        consumed = 0
        for i, line in enumerate(lines):
            content = line[indent:] if line.strip() else ""
            if offset <= consumed + len(content) or i == len(lines) - 1:
                return Location(first + i + 1, indent + max(0, offset - consumed) + 1)
            consumed += len(content) + 1
        return start

    def _value(self, path: list[PathPart]) -> Any:
        node = self.root
        for part in path:
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                return None
        return node


def load_yaml(path: str | Path, text: str | None = None) -> YamlDocument:
    """Parse one YAML document, raising :class:`YamlSourceError` with a located message."""
    shown = str(path)
    if text is None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise YamlSourceError(f"{shown}: file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise YamlSourceError(f"{shown}: cannot read: {exc}") from None
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    try:
        root = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{mark.line + 1}:{mark.column + 1}" if mark else "1:1"
        problem = exc.problem or exc.context or "invalid YAML"
        if "duplicate key" in problem:
            # ruamel quotes both values; in a settings file those may be secrets.
            key = re.search(r'duplicate key "(.*?)"', problem)
            problem = f"duplicate key {key.group(1)!r}" if key else "duplicate key"
        raise YamlSourceError(f"{shown}:{where}: {problem}") from None
    except YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid YAML"
        raise YamlSourceError(f"{shown}:1:1: {first}") from None
    return YamlDocument(shown, root, text.splitlines())


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
