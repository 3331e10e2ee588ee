"""Wiring: the CRM executor reports telemetry to the evolution loop, all on one SQL engine."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from attrs import define
from crm_pipeline.spec import ROLES
from crm_pipeline.spec import registry as crm_registry
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine

from contractspec.agent import ApprovalWorkflow
from contractspec.agent.sql import SqlApprovalStore
from contractspec.agent.sql import create_all as create_agent_tables
from contractspec.core import Actor, Clock, Executor, Invocation, RolePermissions, SpecRegistry
from contractspec.core.sql import SqlBackend
from contractspec.core.testing import SequentialIds
from contractspec.evolution import (
    EVOLUTION_EVENTS,
    DetectorConfig,
    EvolutionPipeline,
    IntentAggregator,
    IntentDetector,
    SpecAnalyzer,
    SpecGenerator,
    SpecSuggestionOrchestrator,
)
from contractspec.evolution.sql import SqlIntentStore, SqlSuggestionStore
from contractspec.evolution.sql import create_all as create_evolution_tables

__all__ = ["REVIEWER", "EvolutionLoop", "LatencyInjector", "build_loop", "evolution_registry"]

#: Who reviews spec suggestions (holds `approval.decide`).
REVIEWER = Actor.user("u-architect", roles="spec-reviewer")


def evolution_registry() -> SpecRegistry:
    """A copy of the CRM registry (specs and handlers) plus the evolution events."""
    registry = SpecRegistry()
    for spec in crm_registry:
        registry.register(spec)
    for op in crm_registry.operations():
        handler = crm_registry.handler_for(op)
        if handler is not None:
            registry.bind(op, handler)
    registry.register(*EVOLUTION_EVENTS)
    return registry


class LatencyInjector:
    """Executor middleware adding `delay_s` seconds to one operation (the injected regression)."""

    def __init__(self, operation: str) -> None:
        self.operation = operation
        self.delay_s = 0.0

    async def __call__(
        self, invocation: Invocation, call_next: Callable[[Invocation], Awaitable[BaseModel]]
    ) -> BaseModel:
        if self.delay_s and invocation.spec.name == self.operation:
            await asyncio.sleep(self.delay_s)
        return await call_next(invocation)


@define
class EvolutionLoop:
    """Everything the story needs."""

    registry: SpecRegistry
    executor: Executor
    aggregator: IntentAggregator
    pipeline: EvolutionPipeline
    orchestrator: SpecSuggestionOrchestrator
    workflow: ApprovalWorkflow
    injector: LatencyInjector
    backend: SqlBackend


async def build_loop(
    engine: AsyncEngine,
    out_dir: Path,
    *,
    clock: Clock,
    calls_clock: Clock | None = None,
    window_minutes: int = 1,
) -> EvolutionLoop:
    """Create the tables and wire executor, aggregator, detector, generator and orchestrator.

    Args:
        engine: A configured SQLite (`sqlite_engine`) or PostgreSQL engine; you keep owning it.
        out_dir: Where approved suggestion envelopes are written.
        clock: Time of the loop (windows close on it).
        calls_clock: Time of the CRM calls (default `clock`).
        window_minutes: Window length (1 minute keeps the demo short; production uses 15).
    """
    registry = evolution_registry()
    backend = SqlBackend(engine, registry)
    await backend.create_all()
    await create_agent_tables(engine)
    await create_evolution_tables(engine)
    aggregator = IntentAggregator(window_minutes=window_minutes, lateness_minutes=0)
    injector = LatencyInjector("crm.deal.move")
    executor = Executor(
        registry,
        backend=backend,
        policy=RolePermissions(ROLES),
        telemetry=aggregator,
        clock=calls_clock or clock,
        middleware=[injector],
    )
    workflow = ApprovalWorkflow(
        SqlApprovalStore(),
        backend=backend,
        policy=RolePermissions({"spec-reviewer": ["approval.decide"]}),
        clock=clock,
        ids=SequentialIds("approval"),
    )
    orchestrator = SpecSuggestionOrchestrator(
        SqlSuggestionStore(), workflow, output_dir=out_dir, registry=registry, clock=clock,
    )  # fmt: skip
    detector = IntentDetector(
        DetectorConfig(min_calls=15, min_history=8, min_support=10, cooldown_windows=0),
        clock=clock,
        ids=SequentialIds("intent"),
    )
    pipeline = EvolutionPipeline(
        aggregator=aggregator,
        detector=detector,
        generator=SpecGenerator(registry, clock=clock, ids=SequentialIds("suggestion")),
        orchestrator=orchestrator,
        analyzer=SpecAnalyzer(registry),
        intents=SqlIntentStore(),
        clock=clock,
    )
    return EvolutionLoop(
        registry, executor, aggregator, pipeline, orchestrator, workflow, injector, backend
    )
