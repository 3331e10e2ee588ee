"""Golden tests: recorded calls replayed against the current handlers, compared with a readable diff.

A **golden case** is one recorded call: its input, and the outcome it had (an output, or an error
code and type). `run_golden_tests(cases, registry)` replays cases against the handlers bound in a
registry and reports, per case, whether the outcome is still the same:

* outputs are compared by value, mappings in any key order, lists in order;
* `...` (Ellipsis) in an expected value matches anything: it is how **masked** paths (timestamps,
  generated ids) are written;
* errors are compared by `code` and exception `type` (messages may be reworded freely);
* the **events** a successful call committed are compared too, when the case records them
  (`events=[{"type", "version", "payload"}, ...]`): same events, in the same order, with equal
  payloads. Event paths are masked like output paths, under `events.` (`events.payload.sent_at`
  masks the `sent_at` of every event's payload). Cases without `events=` (written before events
  were recorded) do not compare events.

`GoldenTestGenerator` turns stored `Snapshot`s into a readable pytest module per operation
(see `contractspec.testing.generator`).
"""

from __future__ import annotations

import importlib
import inspect
import json
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, TypeAlias, TypeVar, cast

from attrs import define, field
from pydantic import BaseModel

from contractspec.core import (
    ANONYMOUS,
    Actor,
    AllowAll,
    CallContext,
    Clock,
    ConfigurationError,
    ContractSpecError,
    EventEnvelope,
    EventSpec,
    Executor,
    IdGenerator,
    OperationSpec,
    SpecRegistry,
)
from contractspec.core.records import CallRecord
from contractspec.core.sync import SyncRunner
from contractspec.core.testing import FakeClock, SequentialIds

__all__ = [
    "NONDETERMINISTIC",
    "CaseResult",
    "Difference",
    "ExecutorFactory",
    "GoldenCase",
    "GoldenReport",
    "GoldenSuite",
    "Nondeterministic",
    "Replayed",
    "apply_mask",
    "compare",
    "declared_mask",
    "default_executor_factory",
    "events_json",
    "golden_cases",
    "load_registry",
    "replay",
    "replay_call",
    "run_golden_tests",
    "run_golden_tests_sync",
]


@define(frozen=True, slots=True)
class Nondeterministic:
    """Marks an output field whose value differs on every call: `Annotated[datetime, NONDETERMINISTIC]`.

    Golden suites mask such fields (`...`) instead of comparing them. The same is declared without
    importing this package with `Field(json_schema_extra={"nondeterministic": True})`.
    """


#: Annotate output fields with `Annotated[str, NONDETERMINISTIC]` to mask them in golden tests.
NONDETERMINISTIC: Final = Nondeterministic()


@define(frozen=True, slots=True)
class GoldenCase:
    """One recorded call and the outcome it must keep.

    Attributes:
        id: Readable, unique id within its suite (`ok-acme`, `not_found-2`); the pytest id.
        input: JSON form of the input, as recorded (redacted).
        output: Expected JSON output; `...` anywhere matches any value. `None` for error cases.
        error: Expected error `{"code": ..., "type": ...}`, or `None` for successful calls.
        org_id: Tenant the call ran in.
        actor_id: Who called (`None`: anonymous).
        snapshot: Id of the recorded snapshot the case came from (provenance).
        events: Expected events of a successful call, in emission order:
            `[{"type": "crm.deal.created", "version": 1, "payload": {...}}]` (`...` anywhere
            matches any value); `[]` expects none; `None` does not compare events.
    """

    id: str
    input: Any
    output: Any = None
    error: Mapping[str, str] | None = None
    org_id: str | None = None
    actor_id: str | None = None
    snapshot: str | None = None
    events: Sequence[Mapping[str, Any]] | None = None


def _paths(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@define(frozen=True, slots=True)
class GoldenSuite:
    """What a golden module replays: the operation, where its registry lives, what is masked.

    Attributes:
        operation: Operation name.
        version: Operation version the cases were recorded on.
        registry: `MODULE:OBJECT` of the `SpecRegistry` (or a function returning one).
        mask: Dotted paths never compared: output paths (`output.id`,
            `output.items.created_at`) and event paths (`events.payload.sent_at`).
    """

    operation: str
    version: int
    registry: str
    mask: tuple[str, ...] = field(default=(), converter=_paths)


@define(frozen=True, slots=True)
class Difference:
    """One place where the replayed outcome differs from the expected one.

    Attributes:
        path: Dotted path (`output.lines[1].sku`, `error.code`).
        expected: Expected value (`Missing` text for absent keys).
        actual: Replayed value.
        kind: `changed`, `missing` (expected but absent), `unexpected` (present, not expected).
    """

    path: str
    expected: Any
    actual: Any
    kind: str = "changed"

    def describe(self) -> str:
        """One line: `output.total: expected "9.00", got "9.90"`."""
        if self.kind == "missing":
            return f"{self.path}: missing (expected {_show(self.expected)})"
        if self.kind == "unexpected":
            return f"{self.path}: unexpected (got {_show(self.actual)})"
        return f"{self.path}: expected {_show(self.expected)}, got {_show(self.actual)}"


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=lambda v: "...")
    return text if len(text) <= 200 else text[:197] + "..."


@define(frozen=True, slots=True)
class CaseResult:
    """The outcome of replaying one `GoldenCase`.

    Attributes:
        case: The case.
        output: Replayed JSON output, or `None`.
        error: Replayed `{"code", "type", "message"}`, or `None`.
        differences: What differs (empty when the case passed).
        events: Replayed events (`[{"type", "version", "payload"}, ...]`).
    """

    case: GoldenCase
    output: Any
    error: Mapping[str, str] | None
    differences: tuple[Difference, ...]
    events: list[dict[str, Any]] = field(factory=list)

    @property
    def passed(self) -> bool:
        """No differences."""
        return not self.differences

    def diff(self, suite: GoldenSuite | None = None) -> str:
        """A readable multi-line report (empty string when the case passed)."""
        if self.passed:
            return ""
        where = f"{suite.operation}@{suite.version} " if suite is not None else ""
        n = len(self.differences)
        head = f"golden case {where}{self.case.id!r}: {n} difference{'s' if n != 1 else ''}"
        lines = [head] + ["  " + d.describe() for d in self.differences]
        if self.error is not None and self.case.error is None:
            lines.append(f"  replayed error message: {self.error.get('message', '')}")
        return "\n".join(lines)


@define(frozen=True, slots=True)
class GoldenReport:
    """Results of `run_golden_tests`, in case order."""

    suite: GoldenSuite | None
    results: tuple[CaseResult, ...]

    @property
    def passed(self) -> list[CaseResult]:
        """Cases with the recorded outcome."""
        return [r for r in self.results if r.passed]

    @property
    def failed(self) -> list[CaseResult]:
        """Cases whose outcome changed."""
        return [r for r in self.results if not r.passed]

    @property
    def ok(self) -> bool:
        """Every case passed."""
        return all(r.passed for r in self.results)

    def summary(self) -> str:
        """`"12 passed, 1 failed"` followed by the diff of each failed case."""
        text = f"{len(self.passed)} passed, {len(self.failed)} failed"
        return "\n".join([text] + [r.diff(self.suite) for r in self.failed])


# -- comparison --------------------------------------------------------------------------------


def _same_scalar(expected: Any, actual: Any) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    if isinstance(expected, int | float) and isinstance(actual, int | float):
        return bool(expected == actual)
    return type(expected) is type(actual) and bool(expected == actual)


def compare(expected: Any, actual: Any, path: str = "output") -> list[Difference]:
    """Differences between an expected JSON value and an actual one.

    Mappings compare by key whatever the order; lists compare item by item; `...` in `expected`
    matches anything; `1` and `1.0` are equal, `True` and `1` are not.

    Returns:
        Differences in path order (empty when equal).
    """
    if expected is Ellipsis:
        return []
    if isinstance(expected, Mapping) and isinstance(actual, Mapping):
        out: list[Difference] = []
        for key in expected:
            sub = f"{path}.{key}"
            if key not in actual:
                out.append(Difference(sub, expected[key], None, "missing"))
            else:
                out.extend(compare(expected[key], actual[key], sub))
        out.extend(
            Difference(f"{path}.{key}", None, actual[key], "unexpected")
            for key in actual
            if key not in expected
        )
        return out
    if isinstance(expected, list | tuple) and isinstance(actual, list | tuple):
        out = []
        for index, (exp, act) in enumerate(zip(expected, actual, strict=False)):
            out.extend(compare(exp, act, f"{path}[{index}]"))
        for index in range(len(actual), len(expected)):
            out.append(Difference(f"{path}[{index}]", expected[index], None, "missing"))
        for index in range(len(expected), len(actual)):
            out.append(Difference(f"{path}[{index}]", None, actual[index], "unexpected"))
        return out
    if _same_scalar(expected, actual):
        return []
    return [Difference(path, expected, actual)]


def apply_mask(value: Any, paths: Iterable[str], prefix: str = "output") -> Any:
    """A copy of `value` with every dotted path in `paths` (under `prefix`) replaced by `...`.

    Lists are traversed transparently: `output.items.id` masks the id of every item; the path
    `output` itself masks the whole value.
    """
    rel = {p[len(prefix) + 1 :] for p in paths if p.startswith(prefix + ".")}
    if prefix in paths:
        return ...
    return _mask(value, frozenset(rel), "") if rel else value


def _mask(value: Any, paths: frozenset[str], at: str) -> Any:
    if isinstance(value, Mapping):
        out: dict[Any, Any] = {}
        for key, item in value.items():
            path = f"{at}{key}"
            if path in paths:
                out[key] = ...
            elif any(p.startswith(path + ".") for p in paths):
                out[key] = _mask(item, paths, path + ".")
            else:
                out[key] = item
        return out
    if isinstance(value, list):
        return [_mask(item, paths, at) for item in value]
    return value


def keep_ellipsis(template: Any, value: Any) -> Any:
    """`value`, with `...` wherever `template` (an existing expected value) has `...`."""
    if template is Ellipsis:
        return ...
    if isinstance(template, Mapping) and isinstance(value, Mapping):
        return {k: keep_ellipsis(template[k], v) if k in template else v for k, v in value.items()}
    if isinstance(template, list) and isinstance(value, list):
        return [
            keep_ellipsis(template[i], v) if i < len(template) else v for i, v in enumerate(value)
        ]
    return value


def _marked(info: Any) -> bool:
    if any(isinstance(m, Nondeterministic) for m in info.metadata):
        return True
    extra = info.json_schema_extra
    return isinstance(extra, Mapping) and extra.get("nondeterministic") is True


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in getattr(annotation, "__args__", ()) or ():
        found.extend(_models_in(arg))
    return found


def declared_mask(spec: OperationSpec) -> tuple[str, ...]:
    """Paths declared non-deterministic in the spec's output model and its events' payloads.

    A field is declared with `Annotated[T, NONDETERMINISTIC]` or
    `Field(json_schema_extra={"nondeterministic": True})`, in the output model, a nested model,
    or the payload model of an event the operation `emits`.

    Returns:
        Sorted paths prefixed `output.` or `events.payload.`.
    """
    paths: set[str] = set()

    def walk(model: type[BaseModel], prefix: str, seen: frozenset[type]) -> None:
        if model in seen:
            return
        for name, info in model.model_fields.items():
            path = f"{prefix}.{name}"
            if _marked(info):
                paths.add(path)
            for nested in _models_in(info.annotation):
                walk(nested, path, seen | {model})

    walk(spec.output, "output", frozenset())
    for event in spec.emits:
        if isinstance(event, EventSpec):
            walk(event.payload, "events.payload", frozenset())
    return tuple(sorted(paths))


# -- replay ------------------------------------------------------------------------------------

ExecutorFactory: TypeAlias = Callable[..., "Executor | Awaitable[Executor]"]


def default_executor_factory(
    registry: SpecRegistry, *, clock: Clock | None = None, ids: IdGenerator | None = None
) -> Executor:
    """A fresh executor over memory ports that allows every call (`AllowAll`).

    Golden replays check handler behaviour; the recorded calls were authorised when they ran.
    Override it (the `contractspec_executor_factory` fixture) to seed state or use your policy;
    keep passing `clock` and `ids` through, the generator relies on them to detect
    non-deterministic fields.
    """
    return Executor(
        registry,
        policy=AllowAll(),
        clock=clock or FakeClock(),
        ids=ids or SequentialIds("golden"),
    )


_REGISTRIES: dict[str, SpecRegistry] = {}


def load_registry(ref: str) -> SpecRegistry:
    """Import `MODULE:OBJECT` (a `SpecRegistry` or a function returning one), cached per ref.

    Raises:
        ConfigurationError: Malformed reference, import failure, or not a registry.
    """
    cached = _REGISTRIES.get(ref)
    if cached is not None:
        return cached
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigurationError(
            f"registry must be MODULE:OBJECT (e.g. myapp.spec:registry), got {ref!r}",
            details={"field": "registry"},
        )
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"cannot import {module_name!r} for the golden registry {ref!r}: {exc}",
            details={"field": "registry"},
        ) from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigurationError(
                f"{module_name!r} has no attribute {attr!r}", details={"field": "registry"}
            )
        obj = getattr(obj, part)
    if callable(obj) and not isinstance(obj, SpecRegistry):
        obj = obj()
    if not isinstance(obj, SpecRegistry):
        raise ConfigurationError(
            f"{ref} is a {type(obj).__name__}, not a SpecRegistry", details={"field": "registry"}
        )
    _REGISTRIES[ref] = obj
    return obj


def case_context(case: GoldenCase) -> CallContext:
    """The `CallContext` a case replays with: its org and actor, channel `golden`."""
    actor = Actor.user(case.actor_id) if case.actor_id else ANONYMOUS
    return CallContext(
        actor=actor,
        org_id=case.org_id,
        channel="golden",
        request_id=f"golden-{case.id}",
        trace_id=f"golden-{case.id}",
    )


async def _executor(
    factory: ExecutorFactory, registry: SpecRegistry, clock: Clock | None, ids: IdGenerator | None
) -> Executor:
    made = factory(registry, clock=clock, ids=ids)
    if inspect.isawaitable(made):
        made = await made
    if not isinstance(made, Executor):
        raise ConfigurationError(
            f"the golden executor factory returned {type(made).__name__}; it must return an "
            "Executor (or an awaitable of one)"
        )
    return made


def events_json(events: Iterable[EventEnvelope]) -> list[dict[str, Any]]:
    """`[{"type", "version", "payload"}, ...]`: the form snapshots and golden cases keep events in."""
    return [{"type": e.name, "version": e.version, "payload": e.payload_json()} for e in events]


@define(frozen=True, slots=True)
class Replayed:
    """The outcome of one replay (`replay_call`).

    Attributes:
        output: JSON output, or `None` on error.
        error: `{"code", "type", "message"}`, or `None` on success.
        events: The events the call committed, `[{"type", "version", "payload"}, ...]`.
    """

    output: Any
    error: dict[str, str] | None
    events: list[dict[str, Any]] = field(factory=list)


class _Capture:
    """A `TrafficSink` that keeps the events of the calls it sees, and forwards to another one."""

    __slots__ = ("events", "forward")

    def __init__(self, forward: Any) -> None:
        self.forward = forward
        self.events: list[EventEnvelope] = []

    def record(self, call: CallRecord) -> None:
        self.events.extend(call.events)
        if self.forward is not None:
            self.forward.record(call)


async def replay_call(
    case: GoldenCase,
    suite: GoldenSuite,
    registry: SpecRegistry,
    *,
    executor_factory: ExecutorFactory | None = None,
    clock: Clock | None = None,
    ids: IdGenerator | None = None,
) -> Replayed:
    """Run one case's input through a fresh executor and capture the events it committed.

    The recorded JSON input is validated in JSON mode (`model_validate_json`), the exact inverse
    of how it was recorded. Events are captured through the executor's traffic sink (a sink the
    factory configured still receives every call).
    """
    executor = await _executor(executor_factory or default_executor_factory, registry, clock, ids)
    capture = _Capture(executor.traffic)
    executor.traffic = capture
    try:
        payload = json.dumps(case.input, ensure_ascii=False)
        out = await executor.execute(
            suite.operation, payload, case_context(case), version=suite.version
        )
    except ContractSpecError as exc:
        error = {"code": exc.code, "type": type(exc).__name__, "message": exc.message}
        return Replayed(None, error, events_json(capture.events))
    finally:
        executor.close()
    return Replayed(out.model_dump(mode="json"), None, events_json(capture.events))


async def replay(
    case: GoldenCase,
    suite: GoldenSuite,
    registry: SpecRegistry,
    *,
    executor_factory: ExecutorFactory | None = None,
    clock: Clock | None = None,
    ids: IdGenerator | None = None,
) -> tuple[Any, dict[str, str] | None]:
    """Run one case's input through a fresh executor (`replay_call` without the events).

    Returns:
        `(output_json, None)` on success, `(None, {"code", "type", "message"})` on error.
    """
    done = await replay_call(
        case, suite, registry, executor_factory=executor_factory, clock=clock, ids=ids
    )
    return done.output, done.error


def check_outcome(
    case: GoldenCase,
    suite: GoldenSuite,
    output: Any,
    error: Mapping[str, str] | None,
    events: Sequence[Mapping[str, Any]] | None = None,
) -> tuple[Difference, ...]:
    """Differences between a case's expected outcome and a replayed one (masks applied).

    Events are compared when the case records them (`case.events` is not `None`) and the call
    succeeded: `events` (the replayed ones; `None` counts as none) against `case.events`, by
    position, with the `events.` paths of the mask applied to both.
    """
    if case.error is not None:
        if error is None:
            return (Difference("error", dict(case.error), None, "missing"),)
        return tuple(
            Difference(f"error.{key}", case.error.get(key), error.get(key))
            for key in ("code", "type")
            if key in case.error and case.error.get(key) != error.get(key)
        )
    if error is not None:
        shown = {"code": error.get("code"), "type": error.get("type")}
        return (Difference("error", None, shown, "unexpected"),)
    expected = apply_mask(case.output, suite.mask)
    diffs = compare(expected, apply_mask(output, suite.mask))
    if case.events is not None:
        want = apply_mask(_plain(case.events), suite.mask, "events")
        got = apply_mask(_plain(events or []), suite.mask, "events")
        diffs.extend(compare(want, got, "events"))
    return tuple(diffs)


def _plain(events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [dict(e) for e in events]


async def run_golden_tests(
    cases: Sequence[GoldenCase],
    registry: SpecRegistry | str,
    *,
    suite: GoldenSuite | None = None,
    operation: str | None = None,
    version: int | None = None,
    executor_factory: ExecutorFactory | None = None,
) -> GoldenReport:
    """Replay recorded cases against the current handlers and report pass/fail with a diff each.

    Every case runs in a fresh executor from `executor_factory` (memory ports, `AllowAll`, a fake
    clock and sequential ids by default).

    Args:
        cases: The cases.
        registry: The `SpecRegistry`, or its `MODULE:OBJECT` reference.
        suite: The suite (operation, version, mask); or give `operation` (and `version`).
        operation: Operation name, when no `suite` is given.
        version: Operation version (default: latest registered).
        executor_factory: `factory(registry, clock=..., ids=...) -> Executor` (maybe async).

    Returns:
        A `GoldenReport`; `report.ok` is `True` when every case passed.

    Raises:
        ConfigurationError: Neither `suite` nor `operation` given, or a bad registry reference.
        UnknownOperationError: The operation or version is not registered.
    """
    reg = load_registry(registry) if isinstance(registry, str) else registry
    if suite is None:
        if operation is None:
            raise ConfigurationError(
                "run_golden_tests needs suite= or operation=", details={"field": "operation"}
            )
        spec = reg.get(operation, version)
        suite = GoldenSuite(
            operation=spec.name,
            version=spec.version,
            registry=registry if isinstance(registry, str) else "<registry>",
            mask=declared_mask(spec),
        )
    else:
        reg.get(suite.operation, suite.version)
    results: list[CaseResult] = []
    for case in cases:
        done = await replay_call(case, suite, reg, executor_factory=executor_factory)
        diffs = check_outcome(case, suite, done.output, done.error, done.events)
        results.append(CaseResult(case, done.output, done.error, diffs, done.events))
    return GoldenReport(suite, tuple(results))


#: The loop thread of `run_golden_tests_sync` (started on first use).
_SYNC_RUNNER: Final = SyncRunner()


def run_golden_tests_sync(
    cases: Sequence[GoldenCase], registry: SpecRegistry | str, **kwargs: Any
) -> GoldenReport:
    """`run_golden_tests` for scripts and notebooks.

    Works with or without a running event loop (Jupyter): every call runs on one shared loop
    thread (`contractspec.core.sync.SyncRunner`), so pooled SQL connections an
    `executor_factory` keeps stay valid from call to call. Takes the keyword arguments of
    `run_golden_tests`.

    Raises:
        ConfigurationError: Neither `suite` nor `operation` given, a bad registry reference, or
            called from a coroutine on the shared sync loop (`await run_golden_tests` there).
        UnknownOperationError: The operation or version is not registered.
    """
    return _SYNC_RUNNER.run(
        run_golden_tests(cases, registry, **kwargs), what="run_golden_tests_sync()"
    )


def utcnow() -> datetime:
    """The current UTC time (the generator's default `--days` reference)."""
    return datetime.now(UTC)


_F = TypeVar("_F", bound=Callable[..., Any])


def golden_cases(cases: Sequence[GoldenCase]) -> Callable[[_F], _F]:
    """`pytest.mark.parametrize("case", cases)` with each case's id as the test id."""
    import pytest

    items = list(cases)
    mark = pytest.mark.parametrize("case", items, ids=[c.id for c in items])

    def decorate(fn: _F) -> _F:
        return cast(_F, mark(fn))

    return decorate
