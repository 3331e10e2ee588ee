"""The pytest plugin of contractspec-testing, loaded automatically through the `pytest11` entry point.

Fixtures (all overridable in your `conftest.py`):

* `contractspec_clock` — a `FakeClock` (2024-01-01T00:00Z, standing still).
* `contractspec_ids` — `SequentialIds("id")`: `id-000001`, `id-000002`, ...
* `contractspec_registry` — your `SpecRegistry`, from the `contractspec_registry` ini option
  (`contractspec_registry = "myapp.spec:registry"`), or override the fixture.
* `contractspec_policy` — `AllowAll()`; override it to test with your real policy.
* `contractspec_traffic` — a `MemoryTrafficStore` that `contractspec_executor` records every call
  into (unredacted: it is test traffic).
* `contractspec_executor` — an `Executor` over memory ports with the fixtures above.
* `contractspec_executor_factory` — how golden cases get a fresh executor:
  `factory(registry, clock=..., ids=...)`, sync or async. Override it to seed state.
* `golden` — a `Golden` helper: `golden.check(SUITE, case)` replays a case and fails with a
  readable diff.

Command-line option `--golden-update`: instead of failing, changed cases have their `output=` /
`error=` rewritten in the golden module (only those; nothing is deleted). Safe under pytest-xdist:
workers send their updates to the controller, which alone writes the files once the run ends.

Everything the plugin registers is prefixed (`contractspec_`, `golden`, `--golden-update`), it
imports nothing heavy, and it does nothing unless its fixtures are used, so it stays out of the
way of other test suites in the same process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from attrs import define, field

from contractspec.core import AllowAll, Executor, PolicyDecider, SpecRegistry
from contractspec.core.testing import FakeClock, SequentialIds
from contractspec.testing._update import Updates, apply_updates, decode_updates, encode_updates
from contractspec.testing.errors import GoldenUpdateError
from contractspec.testing.golden import (
    ExecutorFactory,
    GoldenCase,
    GoldenSuite,
    apply_mask,
    check_outcome,
    default_executor_factory,
    keep_ellipsis,
    load_registry,
    replay_call,
)
from contractspec.testing.recorder import TrafficRecorder
from contractspec.testing.stores import MemoryTrafficStore

__all__ = ["Golden", "registry_from_ini"]

_WORKER_KEY = "contractspec_golden_updates"


@define
class _GoldenSession:
    update: bool
    updates: Updates = field(factory=dict)
    applied: list[tuple[str, list[str]]] = field(factory=list)
    errors: list[str] = field(factory=list)

    def add(self, path: str, case_id: str, values: dict[str, Any]) -> None:
        self.updates.setdefault(path, {})[case_id] = values

    def merge(self, updates: Updates) -> None:
        for path, cases in updates.items():
            self.updates.setdefault(path, {}).update(cases)


_SESSION = pytest.StashKey[_GoldenSession]()


class Golden:
    """Replays golden cases inside a test; the `golden` fixture.

    Example:
        ```python
        @golden_cases(CASES)
        def test_quote(case: GoldenCase, golden: Golden) -> None:
            golden.check(SUITE, case)
        ```
    """

    def __init__(self, path: Path, factory: ExecutorFactory, session: _GoldenSession) -> None:
        self._path = path
        self._factory = factory
        self._session = session

    def check(self, suite: GoldenSuite, case: GoldenCase) -> None:
        """Replay `case` and fail the test with a readable diff if its outcome changed.

        With `--golden-update`, the module's expected value is rewritten instead (at the end of
        the run) and the test passes.

        Raises:
            pytest.fail.Exception: The outcome differs (without `--golden-update`).
            RuntimeError: Called inside a running event loop (use `await golden.acheck(...)`).
        """
        __tracebackhide__ = True
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError(
                "golden.check() was called inside a running event loop; use "
                "await golden.acheck(SUITE, case) in async tests"
            )
        asyncio.run(self.acheck(suite, case))

    async def acheck(self, suite: GoldenSuite, case: GoldenCase) -> None:
        """`check` for async tests."""
        __tracebackhide__ = True
        registry = load_registry(suite.registry)
        done = await replay_call(case, suite, registry, executor_factory=self._factory)
        output, error = done.output, done.error
        diffs = check_outcome(case, suite, output, error, done.events)
        if not diffs:
            return
        if self._session.update:
            if error is not None:
                values: dict[str, Any] = {
                    "output": None,
                    "error": {"code": error["code"], "type": error["type"]},
                }
            else:
                masked = apply_mask(output, suite.mask)
                values = {"output": keep_ellipsis(case.output, masked), "error": None}
                if case.events is not None:
                    events = apply_mask(done.events, suite.mask, "events")
                    values["events"] = keep_ellipsis(list(case.events), events)
            self._session.add(str(self._path), case.id, values)
            return
        lines = [f"golden case {case.id!r} of {suite.operation}@{suite.version} changed:"]
        lines += ["  " + d.describe() for d in diffs]
        if error is not None and case.error is None:
            lines.append(f"  replayed error message: {error.get('message', '')}")
        lines.append("  (intended? rerun with --golden-update to rewrite the expected outcome)")
        pytest.fail("\n".join(lines), pytrace=False)


# -- hooks --------------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    """`--golden-update` and the `contractspec_registry` ini option."""
    group = parser.getgroup("contractspec", "ContractSpec golden tests")
    group.addoption(
        "--golden-update",
        action="store_true",
        default=False,
        help="rewrite the expected outcome of changed golden cases instead of failing",
    )
    parser.addini(
        "contractspec_registry",
        "MODULE:OBJECT of the SpecRegistry behind the contractspec_registry fixture",
        default="",
    )


class _XdistHooks:
    """Collects updates sent by pytest-xdist workers (registered only when xdist is active)."""

    def __init__(self, session: _GoldenSession) -> None:
        self._session = session

    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        text = getattr(node, "workeroutput", {}).get(_WORKER_KEY)
        if text:
            self._session.merge(decode_updates(text))


def pytest_configure(config: pytest.Config) -> None:
    """Create the session's update collector."""
    session = _GoldenSession(update=bool(config.getoption("golden_update", False)))
    config.stash[_SESSION] = session
    if config.pluginmanager.hasplugin("xdist") and not hasattr(config, "workerinput"):
        config.pluginmanager.register(_XdistHooks(session), "contractspec-golden-xdist")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Workers hand their updates to the controller; the controller (or a lone run) writes them."""
    config = session.config
    golden = config.stash.get(_SESSION, None)
    if golden is None or not golden.updates:
        return
    if hasattr(config, "workerinput"):
        config.workeroutput[_WORKER_KEY] = encode_updates(golden.updates)  # type: ignore[attr-defined]  # set by xdist on workers
        return
    for path, cases in sorted(golden.updates.items()):
        try:
            changed = apply_updates(path, cases)
        except (GoldenUpdateError, OSError) as exc:
            golden.errors.append(str(exc))
            continue
        if changed:
            golden.applied.append((path, changed))
    golden.updates = {}
    if golden.errors:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Report what `--golden-update` rewrote."""
    golden = config.stash.get(_SESSION, None)
    if golden is None or not (golden.applied or golden.errors):
        return
    terminalreporter.section("contractspec golden updates")
    for path, ids in golden.applied:
        terminalreporter.write_line(f"updated {len(ids)} case(s) in {path}: {', '.join(ids)}")
    for message in golden.errors:
        terminalreporter.write_line(f"error: {message}", red=True)


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def contractspec_clock() -> FakeClock:
    """A `FakeClock` at 2024-01-01T00:00Z that only moves when told to."""
    return FakeClock()


@pytest.fixture
def contractspec_ids() -> SequentialIds:
    """Sequential ids `id-000001`, `id-000002`, ..."""
    return SequentialIds()


@pytest.fixture
def contractspec_registry(request: pytest.FixtureRequest) -> SpecRegistry:
    """The registry named by the `contractspec_registry` ini option (override the fixture otherwise)."""
    return registry_from_ini(str(request.config.getini("contractspec_registry") or ""))


def registry_from_ini(ref: str) -> SpecRegistry:
    """The registry named by the `contractspec_registry` ini value; fails the test when unset."""
    if not ref:
        pytest.fail(
            "the contractspec_registry fixture needs your registry: set "
            "contractspec_registry = 'myapp.spec:registry' in the pytest ini options, or "
            "override the fixture in conftest.py",
            pytrace=False,
        )
    return load_registry(ref)


@pytest.fixture
def contractspec_policy() -> PolicyDecider:
    """`AllowAll()`: override to run with your real policy."""
    return AllowAll()


@pytest.fixture
def contractspec_traffic() -> MemoryTrafficStore:
    """Where `contractspec_executor` records every call (unredacted)."""
    return MemoryTrafficStore()


@pytest.fixture
def contractspec_executor(
    contractspec_registry: SpecRegistry,
    contractspec_clock: FakeClock,
    contractspec_ids: SequentialIds,
    contractspec_policy: PolicyDecider,
    contractspec_traffic: MemoryTrafficStore,
) -> Iterator[Executor]:
    """An `Executor` over fresh memory ports, the fake clock and ids, recording all traffic."""
    executor = Executor(
        contractspec_registry,
        policy=contractspec_policy,
        clock=contractspec_clock,
        ids=contractspec_ids,
        traffic=TrafficRecorder(contractspec_traffic, sample_rate=1.0, redact=False),
    )
    yield executor
    executor.close()


@pytest.fixture
def contractspec_executor_factory() -> ExecutorFactory:
    """`factory(registry, clock=..., ids=...) -> Executor` used by `golden` for each case."""
    return default_executor_factory


@pytest.fixture
def golden(
    request: pytest.FixtureRequest, contractspec_executor_factory: ExecutorFactory
) -> Golden:
    """Replays golden cases: `golden.check(SUITE, case)`."""
    return Golden(Path(request.path), contractspec_executor_factory, request.config.stash[_SESSION])
