"""Entitlements through the executor: feature gates and atomic limits, on every backend."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from metering_support import T0, App, note, open_app

from contractspec.core import (
    Actor,
    CallContext,
    ContractSpecError,
    InternalError,
    PolicyDeniedError,
    TenantScopeError,
)
from contractspec.metering import (
    FeatureNotEntitledError,
    QuotaExceededError,
    QuotaRateLimitedError,
    Window,
)

DAY = datetime(2024, 3, 10, tzinfo=UTC)
CTX = CallContext(actor=Actor.user("ann"), org_id="org-1")


async def calls_today(app: App, org: str = "org-1") -> int:
    rows = await app.metering.events("api.calls", org, DAY, DAY + timedelta(days=1))
    return len(rows)


async def test_a_hard_limit_refuses_the_call_past_it_with_402_details(app: App) -> None:
    """free allows 5 searches a day: the 6th is QuotaExceededError, stores nothing, and the next
    day the allowance is back."""
    await app.metering.assign_plan("org-1", "free")
    for _ in range(5):
        await app.executor.execute("app.search", {"query": "abc"}, CTX)
    with pytest.raises(QuotaExceededError) as caught:
        await app.executor.execute("app.search", {"query": "abc"}, CTX)
    err = caught.value
    assert type(err) is QuotaExceededError
    assert err.code == "quota_exceeded"
    assert err.details == {
        "plan": "free",
        "meter": "api.calls",
        "window": "day",
        "limit": "5",
        "used": "5",
        "requested": "1",
        "window_end": "2024-03-11T00:00:00+00:00",
    }
    assert "plan 'free'" in err.message
    assert "upgrade the plan" in err.message
    assert await calls_today(app) == 5
    assert await app.store.counter("org-1", "api.calls", Window.DAY, DAY) == 5
    app.clock.set(T0 + timedelta(days=1))
    await app.executor.execute("app.search", {"query": "abc"}, CTX)
    assert await app.store.counter("org-1", "api.calls", Window.DAY, DAY + timedelta(days=1)) == 1


async def test_usage_is_recorded_with_the_call(app: App) -> None:
    """A committed call leaves one usage event: org, user, subject, value, the call's time."""
    await app.metering.assign_plan("org-1", "pro")
    await app.executor.execute("app.note.add", {"id": "n1", "text": "hi", "tokens": 42}, CTX)
    (event,) = await app.metering.events("llm.tokens", "org-1", DAY, DAY + timedelta(days=1))
    assert (event.org_id, event.user_id, event.subject, event.value, event.timestamp) == (
        "org-1",
        "ann",
        "n1",
        Decimal(42),
        T0,
    )


async def test_a_failed_call_consumes_no_quota(app: App) -> None:
    """A handler error (query or command) rolls the usage back: the allowance stays whole."""
    await app.metering.assign_plan("org-1", "free")
    with pytest.raises(InternalError):
        await app.executor.execute("app.search", {"query": "x", "fail": True}, CTX)
    assert await calls_today(app) == 0
    assert await app.store.counter("org-1", "api.calls", Window.DAY, DAY) == 0
    for _ in range(5):
        await app.executor.execute("app.search", {"query": "x"}, CTX)
    hour = T0.replace(minute=0)
    for _ in range(4):
        with pytest.raises(InternalError):
            await app.executor.execute("app.burst", {"query": "x", "fail": True}, CTX)
    assert await app.store.counter("org-1", "api.burst", Window.HOUR, hour) == 0
    for _ in range(3):
        await app.executor.execute("app.burst", {"query": "x"}, CTX)
    assert await app.store.counter("org-1", "api.burst", Window.HOUR, hour) == 3


async def test_an_amount_from_the_input_is_checked_after_the_handler_atomically(app: App) -> None:
    """tokens 60 then 50 against 100/month: the second call is refused and its note not stored."""
    await app.metering.assign_plan("org-1", "free")
    await app.executor.execute("app.note.add", {"id": "n1", "text": "a", "tokens": 60}, CTX)
    with pytest.raises(QuotaExceededError) as caught:
        await app.executor.execute("app.note.add", {"id": "n2", "text": "b", "tokens": 50}, CTX)
    assert (caught.value.used, caught.value.requested) == (Decimal(60), Decimal(50))
    tx = await app.executor.unit_of_work.begin(readonly=True)
    try:
        repo = app.executor.entities.repository(note, tx, "org-1")
        assert await repo.get("n2") is None
        assert await repo.get("n1") is not None
    finally:
        await tx.rollback()
    await app.executor.execute("app.note.add", {"id": "n3", "text": "c", "tokens": 40}, CTX)
    month = DAY.replace(day=1)
    assert await app.store.counter("org-1", "llm.tokens", Window.MONTH, month) == 100


async def test_overage_allow_lets_usage_past_the_limit(app: App) -> None:
    """pro's token limit has overage='allow': the call past 10,000 goes through and is counted."""
    await app.metering.assign_plan("org-1", "pro")
    await app.executor.execute("app.note.add", {"id": "n1", "text": "a", "tokens": 9_999}, CTX)
    await app.executor.execute("app.note.add", {"id": "n2", "text": "b", "tokens": 2}, CTX)
    assert (await app.metering.current("llm.tokens", "org-1")).value == 10_001  # this hour
    month = (DAY.replace(day=1), DAY.replace(month=4, day=1))
    total = await app.metering.usage("llm.tokens", "org-1", *month, by_subject=False)
    assert sum(r.value for r in total) == 10_001


async def test_a_rate_limit_answers_429_style_with_retry_after(app: App) -> None:
    """free's burst limit (3 per hour, kind=rate) raises QuotaRateLimitedError with the seconds
    until the hour ends."""
    await app.metering.assign_plan("org-1", "free")
    for _ in range(3):
        await app.executor.execute("app.burst", {"query": "q"}, CTX)
    with pytest.raises(QuotaRateLimitedError) as caught:
        await app.executor.execute("app.burst", {"query": "q"}, CTX)
    assert caught.value.code == "quota_rate_limited"
    assert caught.value.details["retry_after_s"] == 30 * 60  # T0 is 12:30, the hour ends at 13:00
    assert isinstance(caught.value, QuotaExceededError)


async def test_features_gate_operations_naming_plan_and_feature(app: App) -> None:
    """export needs the 'export' feature: free is refused before the handler, pro passes."""
    await app.metering.assign_plan("org-1", "free")
    with pytest.raises(FeatureNotEntitledError) as caught:
        await app.executor.execute("app.export", {}, CTX)
    assert "feature 'export'" in caught.value.message
    assert "plan 'free'" in caught.value.message
    assert (caught.value.code, caught.value.plan, caught.value.feature) == (
        "feature_not_entitled",
        "free",
        "export",
    )
    assert isinstance(caught.value, PolicyDeniedError)
    await app.metering.assign_plan("org-1", "pro")
    out = await app.executor.execute("app.export", {"fmt": "json"}, CTX)
    assert out.model_dump() == {"url": "https://example.test/export.json"}


async def test_orgs_without_a_plan_or_an_org_are_refused(app: App) -> None:
    """No plan (and no default) → FeatureNotEntitledError; no org → TenantScopeError."""
    with pytest.raises(FeatureNotEntitledError, match="has no plan"):
        await app.executor.execute("app.search", {"query": "x"}, CTX)
    with pytest.raises(TenantScopeError, match="metered"):
        await app.executor.execute("app.search", {"query": "x"}, CallContext(actor=Actor.user("a")))


async def test_a_default_plan_applies_to_orgs_without_one(tmp_path: Path) -> None:
    """default_plan='free' meters unassigned orgs with free's limits."""
    async with open_app("memory", tmp_path, default_plan="free") as app:
        for _ in range(5):
            await app.executor.execute("app.search", {"query": "x"}, CTX)
        with pytest.raises(QuotaExceededError):
            await app.executor.execute("app.search", {"query": "x"}, CTX)


async def test_limits_are_per_org(app: App) -> None:
    """One org's usage never consumes another org's allowance."""
    await app.metering.assign_plan("org-1", "free")
    await app.metering.assign_plan("org-2", "free")
    other = CallContext(actor=Actor.user("bob"), org_id="org-2")
    for _ in range(5):
        await app.executor.execute("app.search", {"query": "x"}, CTX)
    await app.executor.execute("app.search", {"query": "x"}, other)
    assert (await calls_today(app), await calls_today(app, "org-2")) == (5, 1)


async def test_twenty_concurrent_callers_at_the_limit_admit_exactly_the_allowed_number(
    app: App,
) -> None:
    """20 callers race for 5 searches (static amount) and 20 for 100 tokens in tens (amount from
    the input): exactly 5 and 10 succeed, the rest get QuotaExceededError."""
    await app.metering.assign_plan("org-1", "free")

    async def search(i: int) -> str:
        try:
            await app.executor.execute("app.search", {"query": f"q{i}"}, CTX)
        except QuotaExceededError:
            return "refused"
        return "ok"

    results = await asyncio.gather(*(search(i) for i in range(20)))
    assert results.count("ok") == 5
    assert results.count("refused") == 15
    assert await calls_today(app) == 5

    async def add(i: int) -> str:
        try:
            await app.executor.execute(
                "app.note.add", {"id": f"n{i}", "text": "t", "tokens": 10}, CTX
            )
        except QuotaExceededError:
            return "refused"
        return "ok"

    results = await asyncio.gather(*(add(i) for i in range(20)))
    assert results.count("ok") == 10
    month = DAY.replace(day=1)
    assert await app.store.counter("org-1", "llm.tokens", Window.MONTH, month) == 100


async def test_a_refused_call_in_a_batch_leaves_its_neighbours_intact(app: App) -> None:
    """Inside executor.batch() the over-limit call fails alone; the others commit."""
    await app.metering.assign_plan("org-1", "free")
    outcomes = []
    async with app.executor.batch() as _:
        for i in range(7):
            try:
                await app.executor.execute("app.search", {"query": f"q{i}"}, CTX)
                outcomes.append("ok")
            except ContractSpecError as exc:
                outcomes.append(exc.code)
    assert outcomes == ["ok"] * 5 + ["quota_exceeded"] * 2
    assert await calls_today(app) == 5
    assert await app.store.counter("org-1", "api.calls", Window.DAY, DAY) == 5


def test_http_answers_402_and_429_with_retry_after(tmp_path: Path) -> None:
    """Through contractspec.core.http: a hard limit is 402, a rate limit 429 + Retry-After, a
    missing feature 403."""
    from starlette.testclient import TestClient

    from contractspec.core import Principal
    from contractspec.core.http import create_app
    from contractspec.core.sync import run_sync

    async def build() -> App:
        cm = open_app("memory", tmp_path)
        return await cm.__aenter__()

    app = run_sync(build())
    run_sync(app.metering.assign_plan("org-1", "free"))

    async def authenticate(request: object) -> Principal:
        return Principal(Actor.user("ann"), org_id="org-1")

    with TestClient(create_app(app.executor, authenticate=authenticate)) as client:
        for _ in range(5):
            assert client.post("/app/search/v1", json={"query": "x"}).status_code == 200
        over = client.post("/app/search/v1", json={"query": "x"})
        assert over.status_code == 402
        assert over.json()["code"] == "quota_exceeded"
        for _ in range(3):
            assert client.post("/app/burst/v1", json={"query": "x"}).status_code == 200
        limited = client.post("/app/burst/v1", json={"query": "x"})
        assert limited.status_code == 429
        assert limited.headers["Retry-After"] == "1800"
        denied = client.post("/app/export/v1", json={})
        assert denied.status_code == 403
        assert denied.json()["details"]["feature"] == "export"


async def test_a_plan_change_keeps_the_windows_usage(app: App) -> None:
    """Usage counted under one plan counts against the next plan's limits in the same window."""
    await app.metering.assign_plan("org-1", "pro")
    for _ in range(6):
        await app.executor.execute("app.search", {"query": "x"}, CTX)
    await app.metering.assign_plan("org-1", "free")  # downgrade: 6 used, free allows 5
    with pytest.raises(QuotaExceededError) as caught:
        await app.executor.execute("app.search", {"query": "x"}, CTX)
    assert (caught.value.plan, caught.value.used) == ("free", Decimal(6))
    await app.metering.assign_plan("org-1", "pro")
    await app.executor.execute("app.search", {"query": "x"}, CTX)
    assert await calls_today(app) == 7


async def test_a_unique_count_meter_on_an_operation_counts_distinct_callers() -> None:
    """meter_operation on a unique_count meter records the caller as the distinct key."""
    from metering_support import SearchIn, SearchOut

    from contractspec.core import Executor, HandlerCtx, SpecRegistry, define_command
    from contractspec.core.testing import FakeClock
    from contractspec.metering import (
        MemoryMeteringStore,
        Metering,
        define_meter,
        define_plan,
        meter_operation,
    )

    visit = define_command("app.visit", input=SearchIn, output=SearchOut)
    active = define_meter("users.active", unit="user", aggregation="unique_count", window="month")
    registry = SpecRegistry(visit, active, define_plan("p"), meter_operation(visit, meter=active))

    @registry.handler(visit)
    async def _visit(inp: SearchIn, ctx: HandlerCtx) -> SearchOut:
        return SearchOut(hits=0)

    clock = FakeClock(T0)
    metering = Metering(registry, MemoryMeteringStore(), clock=clock, default_plan="p")
    executor = Executor(registry, clock=clock, middleware=[metering.middleware()])
    for user in ("ann", "bob", "ann", "cy", "bob"):
        ctx = CallContext(actor=Actor.user(user), org_id="org-1")
        await executor.execute("app.visit", {"query": "q"}, ctx)
    assert (await metering.current("users.active", "org-1")).value == 3
