"""A preset's plain data from libyaml, for a start that only needs the data, not where each value sits.

ruamel.yaml's round-trip parser keeps every value's line and column, which
a preset's errors need (:mod:`.yaml_source`), but its import and parse cost
about 40 ms: most of a first run after an edit. PyYAML's libyaml parser
reads the same file in well under a millisecond; this builds the plain data
from its events with YAML 1.2's core schema, as ruamel.yaml resolves it.

Only what is certain to come out as ruamel.yaml would have it is built
here. Anything else (an anchor or alias, a tag, a duplicate key, a merge
key, a number written other than plainly, a timestamp, a second document,
a tab, an unusual line break, a parse error, deep nesting or many values,
no libyaml) answers None, and the caller parses the file with ruamel.yaml
as before, which reports any problem at its file:line:col. Once the data is
known, a problem found later still parses the file with ruamel.yaml to say
where (``preset_cache.CachedDocument``).

PyYAML is imported here only, on a preset cache miss (its import costs
about 10 ms); a start that finds its preset in the cache imports no YAML code.
"""

from __future__ import annotations

import re
from typing import Any

# As yaml_source's bounds (a test holds them equal); past them, ruamel.yaml's path refuses the file.
MAX_YAML_VALUES = 50_000
MAX_FLOW_DEPTH = 256
# Nesting deeper than this goes to ruamel.yaml, which says whether the file is too deep.
MAX_DEPTH = 100

# Characters libyaml and ruamel.yaml may read differently (tabs, line breaks beyond \n, a byte order
# mark): ruamel.yaml decides.
_UNSURE = ("\t", "\x85", "\u2028", "\u2029", "\ufeff")

# YAML 1.2 plain scalars as ruamel.yaml's resolver reads them (ruamel/yaml/resolver.py, version 1.2):
# only a scalar whose first character is one of these can be anything but a string.
_SPECIAL_FIRST = frozenset("tTfF-+0123456789.<~nN=!&*")
_BOOLS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_NULLS = frozenset({"~", "null", "Null", "NULL", ""})
_PLAIN_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")
_PLAIN_FLOAT = re.compile(r"-?(?:0|[1-9][0-9]*)\.[0-9]+")
# The rest of YAML 1.2's numbers and timestamps (copied from ruamel.yaml's resolver): left to ruamel.yaml.
# Compiled by re (and kept in its cache) the first time a scalar needs it: compiling it costs a millisecond.
_OTHER_NUMBER = r"""[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |[-+]?\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN)
    |[-+]?0b[0-1_]+
    |[-+]?0o?[0-7_]+
    |[-+]?[0-9_]+
    |[-+]?0x[0-9a-fA-F_]+
    |[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]
    |[0-9][0-9][0-9][0-9]-[0-9][0-9]?-[0-9][0-9]?(?:[Tt]|[\ \t]+)[0-9][0-9]?:[0-9][0-9]:[0-9][0-9](?:\.[0-9]*)?
     (?:[\ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?"""


class _Unsure(Exception):
    """The file needs ruamel.yaml: to be read as it reads it, or to have its problem located."""


def plain_data(text: str) -> Any | None:
    """The file's data as ``yaml_source.load_yaml(...).data()`` gives it, or None when unsure."""
    if any(mark in text for mark in _UNSURE) or text.count("[") + text.count("{") > MAX_FLOW_DEPTH:
        return None
    try:
        from yaml import _yaml  # libyaml's parser (PyYAML built with it)
    except ImportError:
        return None
    try:
        return _build(_yaml.CParser(text))
    except _Unsure:
        return None
    except Exception:  # noqa: BLE001 - libyaml refused the file: ruamel.yaml words and locates the problem
        return None


def _build(parser: Any) -> Any:
    """The one document's data, built from the parser's events without recursion."""
    from yaml import events as ev

    # Each open container: [value, key waiting for its value (mappings), expecting a key (mappings)].
    stack: list[list[Any]] = []
    root: Any = None
    documents = 0
    values = 0
    while True:
        event = parser.get_event()
        kind = type(event)
        if kind is ev.StreamEndEvent:
            break
        if kind is ev.StreamStartEvent or kind is ev.DocumentEndEvent:
            continue
        if kind is ev.DocumentStartEvent:
            documents += 1
            if documents > 1 or event.version is not None or event.tags:
                raise _Unsure  # a second document, or a %YAML / %TAG directive
            continue
        if kind is ev.AliasEvent or kind is ev.SequenceEndEvent or kind is ev.MappingEndEvent:
            if kind is ev.AliasEvent:
                raise _Unsure
            done = stack.pop()[0]
            if not stack:
                root = done
            else:
                _add(stack[-1], done)
            continue
        values += 1
        if values > MAX_YAML_VALUES or event.anchor is not None or event.tag is not None:
            raise _Unsure
        if kind is ev.ScalarEvent:
            value = event.value if event.style else _scalar(event.value)  # plain: no style
            if not stack:
                root = value
            else:
                _add(stack[-1], value)
        elif kind is ev.MappingStartEvent or kind is ev.SequenceStartEvent:
            if stack and stack[-1][2]:
                raise _Unsure  # a mapping or sequence as a key
            if len(stack) >= MAX_DEPTH:
                raise _Unsure
            stack.append([{}, None, True] if kind is ev.MappingStartEvent else [[], None, False])
        else:
            raise _Unsure
    if documents != 1 or not isinstance(root, dict):
        raise _Unsure  # ruamel.yaml (and the compiler) say what is wrong with it
    return root


def _add(container: list[Any], value: Any) -> None:
    held = container[0]
    if isinstance(held, list):
        held.append(value)
    elif container[2]:  # a key
        if isinstance(value, bool) or value is None or isinstance(value, int):
            value = str(value)  # as yaml_source's plain data has it
        elif not isinstance(value, str):
            raise _Unsure
        if value in held or value == "<<":
            raise _Unsure  # a duplicate or a merge key: ruamel.yaml refuses or merges
        container[1] = value
        container[2] = False
    else:
        held[container[1]] = value
        container[2] = True


def _scalar(text: str) -> Any:
    """A plain scalar as YAML 1.2's core schema reads it."""
    if not text or text[0] not in _SPECIAL_FIRST:
        return text or None
    if text in _BOOLS:
        return _BOOLS[text]
    if text in _NULLS:
        return None
    if _PLAIN_INT.fullmatch(text):
        return int(text)
    if _PLAIN_FLOAT.fullmatch(text):
        return float(text)
    if text[0] in "<=!&*" or (text[0] in "-+0123456789." and re.fullmatch(_OTHER_NUMBER, text, re.X)):
        raise _Unsure
    return text
