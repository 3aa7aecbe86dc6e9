"""The last transform step: make a mapped document fit its output schema, then prove it does.

Two hygiene rules run first because destinations punish their absence:
empty values are omitted (never sent as null, which would erase data on an
update) and strings are cut to the schema's ``maxLength`` (a 256-character
title must not cost a lead). Then the document is validated; a failure here
is a preset bug, reported with the field.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012


class ContractViolation(Exception):
    """The mapped document breaks the output schema; ``field`` is a JSON pointer."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def omit_empty(value: Any) -> Any:
    """Drop null, empty strings, empty lists and empty objects, recursively."""
    if isinstance(value, dict):
        cleaned = {k: omit_empty(v) for k, v in value.items()}
        return {k: v for k, v in cleaned.items() if not _is_empty(v)}
    if isinstance(value, list):
        cleaned_items = [omit_empty(v) for v in value]
        return [v for v in cleaned_items if not _is_empty(v)]
    return value


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, (str, list, dict)) and not value)


@dataclass(frozen=True)
class OutputContract:
    name: str
    schema: dict[str, Any]
    validator: Draft202012Validator  # built once: rebuilding per event costs ~50x
    registry: Any = None  # resolves $ref between schema files

    @classmethod
    def load(cls, name: str, path: Path) -> "OutputContract":
        """Load a schema file; ``$ref`` to other files resolves relative to it."""
        schema = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(schema, dict):
            raise ValueError("an output schema must be a JSON object")
        Draft202012Validator.check_schema(schema)
        schema = {"$id": path.resolve().as_uri(), **schema} if "$id" not in schema else schema
        root_id = str(schema["$id"])
        retrieve = functools.partial(_retrieve_local, folder=path.resolve().parent, root_id=root_id)
        registry: Registry = Registry(retrieve=retrieve).with_resource(  # type: ignore[call-arg]
            root_id, Resource.from_contents(schema, default_specification=DRAFT202012))
        _check_refs(schema, registry.resolver(base_uri=root_id))
        validator = Draft202012Validator(schema, registry=registry)
        return cls(name, schema, validator, registry)

    def truncate(self, value: Any) -> Any:
        resolver = self.registry.resolver(base_uri=self.schema.get("$id", "")) if self.registry is not None else None
        return _truncate(value, self.schema, resolver)

    def check(self, document: Any) -> None:
        error = next(iter(sorted(self.validator.iter_errors(document), key=lambda e: list(e.absolute_path))), None)
        if error is not None:
            pointer = "/" + "/".join(str(p) for p in error.absolute_path)
            raise ContractViolation(pointer, error.message)


def _retrieve_local(uri: str, *, folder: Path, root_id: str) -> Resource:
    """Schema files referenced by ``$ref``: local files only, never the network.

    A schema with an ``$id`` such as ``https://example.com/schemas/lead.json``
    names its siblings relative to that; they are looked up beside the file.
    """
    from urllib.parse import unquote, urljoin, urlsplit

    if uri.startswith("file:"):
        path = Path(unquote(urlsplit(uri).path))
    else:
        base = urljoin(root_id, ".")
        if not uri.startswith(base) or root_id.startswith("file:"):
            raise Unresolvable(uri)
        path = folder / unquote(uri[len(base):])
    try:
        contents = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise Unresolvable(uri) from exc
    return Resource.from_contents(contents, default_specification=DRAFT202012)


def _check_refs(node: Any, resolver: Any, seen: set[int] | None = None) -> None:
    """Resolve every ``$ref`` now, so a missing file is a load error, not a failure per event."""
    seen = set() if seen is None else seen
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            try:
                resolved = resolver.lookup(ref)
            except Unresolvable:
                raise ValueError(f"cannot resolve $ref {ref!r}") from None
            if id(resolved.contents) not in seen:  # each referenced schema once, so cycles end
                seen.add(id(resolved.contents))
                _check_refs(resolved.contents, resolved.resolver, seen)
        for key, value in node.items():
            if key not in ("$ref", "const", "enum", "default", "examples"):
                _check_refs(value, resolver, seen)
    elif isinstance(node, list):
        for item in node:
            _check_refs(item, resolver, seen)


def _truncate(value: Any, schema: Any, resolver: Any) -> Any:
    if not isinstance(schema, dict):
        return value
    ref = schema.get("$ref")
    if isinstance(ref, str) and resolver is not None:
        try:
            resolved = resolver.lookup(ref)
        except Unresolvable:
            return value
        return _truncate(value, resolved.contents, resolved.resolver)
    if isinstance(value, str):
        limit = schema.get("maxLength")
        return value[:limit] if isinstance(limit, int) and len(value) > limit else value
    if isinstance(value, dict):
        props = schema.get("properties", {})
        return {k: _truncate(v, props.get(k), resolver) for k, v in value.items()}
    if isinstance(value, list):
        items = schema.get("items")
        return [_truncate(v, items, resolver) for v in value]
    return value
