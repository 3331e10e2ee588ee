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
from array import array
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from attrs import define, evolve, field

from contractspec.core._log import get_logger
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

_log = get_logger(__name__)

#: The default stages: share of callers on the candidate.
DEFAULT_STAGES = (0.01, 0.10, 0.50, 1.0)


@define(frozen=True)
class Guardrails:
    """When a rollout is rolled back.

    By default a rollout is judged by comparing the candidate with the baseline (the control)
    with the anytime-valid sequential test of `contractspec.growth.stats` (`sequential_ttest`,
    an asymptotic confidence sequence, valid however often it is checked): on the error rate,
    the mean latency and the share of calls slower than the baseline's p99, each at
    `alpha / 3` (Bonferroni), over every call since the rollout started. It rolls back when the
    candidate is significantly worse. Fixed thresholds (`max_error_rate`, `max_p99_ms`) are
    optional extras: re-checked on every call they roll back healthy candidates by chance.

    Attributes:
        max_error_rate: Optional highest tolerated share of failed candidate calls in a stage
            (0.05 = 5%); `None` (default) for no fixed threshold.
        max_p99_ms: Optional highest tolerated 99th-percentile candidate latency in a stage, in
            milliseconds; `None` (default) for no fixed threshold.
        min_samples: Calls of each version before any guardrail judges (one failed call out of
            one is not evidence); a stage cannot advance before its candidate has this many.
        sequential: Compare the candidate with the baseline with the sequential test (default).
        alpha: Family-wise false rollback rate of the sequential comparison over the whole
            rollout (split evenly over its three metrics).
        error_codes: Error codes that count as failures; `None` counts server errors (codes
            mapped to HTTP 5xx), not the caller's mistakes (validation, policy, not found).

    Raises:
        SpecDefinitionError: A field is out of range, or no guardrail is enabled.
    """

    max_error_rate: float | None = None
    max_p99_ms: float | None = None
    min_samples: int = 20
    sequential: bool = True
    alpha: float = 0.05
    error_codes: frozenset[str] | None = None

    def __attrs_post_init__(self) -> None:
        if self.max_error_rate is not None and not 0.0 <= self.max_error_rate < 1.0:
            raise SpecDefinitionError(
                f"max_error_rate must be a fraction in [0, 1) or None, got {self.max_error_rate!r}",
                details={"field": "max_error_rate"},
            )
        if self.max_p99_ms is not None and not (
            self.max_p99_ms > 0 and math.isfinite(self.max_p99_ms)
        ):
            raise SpecDefinitionError(
                f"max_p99_ms must be a positive number of milliseconds or None, got "
                f"{self.max_p99_ms!r}",
                details={"field": "max_p99_ms"},
            )
        if not self.sequential and self.max_error_rate is None and self.max_p99_ms is None:
            raise SpecDefinitionError(
                "Guardrails with sequential=False need max_error_rate= or max_p99_ms=; "
                "otherwise nothing would ever judge the candidate.",
                details={"field": "sequential"},
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
            max_error_rate=data.get("max_error_rate"),
            max_p99_ms=data.get("max_p99_ms"),
            min_samples=data["min_samples"],
            sequential=data.get("sequential", True),
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
        min_samples: Candidate calls needed in a stage before it may advance; at least
            `guardrails.min_samples`, so no stage advances before its guardrails have judged.
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
        if self.min_samples < self.guardrails.min_samples:
            raise SpecDefinitionError(
                f"min_samples ({self.min_samples}) is below guardrails.min_samples "
                f"({self.guardrails.min_samples}): every stage would advance before any "
                "guardrail judged the candidate. Raise RolloutPlan.min_samples or lower "
                "Guardrails.min_samples.",
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
        version: Number of changes stored so far for the operation (the compare-and-set
            token: a store writes a state only over the version it was derived from).
    """

    plan: RolloutPlan
    status: RolloutStatus
    stage: int
    coverage: float
    stage_started_at: datetime
    updated_at: datetime
    reason: str | None = None
    history: tuple[Mapping[str, Any], ...] = ()
    version: int = 0

    @property
    def operation(self) -> str:
        """The operation rolled out."""
        return self.plan.operation


def _stale(operation: str, expected: int | None, stored: int | None) -> ConflictError:
    return ConflictError(
        f"the rollout of {operation!r} changed in another worker (stored version {stored}, "
        f"this change was made on version {expected}); reload it and decide again",
        details={"operation": operation, "expected_version": expected, "stored_version": stored},
    )


@runtime_checkable
class RolloutStore(Protocol):
    """Persists rollout states (one per operation), with a version compare-and-set."""

    async def load(self, operation: str) -> RolloutState | None:
        """The state of `operation`'s rollout, or `None`."""
        ...

    async def save(self, state: RolloutState, *, expected_version: int | None) -> None:
        """Store `state` if the stored state still has `expected_version` (`None`: no row).

        Raises:
            ConflictError: Another writer changed the state first (nothing is written).
        """
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

    async def save(self, state: RolloutState, *, expected_version: int | None) -> None:
        """Store `state` if the stored version is `expected_version`.

        Raises:
            ConflictError: The stored version differs.
        """
        current = self._states.get(state.operation)
        stored = None if current is None else current.version
        if stored != expected_version:
            raise _stale(state.operation, expected_version, stored)
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
        Column("version", Integer, nullable=False, server_default="0"),
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
            "version": state.version,
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
            version=row.version,
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

    async def save(self, state: RolloutState, *, expected_version: int | None) -> None:
        """Write the state with a compare-and-set on its version.

        `expected_version=None` inserts (`INSERT ... ON CONFLICT DO NOTHING`); otherwise
        `UPDATE ... WHERE operation = :op AND version = :expected_version`. Either is one atomic
        statement, so of two workers changing the same version exactly one wins.

        Raises:
            ConflictError: The row is missing, exists already, or has another version.
        """
        from sqlalchemy import select, update

        row = self._row(state)
        async with self.engine.begin() as conn:
            if expected_version is None:
                if self.engine.dialect.name == "postgresql":
                    from sqlalchemy.dialects.postgresql import insert as pg_insert

                    stmt: Any = pg_insert(self.table).values(row)
                else:
                    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

                    stmt = sqlite_insert(self.table).values(row)
                inserted = await conn.execute(
                    stmt.on_conflict_do_nothing().returning(self.table.c.operation)
                )
                if inserted.first() is not None:
                    return
            else:
                result = await conn.execute(
                    update(self.table)
                    .where(
                        self.table.c.operation == state.operation,
                        self.table.c.version == expected_version,
                    )
                    .values({k: v for k, v in row.items() if k != "operation"})
                )
                if result.rowcount == 1:
                    return
            stored = (
                await conn.execute(
                    select(self.table.c.version).where(self.table.c.operation == state.operation)
                )
            ).scalar()
        raise _stale(state.operation, expected_version, stored)

    async def all(self) -> list[RolloutState]:
        """Every state, by operation name."""
        from sqlalchemy import select

        async with self.engine.connect() as conn:
            result = await conn.execute(select(self.table).order_by(self.table.c.operation))
            return [self._state(row) for row in result.all()]


class _Window:
    """Calls of one version: count, failures, latencies (ms, float64) and their running mean
    and `M2` (Welford's update, exact however large the latencies are)."""

    __slots__ = ("durations", "failures", "m2", "mean")

    def __init__(self) -> None:
        self.failures = 0
        self.durations = array("d")
        self.mean = 0.0
        self.m2 = 0.0

    @property
    def n(self) -> int:
        return len(self.durations)

    def add(self, duration_ms: float, failed: bool) -> None:
        self.durations.append(duration_ms)
        self.failures += failed
        delta = duration_ms - self.mean
        self.mean += delta / len(self.durations)
        self.m2 += delta * (duration_ms - self.mean)

    def latencies(self) -> npt.NDArray[np.float64]:
        return np.array(self.durations, dtype=np.float64)

    def p99(self) -> float:
        return float(np.percentile(self.latencies(), 99))


def _check_due(n: int) -> bool:
    """Whether the sequential test runs at the candidate's `n`-th call: every call while the
    evidence is thin, then every 5th, then every 25th (it stays valid at any cadence)."""
    return n < 100 or (n < 1000 and n % 5 == 0) or n % 25 == 0


class SpecExperimentController:
    """Runs guarded staged rollouts of operation versions; a `TelemetrySink` and the state behind
    `create_variant_resolver`.

    Several workers (processes) may each run a controller over the same store. Every state
    change is written with a compare-and-set on `RolloutState.version`, and each controller
    re-reads the store at most `refresh_every` after its last read, whenever it records or routes
    a call (and at every `evaluate()` / `refresh()`), so it sees another worker's rollback within
    `refresh_every` plus one store round trip while calls flow. A rollback always wins: a change
    that lost the compare-and-set to a rollback is dropped, and a rollback that lost it to any
    other change is applied again on top of it. Each worker judges guardrails on the calls it
    served itself.

    Args:
        store: Where states persist (`MemoryRolloutStore()` by default).
        registry: The app's `SpecRegistry`, to check versions and find default baselines.
        clock: Time source (dwell times, refreshes); use the executor's clock.
        refresh_every: Longest time between two reads of the store while calls are recorded.
    """

    def __init__(
        self,
        store: RolloutStore | None = None,
        *,
        registry: SpecRegistry | None = None,
        clock: Clock | None = None,
        refresh_every: timedelta = timedelta(seconds=1),
    ) -> None:
        if not isinstance(refresh_every, timedelta) or refresh_every < timedelta(0):
            raise SpecDefinitionError(
                f"refresh_every must be a non-negative timedelta, got {refresh_every!r}",
                details={"field": "refresh_every"},
            )
        self.store: RolloutStore = store if store is not None else MemoryRolloutStore()
        self.registry = registry
        self.clock: Clock = clock or SystemClock()
        self.refresh_every = refresh_every
        self._states: dict[str, RolloutState] = {}
        self._stored: dict[str, int] = {}  # the version this controller last saw in the store
        self._windows: dict[tuple[str, int], _Window] = {}  # per stage
        self._totals: dict[tuple[str, int], _Window] = {}  # since the rollout started
        self._dirty: dict[str, RolloutState] = {}
        self._writing: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._refresh_task: asyncio.Task[None] | None = None
        self._refreshed_at: datetime | None = None

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
            ConflictError: A rollout of the operation is already running (here or in another
                worker that stored it first).
            NotFoundError: A version is not registered.
            SpecDefinitionError: No baseline can be determined.
        """
        plan = self._resolve_plan(plan)
        current = await self.store.load(plan.operation)
        if current is not None and current.status is RolloutStatus.RUNNING:
            self._adopt(current)
            raise ConflictError(
                f"a rollout of {plan.operation!r} (version {current.plan.candidate}) is already "
                "running; roll it back or let it complete first",
                details={"operation": plan.operation},
            )
        now = self.clock.now()
        expected = None if current is None else current.version
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
            version=(expected or 0) + 1,
        )
        await self.store.save(state, expected_version=expected)
        self._stored[plan.operation] = state.version
        self._set(state)
        _log.info("contractspec.rollout_started", operation=plan.operation,
                  candidate=plan.candidate, baseline=plan.baseline)  # fmt: skip
        return state

    async def load(self) -> list[RolloutState]:
        """Load every persisted state (after a restart); windows start empty."""
        states = await self.store.all()
        for state in states:
            self._stored[state.operation] = state.version
            self._set(state)
        self._refreshed_at = self.clock.now()
        return states

    async def refresh(self) -> list[RolloutState]:
        """Re-read every state from the store and adopt what other workers changed.

        A state this controller is still writing is left to that write (whose compare-and-set
        settles it), and a state older than the version this controller last stored (a read
        that started before that write) is ignored. Returns the states as this controller now
        sees them.
        """
        self._refreshed_at = self.clock.now()
        for stored in await self.store.all():
            self._adopt(stored)
        return [self._states[k] for k in sorted(self._states)]

    def _adopt(self, stored: RolloutState) -> None:
        operation = stored.operation
        if operation in self._dirty or operation in self._writing:
            return
        known = self._stored.get(operation)
        if known is not None and stored.version < known:
            return  # read before a write that has since landed: older than what we stored
        self._stored[operation] = stored.version
        if self._states.get(operation) != stored:
            self._set(stored)

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
        versions = [v for v in (state.plan.candidate, state.plan.baseline) if v is not None]
        if previous is None or previous.history[:1] != state.history[:1]:  # another rollout
            for version in versions:
                self._totals[(state.operation, version)] = _Window()
        if (
            previous is None
            or previous.stage != state.stage
            or (state.status is RolloutStatus.RUNNING and previous.status != state.status)
        ):  # a new stage starts from an empty window; a rollback keeps its evidence
            for version in versions:
                self._windows[(state.operation, version)] = _Window()
        self._states[state.operation] = state

    def _transition(self, state: RolloutState, **changes: Any) -> RolloutState:
        now = self.clock.now()
        event = dict(changes.pop("event"))
        new = evolve(state, updated_at=now, version=state.version + 1, **changes)
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
                await self._write(state)
            except Exception:  # a sink must not fail calls; flush() retries what is left
                self._dirty.setdefault(operation, state)
                _log.exception("contractspec.rollout_save_failed", operation=operation)
                return

    async def _write(self, state: RolloutState) -> None:
        """Save `state` over the stored version; on a conflict a rollback wins, else the store."""
        operation = state.operation
        self._writing.add(operation)
        try:
            while True:
                try:
                    await self.store.save(state, expected_version=self._stored.get(operation))
                except ConflictError:
                    stored = await self.store.load(operation)
                    if stored is None:
                        self._stored.pop(operation, None)
                        continue
                    self._stored[operation] = stored.version
                    # a newer local change queued meanwhile was derived from the losing one:
                    # it must not be written over `stored` either (only a rollback survives)
                    pending = self._dirty.pop(operation, None)
                    if pending is not None and pending.status is RolloutStatus.ROLLED_BACK:
                        state = pending
                    if (
                        stored.history[:1] == state.history[:1]
                        and state.status is RolloutStatus.ROLLED_BACK
                        and stored.status is not RolloutStatus.ROLLED_BACK
                    ):  # a rollback always wins: apply it again on top of the other change
                        state = evolve(
                            stored,
                            status=RolloutStatus.ROLLED_BACK,
                            coverage=0.0,
                            reason=state.reason,
                            updated_at=state.updated_at,
                            history=(*stored.history, state.history[-1]),
                            version=stored.version + 1,
                        )
                        self._set(state)
                        continue
                    _log.info("contractspec.rollout_changed_elsewhere", operation=operation,
                              status=stored.status.value, stage=stored.stage)  # fmt: skip
                    self._set(stored)
                    return
                self._stored[operation] = state.version
                return
        finally:
            self._writing.discard(operation)

    async def flush(self) -> None:
        """Wait until every state change is persisted (or settled against another worker's).

        Raises:
            Exception: Whatever the store raised while saving (the change stays queued).
        """
        if self._task is not None:
            await self._task
            self._task = None
        while self._dirty:
            operation, state = next(iter(self._dirty.items()))
            del self._dirty[operation]
            try:
                await self._write(state)
            except BaseException:
                self._dirty.setdefault(operation, state)
                raise

    async def rollback(self, operation: str, reason: str) -> RolloutState:
        """Roll a running rollout back to 0% by hand, recording `reason`.

        The rollback is stored even when another worker changed the rollout meanwhile.

        Raises:
            NotFoundError: No running rollout of `operation`.
        """
        await self.flush()
        await self.refresh()
        state = self._states.get(operation)
        if state is None or state.status is not RolloutStatus.RUNNING:
            raise NotFoundError(
                f"no running rollout of {operation!r}", details={"operation": operation}
            )
        self._roll_back(state, reason)
        await self.flush()
        return self._states[operation]

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
        """`TelemetrySink.record`: window the call, check guardrails, advance if due. Never raises.

        Also starts a re-read of the store when the last one is `refresh_every` old.
        """
        self._maybe_refresh()
        state = self._states.get(sample.operation)
        if state is None or state.status is not RolloutStatus.RUNNING:
            return
        try:
            self._observe(state, sample)
        except Exception:  # sinks must never fail a call
            _log.exception("contractspec.rollout_record_failed", operation=sample.operation)

    def _maybe_refresh(self) -> None:
        now = self.clock.now()
        if self._refreshed_at is not None and now - self._refreshed_at < self.refresh_every:
            return
        if self._refresh_task is not None and not self._refresh_task.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._refreshed_at = now
        self._refresh_task = loop.create_task(self._refresh_quietly())

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh()
        except Exception:  # the next call retries
            _log.exception("contractspec.rollout_refresh_failed")

    def _observe(self, state: RolloutState, sample: TelemetrySample) -> None:
        plan = state.plan
        version = sample.variant if sample.variant is not None else sample.version
        if version not in (plan.candidate, plan.baseline):
            return
        failed = plan.guardrails.is_failure(sample)
        key = (plan.operation, version)
        window = self._windows.get(key) or self._windows.setdefault(key, _Window())
        window.add(sample.duration_ms, failed)
        total = self._totals.get(key) or self._totals.setdefault(key, _Window())
        total.add(sample.duration_ms, failed)
        if version != plan.candidate:
            return
        reason = self._breach(state, window)
        if reason is None and plan.guardrails.sequential and _check_due(total.n):
            reason, _ = self._sequential_breach(state)
        if reason is not None:
            self._roll_back(state, reason)
            return
        self._advance_if_due(state)

    def _breach(self, state: RolloutState, window: _Window) -> str | None:
        """The fixed thresholds (when configured) on the stage's window."""
        g = state.plan.guardrails
        n = window.n
        if n < g.min_samples:
            return None
        stage = f"stage {state.stage + 1} ({state.coverage:.0%})"
        rate = window.failures / n
        if g.max_error_rate is not None and rate > g.max_error_rate:
            return (
                f"error rate {rate:.1%} > {g.max_error_rate:.1%} over {n} calls of version "
                f"{state.plan.candidate} at {stage}"
            )
        if g.max_p99_ms is not None and (n < 2000 or n % 32 == 0):
            p99 = window.p99()
            if p99 > g.max_p99_ms:
                return (
                    f"p99 latency {p99:.0f} ms > {g.max_p99_ms:.0f} ms over {n} calls of version "
                    f"{state.plan.candidate} at {stage}"
                )
        return None

    def _sequential_breach(self, state: RolloutState) -> tuple[str | None, list[str]]:
        """Compare the candidate with the baseline over the whole rollout so far.

        Returns the rollback reason (or `None`) and the checks that ran (empty when either
        version has fewer than `guardrails.min_samples` calls).
        """
        from contractspec.growth.stats import SufficientStats, sequential_ttest

        plan = state.plan
        g = plan.guardrails
        assert plan.baseline is not None  # resolved by start()
        base = self._totals.get((plan.operation, plan.baseline))
        cand = self._totals.get((plan.operation, plan.candidate))
        if base is None or cand is None or min(base.n, cand.n) < g.min_samples:
            return None, []

        def share(hits: int, n: int) -> SufficientStats:
            # Agresti and Caffo (2000): one more hit and one more miss in each arm, so an arm
            # with no variance (every call failed, or none did) still has a standard error
            return SufficientStats.from_proportion(hits + 1, n + 2)

        checks = [
            ("error rate", "proportion", share(base.failures, base.n),
             share(cand.failures, cand.n)),
            ("mean latency", "mean",
             SufficientStats(n=base.n, mean=base.mean, m2=max(base.m2, 0.0)),
             SufficientStats(n=cand.n, mean=cand.mean, m2=max(cand.m2, 0.0))),
        ]  # fmt: skip
        if base.n >= 100:  # a p99 needs 100 calls to mean anything
            base_ms, cand_ms = base.latencies(), cand.latencies()
            slow = float(np.percentile(base_ms, 99))
            checks.append(
                (f"share of calls slower than version {plan.baseline}'s p99 ({slow:.4g} ms)",
                 "proportion",
                 share(int(np.count_nonzero(base_ms > slow)), base.n),
                 share(int(np.count_nonzero(cand_ms > slow)), cand.n))
            )  # fmt: skip
        ran: list[str] = []
        stage = f"stage {state.stage + 1} ({state.coverage:.0%})"
        for label, metric_type, control, treatment in checks:
            result = sequential_ttest(
                control,
                treatment,
                difference="absolute",
                alpha=2 * g.alpha / 3,  # two-sided 2a/3: one-sided a/3 (worse only)
                metric_type=metric_type,  # type: ignore[arg-type]
                metric=label,
            )
            ran.append(label.split(" (")[0])
            lift = result.absolute
            if result.significant and lift is not None and lift.estimate > 0:
                return (
                    f"sequential test: {label} of version {plan.candidate} is higher than "
                    f"version {plan.baseline}'s by {lift.estimate:.4g} (CI {lift.ci_low:.4g}.."
                    f"{lift.ci_high:.4g}, one-sided alpha {g.alpha}/3) over {cand.n} vs {base.n} calls at "
                    f"{stage}"
                ), ran
        return None, ran

    def _advance_if_due(self, state: RolloutState) -> RolloutState:
        plan = state.plan
        window = self._windows.get((plan.operation, plan.candidate))
        calls = 0 if window is None else window.n
        if calls < plan.min_samples:  # >= guardrails.min_samples: thresholds have judged
            return state
        if self.clock.now() - state.stage_started_at < plan.min_dwell:
            return state
        g = plan.guardrails
        judged: list[str] = []
        if g.max_error_rate is not None:
            judged.append(f"error rate <= {g.max_error_rate:.1%}")
        if g.max_p99_ms is not None:
            judged.append(f"p99 <= {g.max_p99_ms:g} ms")
        if g.sequential:
            reason, ran = self._sequential_breach(state)
            if reason is not None:
                return self._roll_back(state, reason)
            if not ran:  # the baseline has too few calls: nothing compared yet, so hold
                return state
            judged.append(f"sequential comparison with version {plan.baseline} ({', '.join(ran)})")
        summary: dict[str, Any] = {
            "calls": calls,
            "failures": 0 if window is None else window.failures,
            "guardrails": judged,
        }
        if window is not None and window.n:
            summary["p99_ms"] = round(window.p99(), 3)
        if state.stage + 1 >= len(plan.stages):
            return self._transition(
                state,
                status=RolloutStatus.COMPLETED,
                reason=f"all {len(plan.stages)} stages passed their guardrails: "
                + "; ".join(judged),
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
        """Re-read the store, advance every running rollout that is due (for stages whose dwell
        ends without traffic) and persist; returns the current states."""
        await self.flush()
        await self.refresh()
        for state in list(self._states.values()):
            if state.status is RolloutStatus.RUNNING:
                self._advance_if_due(state)
        await self.flush()
        return [self._states[k] for k in sorted(self._states)]

    # -- routing --------------------------------------------------------------------------------

    def version_for(self, operation: str, ctx: CallContext) -> int | None:
        """The version a caller gets: the candidate inside the coverage, else the baseline.

        `None` when `operation` has no rollout. Callers without the hash attribute (anonymous)
        always get the baseline while a rollout runs. Like `record`, starts a re-read of the
        store when the last one is `refresh_every` old (inside an event loop).
        """
        self._maybe_refresh()
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
