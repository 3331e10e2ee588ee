"""EvolutionPipeline end to end on the executor: latency regression -> intent -> suggestion -> approval."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from evolution_app import POLICY, REVIEWER, EvolutionEnv, event_names
from pydantic import BaseModel

from contractspec.core import Actor, CallContext, Executor, Invocation
from contractspec.core.testing import FakeClock, SequentialIds
from contractspec.evolution import (
    DetectorConfig,
    EvolutionPipeline,
    IntentAggregator,
    IntentDetector,
    IntentKind,
    SpecGenerator,
    SuggestionKind,
    SuggestionStatus,
    TelemetryExporter,
)

CTX = CallContext(actor=Actor.user("u-sales", roles="sales"), org_id="o1")


class SlowMove:
    """Middleware injecting a latency regression into shop.deal.move when switched on."""

    def __init__(self) -> None:
        self.delay_s = 0.0

    async def __call__(self, inv: Invocation, call_next: Any) -> BaseModel:
        if self.delay_s and inv.spec.name == "shop.deal.move":
            await asyncio.sleep(self.delay_s)
        result: BaseModel = await call_next(inv)
        return result


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


async def traffic(executor: Executor, minute: int, calls: int) -> None:
    for k in range(calls):
        trace = f"t-{minute}-{k}"
        ctx = CallContext(actor=CTX.actor, org_id="o1", trace_id=trace)
        deal: Any = await executor.execute("shop.deal.create", {"title": "x", "amount": 5}, ctx)
        await executor.execute("shop.deal.move", {"deal_id": deal.id, "stage": "won"}, ctx)


async def test_pipeline_turns_a_latency_regression_into_an_approved_envelope(
    env: EvolutionEnv,
) -> None:
    """Ten healthy minutes, then slow moves: intent, timeout suggestion, approval, envelope, events."""
    clock = env.clock
    # the executor's clock ticks, so the calls of one trace have increasing start times
    calls_clock = FakeClock(clock.now(), tick=timedelta(milliseconds=100))
    agg = IntentAggregator(window_minutes=1, lateness_minutes=0)
    slow = SlowMove()
    executor = Executor(env.registry, backend=env.backend, policy=POLICY, telemetry=agg,
                        clock=calls_clock, middleware=[slow])  # fmt: skip
    detector = IntentDetector(
        DetectorConfig(min_calls=20, min_history=8, min_support=5, cooldown_windows=0),
        clock=clock,
        ids=SequentialIds("intent"),
    )  # fmt: skip
    pipeline = EvolutionPipeline(
        aggregator=agg, detector=detector,
        generator=SpecGenerator(env.registry, clock=clock, ids=SequentialIds("sugg")),
        orchestrator=env.orchestrator(), intents=env.intents, clock=clock,
    )  # fmt: skip
    runs = []
    for minute in range(10):
        await traffic(executor, minute, 24)
        clock.advance(60)
        calls_clock.set(clock.now())
        runs.append(await pipeline.run_once())
    workflow = [i for r in runs for i in r.intents if i.kind is IntentKind.WORKFLOW_SEQUENCE]
    assert [i.sequence for i in workflow] == [("shop.deal.create", "shop.deal.move")]
    slow.delay_s = 0.12
    await traffic(executor, 10, 24)
    clock.advance(60)
    calls_clock.set(clock.now())
    run = await pipeline.run_once()
    latency = [i for i in run.intents if i.kind is IntentKind.LATENCY_REGRESSION
               and i.operation == "shop.deal.move"]  # fmt: skip
    assert {i.org_id for i in latency} == {"*", "o1"}
    assert run.submitted is not None
    # real timings: other operations may wobble too; the slowed one must be there
    timeout = [s for s in run.submitted.created if s.kind is SuggestionKind.TIMEOUT_POLICY
               and s.operation == "shop.deal.move"]  # fmt: skip
    assert len(timeout) == 1
    suggestion = timeout[0]
    assert suggestion.breaking is False
    assert [c["rule"] for c in suggestion.diff] == ["spec-added"]
    approved = await pipeline.orchestrator.approve(suggestion.id, REVIEWER)  # type: ignore[union-attr]
    assert approved.status is SuggestionStatus.APPROVED
    envelope = read_json(Path(approved.envelope_path or ""))
    assert envelope["suggestion"]["evidence"]["intent"]["kind"] == "latency_regression"
    names = await event_names(env)
    assert names.count("intent.detected") == sum(len(r.intents) for r in [*runs, run])
    assert "suggestion.created" in names
    assert names[-1] == "suggestion.decided"
    tx = await env.backend.unit_of_work.begin(readonly=True)
    stored = await env.intents.find(tx, kind=IntentKind.LATENCY_REGRESSION)
    await tx.rollback()
    assert {i.id for i in stored} >= {i.id for i in latency}


async def test_exported_buckets_feed_a_central_pipeline(env: EvolutionEnv) -> None:
    """An app process exports sealed minutes; the central pipeline ingests and closes them."""
    from evolution_support import T0, minute_samples

    app = IntentAggregator(window_minutes=5, lateness_minutes=0, export_buckets=True)
    exporter = TelemetryExporter(app, env.buckets, env.backend.unit_of_work)
    for minute in range(6):
        for s in minute_samples("shop.deal.move", minute, [5.0] * 10, errors=1):
            app.record(s)
    assert await exporter.export() == 5  # window 0-5 closed; minute 5 is still open
    assert await exporter.export() == 0
    assert await exporter.export(T0 + timedelta(minutes=10)) == 1
    clock = FakeClock(T0)
    clock.advance(6 * 60)
    central = IntentAggregator(window_minutes=5, lateness_minutes=0)
    pipeline = EvolutionPipeline(
        aggregator=central, detector=IntentDetector(clock=clock),
        generator=SpecGenerator(env.registry, clock=clock), buckets=env.buckets,
        unit_of_work=env.backend.unit_of_work, clock=clock,
    )  # fmt: skip
    run = await pipeline.run_once()
    assert run.ingested == 66
    assert [(w.org_id, w.calls, w.errors) for w in run.closed] == [("*", 55, 5), ("org-1", 55, 5)]
    assert run.submitted is None


async def test_run_forever_runs_until_stopped(env: EvolutionEnv) -> None:
    """The simple loop runs the pipeline on an interval and stops on request."""
    pipeline = EvolutionPipeline(
        aggregator=IntentAggregator(), detector=IntentDetector(clock=env.clock),
        generator=SpecGenerator(env.registry), clock=env.clock,
    )  # fmt: skip
    assert await pipeline.run_forever(0.001, max_runs=3) == 3
    task = asyncio.create_task(pipeline.run_forever(0.001))
    await asyncio.sleep(0.02)
    pipeline.stop()
    assert await asyncio.wait_for(task, 5) >= 1


async def test_pipeline_as_a_jobs_job(env: EvolutionEnv) -> None:
    """With contractspec-jobs installed, the pipeline runs as a scheduled job through a Worker."""
    pytest.importorskip("contractspec.jobs", reason="contractspec-jobs is an optional integration")
    from contractspec.evolution.jobs import pipeline_job
    from contractspec.jobs import MemoryJobQueue, Worker

    pipeline = EvolutionPipeline(
        aggregator=IntentAggregator(), detector=IntentDetector(clock=env.clock),
        generator=SpecGenerator(env.registry), clock=env.clock,
    )  # fmt: skip
    job, schedule, handlers = pipeline_job(pipeline, interval_s=60)
    assert (job.name, schedule.name) == ("evolution.pipeline.run", "evolution.pipeline.run")
    queue = MemoryJobQueue([job])
    job_id = await queue.enqueue(job, {})
    stats = await Worker(queue, handlers, poll_interval=0.01).run(until_idle=True)
    assert stats.succeeded == 1
    done = await queue.get(job_id)
    assert done is not None
    assert done.result == {"closed": 0, "intents": 0, "suggestions": 0, "created": 0}


async def test_run_once_sync_works_inside_a_running_loop(env: EvolutionEnv) -> None:
    """A notebook cell runs a loop: run_once_sync goes to the pipeline's own loop thread."""
    pipeline = EvolutionPipeline(
        aggregator=IntentAggregator(window_minutes=1, lateness_minutes=0),
        detector=IntentDetector(DetectorConfig(), clock=env.clock),
        generator=SpecGenerator(env.registry, clock=env.clock),
        clock=env.clock,
    )
    first = pipeline.run_once_sync()
    second = pipeline.run_once_sync()
    assert (list(first.intents), list(second.intents)) == ([], [])
    assert pipeline._sync_runner is not None
    pipeline._sync_runner.close()
