"""DecisionLog conformance suite: the memory, SQLite and PostgreSQL logs behave the same."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contractspec.core.errors import ConflictError, NotFoundError, SpecValidationError
from contractspec.core.testing import FakeClock, temporary_sql_engine
from contractspec.growth import (
    BanditDecision,
    BanditService,
    DecisionLog,
    LinearIGW,
    MemoryDecisionLog,
    SqlDecisionLog,
    SqlTrackingStore,
    ThompsonSampling,
)
from contractspec.growth.bandits_sql import decision_table

T0 = dt.datetime(2024, 6, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
async def log(backend_kind: str, tmp_path: Path) -> AsyncIterator[DecisionLog]:
    """A decision log on memory, a SQLite file or a fresh PostgreSQL schema."""
    if backend_kind == "memory":
        yield MemoryDecisionLog()
        return
    async with temporary_sql_engine(backend_kind, tmp_path) as engine:
        sql = SqlDecisionLog(engine)
        await sql.create_all()
        yield sql


def _decision(decision_id: str, **changes: Any) -> BanditDecision:
    fields: dict[str, Any] = {
        "decision_id": decision_id,
        "policy": "p",
        "arm": "a",
        "propensity": 0.5,
        "probabilities": {"a": 0.5, "b": 0.5},
        "context": None,
        "decided_at": T0,
    }
    return BanditDecision(**(fields | changes))


async def test_a_recorded_decision_round_trips_exactly(log: DecisionLog) -> None:
    """Probabilities (with their arm order), context and decided_at come back as recorded."""
    paris = dt.timezone(dt.timedelta(hours=2))
    decision = BanditDecision(
        decision_id="order-17",
        policy="checkout.cta",
        arm="alpha",
        propensity=1 / 3,
        probabilities={"zeta": 0.5 - 1 / 3 + 0.5e-300, "alpha": 1 / 3, "mid": 1 / 6, "b": 0.0},
        context=(0.1, -1.5e300, 1 / 7, 0.0, 2.0),
        decided_at=dt.datetime(2024, 6, 1, 14, 30, 15, 123456, tzinfo=paris),
    )
    assert isinstance(log, DecisionLog)
    await log.record(decision)
    got = await log.get("order-17")
    assert got == decision
    assert list(got.probabilities) == ["zeta", "alpha", "mid", "b"]
    assert got.probabilities["alpha"] == 1 / 3
    assert got.context == (0.1, -1.5e300, 1 / 7, 0.0, 2.0)
    assert got.decided_at == dt.datetime(2024, 6, 1, 12, 30, 15, 123456, tzinfo=dt.UTC)
    assert got.decided_at.utcoffset() == dt.timedelta(0)
    assert (got.reward, got.propensity) == (None, 1 / 3)
    assert await log.decisions() == [got]


async def test_a_duplicate_id_conflicts_and_keeps_the_first(log: DecisionLog) -> None:
    """Recording an id twice raises ConflictError; the first decision stays as it was."""
    await log.record(_decision("d1", arm="a"))
    with pytest.raises(ConflictError, match="decision 'd1' is already logged") as info:
        await log.record(_decision("d1", arm="b", probabilities={"a": 0.5, "b": 0.5}))
    assert info.value.details == {"decision_id": "d1"}
    assert (await log.get("d1")).arm == "a"
    assert len(await log.decisions()) == 1


async def test_unknown_ids_are_not_found(log: DecisionLog) -> None:
    """get and set_reward of an unknown id raise NotFoundError naming it."""
    await log.record(_decision("known"))
    with pytest.raises(NotFoundError, match="no decision 'nope' in the log") as info:
        await log.get("nope")
    assert info.value.details == {"decision_id": "nope", "field": "decision_id"}
    with pytest.raises(NotFoundError, match="no decision 'nope'"):
        await log.set_reward("nope", 1.0)
    assert (await log.get("known")).reward is None


async def test_a_reward_is_set_once(log: DecisionLog) -> None:
    """The first reward is stored and returned; a second raises ConflictError and changes nothing."""
    await log.record(_decision("d1"))
    rewarded = await log.set_reward("d1", 0.75)
    assert rewarded == _decision("d1", reward=0.75)
    with pytest.raises(ConflictError, match=r"'d1' already has reward 0\.75; rewards are"):
        await log.set_reward("d1", 1.0)
    assert (await log.get("d1")).reward == 0.75


async def test_concurrent_rewards_have_exactly_one_winner(log: DecisionLog) -> None:
    """Twelve concurrent set_reward calls on one decision: one stores its reward, eleven conflict."""
    await log.record(_decision("d1"))
    rewards = [i / 11 for i in range(12)]
    results = await asyncio.gather(
        *(log.set_reward("d1", r) for r in rewards), return_exceptions=True
    )
    winners = [r for r in results if isinstance(r, BanditDecision)]
    assert len(winners) == 1
    assert sum(isinstance(r, ConflictError) for r in results) == 11
    assert winners[0].reward in rewards
    assert (await log.get("d1")).reward == winners[0].reward


async def test_concurrent_services_learn_a_reward_once(log: DecisionLog) -> None:
    """Two services (two processes' policies) sharing a log: only the winning one learns."""
    one = ThompsonSampling("t", ["a", "b"], seed=1)
    two = ThompsonSampling("t", ["a", "b"], seed=1)
    first = BanditService(one, log=log, clock=FakeClock(T0))
    second = BanditService(two, log=log, clock=FakeClock(T0))
    d = await first.choose(decision_id="shared")
    results = await asyncio.gather(
        first.reward("shared", 1.0),
        second.reward("shared", 1.0),
        first.reward("shared", 1.0),
        second.reward("shared", 1.0),
        return_exceptions=True,
    )
    assert sum(isinstance(r, BanditDecision) for r in results) == 1
    assert sum(isinstance(r, ConflictError) for r in results) == 3
    learned = [one.posterior(d.arm), two.posterior(d.arm)]
    assert sorted(learned) == [(1.0, 1.0), (2.0, 1.0)]


async def test_decisions_come_in_insertion_order_not_time_order(log: DecisionLog) -> None:
    """decisions() follows the order of record(), even when decided_at goes backwards."""
    times = [T0, T0 - dt.timedelta(hours=1), T0 + dt.timedelta(hours=1), T0]
    ids = ["z", "a", "m", "b"]
    for decision_id, when in zip(ids, times, strict=True):
        await log.record(_decision(decision_id, decided_at=when))
    await log.set_reward("a", 1.0)
    assert [d.decision_id for d in await log.decisions()] == ids
    assert [d.decided_at for d in await log.decisions()] == times


async def test_decisions_filter_by_policy(log: DecisionLog) -> None:
    """policy= keeps only that policy's decisions, in insertion order."""
    for i in range(6):
        await log.record(_decision(f"d{i}", policy="even" if i % 2 == 0 else "odd"))
    assert [d.decision_id for d in await log.decisions("even")] == ["d0", "d2", "d4"]
    assert [d.decision_id for d in await log.decisions(policy="odd")] == ["d1", "d3", "d5"]
    assert await log.decisions("other") == []


async def test_decisions_filter_by_time_range_and_reward(log: DecisionLog) -> None:
    """since is inclusive, until exclusive, rewarded splits rewarded from waiting decisions."""
    for i in range(6):
        await log.record(_decision(f"d{i}", decided_at=T0 + dt.timedelta(minutes=i)))
    for i in (1, 2, 5):
        await log.set_reward(f"d{i}", float(i))
    since, until = T0 + dt.timedelta(minutes=1), T0 + dt.timedelta(minutes=4)
    window = await log.decisions(since=since, until=until)
    assert [d.decision_id for d in window] == ["d1", "d2", "d3"]
    rewarded = await log.decisions(rewarded=True)
    assert [(d.decision_id, d.reward) for d in rewarded] == [("d1", 1.0), ("d2", 2.0), ("d5", 5.0)]
    waiting = await log.decisions("p", since=since, rewarded=False)
    assert [d.decision_id for d in waiting] == ["d3", "d4"]
    local = dt.timezone(dt.timedelta(hours=-5))
    assert [d.decision_id for d in await log.decisions(until=since.astimezone(local))] == ["d0"]


async def test_decisions_page_with_a_keyset_cursor(log: DecisionLog) -> None:
    """limit and after page through one policy's decisions without gaps or repeats."""
    for i in range(7):
        await log.record(_decision(f"d{i}", policy="p" if i != 3 else "q"))
    pages: list[list[str]] = []
    after: str | None = None
    while True:
        page = await log.decisions("p", after=after, limit=2)
        if not page:
            break
        pages.append([d.decision_id for d in page])
        after = page[-1].decision_id
    assert pages == [["d0", "d1"], ["d2", "d4"], ["d5", "d6"]]
    assert [d.decision_id for d in await log.decisions(after="d3")] == ["d4", "d5", "d6"]
    with pytest.raises(NotFoundError, match="no decision 'gone'") as info:
        await log.decisions(after="gone")
    assert info.value.details["field"] == "after"


QUERY_ERRORS = st.one_of(
    st.tuples(st.just("limit"), st.one_of(st.integers(max_value=0), st.sampled_from([1.5, True]))),
    st.tuples(st.just("since"), st.sampled_from([dt.datetime(2024, 1, 1), "2024-01-01"])),
    st.tuples(st.just("until"), st.sampled_from([dt.datetime(2024, 1, 1), 0])),
    st.tuples(st.just("rewarded"), st.sampled_from([1, "yes"])),
    st.tuples(st.just("after"), st.sampled_from(["", "x" * 201])),
    st.tuples(st.just("policy"), st.sampled_from(["", 5])),
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(QUERY_ERRORS)
async def test_bad_filters_are_refused(log: DecisionLog, bad: tuple[str, Any]) -> None:
    """A malformed filter raises SpecValidationError naming it (before any query runs)."""
    field, value = bad
    with pytest.raises(SpecValidationError) as info:
        await log.decisions(**{field: value})
    assert info.value.details["field"] == field


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.sampled_from([math.nan, math.inf, -math.inf, "1.0", None, True]))
async def test_bad_rewards_are_refused_and_leave_the_decision_waiting(
    log: DecisionLog, reward: Any
) -> None:
    """A non-finite or non-numeric reward raises SpecValidationError; the reward stays unset."""
    if not await log.decisions():
        await log.record(_decision("d1"))
    with pytest.raises(SpecValidationError) as info:
        await log.set_reward("d1", reward)
    assert info.value.details["field"] == "reward"
    assert (await log.get("d1")).reward is None


async def test_a_service_on_the_log_replays_and_evaluates(log: DecisionLog) -> None:
    """A LinearIGW service logs contexts and propensities the log returns for evaluation."""
    policy = LinearIGW("igw", ["news", "sports"], n_features=2, seed=4, gamma=20.0)
    service = BanditService(policy, log=log, clock=FakeClock(T0, tick=dt.timedelta(seconds=1)))
    made = []
    for i in range(20):
        x = [1.0, i / 10]
        d = await service.choose(x, decision_id=f"req-{i:02d}")
        if i % 2 == 0:
            d = await service.reward(d.decision_id, 1.0 if d.arm == "news" else 0.0)
        made.append(d)
    assert await service.decisions() == made
    assert await log.decisions("igw", rewarded=True) == made[::2]
    assert [d.decided_at for d in made[:2]] == [T0, T0 + dt.timedelta(seconds=1)]
    clone = LinearIGW("igw", ["news", "sports"], n_features=2, seed=4, gamma=20.0)
    assert clone.choose([1.0, 0.0], decision_id="req-00")[:2] == (
        made[0].arm,
        made[0].probabilities,
    )


async def test_the_sql_table_joins_other_growth_metadata(sql_engine: Any) -> None:
    """The decision table can share the tracking store's MetaData and is defined once per MetaData."""
    tracking = SqlTrackingStore(sql_engine)
    log = SqlDecisionLog(sql_engine, metadata=tracking.metadata)
    assert log.metadata is tracking.metadata
    assert decision_table(tracking.metadata)[1] is log.table
    assert sorted(tracking.metadata.tables) == [
        "cs_growth_bandit_decisions",
        "cs_growth_event",
        "cs_growth_exposure",
    ]
    assert {c.name for c in log.table.constraints if c.name} == {
        "pk_cs_growth_bandit_decisions",
        "uq_cs_growth_bandit_decisions_decision_id",
    }
    await log.create_all()
    await log.create_all()  # idempotent
    await log.record(_decision("d1"))
    await tracking.add_exposures([])
    assert [d.decision_id for d in await log.decisions()] == ["d1"]


async def test_the_sql_log_survives_a_new_engine(tmp_path: Path) -> None:
    """Decisions and rewards written through one SQLite engine are read back by another."""
    from contractspec.core.sql import sqlite_engine

    path = tmp_path / "decisions.db"
    first = sqlite_engine(path)
    try:
        log = SqlDecisionLog(first)
        await log.create_all()
        await log.record(_decision("d1"))
        await log.set_reward("d1", 0.5)
    finally:
        await first.dispose()
    second = sqlite_engine(path)
    try:
        assert await SqlDecisionLog(second).decisions() == [_decision("d1", reward=0.5)]
    finally:
        await second.dispose()


# --------------------------------------------------------------------------- restart


async def test_a_restarted_service_rebuilds_its_policy_from_the_log(log: DecisionLog) -> None:
    """After a restart, `restore()` replays the durable log: the new Thompson policy has the old
    one's posteriors, and generated ids continue after the logged ones."""
    import numpy as np

    rates = {"a": 0.2, "b": 0.5, "c": 0.3}
    before = BanditService(
        ThompsonSampling("cta", list(rates), seed=1), log=log, clock=FakeClock(T0)
    )
    env = np.random.default_rng(3)
    for i in range(300):
        d = await before.choose()
        if i % 7:  # some decisions never get a reward
            await before.reward(d.decision_id, float(env.random() < rates[d.arm]))
    after = BanditService(
        ThompsonSampling("cta", list(rates), seed=2), log=log, clock=FakeClock(T0)
    )
    assert await after.restore() == 300 - len(range(0, 300, 7))
    for arm in rates:
        assert after.policy.posterior(arm) == before.policy.posterior(arm)  # type: ignore[attr-defined]
    assert (await after.choose()).decision_id == "cta:301"


async def test_a_restarted_contextual_policy_predicts_as_before(log: DecisionLog) -> None:
    """LinearIGW's ridge statistics are rebuilt from the logged contexts and rewards."""
    import numpy as np

    before = BanditService(LinearIGW("igw", ["a", "b"], n_features=2, seed=0), log=log)
    env = np.random.default_rng(4)
    for i in range(120):
        x = env.normal(size=2).tolist()
        d = await before.choose(x, decision_id=f"req-{i}")
        await before.reward(d.decision_id, float(x[0] > 0) if d.arm == "a" else 0.5)
    after = BanditService(LinearIGW("igw", ["a", "b"], n_features=2, seed=0), log=log)
    assert await after.restore() == 120
    for x in ([1.0, 0.0], [-1.0, 0.5]):
        new, old = after.policy.predict(x), before.policy.predict(x)  # type: ignore[attr-defined]
        assert new == pytest.approx(old, rel=1e-9)
