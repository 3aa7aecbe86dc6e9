"""The last transform step: make a mapped document fit its output schema, then prove it does.

Two hygiene rules run first because destinations punish their absence:
empty values are omitted (never sent as null, which would erase data on an
update) and strings are cut to the schema's ``maxLength`` (a 256-character
title must not cost a lead). Both happen in one walk over the document. Then
the document is validated; a failure here is a preset bug, reported with the
field.

Validation on the hot path is jsonschema-rs (about a microsecond for a valid
document), imported when the first document needs it. The pure-Python
``jsonschema`` is imported only to explain a document that failed, so the
message names the JSON pointer and reads the same as always, and by
``check`` to report a broken schema.

A schema may ``$ref`` other files beside it (or, with an ``$id`` of its own,
siblings named relative to that id): every reference is resolved when the
contract loads, from local files only, never the network.
"""

from __future__ import annotations

import json
from dataclasses import field
from pathlib import Path
from typing import Any

from ..content_digest import sha256_hex
from ..language.records import record


class ContractViolation(Exception):
    """The mapped document breaks the output schema; ``field`` is a JSON pointer."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def omit_empty(value: Any) -> Any:
    """Drop null, empty strings, empty lists and empty objects, recursively."""
    return _clean(value, None, True)


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, (str, list, dict)) and not value)


@record
class _Limits:
    """The ``maxLength`` rules of a schema, as a tree shaped like the documents it describes."""

    max_length: int | None = None
    properties: dict[str, _Limits] | None = None
    items: _Limits | None = None

    @classmethod
    def of(cls, schema: Any, resolver: Any = None, depth: int = 0) -> _Limits | None:
        """None where no ``maxLength`` can apply below, so the walk stops looking there.

        ``resolver`` follows ``$ref`` (a referencing resolver); a reference
        chain deeper than 32 is taken to be recursive and has no limits.
        """
        if not isinstance(schema, dict) or depth > 32:
            return None
        ref = schema.get("$ref")
        if isinstance(ref, str) and resolver is not None:
            resolved = resolver.lookup(ref)
            return cls.of(resolved.contents, resolved.resolver, depth + 1)
        limit = schema.get("maxLength")
        max_length = limit if isinstance(limit, int) and not isinstance(limit, bool) else None
        props = schema.get("properties")
        properties = (
            {k: v for k, v in ((k, cls.of(s, resolver, depth + 1)) for k, s in props.items()) if v is not None}
            if isinstance(props, dict)
            else {}
        )
        items = cls.of(schema.get("items"), resolver, depth + 1)
        if max_length is None and not properties and items is None:
            return None
        return cls(max_length, properties or None, items)


def _clean(value: Any, limits: _Limits | None, omit: bool) -> Any:
    """One pass: omit empty values (when ``omit``) and cut strings to ``limits``.

    Emptiness is judged before cutting, as if omission ran first; the input
    is never mutated. Exact types are tested first because this runs on
    every document; subclasses (the reference engine's sequences) take the
    slower ``isinstance`` road to the same result.
    """
    kind = type(value)
    if kind is dict or (kind is not list and kind is not str and isinstance(value, dict)):
        props = limits.properties if limits is not None else None
        out = {}
        for key, item in value.items():
            kind = type(item)
            if kind is str:
                if omit and not item:
                    continue
                if props:
                    child = props.get(key)
                    if child is not None and child.max_length is not None and len(item) > child.max_length:
                        item = item[: child.max_length]
            elif kind is dict or kind is list or isinstance(item, (dict, list)):
                item = _clean(item, props.get(key) if props else None, omit)
                if omit and not item:
                    continue
            elif item is None:
                if omit:
                    continue
            elif isinstance(item, str):
                if omit and not item:
                    continue
                item = _clean(item, props.get(key) if props else None, omit)
            out[key] = item
        return out
    if kind is list or (kind is not str and isinstance(value, list)):
        items = limits.items if limits is not None else None
        cut = items.max_length if items is not None else None
        cleaned = []
        for item in value:
            if type(item) is str:
                if omit and not item:
                    continue
                if cut is not None and len(item) > cut:
                    item = item[:cut]
            elif item is None:
                if omit:
                    continue
            elif isinstance(item, (dict, list, str)):
                if omit and not item:
                    continue
                item = _clean(item, items, omit)
                if omit and not item and not isinstance(item, str):
                    continue
            cleaned.append(item)
        return cleaned
    if (
        isinstance(value, str)
        and limits is not None
        and limits.max_length is not None
        and len(value) > limits.max_length
    ):
        return value[: limits.max_length]
    return value


@record
class OutputContract:
    name: str
    schema: dict[str, Any]
    digest: str = ""  # sha256 of the schema file, so a preset cache can tell it is unchanged
    _limits: _Limits | None = field(default=None, repr=False)
    _refs: _References | None = field(default=None, repr=False, compare=False)
    _fast: list[Any] = field(default_factory=list, repr=False, compare=False)
    _explainer: list[Any] = field(default_factory=list, repr=False, compare=False)

    @classmethod
    def load(cls, name: str, path: Path, *, strict: bool = False, checked: str | None = None) -> OutputContract:
        """Read and compile a schema; raise ValueError if it is not a JSON Schema.

        jsonschema-rs checks the schema against its meta-schema while building
        the validator, in about a millisecond. ``checked`` is the digest of a
        file that already passed that check: if the file still has it, the
        validator is built when the first document needs it. ``strict``
        (``check`` and the tests) also runs jsonschema's ``check_schema``,
        the reference, which costs 50-90 ms and so does not run at every start.
        """
        raw = path.read_bytes()
        schema = _parse_schema(raw)
        if not isinstance(schema, dict):
            raise ValueError("an output schema must be a JSON object")
        refs = None
        if b'"$ref"' in raw:  # the referencing machinery only for schemas that refer
            refs = _References(path, schema)
            schema = refs.schema
        if strict:
            from jsonschema import Draft202012Validator
            from jsonschema.exceptions import SchemaError

            try:
                Draft202012Validator.check_schema(schema)
            except SchemaError as exc:
                where = "/" + "/".join(str(p) for p in exc.absolute_path)
                raise ValueError(f"not a valid JSON Schema at {where}: {exc.message}") from None
        limits = _Limits.of(schema, refs.resolver() if refs else None)
        contract = cls(name, schema, sha256_hex(raw), limits, refs)
        if checked != contract.digest or refs is not None:
            contract.validator  # noqa: B018 - built now, so a broken schema fails the load
        return contract

    @property
    def validator(self) -> Any:
        """The jsonschema-rs validator, built once: rebuilding per event costs far more than validating."""
        if not self._fast:
            import jsonschema_rs  # ~20 ms of imports, paid by the first document, not by every start

            retriever = self._refs.retrieve_contents if self._refs is not None else None
            try:
                self._fast.append(jsonschema_rs.Draft202012Validator(self.schema, retriever=retriever))
            except jsonschema_rs.ValidationError as exc:
                where = "/" + "/".join(str(p) for p in exc.instance_path)
                raise ValueError(f"not a valid JSON Schema at {where}: {exc.message}") from None
        return self._fast[0]

    def truncate(self, value: Any) -> Any:
        return _clean(value, self._limits, False)

    def shape(self, value: Any, *, omit_empty: bool, truncate: bool) -> Any:
        """Omit empty values and/or cut strings to ``maxLength``, in one walk."""
        if not omit_empty and not truncate:
            return value
        return _clean(value, self._limits if truncate else None, omit_empty)

    def forbidden_key(self, path: tuple[str, ...], key: str) -> list[str] | None:
        """The keys allowed where ``key`` would go, when the schema certainly forbids it there; else None.

        ``path`` is the keys above it ("[]" for an array's items). Only a
        plain closed object (``additionalProperties: false``, no pattern
        properties or combinators) says "certainly"; anything the walk cannot
        follow is given the benefit of the doubt.
        """
        node, resolver = self._resolved(self.schema, self._refs.resolver() if self._refs else None)
        for step in path:
            if not isinstance(node, dict):
                return None
            child = node.get("items") if step == "[]" else (node.get("properties") or {}).get(step)
            if child is None:
                return None
            node, resolver = self._resolved(child, resolver)
        if not isinstance(node, dict) or node.get("additionalProperties") is not False:
            return None
        if any(
            word in node for word in ("patternProperties", "allOf", "anyOf", "oneOf", "unevaluatedProperties", "$ref")
        ):
            return None
        properties = node.get("properties") or {}
        return None if key in properties else sorted(properties)

    @staticmethod
    def _resolved(node: Any, resolver: Any, depth: int = 0) -> tuple[Any, Any]:
        """Follow ``$ref``s (a chain deeper than 32 is left unresolved)."""
        while isinstance(node, dict) and isinstance(node.get("$ref"), str) and resolver is not None and depth < 32:
            try:
                found = resolver.lookup(node["$ref"])
            except Exception:  # noqa: BLE001 - an unresolvable reference was reported when the schema loaded
                return None, resolver
            node, resolver, depth = found.contents, found.resolver, depth + 1
        return node, resolver

    def is_valid(self, document: Any) -> bool:
        try:
            return bool(self.validator.is_valid(document))
        except (TypeError, ValueError, OverflowError):
            # A value jsonschema-rs cannot read (an integer beyond 64 bits, a
            # host object): let the reference validator decide.
            return self._reference_error(document) is None

    def check(self, document: Any) -> None:
        if self.is_valid(document):
            return
        error = self._reference_error(document)
        if error is not None:
            pointer = "/" + "/".join(str(p) for p in error.absolute_path)
            raise ContractViolation(pointer, error.message)
        # The two validators disagree; the fast one decides, and says where.
        first = next(iter(self.validator.iter_errors(document)), None)
        path = list(first.instance_path) if first is not None else []
        raise ContractViolation(
            "/" + "/".join(str(p) for p in path), first.message if first is not None else "does not match the schema"
        )

    def _reference_error(self, document: Any) -> Any:
        """The first error (by document path) as jsonschema reports it, or None."""
        if not self._explainer:
            from jsonschema import Draft202012Validator

            options = {"registry": self._refs.registry} if self._refs is not None else {}
            self._explainer.append(Draft202012Validator(self.schema, **options))
        errors = self._explainer[0].iter_errors(document)
        return next(iter(sorted(errors, key=lambda e: list(e.absolute_path))), None)


class _References:
    """Resolves a schema's ``$ref`` to local files, for truncation and both validators.

    Relative references resolve against the schema's own ``$id``, or its file
    when it has none; an ``https`` id names siblings looked up beside the file.
    Every reference is resolved on construction, so a missing file is a load
    error, not a failure on every event.
    """

    def __init__(self, path: Path, schema: dict[str, Any]) -> None:
        from referencing import Registry, Resource
        from referencing.jsonschema import DRAFT202012

        self.folder = path.resolve().parent
        self.schema = {"$id": path.resolve().as_uri(), **schema} if "$id" not in schema else schema
        self.root_id = str(self.schema["$id"])
        self.registry = Registry(retrieve=self._retrieve).with_resource(  # type: ignore[call-arg]
            self.root_id, Resource.from_contents(self.schema, default_specification=DRAFT202012)
        )
        _check_refs(self.schema, self.resolver())

    def resolver(self) -> Any:
        return self.registry.resolver(base_uri=self.root_id)

    def retrieve_contents(self, uri: str) -> Any:
        """The document at ``uri``: a local file, never the network."""
        from urllib.parse import unquote, urljoin, urlsplit

        if uri.startswith("file:"):
            file = Path(unquote(urlsplit(uri).path))
        else:
            base = urljoin(self.root_id, ".")
            if self.root_id.startswith("file:") or not uri.startswith(base):
                raise ValueError(f"cannot resolve $ref {uri!r}: only local files are read")
            file = self.folder / unquote(uri[len(base) :].split("#", 1)[0])
        try:
            return _parse_schema(file.read_bytes())
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot resolve $ref {uri!r}: {type(exc).__name__}") from None

    def _retrieve(self, uri: str) -> Any:
        from referencing import Resource
        from referencing.exceptions import Unresolvable
        from referencing.jsonschema import DRAFT202012

        try:
            return Resource.from_contents(self.retrieve_contents(uri), default_specification=DRAFT202012)
        except ValueError:
            raise Unresolvable(uri) from None


def _check_refs(node: Any, resolver: Any, seen: set[int] | None = None) -> None:
    """Resolve every ``$ref`` now, so a missing file is a load error, not a failure per event."""
    from referencing.exceptions import Unresolvable

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


def _parse_schema(raw: bytes) -> Any:
    """A schema file's JSON, as strict as orjson reads it (UTF-8 only, no NaN or Infinity), with the standard
    library's parser: json is imported anyway, and orjson's import is not paid by a start that sends nothing."""
    return json.loads(raw.decode("utf-8"), parse_constant=_no_constant)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
