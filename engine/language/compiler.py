"""Load a preset: validate it against the preset language, compile it, report every problem.

A preset is authored by people who do not write Python, so this module's
job is mostly error reporting: all problems at once, each as
``file:line:col: yaml.path: message``, including JSONata syntax errors at
their exact position. Nothing in here knows about any destination.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Mapping

from ..delivery.response_rules import build_rules
from ..pipeline.event_table import EventTable
from ..pipeline.identity import DEFAULT_MEMORY_LIMIT
from ..pipeline.normalisers import NORMALISERS
from ..pipeline.output_contract import OutputContract
from . import preset_cache, resources
from .expressions import DEFAULT_LIMITS, BackendError, Expression, ExpressionError, ExpressionLimits, selected_backend
from .model import (
    ActionSpec,
    AuthSpec,
    DeliverySpec,
    IdentitySpec,
    Preset,
    RateLimitSpec,
    RequestSpec,
    RetrySpec,
    TraitSpec,
    UpsertSpec,
)
from .settings import SettingSpec
from .templates import Template, TemplateError
from .yaml_source import PathPart, YamlDocument, YamlSourceError, format_path, load_yaml

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError


class PresetError(Exception):
    """A preset cannot be used. ``problems`` holds one located line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@lru_cache(maxsize=1)
def _preset_validator() -> Draft202012Validator:
    from jsonschema import Draft202012Validator  # only when a preset is not in the preset cache

    schema = json.loads(resources.preset_schema_path().read_text(encoding="utf-8"))
    return Draft202012Validator(schema)


def load_preset(name_or_path: str, *, strict: bool = False) -> Preset:
    """Load a built-in preset by name or a preset file by path; raise :class:`PresetError`.

    ``strict`` (``check``) bypasses the preset cache and also checks each
    output schema against its meta-schema with jsonschema, which is too slow
    for every start.
    """
    path = resources.find_preset(name_or_path)
    if not path.exists():
        known = ", ".join(resources.builtin_presets())
        raise PresetError([f"{name_or_path}: no such preset file or built-in preset (built-in: {known})"])
    try:
        backend = selected_backend()
    except BackendError as exc:
        raise PresetError([str(exc)]) from None
    source = preset_cache.read(path)
    cached = preset_cache.lookup(source) if source is not None and not strict else None
    if cached is not None:
        return _Compiler(cached, backend, checked_schemas=cached.schemas).compile()  # type: ignore[arg-type]
    try:
        doc = load_yaml(path, source.text if source is not None else None)
    except YamlSourceError as exc:
        raise PresetError([str(exc)]) from None
    compiler = _Compiler(doc, backend, strict=strict)
    preset = compiler.compile()
    if source is not None:
        preset_cache.store(source, compiler.data, compiler.schema_digests)
    return preset


class _Compiler:
    """Turns one YAML document into a :class:`Preset`, collecting problems as it goes."""

    def __init__(self, doc: YamlDocument, backend: str | None = None, *, strict: bool = False,
                 checked_schemas: Mapping[str, str] | None = None) -> None:
        self.doc = doc
        self.strict = strict
        # From the preset cache: the preset already passed the preset schema,
        # and these output schemas (name -> digest) their meta-schema.
        self.checked_schemas = checked_schemas
        self.schema_digests: dict[str, str] = {}
        self.data = doc.data()
        self.problems: list[tuple[int, int, str]] = []
        self.backend = backend
        self.limits = _expression_limits(self.data)

    # -- reporting -----------------------------------------------------
    def problem(self, path: list[PathPart], message: str, *, key: bool = False) -> None:
        loc = self.doc.locate(path, key=key)
        self.problems.append((loc.line, loc.col, f"{self.doc.path}:{loc.line}:{loc.col}: {format_path(path)}: {message}"))

    def fail_if_problems(self) -> None:
        if self.problems:
            ordered = sorted(set(self.problems))
            raise PresetError([text for _, _, text in ordered])

    # -- stages --------------------------------------------------------
    def compile(self) -> Preset:
        if not isinstance(self.data, dict):
            raise PresetError([f"{self.doc.path}:1:1: (root): a preset must be a YAML mapping"])
        for error in _preset_validator().iter_errors(self.data) if self.checked_schemas is None else ():
            self._schema_problem(error)
        if self.problems:
            # Report everything in one run: expression syntax is independent
            # of structure, and semantic checks run on whatever parts are
            # well-formed enough to read.
            self._compile_expressions_anyway()
            try:
                self._compile_sections()
            except (KeyError, TypeError, AttributeError, ValueError, IndexError):
                pass  # the part that broke is already reported by the schema
            self.fail_if_problems()
        preset = self._compile_sections()
        self.fail_if_problems()
        return preset

    def _compile_sections(self) -> Preset:
        data = self.data
        settings = {name: SettingSpec(name, s["type"], s.get("required", False), s.get("secret", False),
                                      s.get("default"), s.get("description", ""))
                    for name, s in data["settings"].items()}
        self._check_settings(settings)
        identity = self._identity(data["identity"])
        consent_setting = data["consent"]["categories_setting"]
        if settings.get(consent_setting) is None or settings[consent_setting].type != "string_list":
            self.problem(["consent", "categories_setting"], f"must name a string_list setting, got {consent_setting!r}")
        actions = {name: self._action(name, spec, settings) for name, spec in data["actions"].items()}
        self._check_events(data["events"], actions)
        auth = self._auth(data.get("auth"), settings)
        delivery = self._delivery(data["delivery"])
        return Preset(
            name=data["preset"], path=self.doc.path, metadata=data["metadata"], settings=settings,
            identity=identity, consent_setting=consent_setting,
            consent_aliases=data["consent"].get("aliases", {}), events=EventTable.build(data["events"]),
            actions=actions, auth=auth, delivery=delivery, raw=data, expression_limits=self.limits,
        )

    def _schema_problem(self, error: ValidationError) -> None:
        path = list(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            allowed = set(error.schema.get("properties", {}))
            for extra in sorted(k for k in error.instance if k not in allowed):
                hint = f" (allowed: {', '.join(sorted(allowed))})" if allowed else ""
                self.problem(path + [extra], f"unknown key {extra!r}{hint}", key=True)
            return
        if error.validator == "required":
            self.problem(path, error.message)
            return
        if error.validator == "oneOf":
            self.problem(path, f"{error.instance!r} is not a valid value here")
            return
        self.problem(path, error.message)

    def _check_settings(self, settings: Mapping[str, SettingSpec]) -> None:
        checks = {"string": lambda v: isinstance(v, str), "url": lambda v: isinstance(v, str),
                  "string_list": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
                  "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
                  "boolean": lambda v: isinstance(v, bool)}
        for name, spec in settings.items():
            if spec.default is not None and not checks[spec.type](spec.default):
                self.problem(["settings", name, "default"], f"default does not match type {spec.type}")
            if spec.required and spec.default is not None:
                self.problem(["settings", name], "a required setting cannot have a default")

    def _identity(self, spec: Mapping[str, Any]) -> IdentitySpec:
        traits = []
        for name, trait in spec["traits"].items():
            kind = trait.get("normalise")
            option = trait.get("region_from")
            if option is not None and kind != "phone_e164":
                self.problem(["identity", "traits", name, "region_from"], "only phone_e164 takes region_from")
            if option is not None and option not in spec["traits"]:
                self.problem(["identity", "traits", name, "region_from"], f"{option!r} is not a declared trait")
            traits.append(TraitSpec(name, NORMALISERS[kind] if kind else None, option, kind))
        if spec["required"] not in spec["traits"]:
            self.problem(["identity", "required"], f"{spec['required']!r} is not a declared trait")
        return IdentitySpec(spec["required"], tuple(traits), tuple(spec.get("remember", ["userId", "anonymousId"])),
                            spec.get("memory_limit", DEFAULT_MEMORY_LIMIT))

    def _compile_expressions_anyway(self) -> None:
        actions = self.data.get("actions")
        for name, action in (actions.items() if isinstance(actions, dict) else []):
            if not isinstance(action, dict):
                continue
            candidates: list[tuple[list[PathPart], Any]] = [(["actions", name, "mapping"], action.get("mapping"))]
            upsert = action.get("upsert") if isinstance(action.get("upsert"), dict) else {}
            for part, key in (("lookup", "query"), ("lookup", "found"), ("update", "body")):
                section = upsert.get(part) if isinstance(upsert.get(part), dict) else {}
                candidates.append((["actions", name, "upsert", part, key], section.get(key)))
            for path, source in candidates:
                if isinstance(source, str) and source:
                    self._expression(path, source)

    def _expression(self, path: list[PathPart], source: str) -> Expression | None:
        try:
            return Expression.compile(source, self.limits, self.backend)
        except ExpressionError as exc:
            if exc.position is not None:
                # JSONata reports the offset just past the offending token.
                loc = self.doc.locate_in_scalar(path, max(exc.position - 1, 0))
                where, at = f"{loc.line}:{loc.col}", f" at position {exc.position}"
            else:
                loc = self.doc.locate(path)
                where, at = f"{loc.line}:{loc.col}", ""
            self.problems.append((loc.line, loc.col,
                                  f"{self.doc.path}:{where}: {format_path(path)}: JSONata syntax error{at}: {exc}"))
            return None

    def _template(self, path: list[PathPart], source: str, allowed: list[str]) -> Template | None:
        try:
            return Template.compile(source, allowed)
        except TemplateError as exc:
            self.problem(path, str(exc))
            return None

    def _action(self, name: str, spec: Mapping[str, Any], settings: Mapping[str, SettingSpec]) -> ActionSpec:
        base = ["actions", name]
        setting_names = [f"settings.{s}" for s, sp in settings.items() if not sp.secret]
        mapping = self._expression(base + ["mapping"], spec["mapping"])
        req = spec["request"]
        url = self._template(base + ["request", "url"], req["url"], setting_names)
        output = spec.get("output", {})
        contract = None
        if output.get("schema"):
            schema_path = resources.output_schema_path(output["schema"])
            try:
                contract = OutputContract.load(output["schema"], schema_path, strict=self.strict,
                                               checked=(self.checked_schemas or {}).get(output["schema"]))
                self.schema_digests[output["schema"]] = contract.digest
            except (OSError, ValueError) as exc:
                self.problem(base + ["output", "schema"], f"cannot load output schema {schema_path}: {exc}")
        upsert = None
        if "upsert" in spec:
            up = spec["upsert"]
            lookup, update = up["lookup"], up["update"]
            upsert = UpsertSpec(
                lookup["method"], self._template(base + ["upsert", "lookup", "url"], lookup["url"], setting_names),
                self._expression(base + ["upsert", "lookup", "query"], lookup["query"]) if "query" in lookup else None,
                self._expression(base + ["upsert", "lookup", "found"], lookup["found"]),
                update["method"], self._template(base + ["upsert", "update", "url"], update["url"], setting_names + ["found"]),
                self._expression(base + ["upsert", "update", "body"], update["body"]),
            )  # type: ignore[arg-type]
        return ActionSpec(name, mapping, RequestSpec(req["method"], url, dict(req.get("headers", {}))),  # type: ignore[arg-type]
                          contract, output.get("omit_empty", True), output.get("truncate_to_schema", True), upsert)

    def _check_events(self, spec: Mapping[str, Any], actions: Mapping[str, ActionSpec]) -> None:
        entries: list[tuple[list[PathPart], Mapping[str, Any]]] = [
            (["events", "track", n], e) for n, e in (spec.get("track") or {}).items()]
        entries += [(["events", t], spec[t]) for t in ("identify", "page", "screen", "group") if t in spec]
        seen: dict[str, str] = {}
        for path, entry in entries:
            if entry["action"] != "drop" and entry["action"] not in actions:
                self.problem(path + ["action"], f"unknown action {entry['action']!r} (defined: {', '.join(sorted(actions))}, or drop)")
            if path[1] == "track":
                for i, alias in enumerate([path[2], *entry.get("aliases", [])]):
                    if alias in seen and seen[alias] != path[2]:
                        self.problem(path + (["aliases", i - 1] if i else []),
                                     f"event name {alias!r} is already used by {seen[alias]!r}")
                    seen[str(alias)] = str(path[2])

    def _auth(self, spec: Mapping[str, Any] | None, settings: Mapping[str, SettingSpec]) -> AuthSpec | None:
        if spec is None:
            return None
        for key in ("client_id_setting", "client_secret_setting", "refresh_token_setting"):
            if spec[key] not in settings:
                self.problem(["auth", key], f"{spec[key]!r} is not a declared setting")
        for key in ("client_secret_setting", "refresh_token_setting"):
            if spec[key] in settings and not settings[spec[key]].secret:
                self.problem(["settings", spec[key]], f"used as auth.{key}, so it must be marked secret: true")
        setting_names = [f"settings.{s}" for s, sp in settings.items() if not sp.secret]
        url = self._template(["auth", "token_url"], spec["token_url"], setting_names)
        return AuthSpec(url, spec["client_id_setting"], spec["client_secret_setting"], spec["refresh_token_setting"],  # type: ignore[arg-type]
                        spec.get("rotates_refresh_token", True), spec["header"], spec["value"],
                        float(spec.get("refresh_before_expiry_seconds", 60)), build_rules(spec.get("errors", [])))

    def _delivery(self, spec: Mapping[str, Any]) -> DeliverySpec:
        rl = spec["rate_limit"]
        headers = rl.get("headers", {})
        backoff = spec["retries"].get("backoff", {})
        for i, rule in enumerate(spec["responses"]):
            if rule["then"] == "upsert" and not any("upsert" in a for a in self.data["actions"].values()):
                self.problem(["delivery", "responses", i, "then"], "upsert needs an action with an upsert: section")
        return DeliverySpec(
            float(spec.get("timeout_seconds", 30)), int(spec.get("concurrency", 8)),
            RateLimitSpec(rl["requests"], float(rl["per_seconds"]), headers.get("remaining"), headers.get("reset"),
                          headers.get("retry_after")),
            RetrySpec(spec["retries"]["max_attempts"], float(backoff.get("initial_seconds", 0.5)),
                      float(backoff.get("multiplier", 2)), float(backoff.get("max_seconds", 60)), backoff.get("jitter", "full")),
            build_rules(spec["responses"]),
        )


def _expression_limits(data: Any) -> ExpressionLimits:
    """``limits.expression`` over the defaults; the schema has checked the values when it matters."""
    limits = data.get("limits") if isinstance(data, dict) else None
    given = limits.get("expression") if isinstance(limits, dict) else None
    if not isinstance(given, dict):
        return DEFAULT_LIMITS
    values = {name: value for name, value in given.items()
              if name in ExpressionLimits.__dataclass_fields__ and isinstance(value, int) and not isinstance(value, bool)
              and value > 0}
    return ExpressionLimits(**{**DEFAULT_LIMITS.__dict__, **values})
