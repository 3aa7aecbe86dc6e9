"""Golden cases: the exact outcome, document and exchange included, for every input.

A case is ``<name>.json`` holding the input events, optional settings and,
for a delivery case, the destination's scripted ``responses``. Its contract
is ``<name>.expected.json``:

* without ``responses``, the list of outcomes exactly as ``signal-engine run
  --dry-run`` prints them;
* with ``responses``, ``{"exchanges": [...], "outcomes": [...]}``: every
  request the engine sent, in order (token requests, lookups and updates
  included, credentials masked), each with the status it was answered, and
  the outcomes. Each request takes the next scripted response; the case runs
  in-process, with no sockets and no real sleeps.

Built-in presets keep their cases in ``golden/<destination>/<preset>/``; a
preset kept anywhere else names its cases' folder with ``--preset``.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import outcome as oc
from .compile.compiler import load_preset
from .envelope import HttpRequest, masked_view
from .language.model import Preset
from .language.settings import resolve
from .pipeline.prepare import Pipeline

EXPECTED_SUFFIX = ".expected.json"


@dataclass
class GoldenCase:
    path: Path
    preset_name: str  # a preset name, or a preset file's path

    @property
    def name(self) -> str:
        return (
            f"{Path(self.preset_name).stem if self.preset_name.endswith(('.yaml', '.yml')) else self.preset_name}"
            f"/{self.path.stem}"
        )

    @property
    def expected_path(self) -> Path:
        return self.path.with_name(self.path.stem + EXPECTED_SUFFIX)

    @property
    def preset_ref(self) -> str:
        """The preset file beside the golden tree (``golden/../presets/<name>.yaml``), else the name as given.

        So a project laid out like this repository (``presets/``, ``golden/``)
        runs its own cases wherever it lives; ``--preset`` names a file or a name directly.
        """
        if self.preset_name.endswith((".yaml", ".yml")):
            return self.preset_name
        top = next((parent for parent in self.path.parents if parent.name == "golden"), None)
        sibling = top.parent / "presets" / f"{self.preset_name}.yaml" if top is not None else None
        return str(sibling) if sibling is not None and sibling.is_file() else self.preset_name


@dataclass
class GoldenResult:
    case: GoldenCase
    actual: Any
    expected: Any | None

    @property
    def passed(self) -> bool:
        # Compared as rendered text, so key order (part of the contract) counts.
        return self.expected is not None and render(self.expected) == render(self.actual)

    def diff(self) -> str:
        want = render(self.expected) if self.expected is not None else ""
        got = render(self.actual)
        return "".join(
            difflib.unified_diff(
                want.splitlines(True), got.splitlines(True), str(self.case.expected_path), "actual output"
            )
        )


class CaseError(ValueError):
    """The case itself is unusable (not the engine's output): one line, naming the file."""


def render(outcomes: Any) -> str:
    return json.dumps(outcomes, indent=2, ensure_ascii=False) + "\n"


def discover(root: Path, preset: str | None = None) -> list[GoldenCase]:
    """Every case below ``root`` (a golden/ tree, a preset's folder, or one case file).

    Without ``preset``, the folder under ``golden/`` names the preset
    (``golden/outreach/lead-capture/`` → ``outreach/lead-capture``).
    """
    root = root.resolve()
    files = (
        [root] if root.is_file() else sorted(p for p in root.rglob("*.json") if not p.name.endswith(EXPECTED_SUFFIX))
    )
    cases = []
    for file in files:
        if preset is not None:
            cases.append(GoldenCase(file, preset))
            continue
        top = next((parent for parent in file.parents if parent.name == "golden"), None)
        if top is None or file.parent == top:  # directly in golden/: no folder names the preset
            raise ValueError(
                f"{file}: golden cases must live under a golden/<destination>/<preset>/ folder "
                "(or name their preset with --preset FILE)"
            )
        cases.append(GoldenCase(file, file.parent.relative_to(top).as_posix()))
    return cases


def run_case(
    case: GoldenCase, presets: dict[str, Preset] | None = None, preset_path: Sequence[str | Path] = ()
) -> GoldenResult:
    presets = presets if presets is not None else {}
    if case.preset_name not in presets:
        presets[case.preset_name] = load_preset(case.preset_ref, preset_path)
    preset = presets[case.preset_name]
    try:
        spec = json.loads(case.path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise CaseError(f"{case.path}: not valid JSON: {exc}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("events"), list):
        raise CaseError(f"{case.path}: a golden case is an object with an 'events' list")
    responses = spec.get("responses")
    if responses is None:
        pipeline = Pipeline(preset, resolve(preset.settings, spec.get("settings") or {}, require=False))
        actual: Any = [pipeline.dry_run(event, i).to_dict() for i, event in enumerate(spec["events"])]
    else:
        if not isinstance(responses, list) or not all(isinstance(r, dict) for r in responses):
            raise CaseError(f"{case.path}: 'responses' must be a list of {{status, headers, body}} objects")
        settings = resolve(preset.settings, spec.get("settings") or {}, require=True)
        run = asyncio.run(deliver_scripted(preset, settings, spec["events"], responses, source=case.path))
        if run.problem:
            raise CaseError(run.problem)
        actual = {"exchanges": run.exchanges, "outcomes": run.outcomes}
    expected = None
    if case.expected_path.exists():
        expected = json.loads(case.expected_path.read_text(encoding="utf-8"))
    return GoldenResult(case, actual, expected)


def new_failures(result: GoldenResult) -> list[dict[str, Any]]:
    """Outcomes ``failed`` in the actual output that the expected file does not already pin as failed.

    A ``failed`` outcome is usually a broken preset or case (a mapping error,
    an answer no rule knows), not behaviour anyone meant to promise, so
    ``golden --update`` does not make one a contract unless told to. One the
    expected file already holds (same place, same cause) is the contract
    itself: updating around it needs no permission.
    """

    def outcomes(output: Any) -> list[Any]:
        listed = output.get("outcomes") if isinstance(output, dict) else output
        return listed if isinstance(listed, list) else []

    pinned = outcomes(result.expected)
    new = []
    for i, outcome in enumerate(outcomes(result.actual)):
        if not isinstance(outcome, dict) or outcome.get("outcome") != "failed":
            continue
        before = pinned[i] if i < len(pinned) and isinstance(pinned[i], dict) else {}
        if before.get("outcome") != "failed" or before.get("cause") != outcome.get("cause"):
            new.append(outcome)
    return new


def update(result: GoldenResult) -> bool:
    """Write the actual outcomes as the new contract; True if the file changed."""
    text = render(result.actual)
    path = result.case.expected_path
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    path.write_text(text, encoding="utf-8")
    return True


# -- delivery cases ---------------------------------------------------------------


async def _all_at_once(events: list[Any]) -> Any:
    yield list(enumerate(events))


class _FakeClock:
    """Time moves only when the engine sleeps: backoffs and rate-limit waits cost nothing."""

    def __init__(self) -> None:
        self.now = 1_000_000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += max(0.0, delay) + 1e-6
        await asyncio.sleep(0)


@dataclass
class ScriptedRun:
    """A delivery against scripted responses: what was sent (masked), the outcomes, the waits."""

    exchanges: list[dict[str, Any]]
    outcomes: list[dict[str, Any]]
    sleeps: list[float]
    sent: list[HttpRequest]  # as sent, credentials included: for tests that check the wire
    problem: str | None


class ScriptedTransport:
    """Answers each request with the next scripted response and records what was sent.

    A response is ``{status, headers?, body?}``, or ``{"error": "timeout"|"connection"}``
    for a request that gets no answer.
    """

    def __init__(self, case: Path, responses: list[dict[str, Any]]) -> None:
        self.case = case
        self.responses = list(responses)
        self.sent: list[tuple[HttpRequest, dict[str, Any]]] = []
        self.problem: str | None = None

    async def send(self, request: HttpRequest) -> Any:
        from multidict import CIMultiDict

        from .delivery.transport import HttpResponse, TransportError

        position = len(self.sent)
        if position >= len(self.responses):
            self.problem = self.problem or (
                f"{self.case}: request {position + 1} ({request.method} {request.url}) "
                f"has no scripted response (the script has {len(self.responses)})"
            )
            self.sent.append((request, {"error": "no scripted response"}))
            raise TransportError(oc.CONNECTION, "the case's script has no response for this request")
        scripted = self.responses[position]
        self.sent.append((request, scripted))
        if "error" in scripted:
            raise TransportError(str(scripted["error"]), f"scripted {scripted['error']}")
        status = scripted.get("status")
        if not isinstance(status, int):
            self.problem = self.problem or f"{self.case}: responses[{position}] has no integer status"
            raise TransportError(oc.CONNECTION, "malformed scripted response")
        headers = CIMultiDict({str(k): str(v) for k, v in (scripted.get("headers") or {}).items()})
        return HttpResponse(status, headers, scripted.get("body"))


async def deliver_scripted(
    preset: Preset, settings: Any, events: list[Any], responses: list[dict[str, Any]], *, source: Any = "responses"
) -> ScriptedRun:
    """Deliver ``events`` one at a time, each request answered by the next scripted response.

    A preset that batches gets them all at once instead, so its requests fill
    as they would from a stream (up to ``batch.max_items``), and the case pins
    whole batches.
    """
    from .runtime import Engine  # delivery machinery only for delivery cases
    from .state.dead_letters import MemoryDeadLetters
    from .state.token_store import MemoryTokenStore

    transport = ScriptedTransport(source, responses)
    clock = _FakeClock()
    engine = Engine(
        preset,
        settings,
        transport=transport,
        sleep=clock.sleep,
        clock=clock.monotonic,
        concurrency=1,
        token_store=MemoryTokenStore(),
        dead_letters=MemoryDeadLetters(),
        rng=random.Random(0),
    )
    async with engine:
        if any(action.batch is not None for action in preset.actions.values()):
            outcomes = [outcome.to_dict() async for outcome in engine.process_batches(_all_at_once(events))]
        else:
            outcomes = [outcome.to_dict() async for outcome in engine.process_many(events)]
    problem = transport.problem
    if problem is None and len(transport.sent) < len(responses):
        problem = (
            f"{source}: {len(responses) - len(transport.sent)} scripted response(s) were never "
            f"requested (the engine sent {len(transport.sent)} request(s))"
        )
    exchanges = []
    for request, scripted in transport.sent:
        view = engine.redactor.redact(masked_view(preset.auth, request, as_sent=True))
        view["answered"] = scripted.get("status", scripted.get("error"))
        exchanges.append(view)
    return ScriptedRun(exchanges, outcomes, clock.sleeps, [r for r, _ in transport.sent], problem)
