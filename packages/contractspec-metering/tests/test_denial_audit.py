"""Metering refusals are audited once as denials, like policy denials (issue 18), on every backend.

A refused call (`FeatureNotEntitledError`, `QuotaExceededError`, `QuotaRateLimitedError`) leaves
exactly one `denied` audit record naming the error code and the feature or meter, and nothing
else: no usage event, no counter change, no `success` record.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from metering_support import App

from contractspec.core import Actor, AuditRecord, CallContext, ContractSpecError
from contractspec.core.audit import MemoryAuditLog
from contractspec.metering import (
    FeatureNotEntitledError,
    QuotaExceededError,
    QuotaRateLimitedError,
    Window,
)

DAY = datetime(2024, 3, 10, tzinfo=UTC)
HOUR = datetime(2024, 3, 10, 12, tzinfo=UTC)
CTX = CallContext(actor=Actor.user("ann"), org_id="org-1")


async def audit_of(app: App, org: str = "org-1") -> list[AuditRecord]:
    """The org's committed audit chain, oldest first (memory or SQL audit log)."""
    audit: Any = app.executor.audit
    if isinstance(audit, MemoryAuditLog):
        return [e.record for e in audit.for_org(org)]
    return [e.record for e in await audit.entries(org)]


def summary(records: list[AuditRecord]) -> list[tuple[str, str, Any, Any]]:
    return [
        (r.action, str(r.outcome), r.details.get("matched_rule"), r.details.get("permission"))
        for r in records
    ]


async def calls_today(app: App) -> int:
    return len(await app.metering.events("api.calls", "org-1", DAY, DAY + timedelta(days=1)))


async def test_a_feature_refusal_is_audited_once_as_a_denial(app: App) -> None:
    """free lacks 'export': the refused call leaves one `denied` record (rule
    feature_not_entitled, permission 'export', the message as reason) and no success record."""
    await app.metering.assign_plan("org-1", "free")
    with pytest.raises(FeatureNotEntitledError) as caught:
        await app.executor.execute("app.export", {}, CTX)
    records = await audit_of(app)
    assert summary(records) == [("app.export", "denied", "feature_not_entitled", "export")]
    (record,) = records
    assert record.details["reason"] == caught.value.message
    assert "feature 'export'" in record.details["reason"]
    assert (record.actor_id, record.org_id) == ("ann", "org-1")


async def test_an_org_without_a_plan_is_audited_once_as_a_denial(app: App) -> None:
    """No plan at all: one `denied` record naming the meter of the binding, nothing metered."""
    with pytest.raises(FeatureNotEntitledError, match="has no plan"):
        await app.executor.execute("app.search", {"query": "x"}, CTX)
    assert summary(await audit_of(app)) == [
        ("app.search", "denied", "feature_not_entitled", "api.calls")
    ]
    assert await calls_today(app) == 0


async def test_a_hard_quota_refusal_is_audited_once_and_changes_nothing(app: App) -> None:
    """The 6th search on free: five success records, then exactly one `denied` record with
    rule quota_exceeded and the meter, and the usage and counter stay at 5."""
    await app.metering.assign_plan("org-1", "free")
    for _ in range(5):
        await app.executor.execute("app.search", {"query": "x"}, CTX)
    with pytest.raises(QuotaExceededError) as caught:
        await app.executor.execute("app.search", {"query": "x"}, CTX)
    records = await audit_of(app)
    assert summary(records) == [("app.search", "success", None, None)] * 5 + [
        ("app.search", "denied", "quota_exceeded", "api.calls")
    ]
    assert records[-1].details["reason"] == caught.value.message
    assert "api.calls" in records[-1].details["reason"]
    assert await calls_today(app) == 5
    assert await app.store.counter("org-1", "api.calls", Window.DAY, DAY) == 5


async def test_a_quota_refused_after_the_handler_rolls_back_and_is_audited_once(app: App) -> None:
    """An amount read from the input is checked after the handler ran (step 4): the note it added
    is rolled back, the counter is unchanged and one `denied` record (quota_exceeded,
    llm.tokens) is written, with no success record for the call."""
    await app.metering.assign_plan("org-1", "free")
    await app.executor.execute("app.note.add", {"id": "n1", "text": "t", "tokens": 60}, CTX)
    with pytest.raises(QuotaExceededError):
        await app.executor.execute("app.note.add", {"id": "n2", "text": "t", "tokens": 60}, CTX)
    assert summary(await audit_of(app)) == [
        ("app.note.add", "success", None, None),
        ("app.note.add", "denied", "quota_exceeded", "llm.tokens"),
    ]
    month = DAY.replace(day=1)
    assert await app.store.counter("org-1", "llm.tokens", Window.MONTH, month) == 60
    tokens = await app.metering.events("llm.tokens", "org-1", month, month + timedelta(days=31))
    assert [e.subject for e in tokens] == ["n1"]


async def test_a_rate_limit_refusal_is_audited_once_as_quota_rate_limited(app: App) -> None:
    """The 4th burst call in the hour: one `denied` record with rule quota_rate_limited."""
    await app.metering.assign_plan("org-1", "free")
    for _ in range(3):
        await app.executor.execute("app.burst", {"query": "x"}, CTX)
    with pytest.raises(QuotaRateLimitedError):
        await app.executor.execute("app.burst", {"query": "x"}, CTX)
    denied = [r for r in await audit_of(app) if r.outcome == "denied"]
    assert summary(denied) == [("app.burst", "denied", "quota_rate_limited", "api.burst")]
    assert await app.store.counter("org-1", "api.burst", Window.HOUR, HOUR) == 3


async def test_an_admitted_call_has_its_normal_record_and_no_denial(app: App) -> None:
    """pro includes 'export': the call is audited as `success` only."""
    await app.metering.assign_plan("org-1", "pro")
    await app.executor.execute("app.export", {"fmt": "json"}, CTX)
    await app.executor.execute("app.search", {"query": "x"}, CTX)
    assert summary(await audit_of(app)) == [
        ("app.export", "success", None, None),
        ("app.search", "success", None, None),
    ]


async def test_refusals_in_a_batch_are_audited_once_and_neighbours_commit(app: App) -> None:
    """Inside executor.batch(): a feature refusal between searches and the two searches past the
    limit are each audited once as denied; the five admitted searches keep their success
    records and their usage."""
    await app.metering.assign_plan("org-1", "free")
    outcomes = []
    async with app.executor.batch() as _:
        for i in range(7):
            if i == 2:
                try:
                    await app.executor.execute("app.export", {}, CTX)
                except ContractSpecError as exc:
                    outcomes.append(exc.code)
            try:
                await app.executor.execute("app.search", {"query": f"q{i}"}, CTX)
                outcomes.append("ok")
            except ContractSpecError as exc:
                outcomes.append(exc.code)
    assert outcomes == ["ok", "ok", "feature_not_entitled"] + ["ok"] * 3 + ["quota_exceeded"] * 2
    assert summary(await audit_of(app)) == (
        [("app.search", "success", None, None)] * 2
        + [("app.export", "denied", "feature_not_entitled", "export")]
        + [("app.search", "success", None, None)] * 3
        + [("app.search", "denied", "quota_exceeded", "api.calls")] * 2
    )
    assert await calls_today(app) == 5
    assert await app.store.counter("org-1", "api.calls", Window.DAY, DAY) == 5


async def test_concurrent_refusals_are_each_audited_once(app: App) -> None:
    """12 concurrent searches for 5 allowed: 5 success and exactly 7 denied records."""
    await app.metering.assign_plan("org-1", "free")

    async def search(i: int) -> None:
        with contextlib.suppress(QuotaExceededError):
            await app.executor.execute("app.search", {"query": f"q{i}"}, CTX)

    await asyncio.gather(*(search(i) for i in range(12)))
    outcomes = [str(r.outcome) for r in await audit_of(app)]
    assert (outcomes.count("success"), outcomes.count("denied"), len(outcomes)) == (5, 7, 12)
    assert await calls_today(app) == 5
