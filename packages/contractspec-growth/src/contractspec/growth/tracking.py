"""Experiment tracking: exposures (once per subject), metric events, conversions, and summaries.

```python
tracker = ExperimentTracker(SqlTrackingStore(engine), registry)
await tracker.store.create_all()
await tracker.expose(runner.assign("checkout.one-page", user))       # once per subject
await tracker.track("revenue", user_id, 42.0)                          # any number of times
await tracker.convert("purchase", user_id)                             # a conversion event
stats = await tracker.summarize("checkout.one-page", "revenue")        # {"control": SufficientStats(...), ...}
```

A summary is the sufficient statistics (`n`, mean, `M2 = Σ(x - mean)²`) of one metric per
variation, over the experiment's exposed subjects: each subject's value is the sum (or count, or
0/1 conversion) of its events at or after its exposure (optionally within an attribution window);
exposed subjects without events count as 0. The SQL store computes it in the database (a
per-subject `GROUP BY`, then each value centred on its variation's `AVG` before squaring, so the
variance stays exact when the mean dwarfs the spread), so analysing millions of exposures never
loads a row into Python.

Both stores pass one conformance suite on memory, SQLite and PostgreSQL.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from attrs import define

from contractspec.core.errors import SpecValidationError
from contractspec.core.ports import Clock, SystemClock
from contractspec.growth.experiments import (
    Assignment,
    Assignments,
    ExperimentRegistry,
    ExperimentSpec,
)
from contractspec.growth.stats import SufficientStats

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement, MetaData, Table
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = [
    "Aggregation",
    "ExperimentTracker",
    "Exposure",
    "MemoryTrackingStore",
    "MetricEvent",
    "SqlTrackingStore",
    "TrackingStore",
]

#: How a subject's events become its value: `sum` of values, `count` of events, or
#: `conversion` (1 if it has any event, else 0).
Aggregation = Literal["sum", "count", "conversion"]
_AGGREGATIONS = ("sum", "count", "conversion")


@define(frozen=True)
class Exposure:
    """A subject saw a variation of an experiment (recorded once per subject and experiment).

    Attributes:
        experiment: Experiment key.
        subject_id: The subject's hash-attribute value.
        variation: Variation key.
        exposed_at: UTC time of the first exposure.
        org_id: Tenant of the subject, if any.
    """

    experiment: str
    subject_id: str
    variation: str
    exposed_at: datetime
    org_id: str | None = None


@define(frozen=True)
class MetricEvent:
    """One observation of a metric for a subject (a purchase amount, a page view, a conversion).

    Attributes:
        metric: Metric name.
        subject_id: The subject's id (same attribute the experiments hash).
        value: The observation (1.0 for a conversion).
        occurred_at: UTC time.
        org_id: Tenant, if any.
    """

    metric: str
    subject_id: str
    value: float
    occurred_at: datetime
    org_id: str | None = None


def _check_text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 200:
        raise SpecValidationError(
            f"{name} must be a non-empty string of at most 200 characters, got {value!r}",
            details={"field": name},
        )
    return value


def _check_time(value: Any, name: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise SpecValidationError(
            f"{name} must be a timezone-aware datetime, got {value!r}", details={"field": name}
        )
    return value


def _check_value(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise SpecValidationError(
            f"value must be a number, got {type(value).__name__}", details={"field": "value"}
        )
    number = float(value)
    if not math.isfinite(number):
        raise SpecValidationError(
            f"value must be a finite number, got {number!r}; drop NaN/inf observations",
            details={"field": "value"},
        )
    return number


def _check_aggregation(aggregation: Any) -> Aggregation:
    if aggregation not in _AGGREGATIONS:
        raise SpecValidationError(
            f"aggregation must be one of {', '.join(_AGGREGATIONS)}, got {aggregation!r}",
            details={"field": "aggregation"},
        )
    return aggregation  # type: ignore[no-any-return]  # checked above


def _check_window(window: Any) -> timedelta | None:
    if window is None:
        return None
    if not isinstance(window, timedelta) or window <= timedelta(0):
        raise SpecValidationError(
            f"window must be a positive timedelta, got {window!r}", details={"field": "window"}
        )
    return window


@runtime_checkable
class TrackingStore(Protocol):
    """Where exposures and metric events live. Memory and SQL implementations ship here."""

    async def add_exposures(self, exposures: Sequence[Exposure]) -> int:
        """Store exposures, ignoring subjects already exposed to the experiment.

        Returns:
            How many were new.
        """
        ...

    async def add_events(self, events: Sequence[MetricEvent]) -> None:
        """Store metric events."""
        ...

    async def exposure_counts(self, experiment: str) -> dict[str, int]:
        """Exposed subjects per variation key."""
        ...

    async def summarize(
        self,
        experiment: str,
        metric: str,
        *,
        aggregation: Aggregation = "sum",
        window: timedelta | None = None,
        org_id: str | None = None,
    ) -> dict[str, SufficientStats]:
        """Sufficient statistics of `metric` per variation (see the module docs)."""
        ...


# -- memory ---------------------------------------------------------------------------------------


class MemoryTrackingStore:
    """In-process tracking store (tests, notebooks, single-process apps)."""

    def __init__(self) -> None:
        self._exposures: dict[str, dict[str, Exposure]] = defaultdict(dict)
        self._events: dict[str, dict[str, list[tuple[datetime, float]]]] = defaultdict(
            lambda: defaultdict(list)
        )
        self._event_orgs: dict[tuple[str, str], set[str | None]] = defaultdict(set)

    async def add_exposures(self, exposures: Sequence[Exposure]) -> int:
        """Store exposures, keeping each subject's first one per experiment."""
        new = 0
        for exposure in exposures:
            seen = self._exposures[exposure.experiment]
            if exposure.subject_id not in seen:
                seen[exposure.subject_id] = exposure
                new += 1
        return new

    async def add_events(self, events: Sequence[MetricEvent]) -> None:
        """Store metric events."""
        for event in events:
            self._events[event.metric][event.subject_id].append((event.occurred_at, event.value))

    async def exposure_counts(self, experiment: str) -> dict[str, int]:
        """Exposed subjects per variation key."""
        counts: dict[str, int] = defaultdict(int)
        for exposure in self._exposures.get(experiment, {}).values():
            counts[exposure.variation] += 1
        return dict(counts)

    async def summarize(
        self,
        experiment: str,
        metric: str,
        *,
        aggregation: Aggregation = "sum",
        window: timedelta | None = None,
        org_id: str | None = None,
    ) -> dict[str, SufficientStats]:
        """Sufficient statistics of `metric` per variation, computed in Python."""
        by_subject = self._events.get(metric, {})
        acc: dict[str, list[float]] = {}
        for exposure in self._exposures.get(experiment, {}).values():
            if org_id is not None and exposure.org_id != org_id:
                continue
            start = exposure.exposed_at
            end = start + window if window is not None else None
            values = [
                v
                for t, v in by_subject.get(exposure.subject_id, ())
                if t >= start and (end is None or t < end)
            ]
            if aggregation == "sum":
                x = math.fsum(values)
            elif aggregation == "count":
                x = float(len(values))
            else:
                x = 1.0 if values else 0.0
            acc.setdefault(exposure.variation, []).append(x)
        return {k: SufficientStats.from_values(np.asarray(xs)) for k, xs in acc.items()}


# -- SQL ------------------------------------------------------------------------------------------


def tracking_tables(metadata: MetaData | None = None) -> tuple[MetaData, Table, Table]:
    """The tracking tables on `metadata` (a new one with core's naming convention by default).

    * `cs_growth_exposure`: primary key `(experiment, subject_id)` (the deduplication), with an
      index on `(experiment, variation)`;
    * `cs_growth_event`: metric events with an index on `(metric, subject_id, occurred_at)`.
    """
    from sqlalchemy import BigInteger, Column, Double, Index, Integer, String, Table

    from contractspec.core.sql import UtcDateTime, new_metadata

    md = metadata if metadata is not None else new_metadata()
    exposures = Table(
        "cs_growth_exposure",
        md,
        Column("experiment", String(200), primary_key=True),
        Column("subject_id", String(200), primary_key=True),
        Column("variation", String(200), nullable=False),
        Column("org_id", String(200), nullable=True),
        Column("exposed_at", UtcDateTime, nullable=False),
        Index(None, "experiment", "variation"),
        comment="First exposure of each subject to each experiment.",
    )
    events = Table(
        "cs_growth_event",
        md,
        Column(
            "position",
            BigInteger().with_variant(Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        Column("metric", String(200), nullable=False),
        Column("subject_id", String(200), nullable=False),
        Column("value", Double, nullable=False),
        Column("org_id", String(200), nullable=True),
        Column("occurred_at", UtcDateTime, nullable=False),
        Index(None, "metric", "subject_id", "occurred_at"),
        comment="Metric events (values, counts, conversions) of experiment subjects.",
    )
    return md, exposures, events


class SqlTrackingStore:
    """Tracking store on SQLAlchemy (SQLite or PostgreSQL); summaries are SQL `GROUP BY`s.

    Install with `pip install 'contractspec-growth[sql]'` (or `[postgres]`).

    Args:
        engine: Your `AsyncEngine` (never disposed by the store).
        metadata: A `MetaData` to put the tables on (for your Alembic env); a new one by default.

    Attributes:
        metadata: The `MetaData` holding `cs_growth_exposure` and `cs_growth_event`.
    """

    def __init__(self, engine: AsyncEngine, *, metadata: MetaData | None = None) -> None:
        try:
            import sqlalchemy  # noqa: F401
        except ImportError as exc:  # pragma: no cover - exercised by the isolation session
            raise ImportError(
                "SqlTrackingStore needs SQLAlchemy: pip install 'contractspec-growth[sql]'"
            ) from exc
        self.engine = engine
        self.metadata, self.exposures, self.events = tracking_tables(metadata)

    async def create_all(self) -> None:
        """Create the tables if missing (use Alembic with `metadata` in production)."""
        async with self.engine.begin() as conn:
            await conn.run_sync(self.metadata.create_all)

    def _insert_ignore(self) -> Any:
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(self.exposures).on_conflict_do_nothing(
                index_elements=["experiment", "subject_id"]
            )
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(self.exposures).on_conflict_do_nothing(
            index_elements=["experiment", "subject_id"]
        )

    async def add_exposures(self, exposures: Sequence[Exposure]) -> int:
        """Insert exposures with `ON CONFLICT DO NOTHING ... RETURNING` (the first exposure wins)."""
        if not exposures:
            return 0
        rows = [
            {
                "experiment": e.experiment,
                "subject_id": e.subject_id,
                "variation": e.variation,
                "org_id": e.org_id,
                "exposed_at": e.exposed_at,
            }
            for e in exposures
        ]
        stmt = self._insert_ignore().returning(self.exposures.c.subject_id)
        new = 0
        async with self.engine.begin() as conn:
            for lo in range(0, len(rows), 5000):
                result = await conn.execute(stmt, rows[lo : lo + 5000])
                new += len(result.all())  # RETURNING yields only the rows actually inserted
        return new

    async def add_events(self, events: Sequence[MetricEvent]) -> None:
        """Insert metric events in one `executemany`."""
        if not events:
            return
        rows = [
            {
                "metric": e.metric,
                "subject_id": e.subject_id,
                "value": e.value,
                "org_id": e.org_id,
                "occurred_at": e.occurred_at,
            }
            for e in events
        ]
        async with self.engine.begin() as conn:
            await conn.execute(self.events.insert(), rows)

    async def exposure_counts(self, experiment: str) -> dict[str, int]:
        """`SELECT variation, COUNT(*) ... GROUP BY variation`."""
        from sqlalchemy import func, select

        t = self.exposures
        stmt = (
            select(t.c.variation, func.count())
            .where(t.c.experiment == experiment)
            .group_by(t.c.variation)
        )
        async with self.engine.connect() as conn:
            result = await conn.execute(stmt)
            return {variation: int(n) for variation, n in result.all()}

    def summary_statement(
        self,
        experiment: str,
        metric: str,
        *,
        aggregation: Aggregation = "sum",
        window: timedelta | None = None,
        org_id: str | None = None,
    ) -> Any:
        """The `SELECT` computing `(variation, n, mu, residual, m2)` (inspect or `EXPLAIN` it).

        `mu` is the variation's `AVG(x)`, `residual` is `Σ(x - mu)` and `m2` is `Σ(x - mu)²`;
        `summarize` turns them into the mean `mu + residual / n` and
        `M2 = m2 - residual² / n` (Chan, Golub and LeVeque's corrected two-pass algorithm).
        """
        from sqlalchemy import Double, and_, case, cast, func, literal, select

        x, ev = self.exposures, self.events
        join_on = and_(
            ev.c.subject_id == x.c.subject_id,
            ev.c.metric == metric,
            ev.c.occurred_at >= x.c.exposed_at,
        )
        if window is not None:
            if self.engine.dialect.name == "postgresql":
                from sqlalchemy import Interval

                join_on = and_(
                    join_on,
                    ev.c.occurred_at < x.c.exposed_at + literal(window, Interval()),
                )
            else:
                seconds = window.total_seconds()
                join_on = and_(
                    join_on,
                    func.julianday(ev.c.occurred_at)
                    < func.julianday(x.c.exposed_at) + seconds / 86400.0,
                )
        value: ColumnElement[Any]
        if aggregation == "sum":
            value = func.coalesce(func.sum(ev.c.value), 0.0)
        elif aggregation == "count":
            value = cast(func.count(ev.c.position), Double)
        else:
            value = case((func.count(ev.c.position) > 0, 1.0), else_=0.0)
        per_subject = (
            select(x.c.variation.label("variation"), cast(value, Double).label("x"))
            .select_from(x.outerjoin(ev, join_on))
            .where(x.c.experiment == experiment)
            .group_by(x.c.variation, x.c.subject_id)
        )
        if org_id is not None:
            per_subject = per_subject.where(x.c.org_id == org_id)
        sub = per_subject.subquery("per_subject")
        # Centre every value on its variation's mean (a window AVG) before squaring: Σ(x - μ)²
        # keeps the variance exact where Σx² - (Σx)²/n would cancel (values near 1e9, spread 1).
        # Σ(x - μ) corrects the rounding of μ itself (the corrected two-pass algorithm).
        centred = select(
            sub.c.variation,
            sub.c.x,
            func.avg(sub.c.x).over(partition_by=sub.c.variation).label("mu"),
        ).subquery("centred")
        deviation = centred.c.x - centred.c.mu
        return (
            select(
                centred.c.variation,
                func.count().label("n"),
                func.max(centred.c.mu).label("mu"),
                func.sum(deviation).label("residual"),
                func.sum(deviation * deviation).label("m2"),
            )
            .group_by(centred.c.variation)
            .order_by(centred.c.variation)
        )

    async def summarize(
        self,
        experiment: str,
        metric: str,
        *,
        aggregation: Aggregation = "sum",
        window: timedelta | None = None,
        org_id: str | None = None,
    ) -> dict[str, SufficientStats]:
        """Sufficient statistics per variation, computed by the database."""
        stmt = self.summary_statement(
            experiment, metric, aggregation=aggregation, window=window, org_id=org_id
        )
        async with self.engine.connect() as conn:
            result = await conn.execute(stmt)
            rows = result.all()
        out: dict[str, SufficientStats] = {}
        for variation, n, mu, residual, m2 in rows:
            count = int(n)
            r = float(residual or 0.0)
            mean = float(mu or 0.0) + r / count
            spread = max(float(m2 or 0.0) - r * r / count, 0.0) if count > 1 else 0.0
            out[variation] = SufficientStats(n=count, mean=mean, m2=spread)
        return out


# -- tracker ---------------------------------------------------------------------------------------


class ExperimentTracker:
    """Records exposures and metric events, and summarises them per variation.

    Args:
        store: A `TrackingStore` (`MemoryTrackingStore()` by default).
        registry: Experiments, so summaries include variations nobody was exposed to yet.
        clock: Time source for events recorded without a timestamp.
    """

    def __init__(
        self,
        store: TrackingStore | None = None,
        registry: ExperimentRegistry | None = None,
        *,
        clock: Clock | None = None,
    ) -> None:
        self.store: TrackingStore = store if store is not None else MemoryTrackingStore()
        self.registry = registry
        self.clock: Clock = clock or SystemClock()

    async def expose(
        self, assignment: Assignment, *, org_id: str | None = None, at: datetime | None = None
    ) -> bool:
        """Record that the subject of `assignment` saw its variation.

        Only tracked assignments count (hashed into the experiment: not excluded, not forced).

        Returns:
            `True` if this was the subject's first exposure, `False` if it was already exposed
            or the assignment is not tracked.
        """
        if not assignment.tracked or assignment.hash_value is None:
            return False
        exposure = Exposure(
            assignment.experiment,
            _check_text(assignment.hash_value, "subject_id"),
            assignment.variation,
            _check_time(at or self.clock.now(), "at"),
            org_id,
        )
        return await self.store.add_exposures([exposure]) == 1

    async def expose_many(
        self,
        assignments: Assignments,
        ids: Sequence[str] | npt.NDArray[Any],
        *,
        at: datetime | None = None,
        org_id: str | None = None,
    ) -> int:
        """Record the exposures of a vectorised assignment (subjects in the experiment only).

        Returns:
            How many exposures were new.

        Raises:
            SpecValidationError: `ids` and `assignments` differ in length.
        """
        if len(ids) != len(assignments):
            raise SpecValidationError(
                f"ids has {len(ids)} entries for {len(assignments)} assignments; pass the ids "
                "given to assign_many",
                details={"field": "ids"},
            )
        when = _check_time(at or self.clock.now(), "at")
        keys = assignments.experiment.variation_keys
        key = assignments.experiment.key
        index = assignments.variation_index.tolist()
        exposures = [
            Exposure(key, str(ids[i]), keys[k], when, org_id) for i, k in enumerate(index) if k >= 0
        ]
        return await self.store.add_exposures(exposures)

    async def track(
        self,
        metric: str,
        subject_id: str,
        value: float = 1.0,
        *,
        at: datetime | None = None,
        org_id: str | None = None,
    ) -> None:
        """Record one metric observation for a subject.

        Raises:
            SpecValidationError: Empty metric or subject, a non-finite value, or a naive time.
        """
        await self.store.add_events(
            [
                MetricEvent(
                    _check_text(metric, "metric"),
                    _check_text(subject_id, "subject_id"),
                    _check_value(value),
                    _check_time(at or self.clock.now(), "at"),
                    org_id,
                )
            ]
        )

    async def track_many(self, events: Iterable[MetricEvent]) -> None:
        """Record many events at once (validated like `track`)."""
        checked = [
            MetricEvent(
                _check_text(e.metric, "metric"),
                _check_text(e.subject_id, "subject_id"),
                _check_value(e.value),
                _check_time(e.occurred_at, "occurred_at"),
                e.org_id,
            )
            for e in events
        ]
        await self.store.add_events(checked)

    async def convert(
        self, metric: str, subject_id: str, *, at: datetime | None = None, org_id: str | None = None
    ) -> None:
        """Record a conversion (an event of value 1); summarise it with `aggregation="conversion"`."""
        await self.track(metric, subject_id, 1.0, at=at, org_id=org_id)

    async def exposure_counts(self, experiment: str | ExperimentSpec) -> dict[str, int]:
        """Exposed subjects per variation (every registered variation present, zeros included)."""
        key = experiment.key if isinstance(experiment, ExperimentSpec) else experiment
        counts = await self.store.exposure_counts(key)
        return _ordered_counts(counts, self._variations(experiment))

    def _variations(self, experiment: str | ExperimentSpec) -> tuple[str, ...]:
        if isinstance(experiment, ExperimentSpec):
            return experiment.variation_keys
        if self.registry is not None and experiment in self.registry:
            return self.registry.get(experiment).variation_keys
        return ()

    async def summarize(
        self,
        experiment: str | ExperimentSpec,
        metric: str,
        *,
        aggregation: Aggregation = "sum",
        window: timedelta | None = None,
        org_id: str | None = None,
    ) -> dict[str, SufficientStats]:
        """Sufficient statistics of `metric` per variation key.

        Args:
            experiment: Experiment key or spec.
            metric: Metric name.
            aggregation: `sum` (e.g. revenue), `count` (events per subject) or `conversion`
                (1 if the subject has any event).
            window: Count only events within this long after each subject's exposure.
            org_id: Only subjects exposed in this tenant.

        Returns:
            `{variation_key: SufficientStats}`, control first when the experiment is known
            (variations without exposures have `n == 0`).

        Raises:
            SpecValidationError: Unknown aggregation or a non-positive window.
        """
        key = experiment.key if isinstance(experiment, ExperimentSpec) else experiment
        stats = await self.store.summarize(
            key,
            _check_text(metric, "metric"),
            aggregation=_check_aggregation(aggregation),
            window=_check_window(window),
            org_id=org_id,
        )
        variations = self._variations(experiment)
        ordered = {v: stats.get(v, SufficientStats.empty()) for v in variations}
        ordered.update(stats)
        return ordered


def _ordered_counts(counts: Mapping[str, int], keys: Sequence[str]) -> dict[str, int]:
    out = {k: counts.get(k, 0) for k in keys}
    out.update(counts)
    return out
