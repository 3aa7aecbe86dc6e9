"""The one place the engine touches a JSONata implementation.

Everything else sees :class:`Expression` (compile once, evaluate many),
:class:`ExpressionError` and :class:`ExpressionLimitError`. Two engines sit
behind it:

- ``jsonatapy`` (Rust), the default: 10-30x faster than the reference on the
  engine's own mappings;
- ``reference`` (jsonata-python, pure Python), selected with
  ``SIGNAL_ENGINE_JSONATA=reference``. It also locates syntax errors, because
  jsonatapy's carry no position, and it evaluates the rare input jsonatapy
  cannot take (a lone surrogate, an integer beyond 64 bits, a host object
  that is not JSON).

Every evaluation runs under the preset's :class:`ExpressionLimits`: time,
recursion depth, sequence length and the length of the strings produced. A
limit that trips raises :class:`ExpressionLimitError`, so the event fails
with cause ``expression_limit`` and the stream goes on.
"""

from __future__ import annotations

import os
import re
import threading
import time
from typing import Any

from . import predicate_fast_path, template_fast_path
from .records import record

BACKEND_ENV = "SIGNAL_ENGINE_JSONATA"
FAST = "jsonatapy"
REFERENCE = "reference"
BACKENDS = (FAST, REFERENCE)


@record
class ExpressionLimits:
    """Bounds for one evaluation (``limits.expression`` in a preset).

    Presets are data written by people, and events come from anywhere: a
    runaway expression must not hang the host's event loop, and no input may
    make an expression print a gigabyte.
    """

    timeout_ms: int = 1000
    max_depth: int = 400  # nested evaluation frames; a recursive function uses about three per call
    max_sequence_length: int = 100_000
    max_string_length: int = 1_000_000


DEFAULT_LIMITS = ExpressionLimits()


class ExpressionError(Exception):
    """A JSONata expression failed to compile or evaluate.

    ``position`` is where the implementation reports the error: the offset
    just past the offending token (so the token ends at ``position - 1``),
    which a loader turns into file:line:col.
    """

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(message)
        self.position = position


class ExpressionLimitError(ExpressionError):
    """An evaluation hit one of its :class:`ExpressionLimits`; ``limit`` names which."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit


class BackendError(ValueError):
    """``SIGNAL_ENGINE_JSONATA`` names no known engine."""


def selected_backend() -> str:
    """The engine named by ``SIGNAL_ENGINE_JSONATA`` (default: jsonatapy)."""
    value = os.environ.get(BACKEND_ENV, "").strip().lower() or FAST
    if value not in BACKENDS:
        raise BackendError(f"{BACKEND_ENV}={value!r} is not a JSONata engine (use {FAST} or {REFERENCE})")
    return value


# A guard that must act before the string exists: $pad builds a string as
# long as its width argument, so $pad("x", 1e9) would allocate a gigabyte in
# one call, long before a timeout is looked at. The preset's $pad is shadowed
# by a checked one (same signature, so context binding and argument errors
# behave as before) whenever the source can reach it, directly or via $eval.
_LIMIT_MARK = "[expression limit]"
_PAD_GUARD = (
    "($__signal_pad := $pad; "
    "$pad := function($s, $w, $c)<s-ns?:s>{ $abs($w) > {limit} "
    '? $error("' + _LIMIT_MARK + ' max_string_length: $pad would build a string of " & $string($abs($w)) '
    '& " characters (limit {limit})") '
    ": $exists($c) ? $__signal_pad($s, $w, $c) : $__signal_pad($s, $w) }; "
)
_NEEDS_GUARD = re.compile(r"\$(pad|eval)\b")


def _hex_digest(algorithm: str) -> Any:
    def digest(text: str) -> str:
        import hashlib  # by the first $sha256 or $md5: hashlib loads OpenSSL, milliseconds of every start

        return hashlib.new(algorithm, text.encode("utf-8")).hexdigest()

    return digest


# Functions the engine adds to JSONata: conversion APIs want the SHA-256 of a
# normalised email or phone, Mailchimp addresses a member by the MD5 of the
# lower-cased email. Each is the hex (lower-case) digest of the string's UTF-8
# bytes. The host implementation is bound under a private name on both
# engines; the public one is a JSONata lambda in front of it, so both engines
# agree on what a host function cannot say itself: undefined in gives
# undefined out (jsonatapy turns a host's None into null), a non-string is a
# T0410 signature error, and the context binds (``email.$sha256()``).
HOST_FUNCTIONS = {"sha256": _hex_digest("sha256"), "md5": _hex_digest("md5")}
_HOST_NAME = "__signal_{}"
_NEEDS_HOST = re.compile(r"\$(" + "|".join(HOST_FUNCTIONS) + r"|eval)\b")
_HOST_PROLOGUE = "(" + "".join(
    f"${name} := function($s)<s-:s>{{ $exists($s) ? ${_HOST_NAME.format(name)}($s) }}; " for name in HOST_FUNCTIONS
)
_CODE = re.compile(r"^(?:[A-Za-z ]+: )*([A-Z]\d{4})\b")

# Error codes of the engines' own guards.
_LIMIT_CODES = {"D1011": "max_depth", "D1012": "timeout_ms", "D2015": "max_sequence_length"}

# Compiled jsonatapy expressions may only be used, and dropped, on the thread
# that compiled them (anything else raises pyo3's PanicException, which
# escapes ``except Exception``, or prints a traceback when an object is freed
# elsewhere). So each thread compiles its own copy on first use and keeps it
# in a cache that belongs to that thread alone: an entry is only ever evicted
# or freed by its own thread, including when the thread ends. Bounded, so a
# host that compiles expressions forever does not grow without limit.
_THREAD_CACHE_SIZE = 4096
_per_thread = threading.local()


def _thread_cache() -> dict[str, Any]:
    cache = getattr(_per_thread, "compiled", None)
    if cache is None:
        cache = _per_thread.compiled = {}
    return cache


class Expression:
    """A compiled JSONata expression: safe to evaluate from any thread, bounded on every call."""

    __slots__ = (
        "_deadline",
        "_fast",
        "_key",
        "_reference",
        "_reference_lock",
        "_runnable",
        "backend",
        "limits",
        "reads",
        "source",
    )

    def __init__(
        self,
        source: str,
        limits: ExpressionLimits,
        backend: str,
        runnable: str,
        plan: template_fast_path.Plan | None = None,
    ) -> None:
        self.source = source
        # A plain template's or predicate's plan (template_fast_path, predicate_fast_path), run in Python
        # before either engine is asked.
        self._fast = _runner(plan, limits)
        # The top-level input fields a planned predicate reads (nothing else in the input changes its
        # result, so a caller may leave the others out); None: any.
        self.reads: frozenset[str] | None = _reads(plan) if self._fast is not None else None
        self.limits = limits
        self.backend = backend
        self._runnable = runnable  # the source, behind the $pad guard when it can reach $pad
        self._key = f"{limits.timeout_ms}:{limits.max_depth}:{limits.max_sequence_length}\0{runnable}"
        self._reference: Any = None
        self._reference_lock = threading.Lock()
        self._deadline = [0.0]  # monotonic end of the reference evaluation under way (its regexes stop there)

    def __repr__(self) -> str:
        return f"Expression({self.source!r}, backend={self.backend!r})"

    @classmethod
    def compile(
        cls,
        source: str,
        limits: ExpressionLimits | None = None,
        backend: str | None = None,
        *,
        checked: bool = False,
        plan: template_fast_path.Plan | None = None,
    ) -> Expression:
        """Compile ``source``; a syntax error raises :class:`ExpressionError` with its position.

        ``checked``: ``source`` is known to compile (a cached preset's), so the
        default engine compiles it on this thread when it is first evaluated.
        ``plan``: ``template_fast_path.plan_of(source)``, when it is a plain
        template, or ``predicate_fast_path.plan_of(source)``, when it is a plain
        predicate; the engine then evaluates only the inputs the plan gives up on.
        """
        limits = limits or DEFAULT_LIMITS
        backend = backend or selected_backend()
        runnable = source
        if _NEEDS_HOST.search(source):
            runnable = _HOST_PROLOGUE + runnable + "\n)"
        if _NEEDS_GUARD.search(source):
            runnable = _PAD_GUARD.replace("{limit}", str(limits.max_string_length)) + runnable + "\n)"
        expression = cls(source, limits, backend, runnable, plan)
        if backend == REFERENCE:
            _compile_reference(source)  # raises with a position
            expression._reference_compiled()
        elif not checked:
            try:
                expression._compile_here()
            except ValueError as exc:
                # jsonatapy gives no position: ask the reference engine where it is.
                try:
                    _compile_reference(source)
                except ExpressionError as located:
                    raise located from None
                raise ExpressionError(_first_line(exc)) from None
        return expression

    def evaluate(self, data: Any) -> Any:
        """The result for ``data``; raises :class:`ExpressionError` (or its limit subclass)."""
        if self._fast is not None:
            result = self._fast(data)
            if result is not template_fast_path.GIVE_UP:
                if result is not True and result is not False:  # a predicate's answer holds no string
                    _check_strings(result, self.limits.max_string_length)
                return result
        if self.backend == REFERENCE:
            return self._evaluate_reference(data)
        compiled = _thread_cache().get(self._key) or self._compile_here()
        try:
            result = compiled.evaluate(data)
        except ValueError as exc:
            raise _error(exc) from None
        except TypeError:
            # The input could not be converted (a lone surrogate, an integer
            # beyond 64 bits, a host object that is not JSON); the reference
            # engine takes any Python value.
            return self._evaluate_reference(data)
        except BaseException as exc:
            if type(exc).__name__ == "PanicException":  # never expected: compiled copies stay on their thread
                raise ExpressionError(f"JSONata engine failure: {_first_line(exc)}") from None
            raise
        _check_strings(result, self.limits.max_string_length)
        return result

    # -- jsonatapy ----------------------------------------------------------
    def _compile_here(self) -> Any:
        import jsonatapy  # ~9 ms of imports, paid by the first event that maps, not by every start

        limits = self.limits
        compiled = jsonatapy.compile(
            self._runnable,
            timeout=limits.timeout_ms,
            max_stack_depth=limits.max_depth,
            max_sequence_length=limits.max_sequence_length,
        )
        for name, function in HOST_FUNCTIONS.items():
            compiled.register(_HOST_NAME.format(name), function)
        cache = _thread_cache()
        if len(cache) >= _THREAD_CACHE_SIZE:
            del cache[next(iter(cache))]
        cache[self._key] = compiled
        return compiled

    # -- reference ----------------------------------------------------------
    def _reference_compiled(self) -> Any:
        if self._reference is None:
            compiled = _compile_reference(self._runnable, _timed_regex_engine(self._deadline))
            for name, function in HOST_FUNCTIONS.items():
                compiled.register_lambda(_HOST_NAME.format(name), function)
            # Inputs are parsed JSON (or host dicts checked by event_shape); the
            # engine's own walk over the whole input costs more than the mapping.
            compiled.set_validate_input(False)
            self._reference = compiled
        return self._reference

    def _evaluate_reference(self, data: Any) -> Any:
        from jsonata.jexception import JException

        limits = self.limits
        # jsonata-python keeps state on the compiled object (the evaluation
        # timestamp, the bound callbacks), so evaluations take turns; each gets
        # a fresh frame with fresh bounds, because the engine's depth and
        # timeout counters would otherwise carry over from earlier calls.
        with self._reference_lock:
            compiled = self._reference_compiled()
            frame = compiled.create_frame(None)
            frame.set_runtime_bounds(limits.timeout_ms, limits.max_depth)
            self._deadline[0] = time.monotonic() + limits.timeout_ms / 1000
            try:
                result = compiled.evaluate(data, frame)
            except (JException, TimeoutError) as exc:
                raise _reference_error(exc) from None
            except RecursionError:
                raise ExpressionLimitError("max_depth", "expression recursed too deeply") from None
            except (TypeError, ValueError, ArithmeticError, AttributeError, KeyError, IndexError) as exc:
                # The pure-Python engine lets some host errors through; report
                # them as expression failures rather than crashing the stream.
                raise ExpressionError(f"evaluation failed: {_first_line(exc)}") from None
        _check_reference_result(result, limits)
        return result


def _compile_reference(source: str, regex_engine: Any = None) -> Any:
    import jsonata
    from jsonata.jexception import JException

    try:
        compiled = jsonata.Jsonata(source, regex_engine) if regex_engine else jsonata.Jsonata(source)
    except JException as exc:
        raise ExpressionError(_first_line(exc), _position(exc)) from None
    except RecursionError:
        raise ExpressionError("expression is nested too deeply") from None
    if compiled.errors:
        first = compiled.errors[0]
        raise ExpressionError(_first_line(first), _position(first))
    return compiled


def _error(exc: Exception) -> ExpressionError:
    message = _first_line(exc)
    if _LIMIT_MARK in message:
        return ExpressionLimitError("max_string_length", message.split(_LIMIT_MARK, 1)[1].strip())
    code = _CODE.match(message)
    limit = _LIMIT_CODES.get(code.group(1)) if code else None
    if limit is not None:
        return ExpressionLimitError(limit, message)
    return ExpressionError(message)


def _reference_error(exc: Exception) -> ExpressionError:
    # $eval wraps the error of the expression it ran (D3121); a limit that
    # tripped in there is still a limit.
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, TimeoutError):
            return ExpressionLimitError("timeout_ms", f"a regular expression ran out of time: {_first_line(cause)}")
        code = getattr(cause, "error", None)
        if code in _LIMIT_CODES:
            return ExpressionLimitError(_LIMIT_CODES[code], f"{code}: {_first_line(cause)}")
        if _LIMIT_MARK in str(cause):
            return _error(cause)  # type: ignore[arg-type]
        cause = cause.__context__
    return _error(exc)


def _timed_regex_engine(deadline: list[float]) -> Any:
    """The reference engine's regexes, stopped at the evaluation's deadline.

    jsonatapy's regexes run in linear time; Python's ``re`` can backtrack for
    minutes on a crafted input and cannot be interrupted. Patterns are
    compiled by ``re`` (same syntax, same errors as before) and matched by
    the ``regex`` module, which takes a timeout.
    """
    import re as stdlib_re

    import regex

    def compile_pattern(pattern: str, flags: Any) -> Any:
        options = (stdlib_re.IGNORECASE if flags.case_insensitive else 0) | (
            stdlib_re.MULTILINE if flags.multiline else 0
        )
        checked = stdlib_re.compile(pattern, options)
        try:
            matcher = regex.compile(pattern, options)
        except regex.error:
            return checked  # a pattern only re reads: matched by re, as before
        return _TimedPattern(matcher, checked, deadline)

    return compile_pattern


class _TimedPattern:
    """The subset of ``re.Pattern`` jsonata-python uses, each call bounded by the deadline."""

    __slots__ = ("_checked", "_deadline", "_matcher")

    def __init__(self, matcher: Any, checked: Any, deadline: list[float]) -> None:
        self._matcher, self._checked, self._deadline = matcher, checked, deadline

    def _left(self) -> float:
        return max(self._deadline[0] - time.monotonic(), 0.001)

    def search(self, string: str) -> Any:
        return self._matcher.search(string, timeout=self._left())

    def finditer(self, string: str) -> Any:
        return self._matcher.finditer(string, timeout=self._left())

    def split(self, string: str, maxsplit: int = 0) -> Any:
        return self._matcher.split(string, maxsplit, timeout=self._left())

    def sub(self, repl: Any, string: str, count: int = 0) -> str:
        try:
            return self._matcher.sub(repl, string, count, timeout=self._left())
        except self._errors():
            # A bad group reference in the replacement: re's message, which the engine reads.
            return self._checked.sub(repl, string, count)

    @staticmethod
    def _errors() -> type[Exception]:
        import regex

        return regex.error

    def __getattr__(self, name: str) -> Any:
        return getattr(self._checked, name)


def _check_strings(result: Any, limit: int) -> None:
    """No string in ``result`` is longer than ``limit`` characters.

    A JSON text is at least as long as any string in it, so one fast encode
    settles the usual case; only a large (or unencodable) result is walked.
    """
    if result is None or isinstance(result, (bool, int, float)):
        return
    try:
        if len(_orjson_dumps(result)) <= limit:
            return
    except TypeError:
        pass  # a lone surrogate, a huge integer or a function value: walk it
    longest = _longest(result, 0, None)
    if longest[0] > limit:
        raise ExpressionLimitError(
            "max_string_length", f"the result holds a string of {longest[0]} characters (limit {limit})"
        )


def _check_reference_result(result: Any, limits: ExpressionLimits) -> None:
    """The reference engine has no sequence guard of its own: check what it returns."""
    longest, sequence = _longest(result, 0, 0)
    if longest > limits.max_string_length:
        raise ExpressionLimitError(
            "max_string_length", f"the result holds a string of {longest} characters (limit {limits.max_string_length})"
        )
    if sequence is not None and sequence > limits.max_sequence_length:
        raise ExpressionLimitError(
            "max_sequence_length",
            f"the result holds a sequence of {sequence} items (limit {limits.max_sequence_length})",
        )


def _longest(value: Any, longest: int, sequence: int | None) -> tuple[int, int | None]:
    """(longest string, longest list) anywhere in ``value``; lists only when ``sequence`` is not None."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if len(item) > longest:
                longest = len(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            if sequence is not None and len(item) > sequence:
                sequence = len(item)
            stack.extend(item)
    return longest, sequence


def _position(exc: Exception) -> int | None:
    location = getattr(exc, "location", None)
    return location if isinstance(location, int) and location >= 0 else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _orjson_dumps(data: Any) -> Any:
    """orjson.dumps, imported by the first call: orjson's import (with uuid and platform) costs
    several milliseconds that loading a preset need not pay: only an evaluation needs it. The first call puts orjson's own function in this one's place."""
    global _orjson_dumps
    import orjson

    _orjson_dumps = orjson.dumps  # type: ignore[assignment]
    return orjson.dumps(data)


def _runner(plan: template_fast_path.Plan | None, limits: ExpressionLimits) -> Any:
    """The plan's runner; None without a plan, for one the limits could stop in an engine, or for one that is
    not a plan (a damaged cache entry)."""
    if plan is None:
        return None
    try:
        if plan[0] == predicate_fast_path.ROOT:
            if not predicate_fast_path.fits(plan, limits.max_depth, limits.max_sequence_length):
                return None
            return predicate_fast_path.runner(plan)
        if not template_fast_path.fits(plan, limits.max_depth, limits.max_sequence_length):
            return None
        return template_fast_path.runner(plan)
    except (ValueError, TypeError, IndexError):
        return None


def _reads(plan: Any) -> frozenset[str] | None:
    """The top-level fields a predicate plan reads; None for a template plan (not needed of those)."""
    if plan[0] != predicate_fast_path.ROOT:
        return None
    return predicate_fast_path.roots(plan)
