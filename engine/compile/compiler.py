"""Load a preset: validate it against the preset language, compile it, report every problem.

A preset is authored by people who do not write Python, so this module's
job is mostly error reporting: all problems at once, each as
``file:line:col: yaml.path: message``, including JSONata syntax errors at
their exact position. Nothing in here knows about any destination.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .. import outcome as oc
from ..language import resources
from ..language.expressions import (
    DEFAULT_LIMITS,
    BackendError,
    Expression,
    ExpressionError,
    ExpressionLimits,
    selected_backend,
)
from ..language.model import (
    DEFAULT_DEDUPE_WINDOW_SECONDS,
    DEFAULT_IDENTITY_MAX_BYTES,
    DEFAULT_IDENTITY_TTL_DAYS,
    DEFAULT_MAX_TRAIT_BYTES,
    ActionSpec,
    AuthSpec,
    BatchSpec,
    Contract,
    DeliverySpec,
    EventRoute,
    EventsSpec,
    FlowStep,
    IdentitySpec,
    LookupSpec,
    OutputSpec,
    Preset,
    RateLimitSpec,
    RequestSpec,
    RetrySpec,
    RuleSpec,
    TraitSpec,
    UpsertSpec,
)
from ..language.settings import SettingSpec
from ..language.templates import TOKEN_ROOT, Template, TemplateError
from ..pipeline.event_shape import EVENT_TYPES
from ..pipeline.normalisers import NORMALISERS
from ..pipeline.output_contract import OutputContract
from . import preset_cache
from .expression_facts import MISSING, ExpressionFacts, roots_key

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError

    from ..language.yaml_source import PathPart, YamlDocument


# Bounds on what one preset's JSONata may cost to compile and check. The built-in presets' longest
# expression is about 1,500 characters and all of theirs together about 4,000; checking costs about
# 15 µs a character (the reference parser and the static checks), so these keep a hostile preset to
# seconds, where a 1 MB expression took minutes.
MAX_EXPRESSION_CHARS = 16_384
MAX_EXPRESSIONS_CHARS = 131_072
# Static-check problems reported per expression; past this, one line says how many more there are.
MAX_FINDINGS_PER_EXPRESSION = 20
# Fields of an OAuth token answer that are credentials (RFC 6749 §5.1, OpenID Connect's id_token):
# auth.token_values may not name them, so no template can put one in a URL or a header.
SECRET_TOKEN_FIELDS = frozenset({"access_token", "refresh_token", "id_token"})


def format_path(path: list[PathPart]) -> str:
    """``yaml_source.format_path``; that module (and its dataclasses) is imported only to report a problem."""
    from ..language.yaml_source import format_path as format_yaml_path

    return format_yaml_path(path)


class PresetError(Exception):
    """A preset cannot be used. ``problems`` holds one located line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@lru_cache(maxsize=1)
def _preset_validator() -> Draft202012Validator:
    from jsonschema import (
        Draft202012Validator,  # only when a preset is not in the preset cache
    )

    schema = json.loads(resources.preset_schema_path().read_text(encoding="utf-8"))
    return Draft202012Validator(schema)


@lru_cache(maxsize=1)
def _preset_gate() -> Any:
    """jsonschema-rs over the preset language: a yes/no in microseconds, where importing jsonschema alone
    costs ~60 ms. jsonschema still words every problem, but only for a preset this gate refuses."""
    try:
        import jsonschema_rs

        schema = json.loads(resources.preset_schema_path().read_text(encoding="utf-8"))
        return jsonschema_rs.Draft202012Validator(schema)
    except Exception:  # noqa: BLE001 - no gate: jsonschema decides alone, as before
        return None


def _preset_schema_errors(data: Any, *, strict: bool) -> Iterator[ValidationError]:
    """The preset's problems against the preset language, worded by jsonschema.

    ``strict`` (``check``) always asks jsonschema; otherwise a preset the gate
    accepts is not shown to jsonschema at all.
    """
    gate = None if strict else _preset_gate()
    if gate is not None:
        try:
            if gate.is_valid(data):
                return iter(())
        except Exception:  # noqa: BLE001 - a value the gate cannot read (an integer beyond 64 bits): ask jsonschema
            pass
    return _preset_validator().iter_errors(data)


def load_preset(name_or_path: str, preset_path: Sequence[str | Path] = (), *, strict: bool = False) -> Preset:
    """Load a preset by name (looked up in ``preset_path``, ``$SIGNAL_ENGINE_PRESET_PATH``, then the
    built-in ones) or a preset file by path; raise :class:`PresetError`.

    ``strict`` (``check``) bypasses the preset cache and also checks each
    output schema against its meta-schema with jsonschema, which is too slow
    for every start.
    """
    path = resources.find_preset(name_or_path, preset_path)
    if not path.exists():
        known = ", ".join(resources.known_presets(preset_path))
        raise PresetError([f"{name_or_path}: no such preset file or preset name (known: {known})"])
    try:
        backend = selected_backend()
    except BackendError as exc:
        raise PresetError([str(exc)]) from None
    source = preset_cache.read(path)
    cached = preset_cache.lookup(source) if source is not None and not strict else None
    if cached is not None:
        document: Any = cached  # stands in for a YamlDocument: it parses the YAML only to locate a problem
        return _Compiler(document, backend, checked_schemas=cached.schemas, plans=cached.plans).compile()
    # Not in the cache: libyaml reads the data when it can be sure of it (yaml_plain); ruamel.yaml's
    # round trip, which knows every value's line, then runs only if a problem must be located.
    from ..language import yaml_plain  # only for a preset not in the cache

    text = source.text if source is not None else None
    plain = yaml_plain.plain_data(text) if text is not None else None
    if plain is not None and text is not None:
        doc: Any = preset_cache.CachedDocument(str(path), text, plain)
    else:
        from ..language.yaml_source import YamlSourceError, load_yaml

        try:
            doc = load_yaml(path, text)
        except YamlSourceError as exc:
            raise PresetError([str(exc)]) from None
    # ``check`` (strict) checks every expression afresh; a run trusts what earlier loads learnt about each.
    facts = ExpressionFacts(None, "") if strict else ExpressionFacts.for_backend(backend)
    compiler = _Compiler(doc, backend, strict=strict, facts=facts)
    try:
        preset = compiler.compile()
    finally:
        compiler.facts.save()  # what it learnt about each expression holds whatever the verdict
    if source is not None:
        preset_cache.store(source, compiler.data, compiler.schema_digests, compiler.plans)
    return preset


class _Compiler:
    """Turns one YAML document into a :class:`Preset`, collecting problems as it goes."""

    def __init__(
        self,
        doc: YamlDocument,
        backend: str | None = None,
        *,
        strict: bool = False,
        checked_schemas: Mapping[str, str] | None = None,
        plans: Mapping[str, Any] | None = None,
        facts: ExpressionFacts | None = None,
    ) -> None:
        self.doc = doc
        self.strict = strict
        # From the preset cache: the preset already passed the preset schema and
        # the static checks, and these output schemas (name -> digest) their meta-schema.
        self.checked_schemas = checked_schemas
        self.schema_digests: dict[str, str] = {}
        # Plain templates' fast-path plans by expression text: planned here, or read from the preset cache.
        self.plans: dict[str, Any] = dict(plans) if plans is not None else {}
        # What earlier loads learnt about each expression text (expression_facts); none for a cached preset.
        self.facts = facts if facts is not None else ExpressionFacts(None, "")
        self.data = doc.data()
        self.problems: list[tuple[int, int, str]] = []
        self.expression_sizes: dict[tuple[PathPart, ...], int] = {}  # each site once, however often compiled
        self.backend = backend
        self.limits = _expression_limits(self.data)

    # -- reporting -----------------------------------------------------
    def problem(self, path: list[PathPart], message: str, *, key: bool = False) -> None:
        loc = self.doc.locate(path, key=key)
        self.problems.append(
            (loc.line, loc.col, f"{self.doc.path}:{loc.line}:{loc.col}: {format_path(path)}: {message}")
        )

    def fail_if_problems(self) -> None:
        if self.problems:
            ordered = sorted(set(self.problems))
            raise PresetError([text for _, _, text in ordered])

    # -- stages --------------------------------------------------------
    def compile(self) -> Preset:
        if not isinstance(self.data, dict):
            raise PresetError([f"{self.doc.path}:1:1: (root): a preset must be a YAML mapping"])
        for error in _preset_schema_errors(self.data, strict=self.strict) if self.checked_schemas is None else ():
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
        settings = {
            name: SettingSpec(
                name,
                s["type"],
                s.get("required", False),
                s.get("secret", False),
                s.get("default"),
                s.get("description", ""),
            )
            for name, s in data["settings"].items()
        }
        self.settings = settings
        self._check_settings(settings)
        identity = self._identity(data["identity"])
        self.trait_names = [t.name for t in identity.traits]
        consent_setting = data["consent"]["categories_setting"]
        if settings.get(consent_setting) is None or settings[consent_setting].type != "string_list":
            self.problem(["consent", "categories_setting"], f"must name a string_list setting, got {consent_setting!r}")
        self._check_events(data["events"], data["actions"])
        declared = (data.get("auth") or {}).get("token_values") if isinstance(data.get("auth"), dict) else None
        self.token_values = tuple(str(v) for v in declared) if isinstance(declared, list) else ()
        actions = {name: self._action(name, spec) for name, spec in data["actions"].items()}
        auth = self._auth(data.get("auth"))
        if auth is not None and auth.authorize_url is not None and auth.refresh_token_setting in settings:
            # `signal-engine auth` can store the refresh token in the state instead.
            name = auth.refresh_token_setting
            settings[name] = dataclasses.replace(settings[name], stored=True)
        delivery = self._delivery(data["delivery"])
        return Preset(
            name=data["preset"],
            path=self.doc.path,
            metadata=data["metadata"],
            settings=settings,
            identity=identity,
            consent_setting=consent_setting,
            consent_aliases=data["consent"].get("aliases", {}),
            events=events_spec(data["events"]),
            actions=actions,
            auth=auth,
            delivery=delivery,
            raw=data,
            expression_limits=self.limits,
        )

    def _schema_problem(self, error: ValidationError) -> None:
        path = list(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            allowed = set(error.schema.get("properties", {}) if isinstance(error.schema, Mapping) else ())
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
        checks = {
            "string": lambda v: isinstance(v, str),
            "url": lambda v: isinstance(v, str),
            "string_list": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
            "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "boolean": lambda v: isinstance(v, bool),
        }
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
        # memory_limit (a count of ids) is still accepted and ignored: the bounds are now age and bytes.
        return IdentitySpec(
            spec["required"],
            tuple(traits),
            tuple(spec.get("remember", ["userId", "anonymousId"])),
            float(spec.get("ttl_days", DEFAULT_IDENTITY_TTL_DAYS)),
            int(spec.get("max_bytes", DEFAULT_IDENTITY_MAX_BYTES)),
            int(spec.get("max_trait_bytes", DEFAULT_MAX_TRAIT_BYTES)),
        )

    def _compile_expressions_anyway(self) -> None:
        """Report syntax errors in every JSONata site even when the structure around it is broken."""
        for path, source in _expression_sites(self.data):
            if isinstance(source, str) and source:
                self._compile_expression(path, source)

    def _compile_expression(self, path: list[PathPart], source: str) -> Expression | None:
        if not self._within_expression_bounds(path, source):
            return None
        try:
            # A cached preset's expressions compiled when it was stored: jsonatapy is then
            # imported and each expression compiled by the first event that needs it.
            limits = tuple(sorted(self.limits.__dict__.items()))
            known = self.checked_schemas is not None or self.facts.get("compiles", source, limits) is True
            compiled = Expression.compile(source, self.limits, self.backend, checked=known, plan=self._plan(source))
            self.facts.put(True, "compiles", source, limits)
            return compiled
        except ExpressionError as exc:
            if exc.position is not None:
                # JSONata reports the offset just past the offending token.
                loc = self.doc.locate_in_scalar(path, max(exc.position - 1, 0))
                where, at = f"{loc.line}:{loc.col}", f" at position {exc.position}"
            else:
                loc = self.doc.locate(path)
                where, at = f"{loc.line}:{loc.col}", ""
            self.problems.append(
                (loc.line, loc.col, f"{self.doc.path}:{where}: {format_path(path)}: JSONata syntax error{at}: {exc}")
            )
            return None

    def _plan(self, source: str) -> Any:
        """The fast-path plan of a plain template or predicate (None for any other expression); each text
        planned once."""
        if self.checked_schemas is not None:
            return self.plans.get(source)  # planned when the cached preset was stored
        if source not in self.plans:
            plan = self.facts.get("plan", source)
            if plan is MISSING:
                plan = fast_path_plan(source)
                self.facts.put(plan, "plan", source)
            self.plans[source] = plan
        return self.plans[source]

    def _within_expression_bounds(self, path: list[PathPart], source: str) -> bool:
        if len(source) > MAX_EXPRESSION_CHARS:
            self.problem(
                path,
                f"the expression holds {len(source):,} characters; an expression may hold at most "
                f"{MAX_EXPRESSION_CHARS:,}",
            )
            return False
        before = sum(self.expression_sizes.values())
        self.expression_sizes[tuple(path)] = len(source)
        total = sum(self.expression_sizes.values())
        if total > MAX_EXPRESSIONS_CHARS:
            if before <= MAX_EXPRESSIONS_CHARS:  # said once, where the budget ran out
                self.problem(
                    path,
                    f"the preset's expressions hold more than {MAX_EXPRESSIONS_CHARS:,} characters "
                    "together; this one and the ones after it are not compiled",
                )
            return False
        return True

    def _expression(self, path: list[PathPart], source: str, roots: Mapping[str, Any], what: str) -> Expression | None:
        """Compile, then check statically what the expression reads against what its input holds."""
        compiled = self._compile_expression(path, source)
        if compiled is None or self.checked_schemas is not None:
            return compiled  # a cached preset passed these checks when it was stored
        secrets = frozenset(n for n, s in self.settings.items() if s.secret)
        key = ("findings", source, roots_key(roots), tuple(sorted(secrets)), what)
        findings = self.facts.get(*key)
        if findings is MISSING:
            # Only for an expression no earlier load has checked (about 2 ms to import).
            from ..language.expression_check import InputShape, analyse

            findings = tuple((f.position, f.message) for f in analyse(source, InputShape(roots, secrets, what)))
            self.facts.put(findings, *key)
        for position, message in findings[:MAX_FINDINGS_PER_EXPRESSION]:
            loc = self.doc.locate_in_scalar(path, position)
            self.problems.append(
                (loc.line, loc.col, f"{self.doc.path}:{loc.line}:{loc.col}: {format_path(path)}: {message}")
            )
        if len(findings) > MAX_FINDINGS_PER_EXPRESSION:
            loc = self.doc.locate_in_scalar(path, findings[MAX_FINDINGS_PER_EXPRESSION][0])
            self.problems.append(
                (
                    loc.line,
                    loc.col,
                    f"{self.doc.path}:{loc.line}:{loc.col}: {format_path(path)}: "
                    f"and {len(findings) - MAX_FINDINGS_PER_EXPRESSION:,} more problem(s) like these "
                    "in this expression",
                )
            )
        return compiled

    # What each kind of expression sees as its input (None: any field).
    def _public_settings(self) -> list[str]:
        return [n for n, s in self.settings.items() if not s.secret]

    def _mapping_roots(self, action: str) -> dict[str, Any]:
        return {
            "event": None,
            "traits": self.trait_names,
            "values": self.values_by_action.get(action, set()),
            "settings": self._public_settings(),
        }

    def _upsert_roots(self, action: str, *extra: str) -> dict[str, Any]:
        roots = {
            "document": None,
            "traits": self.trait_names,
            "values": self.values_by_action.get(action, set()),
            "settings": self._public_settings(),
            "conflict": None,
        }
        roots.update(dict.fromkeys(extra))
        return roots

    RESPONSE_ROOTS: ClassVar[dict[str, None]] = {"status": None, "headers": None, "body": None}

    def _template(
        self, path: list[PathPart], source: str, roots: tuple[str, ...] = (), *, secrets_allowed: bool = False
    ) -> Template | None:
        """Compile a template; every placeholder must name something this place provides.

        ``settings.X`` must be a declared setting that is required or has a
        default (otherwise a live run would abort before any outcome), and,
        outside ``auth:``, not a secret one.
        """
        try:
            template = Template.compile(source)
        except TemplateError as exc:
            self.problem(path, str(exc))
            return None
        for fields in template.fields:
            label = "{" + ".".join(fields) + "}"
            if fields[0] == "settings":
                name = fields[1] if len(fields) > 1 else ""
                spec = self.settings.get(name)
                if spec is None:
                    known = ", ".join("{settings." + n + "}" for n in self._public_settings())
                    self.problem(path, f"unknown placeholder {label} (allowed here: {known})")
                elif spec.secret and not secrets_allowed:
                    self.problem(path, f"{label} is a secret setting; secrets are only usable in auth:")
                elif not spec.required and spec.default is None:
                    self.problem(path, f"{label} needs the setting {name!r} to be required: true or to have a default")
            elif fields[0] == TOKEN_ROOT and path[0] != "auth":
                self._check_token_placeholder(path, fields)
            elif fields[0] not in roots:
                allowed = ", ".join(["{settings.*}", *("{" + r + ".*}" for r in roots)])
                self.problem(path, f"unknown placeholder {label} (allowed here: {allowed})")
        return template

    def _check_token_placeholder(self, path: list[PathPart], fields: tuple[str, ...]) -> None:
        """``{token.NAME}``: a value of the token answer, which ``auth.token_values`` must declare."""
        label = "{" + ".".join(fields) + "}"
        declared = getattr(self, "token_values", ())
        if len(fields) != 2:
            self.problem(path, f"{label}: a token value is one name, {{token.NAME}}")
        elif not declared:
            self.problem(
                path,
                f"{label} reads the token answer, but auth declares no token_values "
                "(an OAuth auth kind lists the fields of its token answer there)",
            )
        elif fields[1] not in declared:
            self.problem(path, f"{label} is not in auth.token_values (declared: {', '.join(declared)})")

    def _headers(
        self, path: list[PathPart], spec: Mapping[str, str], roots: tuple[str, ...] = ()
    ) -> dict[str, Template]:
        return {
            name: t for name, source in spec.items() if (t := self._template(path + [name], source, roots)) is not None
        }

    def _action(self, name: str, spec: Mapping[str, Any]) -> ActionSpec:
        base: list[PathPart] = ["actions", name]
        mapping = self._expression(base + ["mapping"], spec["mapping"], self._mapping_roots(name), "the mapping")
        flow = self._flow(base + ["flow"], name, spec) if "flow" in spec else ()
        if flow:
            request = flow[0].request
        else:
            req = spec["request"]
            request = RequestSpec(
                req["method"],
                self._template(base + ["request", "url"], req["url"]),  # type: ignore[arg-type]
                self._headers(base + ["request", "headers"], req.get("headers", {})),
            )
        output = self._output(base + ["output"], spec.get("output", {}))
        self._check_result_keys(base + ["mapping"], spec["mapping"], output.contract)
        upsert = self._upsert(base + ["upsert"], name, spec["upsert"]) if "upsert" in spec else None
        if upsert is not None and "upsert" in spec:
            self._check_result_keys(
                base + ["upsert", "update", "body"],
                spec["upsert"]["update"]["body"],
                upsert.update_output.contract if upsert.update_output else output.contract,
            )
        batch = self._batch(base + ["batch"], spec) if "batch" in spec else None
        return ActionSpec(
            name,
            mapping,  # type: ignore[arg-type]
            request,
            output.contract,
            output.omit_empty,
            output.truncate,
            upsert,
            flow,
            batch,
        )

    def _batch(self, base: list[PathPart], spec: Mapping[str, Any]) -> BatchSpec | None:
        """An action's ``batch``: how many documents go in one request, and how each one's result is read."""
        for other in ("upsert", "flow"):
            if other in spec:
                self.problem(base, f"an action with a batch has no {other}: a batch is one request for many events")
        batch = spec["batch"]
        body = self._expression(
            base + ["body"], batch["body"], {"items": None, "settings": self._public_settings()}, "the batch body"
        )
        item_error = (
            self._expression(
                base + ["item_error"],
                batch["item_error"],
                {**self.RESPONSE_ROOTS, "item": None, "index": None},
                "batch.item_error",
            )
            if "item_error" in batch
            else None
        )
        if body is None:
            return None
        return BatchSpec(int(batch["max_items"]), float(batch.get("max_wait_seconds", 1.0)), body, item_error)

    FLOW_TEMPLATE_ROOTS = ("document", "traits", "values", "steps")

    def _flow(self, base: list[PathPart], action: str, spec: Mapping[str, Any]) -> tuple[FlowStep, ...]:
        """An action's ``flow``: named steps, each reading the answers of the steps before it."""
        if "upsert" in spec:
            self.problem(
                base[:-1] + ["upsert"],
                "an action with a flow has no upsert: write the lookup, the update "
                "and the create as steps (with when:)",
            )
        if "request" in spec:
            self.problem(base[:-1] + ["request"], "an action with a flow has no request: its steps are its requests")
        steps: list[FlowStep] = []
        for i, item in enumerate(spec["flow"]):
            where = base + [i]
            name = item["name"]
            earlier = [s.name for s in steps]
            if name in earlier:
                self.problem(where + ["name"], f"step name {name!r} is already used by an earlier step")
            if i == 0 and "when" in item:
                self.problem(
                    where + ["when"],
                    "the first step always runs (which events run the action is the "
                    "event table's choice); give when: to a later step",
                )
            roots = {**self._upsert_roots(action), "steps": earlier}
            del roots["conflict"]
            if not earlier:
                del roots["steps"]
            what = f"flow step {name!r}"
            when = self._expression(where + ["when"], item["when"], roots, what) if "when" in item else None
            body = self._expression(where + ["body"], item["body"], roots, what) if "body" in item else None
            req = item["request"]
            template_roots = self.FLOW_TEMPLATE_ROOTS if earlier else self.FLOW_TEMPLATE_ROOTS[:-1]
            url = self._template(where + ["request", "url"], req["url"], template_roots)
            headers = self._headers(where + ["request", "headers"], req.get("headers", {}), template_roots)
            templates = [t for t in (url, *headers.values()) if t is not None]
            for template in templates:
                for fields in template.fields:
                    if fields[0] == "steps" and len(fields) > 1 and fields[1] not in earlier:
                        self.problem(
                            where + ["request"],
                            f"{{{'.'.join(fields)}}}: no earlier step is named "
                            f"{fields[1]!r} (earlier: {', '.join(earlier) or 'none'})",
                        )
            reads = any(f[0] == "steps" for t in templates for f in t.fields) or any(
                re.search(r"\bsteps\b", item.get(key) or "") for key in ("when", "body")
            )
            rules = self._rules(where + ["responses"], item.get("responses", []))
            steps.append(FlowStep(name, RequestSpec(req["method"], url, headers), body, when, rules, reads))  # type: ignore[arg-type]
        return tuple(steps)

    def _check_result_keys(self, path: list[PathPart], source: str, contract: Contract | None) -> None:
        """A literal key the output schema forbids would fail every event as output_invalid: say so at the key."""
        if contract is None or self.checked_schemas is not None or not isinstance(source, str):
            return
        uses = self.facts.get("result_keys", source)
        if uses is MISSING:
            from ..language.expression_check import result_keys  # only for a preset not in the cache

            uses = tuple((tuple(use.path), use.key, use.position) for use in result_keys(source))
            self.facts.put(uses, "result_keys", source)
        for key_path, key, position in uses:
            allowed = contract.forbidden_key(key_path, key)
            if allowed is None:
                continue
            where = "/" + "/".join(key_path) if key_path else "the top level"
            loc = self.doc.locate_in_scalar(path, position)
            self.problems.append(
                (
                    loc.line,
                    loc.col,
                    f"{self.doc.path}:{loc.line}:{loc.col}: {format_path(path)}: "
                    f"key {key!r} is not allowed by the output schema {contract.name} at {where} "
                    f"(additionalProperties: false; allowed: {', '.join(allowed) or 'none'})",
                )
            )

    def _output(self, path: list[PathPart], spec: Mapping[str, Any]) -> OutputSpec:
        contract = None
        if spec.get("schema"):
            schema_path = resources.output_schema_path(spec["schema"], Path(self.doc.path).parent)
            try:
                contract = OutputContract.load(
                    spec["schema"],
                    schema_path,
                    strict=self.strict,
                    checked=(self.checked_schemas or {}).get(spec["schema"]),
                )
                self.schema_digests[spec["schema"]] = contract.digest
            except (OSError, ValueError) as exc:
                self.problem(path + ["schema"], f"cannot load output schema {schema_path}: {_one_line(exc)}")
        return OutputSpec(contract, spec.get("omit_empty", True), spec.get("truncate_to_schema", True))

    def _upsert(self, base: list[PathPart], action: str, spec: Mapping[str, Any]) -> UpsertSpec:
        strategy = spec.get("strategy", "on_conflict")
        lookup = None
        if "lookup" in spec:
            lk = spec["lookup"]
            where = base + ["lookup"]
            roots = self._upsert_roots(action)
            json_query = frozenset(lk.get("json_query", []))
            query = None
            if "query" in lk:
                query = self._expression(where + ["query"], lk["query"], roots, "the lookup query")
                self._check_query_shape(where, lk["query"], json_query)
            lookup = LookupSpec(
                lk["method"],
                self._template(where + ["url"], lk["url"], ("document", "traits", "conflict")),  # type: ignore[arg-type]
                self._headers(where + ["headers"], lk.get("headers", {}), ("document", "traits", "conflict")),
                query,
                json_query,
                self._expression(where + ["body"], lk["body"], roots, "the lookup body") if "body" in lk else None,
            )
        elif strategy == "lookup_first":
            self.problem(base, "strategy lookup_first needs a lookup: section (how to search before creating)")
        found_roots = self._upsert_roots(action, "lookup") if lookup else self._upsert_roots(action)
        found = self._expression(base + ["found"], spec["found"], found_roots, "upsert.found")
        up = spec["update"]
        update_roots = ("document", "traits", "conflict", "found") + (("lookup",) if lookup else ())
        update = RequestSpec(
            up["method"],
            self._template(base + ["update", "url"], up["url"], update_roots),  # type: ignore[arg-type]
            self._headers(base + ["update", "headers"], up.get("headers", {}), update_roots),
        )
        body = self._expression(
            base + ["update", "body"],
            up["body"],
            self._upsert_roots(action, "found", *(("lookup",) if lookup else ())),
            "the update body",
        )
        key = (
            self._expression(base + ["key"], spec["key"], self._upsert_roots(action), "upsert.key")
            if "key" in spec
            else None
        )
        update_output = self._output(base + ["update", "output"], up["output"]) if "output" in up else None
        return UpsertSpec(strategy, lookup, found, update, body, key, update_output)  # type: ignore[arg-type]

    def _check_query_shape(self, where: list[PathPart], source: str, json_query: frozenset[str]) -> None:
        """A nested object cannot be a query parameter unless it is declared to be sent as JSON."""
        if self.checked_schemas is not None:
            return  # checked when the cached preset was stored
        objects = self.facts.get("query_objects", source)
        if objects is MISSING:
            objects = _object_valued_keys(source)
            self.facts.put(objects, "query_objects", source)
        for name in objects:
            if name not in json_query:
                self.problem(
                    where + ["query"],
                    f"query parameter {name!r} is an object: list it in json_query to send it as JSON",
                )

    def _check_events(self, spec: Mapping[str, Any], actions: Mapping[str, Any]) -> None:
        entries: list[tuple[list[PathPart], Mapping[str, Any]]] = [
            (["events", "track", n], e) for n, e in (spec.get("track") or {}).items()
        ]
        entries += [(["events", t], spec[t]) for t in ("identify", "page", "screen", "group") if t in spec]
        seen: dict[str, str] = {}
        self.values_by_action: dict[str, set[str]] = {}
        for path, entry in entries:
            self.values_by_action.setdefault(entry["action"], set()).update(entry.get("values") or {})
            if entry["action"] != "drop" and entry["action"] not in actions:
                self.problem(
                    path + ["action"],
                    f"unknown action {entry['action']!r} (defined: {', '.join(sorted(actions))}, or drop)",
                )
            if path[1] == "track":
                for i, alias in enumerate([path[2], *entry.get("aliases", [])]):
                    if alias in seen and seen[alias] != path[2]:
                        self.problem(
                            path + (["aliases", i - 1] if i else []),
                            f"event name {alias!r} is already used by {seen[alias]!r}",
                        )
                    seen[str(alias)] = str(path[2])

    def _auth(self, spec: Mapping[str, Any] | None) -> AuthSpec | None:
        if spec is None or spec["type"] == "none":
            return None
        kind = spec["type"]
        rules = self._rules(["auth", "errors"], spec.get("errors", []))
        if kind == "bearer":
            setting = self._secret_setting(["auth", "token_setting"], spec["token_setting"])
            return AuthSpec(
                kind,
                spec.get("header", "Authorization"),
                spec.get("value", "Bearer {token}"),
                credential_setting=setting,
            )
        if kind == "api_key":
            setting = self._secret_setting(["auth", "key_setting"], spec["key_setting"])
            return AuthSpec(
                kind, spec["name"], spec.get("value", "{key}"), placement=spec["in"], credential_setting=setting
            )
        if kind == "basic":
            username = self._template(["auth", "username"], spec["username"], secrets_allowed=True)
            password = (
                self._template(["auth", "password"], spec.get("password", ""), secrets_allowed=True)
                if spec.get("password")
                else Template.compile("")
            )
            return AuthSpec(kind, "Authorization", "Basic {credentials}", username=username, password=password)
        # oauth2_refresh_token | oauth2_client_credentials
        for key in ("client_id_setting", "client_secret_setting", "refresh_token_setting"):
            if key in spec and spec[key] not in self.settings:
                self.problem(["auth", key], f"{spec[key]!r} is not a declared setting")
        for key in ("client_secret_setting", "refresh_token_setting"):
            if key in spec:
                self._secret_setting(["auth", key], spec[key])
        return AuthSpec(
            kind,
            spec.get("header", "Authorization"),
            spec.get("value", "Bearer {access_token}"),
            token_url=self._template(["auth", "token_url"], spec["token_url"]),
            client_id_setting=spec["client_id_setting"],
            client_secret_setting=spec["client_secret_setting"],
            refresh_token_setting=spec.get("refresh_token_setting"),
            client_auth=spec.get("client_auth", "form"),
            rotates_refresh_token=spec.get("rotates_refresh_token", True),
            scopes=tuple(spec.get("scopes", [])),
            authorize_url=self._template(["auth", "authorize_url"], spec["authorize_url"])
            if "authorize_url" in spec
            else None,
            echo_redirect_params=tuple(spec.get("echo_redirect_params", [])),
            refresh_before_expiry=float(spec.get("refresh_before_expiry_seconds", 60)),
            rules=rules,
            token_values=self._token_values(spec.get("token_values", [])),
        )

    def _token_values(self, names: list[str]) -> tuple[str, ...]:
        """Token-answer fields a template may read; the tokens themselves stay secret, so they are refused."""
        for i, name in enumerate(names):
            if name in SECRET_TOKEN_FIELDS:
                self.problem(
                    ["auth", "token_values", i],
                    f"{name!r} is a secret of the token answer; only values "
                    "that are not credentials (instance_url, api_domain) may be read",
                )
        return tuple(names)

    def _secret_setting(self, path: list[PathPart], name: str) -> str:
        spec = self.settings.get(name)
        if spec is None:
            self.problem(path, f"{name!r} is not a declared setting")
        elif not spec.secret:
            self.problem(["settings", name], f"used as {format_path(path)}, so it must be marked secret: true")
        elif not spec.required and spec.default is None:
            self.problem(["settings", name], f"used as {format_path(path)}, so it must be required: true")
        return name

    def _rules(self, base: list[PathPart], specs: list[Mapping[str, Any]]) -> tuple[RuleSpec, ...]:
        rules: list[RuleSpec] = []
        for i, spec in enumerate(specs):
            source = spec["when"].get("match")
            match = (
                self._expression(base + [i, "when", "match"], source, self.RESPONSE_ROOTS, "a response rule")
                if source
                else None
            )
            rule = rule_spec(spec, match)
            hider = next((j for j, earlier in enumerate(rules) if _covers(earlier, rule)), None)
            if hider is not None:
                self.problem(
                    base + [i, "when"],
                    f"this rule is never used: {format_path(base + [hider])} above it "
                    "matches every answer this one matches, and the first match decides",
                )
            rules.append(rule)
        return tuple(rules)

    def _rate_window(self, path: list[PathPart], rl: Mapping[str, Any]) -> RateLimitSpec:
        """One rate window: ``delivery.rate_limit`` itself, or one of its ``windows``."""
        headers = rl.get("headers", {})
        if headers.get("window") and headers.get("reset"):
            self.problem(path + ["headers", "window"], "give either reset or window, not both")
        if "window_seconds" in rl and (headers.get("window") or headers.get("reset")):
            self.problem(
                path + ["window_seconds"],
                "window_seconds is for destinations that advertise no reset; this one names a reset or window header",
            )
        if "window_alignment" in rl and "window_seconds" not in rl:
            self.problem(path + ["window_alignment"], "window_alignment needs window_seconds")
        wait = rl.get("wait_from_response")
        return RateLimitSpec(
            rl["requests"],
            float(rl["per_seconds"]),
            _header_name(headers.get("remaining")),
            _header_name(headers.get("reset")),
            headers.get("retry_after"),
            headers.get("reset_format", "epoch_seconds"),
            headers.get("window"),
            headers.get("window_unit", "seconds"),
            self._expression(path + ["wait_from_response"], wait, self.RESPONSE_ROOTS, "wait_from_response")
            if wait
            else None,
            _header_key(headers.get("remaining")),
            _header_key(headers.get("reset")),
            float(rl["window_seconds"]) if "window_seconds" in rl else None,
            rl.get("window_alignment", "rolling"),
            tuple(self._rate_window(path + ["windows", i], w) for i, w in enumerate(rl.get("windows", []))),
        )

    def _order_by(self, source: str | None) -> Expression | None:
        """``delivery.order_by`` sees what every action's ``upsert.key`` sees: document, traits, values, settings."""
        if not source:
            return None
        values: set[str] = set()
        for names in self.values_by_action.values():
            values |= set(names)
        roots = {"document": None, "traits": self.trait_names, "values": values, "settings": self._public_settings()}
        return self._expression(["delivery", "order_by"], source, roots, "delivery.order_by")

    def _delivery(self, spec: Mapping[str, Any]) -> DeliverySpec:
        backoff = spec["retries"].get("backoff", {})
        for i, rule in enumerate(spec["responses"]):
            if rule["then"] == "upsert" and not any("upsert" in a for a in self.data["actions"].values()):
                self.problem(["delivery", "responses", i, "then"], "upsert needs an action with an upsert: section")
        return DeliverySpec(
            float(spec.get("timeout_seconds", 30)),
            int(spec.get("concurrency", 8)),
            self._rate_window(["delivery", "rate_limit"], spec["rate_limit"]),
            RetrySpec(
                spec["retries"]["max_attempts"],
                float(backoff.get("initial_seconds", 0.5)),
                float(backoff.get("multiplier", 2)),
                float(backoff.get("max_seconds", 60)),
                backoff.get("jitter", "full"),
            ),
            self._rules(["delivery", "responses"], spec["responses"]),
            int(spec.get("max_response_bytes", 1_048_576)),
            dedupe_window_seconds=float(spec.get("dedupe_window_seconds", DEFAULT_DEDUPE_WINDOW_SECONDS)),
            order_by=self._order_by(spec.get("order_by")),
        )


def _object_valued_keys(source: str) -> tuple[Any, ...]:
    """The keys of a top-level object constructor whose values are object constructors, in order."""
    import jsonata

    try:
        tree = jsonata.Jsonata(source).ast
    except Exception:  # noqa: BLE001 - syntax already reported
        return ()
    if getattr(tree, "type", None) != "unary" or getattr(tree, "value", None) != "{":
        return ()
    return tuple(
        getattr(key, "value", None)
        for key, value in tree.lhs_object or []
        if getattr(value, "type", None) == "unary" and getattr(value, "value", None) == "{"
    )


def _expression_sites(data: Any) -> list[tuple[list[PathPart], Any]]:
    """Every place the language puts JSONata, for syntax errors reported even in a broken preset."""
    sites: list[tuple[list[PathPart], Any]] = []

    def get(node: Any, *keys: Any) -> Any:
        for key in keys:
            if isinstance(node, dict):
                node = node.get(key)
            elif isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
                node = node[key]
            else:
                return None
        return node

    actions = get(data, "actions")
    for name in actions if isinstance(actions, dict) else []:
        for keys in (
            ("mapping",),
            ("upsert", "lookup", "query"),
            ("upsert", "lookup", "body"),
            ("upsert", "found"),
            ("upsert", "update", "body"),
            ("upsert", "key"),
        ):
            sites.append((["actions", name, *keys], get(actions, name, *keys)))
        for key in ("body", "item_error"):
            sites.append((["actions", name, "batch", key], get(actions, name, "batch", key)))
        flow = get(actions, name, "flow")
        for i in range(len(flow) if isinstance(flow, list) else 0):
            for key in ("when", "body"):
                sites.append((["actions", name, "flow", i, key], get(flow, i, key)))
            rules = get(flow, i, "responses")
            for j in range(len(rules) if isinstance(rules, list) else 0):
                sites.append(
                    (["actions", name, "flow", i, "responses", j, "when", "match"], get(rules, j, "when", "match"))
                )
    for section in (("delivery", "responses"), ("auth", "errors")):
        rules = get(data, *section)
        for i in range(len(rules) if isinstance(rules, list) else 0):
            sites.append(([*section, i, "when", "match"], get(rules, i, "when", "match")))
    sites.append(
        (["delivery", "rate_limit", "wait_from_response"], get(data, "delivery", "rate_limit", "wait_from_response"))
    )
    sites.append((["delivery", "order_by"], get(data, "delivery", "order_by")))
    return sites


def events_spec(spec: Mapping[str, Any]) -> EventsSpec:
    """``events:`` keyed for the first filter: each taken track name and alias, and each other type; drops left out."""
    track: dict[str, EventRoute] = {}
    for name, entry in (spec.get("track") or {}).items():
        if entry["action"] == "drop":
            continue
        route = EventRoute(name, entry["action"], dict(entry.get("values") or {}))
        for key in (name, *entry.get("aliases", [])):
            track[key] = route
    by_type = {
        t: EventRoute(t, spec[t]["action"], dict(spec[t].get("values") or {}))
        for t in EVENT_TYPES
        if t != "track" and t in spec and spec[t]["action"] != "drop"
    }
    return EventsSpec(track, by_type)


def fast_path_plan(source: str) -> Any:
    """A plain template's plan (template_fast_path) or a plain predicate's (predicate_fast_path), or None."""
    from ..language import predicate_fast_path, template_fast_path

    tree = template_fast_path.reference_tree(source)  # parsed once, planned either way
    if tree is None:
        return None
    return template_fast_path.plan_of_tree(tree) or predicate_fast_path.plan_of_tree(tree)


def rule_spec(spec: Mapping[str, Any], match: Expression | None = None) -> RuleSpec:
    """One response rule as the preset wrote it; a single status, error or step becomes a one-item tuple."""
    when = spec["when"]
    status = when.get("status")
    statuses = tuple(status if isinstance(status, list) else ([status] if status is not None else []))
    error = when.get("error")
    errors = tuple(error if isinstance(error, list) else ([error] if error is not None else []))
    detail = when.get("detail_contains")
    step = when.get("step")
    steps = tuple(step if isinstance(step, list) else ([step] if step is not None else []))
    return RuleSpec(
        spec["then"], spec.get("message"), statuses, errors, detail.lower() if detail else None, match, steps
    )


def _covers(earlier: RuleSpec, later: RuleSpec) -> bool:
    """Whether ``earlier`` certainly matches every answer ``later`` can match (so ``later`` is never used).

    Only an earlier rule that looks at nothing but the status and the step
    is judged; anything with a predicate, an error or a text is given the
    benefit of the doubt.
    """
    if earlier.match is not None or earlier.errors or earlier.detail_contains is not None:
        return False
    if any(error in oc.TRANSPORT_ERRORS for error in later.errors):
        return False  # a request with no answer: a status rule never matches it
    if earlier.steps and not (later.steps and set(later.steps) <= set(earlier.steps)):
        return False
    if not earlier.statuses:
        return True
    return bool(later.statuses) and all(any(_status_covers(e, s) for e in earlier.statuses) for s in later.statuses)


def _status_covers(earlier: int | str, later: int | str) -> bool:
    if isinstance(earlier, int):
        return earlier == later
    return str(later)[0] == str(earlier)[0]  # "4xx" covers 404 and "4xx"


def _header_name(ref: Any) -> str | None:
    return ref.get("header") if isinstance(ref, dict) else ref


def _header_key(ref: Any) -> str | None:
    return ref.get("key") if isinstance(ref, dict) else None


def _one_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _expression_limits(data: Any) -> ExpressionLimits:
    """``limits.expression`` over the defaults; the schema has checked the values when it matters."""
    limits = data.get("limits") if isinstance(data, dict) else None
    given = limits.get("expression") if isinstance(limits, dict) else None
    if not isinstance(given, dict):
        return DEFAULT_LIMITS
    values = {
        name: value
        for name, value in given.items()
        if name in ExpressionLimits.__dataclass_fields__
        and isinstance(value, int)
        and not isinstance(value, bool)
        and value > 0
    }
    return ExpressionLimits(**{**DEFAULT_LIMITS.__dict__, **values})
