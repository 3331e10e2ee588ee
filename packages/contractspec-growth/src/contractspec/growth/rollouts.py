"""Guarded staged rollouts of spec variants (a new version of an operation).

```python
controller = SpecExperimentController(SqlRolloutStore(engine), registry=registry)
await controller.store.create_all()
await controller.start(RolloutPlan("crm.deal.create", candidate=2))
executor = Executor(registry, variants=create_variant_resolver(controller), telemetry=controller)
```

The candidate version serves a growing share of callers — 1% → 10% → 50% → 100% by default —
and the rest keep the baseline version. A stage advances only when the candidate has served at
least `min_samples` calls in it **and** it has lasted `min_dwell`; its metrics are windowed per
stage (each stage starts from zero). Guardrails are checked on every candidate call: an error rate
above 5% or a p99 latency above 750 ms (by default, once `Guardrails.min_samples` calls are in the
window), or optionally an anytime-valid sequential test showing the candidate worse than the
baseline, roll the rollout back to 0% at once, with the reason recorded in its state and history.

Callers are bucketed like a GrowthBook rollout rule (`bucket_hash(seed, id) < coverage`), so
raising the coverage only adds callers: nobody flips back and forth between versions.

The controller is the `TelemetrySink` that feeds it and the source of the `VariantResolver`
(`create_variant_resolver`). Rollout state is persisted (memory or SQL store); call windows live
in the process that served the calls.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import structlog
from attrs import define, evolve, field

from contractspec.core.context import CallContext
from contractspec.core.errors import (
    HTTP_STATUS,
    ConflictError,
    NotFoundError,
    SpecDefinitionError,
)
from contractspec.core.ports import Clock, SystemClock
from contractspec.core.records import TelemetrySample
from contractspec.growth.experiments import ExperimentRunner, subject_attributes
from contractspec.growth.hashing import bucket_hash, hash_key

if TYPE_CHECKING:
    from sqlalchemy import MetaData, Table
    from sqlalchemy.ext.asyncio import AsyncEngine

    from contractspec.core.registry import SpecRegistry

__all__ = [
    "DEFAULT_STAGES",
    "Guardrails",
    "MemoryRolloutStore",
    "RolloutPlan",
    "RolloutState",
    "RolloutStatus",
    "RolloutStore",
    "SpecExperimentController",
    "SqlRolloutStore",
    "VariantRouter",
    "create_variant_resolver",
]

_log = structlog.get_logger(__name__)

#: The default stages: share of callers on the candidate.
DEFAULT_STAGES = (0.01, 0.10, 0.50, 1.0)


@define(frozen=True)
class Guardrails:
    """When a rollout is rolled back.

    Attributes:
        max_error_rate: Highest tolerated share of failed candidate calls (0.05 = 5%).
        max_p99_ms: Highest tolerated 99th-percentile candidate latency, in milliseconds.
        min_samples: Candidate calls in the stage's window before the thresholds are judged
            (one failed call out of one is not evidence).
        sequential: Also compare the candidate with the baseline (error rate and mean latency)
            with the anytime-valid sequential test of `contractspec.growth.stats`, and roll back
            when the candidate is significantly worse.
        alpha: Error rate of the sequential test.
        error_codes: Error codes that count as failures; `None` counts server errors (codes
            mapped to HTTP 5xx), not the caller's mistakes (validation, policy, not found).
    """

    max_error_rate: float = 0.05
    max_p99_ms: float = 750.0
    min_samples: int = 20
    sequential: bool = False
    alpha: float = 0.05
    error_codes: frozenset[str] | None = None

    def __attrs_post_init__(self) -> None:
        if not 0.0 <= self.max_error_rate < 1.0:
            raise SpecDefinitionError(
                f"max_error_rate must be a fraction in [0, 1), got {self.max_error_rate!r}",
                details={"field": "max_error_rate"},
            )
        if not (self.max_p99_ms > 0 and math.isfinite(self.max_p99_ms)):
            raise SpecDefinitionError(
                f"max_p99_ms must be a positive number of milliseconds, got {self.max_p99_ms!r}",
                details={"field": "max_p99_ms"},
            )
        if isinstance(self.min_samples, bool) or self.min_samples < 1:
            raise SpecDefinitionError(
                f"min_samples must be a positive int, got {self.min_samples!r}",
                details={"field": "min_samples"},
            )
        if not 0.0 < self.alpha < 1.0:
            raise SpecDefinitionError(
                f"alpha must be in (0, 1), got {self.alpha!r}", details={"field": "alpha"}
            )

    def is_failure(self, sample: TelemetrySample) -> bool:
        """Whether a call counts as failed."""
        if sample.success:
            return False
        code = sample.error_code or "internal_error"
        if self.error_codes is not None:
            return code in self.error_codes
        return HTTP_STATUS.get(code, 500) >= 500

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "max_error_rate": self.max_error_rate,
            "max_p99_ms": self.max_p99_ms,
            "min_samples": self.min_samples,
            "sequential": self.sequential,
            "alpha": self.alpha,
            "error_codes": None if self.error_codes is None else sorted(self.error_codes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Guardrails:
        """Rebuild from `to_dict()`."""
        codes = data.get("error_codes")
        return cls(
            max_error_rate=data["max_error_rate"],
            max_p99_ms=data["max_p99_ms"],
            min_samples=data["min_samples"],
            sequential=data["sequential"],
            alpha=data["alpha"],
            error_codes=None if codes is None else frozenset(codes),
        )


def _stages(value: Sequence[float]) -> tuple[float, ...]:
    stages = tuple(float(s) for s in value)
    if (
        not stages
        or any(not 0.0 < s <= 1.0 for s in stages)
        or any(b <= a for a, b in itertools.pairwise(stages))
        or stages[-1] != 1.0
    ):
        raise SpecDefinitionError(
            f"stages must be increasing fractions in (0, 1] ending at 1.0 (e.g. "
            f"{list(DEFAULT_STAGES)}), got {list(value)}",
            details={"field": "stages"},
        )
    return stages


@define(frozen=True)
class RolloutPlan:
    """How one operation's candidate version rolls out.

    Attributes:
        operation: Operation name.
        candidate: The version being rolled out.
        baseline: The version everyone else keeps (default: the highest registered version below
            the candidate).
        stages: Share of callers on the candidate at each stage, increasing, ending at 1.0.
        min_samples: Candidate calls needed in a stage before it may advance.
        min_dwell: Time a stage must last before it may advance.
        guardrails: When to roll back.
        hash_attribute: Caller attribute that buckets traffic (`id` = the actor, `org_id` =
            whole tenants move together).
        seed: Hashing seed (default `rollout:<operation>@<candidate>`).
    """

    operation: str
    candidate: int
    baseline: int | None = None
    stages: tuple[float, ...] = field(default=DEFAULT_STAGES, converter=_stages)
    min_samples: int = 100
    min_dwell: timedelta = timedelta(minutes=15)
    guardrails: Guardrails = field(factory=Guardrails)
    hash_attribute: str = "id"
    seed: str | None = None

    def __attrs_post_init__(self) -> None:
        if isinstance(self.min_samples, bool) or self.min_samples < 1:
            raise SpecDefinitionError(
                f"min_samples must be a positive int (candidate calls per stage), got "
                f"{self.min_samples!r}",
                details={"field": "min_samples"},
            )
        if not isinstance(self.min_dwell, timedelta) or self.min_dwell < timedelta(0):
            raise SpecDefinitionError(
                f"min_dwell must be a non-negative timedelta, got {self.min_dwell!r}",
                details={"field": "min_dwell"},
            )
        if self.baseline is not None and self.baseline == self.candidate:
            raise SpecDefinitionError(
                f"the candidate and the baseline of {self.operation!r} are both version "
                f"{self.candidate}; roll out a different version",
                details={"field": "baseline"},
            )

    @property
    def hash_seed(self) -> str:
        """The seed callers are bucketed with."""
        return self.seed or f"rollout:{self.operation}@{self.candidate}"

    def to_dict(self) -> dict[str, Any]:
        """JSON form (stored with the state so a restarted process resumes the same plan)."""
        return {
            "operation": self.operation,
            "candidate": self.candidate,
            "baseline": self.baseline,
            "stages": list(self.stages),
            "min_samples": self.min_samples,
            "min_dwell_s": self.min_dwell.total_seconds(),
            "guardrails": self.guardrails.to_dict(),
            "hash_attribute": self.hash_attribute,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RolloutPlan:
        """Rebuild from `to_dict()`."""
        return cls(
            operation=data["operation"],
            candidate=data["candidate"],
            baseline=data["baseline"],
            stages=data["stages"],
            min_samples=data["min_samples"],
            min_dwell=timedelta(seconds=data["min_dwell_s"]),
            guardrails=Guardrails.from_dict(data["guardrails"]),
            hash_attribute=data["hash_attribute"],
            seed=data["seed"],
        )


class RolloutStatus(enum.StrEnum):
    """Where a rollout is."""

    RUNNING = "running"
    COMPLETED = "completed"
    ROLLED_BACK = "rolled_back"


@define(frozen=True)
class RolloutState:
    """The persisted state of one operation's rollout.

    Attributes:
        plan: The plan (baseline resolved).
        status: `running`, `completed` or `rolled_back`.
        stage: Index into `plan.stages`.
        coverage: Share of callers on the candidate now (0.0 once rolled back).
        stage_started_at: When the current stage began (UTC).
        updated_at: Last change (UTC).
        reason: Why it was rolled back (or completed), else `None`.
        history: Every transition, oldest first: `{"at", "event", "stage", "coverage", ...}`.
    """

    plan: RolloutPlan
    status: RolloutStatus
    stage: int
    coverage: float
    stage_started_at: datetime
    updated_at: datetime
    reason: str | None = None
    history: tuple[Mapping[str, Any], ...] = ()

    @property
    def operation(self) -> str:
        """The operation rolled out."""
        return self.plan.operation


@runtime_checkable
class RolloutStore(Protocol):
    """Persists rollout states (one per operation)."""

    async def load(self, operation: str) -> RolloutState | None:
        """The state of `operation`'s rollout, or `None`."""
        ...

    async def save(self, state: RolloutState) -> None:
        """Insert or replace the state of `state.operation`."""
        ...

    async def all(self) -> list[RolloutState]:
        """Every stored state, by operation name."""
        ...


class MemoryRolloutStore:
    """Rollout states in a dict (tests, single-process apps)."""

    def __init__(self) -> None:
        self._states: dict[str, RolloutState] = {}

    async def load(self, operation: str) -> RolloutState | None:
        """The stored state, or `None`."""
        return self._states.get(operation)

    async def save(self, state: RolloutState) -> None:
        """Store `state`."""
        self._states[state.operation] = state

    async def all(self) -> list[RolloutState]:
        """Every state, by operation name."""
        return [self._states[k] for k in sorted(self._states)]


def rollout_table(metadata: MetaData | None = None) -> tuple[MetaData, Table]:
    """The `cs_growth_rollout` table on `metadata` (new, with core's naming convention, by default)."""
    from sqlalchemy import Column, Double, Integer, String, Table, Text

    from contractspec.core.sql import JsonType, UtcDateTime, new_metadata

    md = metadata if metadata is not None else new_metadata()
    table = Table(
        "cs_growth_rollout",
        md,
        Column("operation", String(200), primary_key=True),
        Column("candidate", Integer, nullable=False),
        Column("baseline", Integer, nullable=True),
        Column("status", String(16), nullable=False),
        Column("stage", Integer, nullable=False),
        Column("coverage", Double, nullable=False),
        Column("stage_started_at", UtcDateTime, nullable=False),
        Column("updated_at", UtcDateTime, nullable=False),
        Column("reason", Text, nullable=True),
        Column("plan", JsonType, nullable=False),
        Column("history", JsonType, nullable=False),
        comment="Staged rollouts of operation versions: stage, coverage, status and history.",
    )
    return md, table


class SqlRolloutStore:
    """Rollout states in `cs_growth_rollout` (SQLite or PostgreSQL).

    Args:
        engine: Your `AsyncEngine` (never disposed by the store).
        metadata: A `MetaData` to put the table on; a new one by default.
    """

    def __init__(self, engine: AsyncEngine, *, metadata: MetaData | None = None) -> None:
        self.engine = engine
        self.metadata, self.table = rollout_table(metadata)

    async def create_all(self) -> None:
        """Create the table if missing (use Alembic with `metadata` in production)."""
        async with self.engine.begin() as conn:
            await conn.run_sync(self.metadata.create_all)

    @staticmethod
    def _row(state: RolloutState) -> dict[str, Any]:
        return {
            "operation": state.operation,
            "candidate": state.plan.candidate,
            "baseline": state.plan.baseline,
            "status": state.status.value,
            "stage": state.stage,
            "coverage": state.coverage,
            "stage_started_at": state.stage_started_at,
            "updated_at": state.updated_at,
            "reason": state.reason,
            "plan": state.plan.to_dict(),
            "history": [dict(h) for h in state.history],
        }

    @staticmethod
    def _state(row: Any) -> RolloutState:
        return RolloutState(
            plan=RolloutPlan.from_dict(row.plan),
            status=RolloutStatus(row.status),
            stage=row.stage,
            coverage=row.coverage,
            stage_started_at=row.stage_started_at,
            updated_at=row.updated_at,
            reason=row.reason,
            history=tuple(row.history),
        )

    async def load(self, operation: str) -> RolloutState | None:
        """`SELECT` the state of `operation`."""
        from sqlalchemy import select

        async with self.engine.connect() as conn:
            result = await conn.execute(
                select(self.table).where(self.table.c.operation == operation)
            )
            row = result.first()
        return None if row is None else self._state(row)

    async def save(self, state: RolloutState) -> None:
        """Upsert the state (`INSERT ... ON CONFLICT (operation) DO UPDATE`)."""
        row = self._row(state)
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            stmt: Any = pg_insert(self.table).values(row)
        else:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            stmt = sqlite_insert(self.table).values(row)
        stmt = stmt.on_conflict_do_update(
            index_elements=["operation"],
            set_={k: stmt.excluded[k] for k in row if k != "operation"},
        )
        async with self.engine.begin() as conn:
            await conn.execute(stmt)

    async def all(self) -> list[RolloutState]:
        """Every state, by operation name."""
        from sqlalchemy import select

        async with self.engine.connect() as conn:
            result = await conn.execute(select(self.table).order_by(self.table.c.operation))
            return [self._state(row) for row in result.all()]


class _Window:
    """Calls of one version during one stage: count, failures and latencies."""

    __slots__ = ("durations", "failures")

    def __init__(self) -> None:
        self.failures = 0
        self.durations: list[float] = []

    @property
    def n(self) -> int:
        return len(self.durations)

    def add(self, duration_ms: float, failed: bool) -> None:
        self.durations.append(duration_ms)
        self.failures += failed

    def p99(self) -> float:
        return float(np.percentile(np.asarray(self.durations), 99))


class SpecExperimentController:
    """Runs guarded staged rollouts of operation versions; a `TelemetrySink` and the state behind
    `create_variant_resolver`.

    Args:
        store: Where states persist (`MemoryRolloutStore()` by default).
        registry: The app's `SpecRegistry`, to check versions and find default baselines.
        clock: Time source (dwell times); use the executor's clock.
    """

    def __init__(
        self,
        store: RolloutStore | None = None,
        *,
        registry: SpecRegistry | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.store: RolloutStore = store if store is not None else MemoryRolloutStore()
        self.registry = registry
        self.clock: Clock = clock or SystemClock()
        self._states: dict[str, RolloutState] = {}
        self._windows: dict[tuple[str, int], _Window] = {}
        self._dirty: dict[str, RolloutState] = {}
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def _resolve_plan(self, plan: RolloutPlan) -> RolloutPlan:
        if self.registry is None:
            if plan.baseline is None:
                raise SpecDefinitionError(
                    f"the rollout of {plan.operation!r} needs baseline= (or pass registry= to "
                    "the controller to use the previous version)",
                    details={"field": "baseline"},
                )
            return plan
        versions = self.registry.versions(plan.operation)
        for version in (plan.candidate, plan.baseline):
            if version is not None and version not in versions:
                raise NotFoundError(
                    f"operation {plan.operation!r} has no version {version}; registered versions: "
                    f"{', '.join(map(str, versions)) or 'none'}",
                    details={"operation": plan.operation, "version": version},
                )
        if plan.baseline is None:
            older = [v for v in versions if v < plan.candidate]
            if not older:
                raise SpecDefinitionError(
                    f"version {plan.candidate} of {plan.operation!r} has no older version to keep "
                    "as the baseline; pass baseline=",
                    details={"field": "baseline"},
                )
            plan = evolve(plan, baseline=max(older))
        return plan

    async def start(self, plan: RolloutPlan) -> RolloutState:
        """Start a rollout at its first stage and persist it.

        Raises:
            ConflictError: A rollout of the operation is already running.
            NotFoundError: A version is not registered.
            SpecDefinitionError: No baseline can be determined.
        """
        plan = self._resolve_plan(plan)
        current = self._states.get(plan.operation) or await self.store.load(plan.operation)
        if current is not None and current.status is RolloutStatus.RUNNING:
            raise ConflictError(
                f"a rollout of {plan.operation!r} (version {current.plan.candidate}) is already "
                "running; roll it back or let it complete first",
                details={"operation": plan.operation},
            )
        now = self.clock.now()
        state = RolloutState(
            plan=plan,
            status=RolloutStatus.RUNNING,
            stage=0,
            coverage=plan.stages[0],
            stage_started_at=now,
            updated_at=now,
            history=(
                {"at": now.isoformat(), "event": "started", "stage": 0, "coverage": plan.stages[0]},
            ),
        )
        self._set(state)
        await self.store.save(state)
        _log.info("contractspec.rollout_started", operation=plan.operation,
                  candidate=plan.candidate, baseline=plan.baseline)  # fmt: skip
        return state

    async def load(self) -> list[RolloutState]:
        """Load every persisted state (after a restart); windows start empty."""
        states = await self.store.all()
        for state in states:
            self._states[state.operation] = state
        return states

    def state(self, operation: str) -> RolloutState | None:
        """The current state of `operation`'s rollout (this process's view)."""
        return self._states.get(operation)

    def window(self, operation: str, version: int) -> tuple[int, int, float | None]:
        """`(calls, failures, p99_ms)` of a version in the current stage's window."""
        w = self._windows.get((operation, version))
        if w is None or w.n == 0:
            return (0, 0, None)
        return (w.n, w.failures, w.p99())

    def _set(self, state: RolloutState) -> None:
        previous = self._states.get(state.operation)
        if (
            previous is None
            or previous.stage != state.stage
            or (state.status is RolloutStatus.RUNNING and previous.status != state.status)
        ):  # a new stage starts from an empty window; a rollback keeps its evidence
            for version in (state.plan.candidate, state.plan.baseline):
                if version is not None:
                    self._windows[(state.operation, version)] = _Window()
        self._states[state.operation] = state

    def _transition(self, state: RolloutState, **changes: Any) -> RolloutState:
        now = self.clock.now()
        event = dict(changes.pop("event"))
        new = evolve(state, updated_at=now, **changes)
        entry = {"at": now.isoformat(), "stage": new.stage, "coverage": new.coverage, **event}
        new = evolve(new, history=(*state.history, entry))
        self._set(new)
        self._persist_soon(new)
        return new

    def _persist_soon(self, state: RolloutState) -> None:
        self._dirty[state.operation] = state
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # flush() writes it
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._write_dirty())

    async def _write_dirty(self) -> None:
        while self._dirty:
            operation, state = next(iter(self._dirty.items()))
            del self._dirty[operation]
            try:
                await self.store.save(state)
            except Exception:  # a sink must not fail calls; flush() retries what is left
                self._dirty.setdefault(operation, state)
                _log.exception("contractspec.rollout_save_failed", operation=operation)
                return

    async def flush(self) -> None:
        """Wait until every state change is persisted.

        Raises:
            Exception: Whatever the store raised while saving (the change stays queued).
        """
        if self._task is not None:
            await self._task
            self._task = None
        while self._dirty:
            operation, state = next(iter(self._dirty.items()))
            await self.store.save(state)
            if self._dirty.get(operation) is state:
                del self._dirty[operation]

    async def rollback(self, operation: str, reason: str) -> RolloutState:
        """Roll a running rollout back to 0% by hand, recording `reason`.

        Raises:
            NotFoundError: No running rollout of `operation`.
        """
        state = self._states.get(operation)
        if state is None or state.status is not RolloutStatus.RUNNING:
            raise NotFoundError(
                f"no running rollout of {operation!r}", details={"operation": operation}
            )
        new = self._roll_back(state, reason)
        await self.flush()
        return new

    def _roll_back(self, state: RolloutState, reason: str) -> RolloutState:
        _log.warning("contractspec.rollout_rolled_back", operation=state.operation, reason=reason)
        return self._transition(
            state,
            status=RolloutStatus.ROLLED_BACK,
            coverage=0.0,
            reason=reason,
            event={"event": "rolled_back", "reason": reason},
        )

    # -- telemetry ------------------------------------------------------------------------------

    def record(self, sample: TelemetrySample) -> None:
        """`TelemetrySink.record`: window the call, check guardrails, advance if due. Never raises."""
        state = self._states.get(sample.operation)
        if state is None or state.status is not RolloutStatus.RUNNING:
            return
        try:
            self._observe(state, sample)
        except Exception:  # sinks must never fail a call
            _log.exception("contractspec.rollout_record_failed", operation=sample.operation)

    def _observe(self, state: RolloutState, sample: TelemetrySample) -> None:
        plan = state.plan
        version = sample.variant if sample.variant is not None else sample.version
        if version not in (plan.candidate, plan.baseline):
            return
        window = self._windows.setdefault((plan.operation, version), _Window())
        window.add(sample.duration_ms, plan.guardrails.is_failure(sample))
        if version != plan.candidate:
            return
        reason = self._breach(state, window)
        if reason is not None:
            self._roll_back(state, reason)
            return
        self._advance_if_due(state)

    def _breach(self, state: RolloutState, window: _Window) -> str | None:
        g = state.plan.guardrails
        n = window.n
        if n < g.min_samples:
            return None
        stage = f"stage {state.stage + 1} ({state.coverage:.0%})"
        rate = window.failures / n
        if rate > g.max_error_rate:
            return (
                f"error rate {rate:.1%} > {g.max_error_rate:.1%} over {n} calls of version "
                f"{state.plan.candidate} at {stage}"
            )
        if n < 2000 or n % 32 == 0:
            p99 = window.p99()
            if p99 > g.max_p99_ms:
                return (
                    f"p99 latency {p99:.0f} ms > {g.max_p99_ms:.0f} ms over {n} calls of version "
                    f"{state.plan.candidate} at {stage}"
                )
        if g.sequential and (n < 500 or n % 32 == 0):
            return self._sequential_breach(state, window, stage)
        return None

    def _sequential_breach(self, state: RolloutState, window: _Window, stage: str) -> str | None:
        from contractspec.growth.stats import SufficientStats, sequential_ttest

        plan = state.plan
        assert plan.baseline is not None  # resolved by start()
        base = self._windows.get((plan.operation, plan.baseline))
        if base is None or base.n < plan.guardrails.min_samples:
            return None
        checks = (
            ("error rate", "proportion",
             SufficientStats.from_proportion(base.failures, base.n),
             SufficientStats.from_proportion(window.failures, window.n)),
            ("mean latency", "mean",
             SufficientStats.from_values(np.asarray(base.durations)),
             SufficientStats.from_values(np.asarray(window.durations))),
        )  # fmt: skip
        for label, metric_type, control, treatment in checks:
            result = sequential_ttest(
                control,
                treatment,
                difference="absolute",
                alpha=plan.guardrails.alpha,
                metric_type=metric_type,  # type: ignore[arg-type]
                metric=label,
            )
            lift = result.absolute
            if result.significant and lift is not None and lift.estimate > 0:
                return (
                    f"sequential test: {label} of version {plan.candidate} is higher than "
                    f"version {plan.baseline}'s by {lift.estimate:.4g} (CI {lift.ci_low:.4g}.."
                    f"{lift.ci_high:.4g}, alpha {plan.guardrails.alpha}) at {stage}"
                )
        return None

    def _advance_if_due(self, state: RolloutState) -> RolloutState:
        plan = state.plan
        window = self._windows.get((plan.operation, plan.candidate))
        calls = 0 if window is None else window.n
        if calls < plan.min_samples:
            return state
        if self.clock.now() - state.stage_started_at < plan.min_dwell:
            return state
        summary: dict[str, Any] = {
            "calls": calls,
            "failures": 0 if window is None else window.failures,
        }
        if window is not None and window.n:
            summary["p99_ms"] = round(window.p99(), 3)
        if state.stage + 1 >= len(plan.stages):
            return self._transition(
                state,
                status=RolloutStatus.COMPLETED,
                reason=f"all {len(plan.stages)} stages passed their guardrails",
                event={"event": "completed", **summary},
            )
        stage = state.stage + 1
        return self._transition(
            state,
            stage=stage,
            coverage=plan.stages[stage],
            stage_started_at=self.clock.now(),
            event={"event": "advanced", "from_coverage": state.coverage, **summary},
        )

    async def evaluate(self) -> list[RolloutState]:
        """Advance every running rollout that is due (for stages whose dwell ends without traffic)
        and persist; returns the current states."""
        for state in list(self._states.values()):
            if state.status is RolloutStatus.RUNNING:
                self._advance_if_due(state)
        await self.flush()
        return [self._states[k] for k in sorted(self._states)]

    # -- routing --------------------------------------------------------------------------------

    def version_for(self, operation: str, ctx: CallContext) -> int | None:
        """The version a caller gets: the candidate inside the coverage, else the baseline.

        `None` when `operation` has no rollout. Callers without the hash attribute (anonymous)
        always get the baseline while a rollout runs.
        """
        state = self._states.get(operation)
        if state is None:
            return None
        plan = state.plan
        if state.status is RolloutStatus.COMPLETED:
            return plan.candidate
        if state.status is RolloutStatus.ROLLED_BACK:
            return plan.baseline
        attributes = subject_attributes(ctx)
        key = hash_key(attributes.get(plan.hash_attribute))
        if key is None:
            return plan.baseline
        if bucket_hash(plan.hash_seed, key, 2) < state.coverage:
            return plan.candidate
        return plan.baseline


class VariantRouter:
    """A `VariantResolver` over rollouts and version experiments (made by `create_variant_resolver`).

    Args:
        controller: Staged rollouts (checked first).
        runner: Runs experiments whose variation values are operation versions.
        experiments: `{operation: experiment_key}` routed by `runner`.
        pinned: `{operation: version}` served when neither decides (so registering a new
            version does not serve it to everyone before its rollout starts).
    """

    def __init__(
        self,
        controller: SpecExperimentController | None = None,
        runner: ExperimentRunner | None = None,
        experiments: Mapping[str, str] | None = None,
        pinned: Mapping[str, int] | None = None,
    ) -> None:
        self.controller = controller
        self.runner = runner
        self.experiments = dict(experiments or {})
        self.pinned = dict(pinned or {})
        if self.experiments and runner is None:
            raise SpecDefinitionError(
                "experiments= routes operations through experiments and needs runner=",
                details={"field": "runner"},
            )

    def resolve(self, name: str, ctx: CallContext) -> int | None:
        """The version to run for this caller, or `None` for the latest."""
        if self.controller is not None:
            version = self.controller.version_for(name, ctx)
            if version is not None:
                return version
        key = self.experiments.get(name)
        if key is not None and self.runner is not None:
            value = self.runner.assign(key, ctx).value
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        return self.pinned.get(name)


def create_variant_resolver(
    controller: SpecExperimentController | None = None,
    *,
    runner: ExperimentRunner | None = None,
    experiments: Mapping[str, str] | None = None,
    pinned: Mapping[str, int] | None = None,
) -> VariantRouter:
    """A `VariantResolver` for `Executor(variants=...)`.

    Args:
        controller: Routes operations under a staged rollout (candidate or baseline version).
        runner: Assigns callers in version experiments (A/B tests of two versions).
        experiments: `{operation: experiment_key}`; the experiment's variation values are the
            versions to run (`Variation("v2", 2)`).
        pinned: `{operation: version}` served when no rollout or experiment decides: the
            executor otherwise runs the latest registered version, so pin the current one before
            registering its successor.

    Returns:
        A `VariantRouter`; pass the same controller as `telemetry=` so guardrails see the calls.
    """
    return VariantRouter(controller, runner, experiments, pinned)
