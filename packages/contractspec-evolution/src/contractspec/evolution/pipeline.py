"""`EvolutionPipeline`: ingest -> aggregate -> detect -> suggest -> orchestrate, on a schedule.

One `run_once()`:

1. **ingest** telemetry buckets other processes exported (`TelemetryExporter`) from a
   `TelemetryBucketStore`, when one is configured (the local aggregator also receives the
   executor's samples directly through the `TelemetrySink` port);
2. **aggregate**: move the aggregator's watermark to now, closing due windows;
3. **detect**: judge every closed window and the trace buffer (`IntentDetector.evaluate`), store
   the intents (`IntentStore`, optional) and publish `intent.detected` in one transaction;
4. **suggest**: `SpecAnalyzer` usage (unused operations) and `SpecGenerator` suggestions;
5. **orchestrate**: `SpecSuggestionOrchestrator.submit` (stores them, publishes
   `suggestion.created`, requests approvals) and `reconcile` (mirrors decided approvals).

Run it from your own scheduler, with `run_forever(interval_s)` (a simple asyncio loop), or through
contractspec-jobs when it is installed (`contractspec.evolution.jobs.pipeline_job`).
"""

from __future__ import annotations

import asyncio
import math
import weakref
from datetime import datetime

from attrs import define, field

from contractspec.core import (
    Clock,
    ConfigurationError,
    EventPublisher,
    MemoryUnitOfWork,
    SystemClock,
    Transaction,
    UnitOfWork,
)
from contractspec.core._log import get_logger
from contractspec.core.sync import SyncRunner
from contractspec.evolution.aggregator import IntentAggregator, WindowStats
from contractspec.evolution.analyzer import SpecAnalyzer, UsageReport
from contractspec.evolution.detector import Intent, IntentDetector
from contractspec.evolution.events import intent_detected, make_envelope
from contractspec.evolution.llm import LLMRationaleWriter
from contractspec.evolution.orchestrator import SpecSuggestionOrchestrator, SubmitResult
from contractspec.evolution.stores import IntentStore, TelemetryBucketStore
from contractspec.evolution.suggestions import SpecGenerator, SpecSuggestion, ValidationErrorSampler

__all__ = ["EvolutionPipeline", "PipelineRun", "TelemetryExporter"]

_log = get_logger(__name__)


@define(frozen=True)
class PipelineRun:
    """What one `run_once()` did.

    Attributes:
        at: The run's time.
        ingested: Samples merged from the bucket store.
        closed: Windows closed by this run.
        intents: Intents detected.
        suggestions: Suggestions generated (before the orchestrator's limits).
        submitted: What the orchestrator did with them (`None` without an orchestrator).
        decided: Suggestions whose approval became final during this run.
        usage: The analyzer's report (`None` without an analyzer).
    """

    at: datetime
    ingested: int
    closed: tuple[WindowStats, ...]
    intents: tuple[Intent, ...]
    suggestions: tuple[SpecSuggestion, ...]
    submitted: SubmitResult | None = None
    decided: tuple[SpecSuggestion, ...] = field(default=())
    usage: UsageReport | None = None


class TelemetryExporter:
    """Exports an app process's closed telemetry minutes to a `TelemetryBucketStore`.

    Minutes are exported when their window closes in the process (the watermark passed it), so
    each is exported exactly once; samples later than the aggregator's lateness are dropped there,
    as anywhere else. The central pipeline merges the buckets (`EvolutionPipeline(buckets=...)`).

    Args:
        aggregator: The process's aggregator, made with `export_buckets=True`.
        store: Where buckets go.
        unit_of_work: Transactions for the store.

    Raises:
        ConfigurationError: The aggregator does not keep closed minutes.
    """

    def __init__(
        self, aggregator: IntentAggregator, store: TelemetryBucketStore, unit_of_work: UnitOfWork
    ) -> None:
        if not aggregator.export_buckets:
            raise ConfigurationError(
                "TelemetryExporter needs IntentAggregator(export_buckets=True) so closed minutes "
                "are kept until exported",
                details={"field": "export_buckets"},
            )
        self.aggregator = aggregator
        self.store = store
        self.unit_of_work = unit_of_work

    async def export(self, now: datetime | None = None) -> int:
        """Close due windows (up to `now` when given) and export their minutes.

        Returns:
            The number of buckets written.
        """
        if now is not None:
            self.aggregator.advance(now)
        buckets = self.aggregator.pop_sealed_buckets()
        if not buckets:
            return 0
        tx = await self.unit_of_work.begin()
        try:
            await self.store.add(tx, buckets)
        except BaseException:
            await tx.rollback()
            self.aggregator._sealed[:0] = buckets  # keep them for the next attempt
            raise
        await tx.commit()
        return len(buckets)


class EvolutionPipeline:
    """The self-learning loop over one app.

    Args:
        aggregator: Receives telemetry (pass it as `Executor(telemetry=...)`).
        detector: Judges closed windows and sequences.
        generator: Writes suggestions against the app's registry.
        orchestrator: Stores suggestions and routes them through approval (optional: without it
            the run only returns suggestions).
        analyzer: Usage statistics (unused operations become deprecation suggestions).
        validation: Field-level validation errors (a `TrafficSink` on the executor).
        intents: Where intent snapshots are stored (optional).
        buckets: Bucket store other processes export to (optional ingest stage).
        unit_of_work: Transactions for intents and events (default: the orchestrator's, else memory).
        events: Publisher of `intent.detected` (default: the orchestrator's; `None` publishes
            nothing).
        clock: Time source.
        rationale_writer: Optional `contractspec.evolution.llm.LLMRationaleWriter` that lets a
            model write each new suggestion's rationale (the patch and diff stay computed).
    """

    def __init__(
        self,
        *,
        aggregator: IntentAggregator,
        detector: IntentDetector,
        generator: SpecGenerator,
        orchestrator: SpecSuggestionOrchestrator | None = None,
        analyzer: SpecAnalyzer | None = None,
        validation: ValidationErrorSampler | None = None,
        intents: IntentStore | None = None,
        buckets: TelemetryBucketStore | None = None,
        unit_of_work: UnitOfWork | None = None,
        events: EventPublisher | None = None,
        clock: Clock | None = None,
        rationale_writer: LLMRationaleWriter | None = None,
    ) -> None:
        self._sync_runner: SyncRunner | None = None
        self.aggregator = aggregator
        self.rationale_writer = rationale_writer
        self.detector = detector
        self.generator = generator
        self.orchestrator = orchestrator
        self.analyzer = analyzer
        self.validation = validation
        self.intent_store = intents
        self.bucket_store = buckets
        self.unit_of_work: UnitOfWork = (
            unit_of_work
            or (orchestrator.unit_of_work if orchestrator is not None else None)
            or MemoryUnitOfWork()
        )
        self.events: EventPublisher | None = events or (
            orchestrator.events if orchestrator is not None else None
        )
        self.clock: Clock = clock or SystemClock()
        self._ingested_until: datetime | None = None
        self._stop = asyncio.Event()

    async def _ingest(self) -> int:
        if self.bucket_store is None:
            return 0
        since = self._ingested_until or datetime(1970, 1, 1, tzinfo=self.clock.now().tzinfo)
        now = self.clock.now()
        until = now.replace(second=0, microsecond=0)
        tx = await self.unit_of_work.begin(readonly=True)
        try:
            buckets = await self.bucket_store.load(tx, since=since, until=until)
        finally:
            await tx.rollback()
        self._ingested_until = until
        return self.aggregator.ingest_buckets(buckets)

    async def _record_intents(self, intents: list[Intent]) -> None:
        if not intents or (self.intent_store is None and self.events is None):
            return
        tx: Transaction = await self.unit_of_work.begin()
        try:
            if self.intent_store is not None:
                await self.intent_store.add(tx, intents)
            if self.events is not None:
                await self.events.publish(
                    [
                        make_envelope(
                            intent_detected,
                            {
                                "intent_id": i.id, "kind": i.kind.value, "operation": i.operation,
                                "org_id": i.org_id, "severity": i.severity.value,
                                "confidence": i.confidence, "window_start": i.window_start,
                                "window_end": i.window_end, "summary": i.summary,
                                "sequence": list(i.sequence),
                            },
                            clock=self.clock, ids=self.detector.ids, correlation_id=i.id,
                        )
                        for i in intents
                    ],
                    tx,
                )  # fmt: skip
        except BaseException:
            await tx.rollback()
            raise
        await tx.commit()

    async def run_once(self, now: datetime | None = None) -> PipelineRun:
        """One pass of the loop (see the module docstring).

        Args:
            now: The time to close windows up to (default: the clock).

        Returns:
            What the run did.
        """
        at = now or self.clock.now()
        ingested = await self._ingest()
        closed = self.aggregator.advance(at)
        intents = self.detector.evaluate(self.aggregator)
        await self._record_intents(intents)
        usage = self.analyzer.analyze(self.aggregator, intents) if self.analyzer else None
        suggestions = self.generator.suggest(
            intents, usage=usage.operations if usage else (), validation=self.validation
        )
        if self.rationale_writer is not None and suggestions:
            suggestions = await self.rationale_writer.rewrite_all(suggestions)
        submitted = None
        decided: list[SpecSuggestion] = []
        if self.orchestrator is not None:
            submitted = await self.orchestrator.submit(suggestions)
            decided = await self.orchestrator.reconcile()
        run = PipelineRun(
            at=at, ingested=ingested, closed=tuple(closed), intents=tuple(intents),
            suggestions=tuple(suggestions), submitted=submitted, decided=tuple(decided), usage=usage,
        )  # fmt: skip
        _log.info(
            "evolution.pipeline_run",
            closed=len(closed),
            intents=len(intents),
            suggestions=len(suggestions),
            created=len(submitted.created) if submitted else 0,
        )
        return run

    def run_once_sync(self, now: datetime | None = None) -> PipelineRun:
        """`run_once` for scripts and notebooks (also inside a running event loop): every sync call
        of this pipeline runs on one loop thread (`contractspec.core.sync.SyncRunner`), so pooled
        connections stay valid between calls."""
        if self._sync_runner is None:
            self._sync_runner = SyncRunner()
            weakref.finalize(self, self._sync_runner.close)
        return self._sync_runner.run(self.run_once(now), what="run_once_sync()")

    async def run_forever(self, interval_s: float = 60.0, *, max_runs: int | None = None) -> int:
        """Run `run_once` every `interval_s` seconds until `stop()` (or `max_runs` runs).

        A failing run is logged and the loop goes on. Returns the number of runs.
        """
        if not interval_s > 0 or math.isinf(interval_s):
            raise ConfigurationError(f"interval_s must be a positive number, got {interval_s!r}")
        self._stop.clear()
        runs = 0
        while not self._stop.is_set() and (max_runs is None or runs < max_runs):
            try:
                await self.run_once()
            except Exception:
                _log.exception("evolution.pipeline_run_failed")
            runs += 1
            if max_runs is not None and runs >= max_runs:
                break
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=interval_s)
            except TimeoutError:
                continue
        return runs

    def stop(self) -> None:
        """Ask `run_forever` to stop after the current run."""
        self._stop.set()
