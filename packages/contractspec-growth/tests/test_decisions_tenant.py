"""The decision loop's tenant scope and the label/settle race, on memory, a SQLite file and
PostgreSQL: an outcome event of another org never rewards a decision, a label from another org is
refused, and of an override and a settlement at the same moment exactly one wins."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from contractspec.core.context import Actor, CallContext
from contractspec.core.errors import ConflictError, NotFoundError, SpecValidationError
from contractspec.core.records import EventEnvelope
from contractspec.core.testing import FakeClock, temporary_sql_engine
from contractspec.growth import (
    BanditService,
    DecisionLog,
    LinearIGW,
    MemoryDecisionLog,
    SqlDecisionLog,
    ThompsonSampling,
)
from contractspec.growth.decisions import (
    DecisionLoop,
    DecisionOverriddenError,
    Label,
    MemoryOutcomeStore,
    OutcomeStatus,
    OutcomeStore,
    RewardTerm,
    define_reward_model,
)
from contractspec.growth.decisions_sql import SqlOutcomeStore

T0 = dt.datetime(2024, 6, 1, 12, 0, tzinfo=dt.UTC)
ARMS = ("none", "pct10", "pct20")
REWARD = define_reward_model(
    "retention.offer.reward",
    terms=[RewardTerm("shop.order.paid", amount="margin")],
    horizon=dt.timedelta(days=14),
)


class Paid(BaseModel):
    decision_id: str
    margin: float


def paid(event_id: str, decision_id: str, margin: float, org_id: str | None) -> EventEnvelope:
    """An order event of tenant `org_id`, as the bus delivers it."""
    return EventEnvelope(
        id=event_id,
        name="shop.order.paid",
        version=1,
        occurred_at=T0,
        payload=Paid(decision_id=decision_id, margin=margin),
        org_id=org_id,
    )


@contextlib.asynccontextmanager
async def open_stores(kind: str, tmp_path: Path) -> AsyncIterator[tuple[DecisionLog, OutcomeStore]]:
    """A decision log and an outcome store on memory, a SQLite file or a PostgreSQL schema."""
    if kind == "memory":
        yield MemoryDecisionLog(), MemoryOutcomeStore()
        return
    async with temporary_sql_engine(kind, tmp_path) as engine:
        log = SqlDecisionLog(engine)
        outcomes = SqlOutcomeStore(engine, metadata=log.metadata)
        await log.create_all()
        await outcomes.create_all()
        yield log, outcomes


@pytest.fixture
async def stores(
    backend_kind: str, tmp_path: Path
) -> AsyncIterator[tuple[DecisionLog, OutcomeStore]]:
    async with open_stores(backend_kind, tmp_path) as pair:
        yield pair


def _loop(log: DecisionLog, outcomes: OutcomeStore) -> DecisionLoop:
    service = BanditService(
        LinearIGW("offers", ARMS, n_features=2, seed=3), log=log, clock=FakeClock(T0)
    )
    return DecisionLoop(service, REWARD, outcomes=outcomes)


# -- tenant scope -------------------------------------------------------------------------------


async def test_an_outcome_from_another_org_never_rewards_the_decision(
    stores: tuple[DecisionLog, OutcomeStore],
) -> None:
    """A decision made for acme: globex's and org-less events naming it are FOREIGN_ORG and not
    recorded (also when redelivered); only acme's event counts towards the settled reward."""
    log, outcomes = stores
    loop = _loop(log, outcomes)
    await loop.choose([1.0, 0.0], decision_id="t1", org_id="acme")
    assert await loop.handle(paid("g1", "t1", 1000.0, "globex")) is OutcomeStatus.FOREIGN_ORG
    assert await loop.handle(paid("n1", "t1", 1000.0, None)) is OutcomeStatus.FOREIGN_ORG
    assert await loop.handle(paid("a1", "t1", 7.0, "acme")) is OutcomeStatus.RECORDED
    assert await loop.handle(paid("g1", "t1", 1000.0, "globex")) is OutcomeStatus.FOREIGN_ORG
    stored = await outcomes.outcomes("t1")
    assert [(o.event_id, o.org_id) for o in stored] == [("a1", "acme")]
    assert (await loop.settle("t1")).reward == 7.0
    assert await loop.handle(paid("g2", "t1", 5.0, "globex")) is OutcomeStatus.FOREIGN_ORG
    assert await outcomes.org_of("t1") == "acme"


async def test_the_org_comes_from_the_call_context_and_an_org_less_decision_takes_no_org(
    stores: tuple[DecisionLog, OutcomeStore],
) -> None:
    """`ctx=` records the context's org; `org_id` contradicting `ctx` is refused naming org_id;
    a decision made without an org only takes events without an org."""
    log, outcomes = stores
    loop = _loop(log, outcomes)
    ctx = CallContext(actor=Actor.system("agent"), org_id="acme", channel="agent")
    await loop.choose([1.0, 0.0], decision_id="c1", ctx=ctx)
    assert await outcomes.org_of("c1") == "acme"
    with pytest.raises(SpecValidationError) as err:
        await loop.choose([1.0, 0.0], decision_id="c2", ctx=ctx, org_id="globex")
    assert err.value.details["field"] == "org_id"
    with pytest.raises(NotFoundError):  # refused before anything was logged
        await log.get("c2")
    await loop.choose([1.0, 0.0], decision_id="c3")
    assert await loop.handle(paid("e1", "c3", 3.0, "acme")) is OutcomeStatus.FOREIGN_ORG
    assert await loop.handle(paid("e2", "c3", 3.0, None)) is OutcomeStatus.RECORDED
    assert (await loop.settle("c3")).reward == 3.0


async def test_a_label_from_another_org_is_refused(
    stores: tuple[DecisionLog, OutcomeStore],
) -> None:
    """Labelling acme's decision as globex (or without an org) is NotFoundError naming org_id
    and writes nothing: the decision still settles; acme's own label records with its org."""
    log, outcomes = stores
    loop = _loop(log, outcomes)
    d = await loop.choose([1.0, 0.0], decision_id="l1", org_id="acme")
    other = next(a for a in ARMS if a != d.arm)
    for org in ("globex", None):
        with pytest.raises(NotFoundError) as err:
            await loop.label("l1", other, actor="mallory", org_id=org)
        assert err.value.details["field"] == "org_id"
    assert await outcomes.labels(["l1"]) == []
    d2 = await loop.choose([1.0, 0.0], decision_id="l2", org_id="acme")
    label = await loop.label("l2", next(a for a in ARMS if a != d2.arm), actor="ann", org_id="acme")
    assert label.org_id == "acme"
    assert await outcomes.labels(["l2"]) == [label]
    assert (await loop.settle("l1")).reward == 0.0
    with pytest.raises(DecisionOverriddenError):
        await loop.settle("l2")


_BAD = st.sampled_from(["\x00", "\ud800", "\udfff"])
_ORG = st.one_of(
    st.none(),
    st.sampled_from(["acme", "globex", "", "ACME", "acme ", "x" * 201]),
    st.text(max_size=8),
    st.builds(lambda a, b, c: a + b + c, st.text(max_size=3), _BAD, st.text(max_size=3)),
)


def _valid_org(org: str | None) -> bool:
    return org is None or (
        0 < len(org) <= 200 and not any(c == "\x00" or "\ud800" <= c <= "\udfff" for c in org)
    )


def test_hostile_org_ids_never_cross_tenants(backend_kind: str, tmp_path: Path) -> None:
    """Hypothesis over the decision's, the event's and the labeller's org ids (empty, too long,
    NUL, lone surrogates, near-equal strings): a malformed org is refused naming org_id with
    nothing logged; an event counts exactly when its org equals the decision's, and a label is
    accepted exactly when its org does."""
    ids = itertools.count()
    with asyncio.Runner() as runner:  # one store for all examples
        manager = open_stores(backend_kind, tmp_path)
        log, outcomes = runner.run(manager.__aenter__())
        loop = _loop(log, outcomes)
        try:

            @settings(
                max_examples=40,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
                database=None,
            )
            @given(decision_org=_ORG, event_org=_ORG, label_org=_ORG)
            def one(decision_org: Any, event_org: Any, label_org: Any) -> None:
                runner.run(_one(loop, f"h{next(ids)}", decision_org, event_org, label_org))

            one()
        finally:
            runner.run(manager.__aexit__(None, None, None))


async def _one(
    loop: DecisionLoop,
    decision_id: str,
    decision_org: str | None,
    event_org: str | None,
    label_org: str | None,
) -> None:
    if not _valid_org(decision_org):
        with pytest.raises(SpecValidationError) as err:
            await loop.choose([1.0, 0.0], decision_id=decision_id, org_id=decision_org)
        assert err.value.details["field"] == "org_id"
        with pytest.raises(NotFoundError):
            await loop.service.log.get(decision_id)
        return
    d = await loop.choose([1.0, 0.0], decision_id=decision_id, org_id=decision_org)
    status = await loop.handle(paid(f"{decision_id}e", decision_id, 3.0, event_org))
    same = event_org == decision_org
    assert status is (OutcomeStatus.RECORDED if same else OutcomeStatus.FOREIGN_ORG)
    if not _valid_org(label_org):
        with pytest.raises(SpecValidationError) as err:
            await loop.label(decision_id, d.arm, actor="ann", org_id=label_org)
        assert err.value.details["field"] == "org_id"
    elif label_org != decision_org:
        with pytest.raises(NotFoundError):
            await loop.label(decision_id, d.arm, actor="ann", org_id=label_org)
    else:
        await loop.label(decision_id, d.arm, actor="ann", org_id=label_org)  # a confirmation
    assert (await loop.settle(decision_id)).reward == (3.0 if same else 0.0)


# -- label and settle at the same moment ------------------------------------------------------


async def test_the_state_row_keeps_settled_and_overridden_exclusive(
    stores: tuple[DecisionLog, OutcomeStore],
) -> None:
    """Store conformance: a settled decision refuses an override and the refused label is not
    kept (same transaction); a confirmation still records; an overridden decision refuses a
    settlement, also after a release; registering sets the org of a row written earlier."""
    _, outcomes = stores
    await outcomes.register("s1", "acme")
    assert await outcomes.org_of("s1") == "acme"
    assert await outcomes.org_of("nope") is None
    assert await outcomes.claim_settlement("s1")
    assert await outcomes.claim_settlement("s1")  # a retried settlement claims again
    with pytest.raises(ConflictError):
        await outcomes.add_label(Label("s1", "b", "ann", "", T0, "acme"), override=True)
    assert await outcomes.labels(["s1"]) == []
    confirm = Label("s1", "a", "ann", "", T0, "acme")
    await outcomes.add_label(confirm)
    assert await outcomes.labels(["s1"]) == [confirm]
    await outcomes.register("s2", None)
    await outcomes.add_label(Label("s2", "b", "ann", "", T0), override=True)
    assert not await outcomes.claim_settlement("s2")
    await outcomes.release_settlement("s2")
    assert not await outcomes.claim_settlement("s2")
    await outcomes.add_label(Label("s3", "b", "ann", "", T0), override=True)
    await outcomes.register("s3", "acme")
    assert await outcomes.org_of("s3") == "acme"
    assert not await outcomes.claim_settlement("s3")


async def test_an_override_and_a_settlement_at_the_same_moment_never_both_win(
    stores: tuple[DecisionLog, OutcomeStore],
) -> None:
    """Twelve decisions, each with two settle calls and an overriding label racing (in varying
    order): every decision ends rewarded or overridden, never both and never neither; the losers
    get ConflictError (the label) or DecisionOverriddenError (the settlement)."""
    log, outcomes = stores
    loop = _loop(log, outcomes)
    decisions = [await loop.choose([1.0, 0.5], decision_id=f"r{i}") for i in range(12)]
    for d in decisions:
        await loop.handle(paid(f"{d.decision_id}p", d.decision_id, 5.0, None))
    calls: list[Any] = []
    for i, d in enumerate(decisions):
        other = next(a for a in ARMS if a != d.arm)
        ops = [
            loop.settle(d.decision_id),
            loop.label(d.decision_id, other, actor="ann", reason="race"),
            loop.settle(d.decision_id),
        ]
        calls.extend(ops[i % 3 :] + ops[: i % 3])
    results = await asyncio.gather(*calls, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(e, ConflictError | DecisionOverriddenError) for e in errors), errors
    for d in decisions:
        rewarded = (await log.get(d.decision_id)).reward is not None
        overridden = bool(await outcomes.labels([d.decision_id]))
        assert rewarded != overridden, d.decision_id
    # settle_due skips what was overridden meanwhile and settles nothing twice
    assert await loop.settle_due(T0 + dt.timedelta(days=30)) == []


async def test_a_settlement_the_policy_refuses_leaves_the_decision_open_for_an_override(
    stores: tuple[DecisionLog, OutcomeStore],
) -> None:
    """Thompson sampling refuses a reward of 10 (outside [0, 1]): the decision is open again, so
    a person's override is still recorded and the decision is never rewarded."""
    log, outcomes = stores
    service = BanditService(ThompsonSampling("ts", ARMS, seed=1), log=log, clock=FakeClock(T0))
    loop = DecisionLoop(service, REWARD, outcomes=outcomes)
    d = await loop.choose(decision_id="ts1", org_id="acme")
    await loop.handle(paid("e1", "ts1", 10.0, "acme"))
    with pytest.raises(SpecValidationError):
        await loop.settle("ts1")
    other = next(a for a in ARMS if a != d.arm)
    await loop.label("ts1", other, actor="ann", org_id="acme")
    with pytest.raises(DecisionOverriddenError):
        await loop.settle("ts1")
    assert (await log.get("ts1")).reward is None
