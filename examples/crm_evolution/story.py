"""The story: healthy CRM traffic, an injected latency regression, and the loop's answer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from attrs import define
from sqlalchemy.ext.asyncio import AsyncEngine

from contractspec.core import Actor, CallContext
from contractspec.core.testing import FakeClock
from contractspec.evolution import (
    Intent,
    IntentKind,
    PipelineRun,
    SpecSuggestion,
    SuggestionKind,
)
from crm_evolution.loop import REVIEWER, EvolutionLoop, build_loop

__all__ = ["Story", "run_story"]

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
SALES = Actor.user("u-sales", roles="sales")
ORG = "acme"


@define
class Story:
    """What happened, for the script and the test."""

    loop: EvolutionLoop
    runs: list[PipelineRun]
    regression: Intent
    suggestion: SpecSuggestion
    approved: SpecSuggestion
    envelope: Path
    workflow: SpecSuggestion | None


async def _minute(loop: EvolutionLoop, minute: int, sessions: int) -> None:
    """`sessions` sales sessions: create a contact, open a deal, qualify it (one trace each)."""
    for k in range(sessions):
        trace = f"{minute:03d}{k:03d}".ljust(32, "0")
        ctx = CallContext(actor=SALES, org_id=ORG, trace_id=trace, channel="http")
        contact_id = f"c-{minute}-{k}"
        await loop.executor.execute(
            "crm.contact.create", {"id": contact_id, "name": f"Contact {minute}-{k}"}, ctx
        )
        deal: Any = await loop.executor.execute(
            "crm.deal.create",
            {"contact_id": contact_id, "title": f"Deal {minute}-{k}", "amount": "1200.00"},
            ctx,
        )
        await loop.executor.execute(
            "crm.deal.move", {"deal_id": deal.id, "to_stage": "qualified"}, ctx
        )


async def run_story(
    engine: AsyncEngine,
    out_dir: Path,
    *,
    healthy_minutes: int = 10,
    sessions: int = 16,
    delay_s: float = 0.15,
) -> Story:
    """Play the story on `engine`, writing envelopes under `out_dir`.

    Args:
        engine: A SQLite or PostgreSQL engine (tables are created).
        out_dir: Directory for approved suggestions.
        healthy_minutes: Minutes of normal traffic (the detector needs 8 as its baseline).
        sessions: Sales sessions per minute (three calls each).
        delay_s: Latency added to `crm.deal.move` in the last minute.
    """
    clock = FakeClock(START)
    # calls tick 100 ms apart, so the calls of a session have increasing start times
    calls_clock = FakeClock(START, tick=timedelta(milliseconds=100))
    loop = await build_loop(engine, out_dir, clock=clock, calls_clock=calls_clock)
    runs: list[PipelineRun] = []
    for minute in range(healthy_minutes + 1):
        if minute == healthy_minutes:
            loop.injector.delay_s = delay_s  # the regression ships
        await _minute(loop, minute, sessions)
        clock.advance(60)
        calls_clock.set(clock.now())
        runs.append(await loop.pipeline.run_once())
    last = runs[-1]
    regression = next(
        i for i in last.intents
        if i.kind is IntentKind.LATENCY_REGRESSION and i.operation == "crm.deal.move"
        and i.org_id == "*"
    )  # fmt: skip
    assert last.submitted is not None
    suggestion = next(
        s for s in last.submitted.created
        if s.kind is SuggestionKind.TIMEOUT_POLICY and s.operation == "crm.deal.move"
    )  # fmt: skip
    approved = await loop.orchestrator.approve(
        suggestion.id, REVIEWER, comment="cap waiting time while we fix the regression"
    )
    workflow = next(
        (s for r in runs if r.submitted for s in r.submitted.created
         if s.kind is SuggestionKind.NEW_OPERATION),
        None,
    )  # fmt: skip
    return Story(
        loop, runs, regression, suggestion, approved, Path(approved.envelope_path or ""), workflow
    )
