"""The decision loop on memory, a SQLite file and PostgreSQL: outcomes joined by decision id,
rewards settled once, labels, the reward model spec, shadow mode and guarded promotion."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from contractspec.core import SpecRegistry
from contractspec.core.errors import (
    ConflictError,
    NotFoundError,
    SpecDefinitionError,
    SpecValidationError,
)
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
    SHADOW_PREFIX,
    DecisionLoop,
    Label,
    MemoryOutcomeStore,
    Outcome,
    OutcomeStatus,
    OutcomeStore,
    PromotionRefusedError,
    RewardTerm,
    define_reward_model,
)
from contractspec.growth.decisions_sql import SqlOutcomeStore
from contractspec.growth.rollouts import MemoryRolloutStore, RolloutStatus, SpecExperimentController

T0 = dt.datetime(2024, 6, 1, 12, 0, tzinfo=dt.UTC)
ARMS = ("none", "pct10", "pct20")

REWARD = define_reward_model(
    "retention.offer.reward",
    terms=[
        RewardTerm("shop.order.paid", amount="margin"),
        RewardTerm("shop.refund.issued", amount="amount", weight=-1.0),
        RewardTerm("support.complaint.filed", weight=-20.0, guardrail=True),
    ],
    horizon=dt.timedelta(days=14),
)


class Paid(BaseModel):
    decision_id: str | None = None
    margin: Any = None
    amount: Any = None


def event(name: str, event_id: str, at: dt.datetime = T0, **payload: Any) -> EventEnvelope:
    """An outcome event as the bus would deliver it."""
    return EventEnvelope(id=event_id, name=name, version=1, occurred_at=at, payload=Paid(**payload))


@pytest.fixture
async def stores(
    backend_kind: str, tmp_path: Path
) -> AsyncIterator[tuple[DecisionLog, OutcomeStore]]:
    """A decision log and an outcome store on memory, a SQLite file or a PostgreSQL schema."""
    if backend_kind == "memory":
        yield MemoryDecisionLog(), MemoryOutcomeStore()
        return
    async with temporary_sql_engine(backend_kind, tmp_path) as engine:
        log = SqlDecisionLog(engine)
        outcomes = SqlOutcomeStore(engine, metadata=log.metadata)
        await log.create_all()
        await outcomes.create_all()
        yield log, outcomes


def _outcome(event_id: str, decision_id: str = "d1", value: float = 1.0) -> Outcome:
    return Outcome(event_id, decision_id, "shop.order.paid", value, False, T0)


# -- the outcome store conformance suite --------------------------------------------------------


async def test_an_event_counts_once_even_under_concurrent_deliveries(
    stores: tuple[DecisionLog, OutcomeStore],
) -> None:
    """Eight concurrent adds of one event id write exactly one outcome."""
    _, outcomes = stores
    assert isinstance(outcomes, OutcomeStore)
    results = await asyncio.gather(*(outcomes.add(_outcome("e1", value=i)) for i in range(8)))
    assert sorted(results) == [False] * 7 + [True]
    stored = await outcomes.outcomes("d1")
    assert len(stored) == 1
    assert stored[0].event_id == "e1"


async def test_outcomes_round_trip_in_insertion_order(
    stores: tuple[DecisionLog, OutcomeStore],
) -> None:
    """Outcomes come back per decision, in insertion order, with UTC timestamps and flags."""
    _, outcomes = stores
    paris = dt.timezone(dt.timedelta(hours=2))
    a = Outcome("e2", "d1", "shop.refund.issued", -12.5, False, T0.astimezone(paris))
    b = Outcome("e1", "d1", "support.complaint.filed", -20.0, True, T0 + dt.timedelta(seconds=1))
    c = _outcome("e3", decision_id="d2")
    for o in (a, b, c):
        assert await outcomes.add(o)
    got = await outcomes.outcomes("d1")
    assert got == [a, b]
    assert got[0].occurred_at.utcoffset() == dt.timedelta(0)
    assert await outcomes.outcomes("d2") == [c]
    assert await outcomes.outcomes("nope") == []


async def test_a_decision_has_one_label_even_under_concurrent_overrides(
    stores: tuple[DecisionLog, OutcomeStore],
) -> None:
    """Of five concurrent labels of one decision one wins; the rest are ConflictErrors."""
    _, outcomes = stores
    labels = [Label("d1", "pct10", f"ann{i}", "too generous", T0) for i in range(5)]
    results = await asyncio.gather(*(outcomes.add_label(x) for x in labels), return_exceptions=True)
    assert sum(r is None for r in results) == 1
    assert all(isinstance(r, ConflictError) for r in results if r is not None)
    await outcomes.add_label(Label("d2", "none", "bob", "", T0))
    assert [x.decision_id for x in await outcomes.labels()] == ["d1", "d2"]
    assert [x.actor for x in await outcomes.labels(["d2", "zz"])] == ["bob"]
    assert await outcomes.labels([]) == []


# -- the loop -----------------------------------------------------------------------------------


def _loop(log: DecisionLog, outcomes: OutcomeStore, clock: FakeClock, **kw: Any) -> DecisionLoop:
    service = BanditService(LinearIGW("offers", ARMS, n_features=2, seed=3), log=log, clock=clock)
    return DecisionLoop(service, REWARD, outcomes=outcomes, clock=clock, **kw)


async def test_rewards_are_profit_minus_penalties_joined_by_decision_id(
    stores: tuple[DecisionLog, OutcomeStore],
) -> None:
    """Margin 30 minus a refund of 12.5 minus a complaint (20) settles as reward -2.5, once;
    duplicates, unrelated and unknown events do not count; the policy learns it."""
    log, outcomes = stores
    clock = FakeClock(T0)
    loop = _loop(log, outcomes, clock)
    decision = await loop.choose([1.0, 0.5], decision_id="cust-1:1")
    did = decision.decision_id
    statuses = [
        await loop.handle(event("shop.order.paid", "e1", decision_id=did, margin=30)),
        await loop.handle(event("shop.order.paid", "e1", decision_id=did, margin=30)),
        await loop.handle(event("shop.refund.issued", "e2", decision_id=did, amount="12.5")),
        await loop.handle(event("support.complaint.filed", "e3", decision_id=did)),
        await loop.handle(event("shop.cart.viewed", "e4", decision_id=did)),
        await loop.handle(event("shop.order.paid", "e5", margin=3)),
        await loop.handle(event("shop.order.paid", "e6", decision_id="ghost", margin=3)),
    ]
    assert statuses == [
        OutcomeStatus.RECORDED,
        OutcomeStatus.DUPLICATE,
        OutcomeStatus.RECORDED,
        OutcomeStatus.RECORDED,
        OutcomeStatus.IGNORED,
        OutcomeStatus.IGNORED,
        OutcomeStatus.UNKNOWN_DECISION,
    ]
    before = loop.service.policy.predict([1.0, 0.5])  # type: ignore[attr-defined]
    settled = await loop.settle(did)
    assert settled.reward == pytest.approx(-2.5)
    assert (await log.get(did)).reward == pytest.approx(-2.5)
    after = loop.service.policy.predict([1.0, 0.5])  # type: ignore[attr-defined]
    assert after[decision.arm] < before[decision.arm]
    with pytest.raises(ConflictError):
        await loop.settle(did)
    late = await loop.handle(event("shop.order.paid", "e7", decision_id=did, margin=99))
    assert late is OutcomeStatus.LATE
    assert (await log.get(did)).reward == pytest.approx(-2.5)


async def test_concurrent_settlements_reward_the_policy_once(
    stores: tuple[DecisionLog, OutcomeStore],
) -> None:
    """Six concurrent settle calls for one decision: one wins, five get ConflictError, and the
    policy's statistics moved by exactly one update."""
    log, outcomes = stores
    clock = FakeClock(T0)
    loop = _loop(log, outcomes, clock)
    d = await loop.choose([1.0, 1.0], decision_id="c1")
    await loop.handle(event("shop.order.paid", "p1", decision_id="c1", margin=10))
    results = await asyncio.gather(*(loop.settle("c1") for _ in range(6)), return_exceptions=True)
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert all(isinstance(r, ConflictError) for r in results if isinstance(r, BaseException))
    once = LinearIGW("offers", ARMS, n_features=2, seed=3)
    once.update(d.arm, 10.0, [1.0, 1.0])
    assert loop.service.policy.predict([1.0, 1.0]) == once.predict([1.0, 1.0])  # type: ignore[attr-defined]


async def test_a_bad_amount_is_refused_naming_the_field(
    stores: tuple[DecisionLog, OutcomeStore],
) -> None:
    """An order event without a numeric margin is a SpecValidationError naming `margin` (the bus
    dead-letters it), and nothing is recorded."""
    log, outcomes = stores
    loop = _loop(log, outcomes, FakeClock(T0))
    d = await loop.choose([1.0, 0.0], decision_id="c1")
    for bad in (None, "lots", float("nan"), True):
        with pytest.raises(SpecValidationError) as err:
            await loop.handle(
                event("shop.order.paid", f"x{bad}", decision_id=d.decision_id, margin=bad)
            )
        assert err.value.details["field"] == "margin"
    assert await outcomes.outcomes(d.decision_id) == []


async def test_settle_due_settles_after_the_horizon_and_ignores_later_outcomes(
    stores: tuple[DecisionLog, OutcomeStore],
) -> None:
    """Only decisions older than the 14-day horizon settle; outcomes after the horizon do not
    count; a decision without outcomes gets reward 0."""
    log, outcomes = stores
    clock = FakeClock(T0)
    loop = _loop(log, outcomes, clock)
    old = await loop.choose([1.0, 1.0], decision_id="old")
    quiet = await loop.choose([1.0, 1.0], decision_id="quiet")
    clock.advance(dt.timedelta(days=10))
    young = await loop.choose([1.0, 1.0], decision_id="young")
    await loop.handle(
        event("shop.order.paid", "a", T0 + dt.timedelta(days=2), decision_id="old", margin=5)
    )
    await loop.handle(
        event("shop.order.paid", "b", T0 + dt.timedelta(days=15), decision_id="old", margin=50)
    )
    await loop.handle(
        event("shop.order.paid", "c", T0 + dt.timedelta(days=11), decision_id="young", margin=7)
    )
    clock.advance(dt.timedelta(days=5))  # day 15: old and quiet are due, young is not
    settled = await loop.settle_due()
    assert {d.decision_id: d.reward for d in settled} == {"old": 5.0, "quiet": 0.0}
    assert (await log.get(young.decision_id)).reward is None
    assert await loop.settle_due() == []
    assert old.decision_id != quiet.decision_id


async def test_human_overrides_are_recorded_as_labels(
    stores: tuple[DecisionLog, OutcomeStore],
) -> None:
    """A label names one of the decision's arms, once; unknown decisions and arms are refused."""
    log, outcomes = stores
    loop = _loop(log, outcomes, FakeClock(T0))
    d = await loop.choose([1.0, 0.0], decision_id="c1")
    label = await loop.label(d.decision_id, "none", actor="maria", reason="customer is on hold")
    assert (label.arm, label.actor, label.labelled_at) == ("none", "maria", T0)
    assert await outcomes.labels() == [label]
    with pytest.raises(ConflictError):
        await loop.label(d.decision_id, "pct10", actor="maria")
    with pytest.raises(SpecValidationError) as err:
        await loop.label(d.decision_id, "pct99", actor="maria")
    assert err.value.details["field"] == "arm"
    with pytest.raises(NotFoundError):
        await loop.label("ghost", "none", actor="maria")


async def test_an_overridden_decision_is_never_rewarded_to_the_policy(
    stores: tuple[DecisionLog, OutcomeStore],
) -> None:
    """When a person replaced the policy's arm, its outcomes are not the policy's: settle refuses
    it by name and settle_due skips it; a confirmed decision settles normally."""
    log, outcomes = stores
    clock = FakeClock(T0)
    loop = _loop(log, outcomes, clock)
    a = await loop.choose([1.0, 0.0], decision_id="a")
    b = await loop.choose([1.0, 0.0], decision_id="b")
    other = next(arm for arm in ARMS if arm != a.arm)
    await loop.label("a", other, actor="maria", reason="customer asked for nothing")
    await loop.label("b", b.arm, actor="maria", reason="fine")
    with pytest.raises(SpecValidationError) as err:
        await loop.settle("a")
    assert "overridden" in err.value.message
    clock.advance(dt.timedelta(days=20))
    assert await loop.settle_due() == []
    assert (await loop.settle("b")).reward == 0.0
    assert (await log.get("a")).reward is None
    c = await loop.choose([1.0, 0.0], decision_id="c")
    await loop.settle("c")
    with pytest.raises(ConflictError) as late:  # the policy was rewarded: too late to override
        await loop.label("c", next(arm for arm in ARMS if arm != c.arm), actor="maria")
    assert "already settled" in late.value.message
    assert await outcomes.labels(["c"]) == []
    assert (await loop.label("c", c.arm, actor="maria", reason="confirmed")).arm == c.arm


# -- the reward model spec ----------------------------------------------------------------------


def test_the_reward_model_is_a_spec_in_the_ir() -> None:
    """Registered in a SpecRegistry, the reward model appears in the IR with its terms."""
    registry = SpecRegistry()
    registry.register(REWARD)
    (entry,) = registry.to_ir()["specs"]["reward_model"]
    assert entry["name"] == "retention.offer.reward"
    assert entry["terms"][2] == {
        "event": "support.complaint.filed",
        "amount": None,
        "weight": -20.0,
        "guardrail": True,
    }
    assert entry["horizon_s"] == 14 * 86400


def test_bounds_clip_and_normalise_rewards() -> None:
    """With bounds (-50, 50) and normalize, a raw reward of 100 is 1.0 and -10 is 0.4."""
    model = define_reward_model(
        "r.x", terms=[RewardTerm("e", amount="v")], bounds=(-50, 50), normalize=True
    )
    assert model.reward([_outcome("a", value=100.0)]) == 1.0
    assert model.reward([_outcome("a", value=-10.0)]) == pytest.approx(0.4)
    assert model.reward([]) == 0.5


def _converts_to_a_finite_float(value: float) -> bool:
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an int beyond the largest float
        return False


@settings(max_examples=80, deadline=None)
@given(
    name=st.one_of(st.just("ok.name"), st.text(max_size=12).map(lambda t: t + " !")),
    event_name=st.one_of(st.just("shop.order.paid"), st.text(max_size=12).map(lambda t: "!" + t)),
    amount=st.one_of(st.none(), st.just("margin"), st.text(max_size=8).map(lambda t: t + ".")),
    weight=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(),
        st.sampled_from([2**63, -(2**63) - 1, 10**400, -(10**400)]),  # past int64, past a float
        st.booleans(),
    ),
    horizon_s=st.integers(-5, 5),
    bounds=st.one_of(st.none(), st.tuples(st.floats(), st.floats())),
)
def test_hostile_reward_models_are_refused_naming_the_field(
    name: str,
    event_name: str,
    amount: str | None,
    weight: Any,
    horizon_s: int,
    bounds: tuple[float, float] | None,
) -> None:
    """Any malformed definition is a SpecDefinitionError naming a field; a valid one builds."""

    def build() -> Any:
        return define_reward_model(
            name,
            terms=[RewardTerm(event_name, amount=amount, weight=weight)],
            horizon=dt.timedelta(seconds=horizon_s),
            bounds=bounds,
        )

    valid = (
        name == "ok.name"
        and event_name == "shop.order.paid"
        and amount in (None, "margin")
        and not isinstance(weight, bool)
        and _converts_to_a_finite_float(weight)
        and horizon_s > 0
        and (bounds is None or (np.isfinite(bounds).all() and bounds[0] < bounds[1]))
    )
    if valid:
        assert build().terms[0].weight == float(weight)
        return
    with pytest.raises(SpecDefinitionError) as err:
        build()
    assert err.value.details["field"] in {"name", "event", "amount", "weight", "horizon", "bounds"}


def test_duplicate_terms_and_normalize_without_bounds_are_refused() -> None:
    """Two terms for one event, no terms, or normalize without bounds are refused by field."""
    cases: list[tuple[dict[str, Any], str]] = [
        ({"terms": [RewardTerm("e"), RewardTerm("e", weight=2)]}, "terms"),
        ({"terms": []}, "terms"),
        ({"terms": [RewardTerm("e")], "normalize": True}, "normalize"),
        ({"terms": [RewardTerm("e")], "decision_field": "a..b"}, "decision_field"),
    ]
    for kwargs, field in cases:
        with pytest.raises(SpecDefinitionError) as err:
            define_reward_model("r.x", **kwargs)
        assert err.value.details["field"] == field


# -- shadow mode and promotion ------------------------------------------------------------------

SEGMENTS = np.array([[1.0, 0.0], [1.0, 1.0]])
#: Margin per arm and segment: pct20 pays in segment 1, nothing pays much in segment 0.
MARGIN = np.array([[10.0, 6.0, 2.0], [4.0, 12.0, 30.0]])


class TablePolicy:
    """A fixed policy (a test double of a *learned* candidate): per-segment distribution."""

    def __init__(self, name: str, table: np.ndarray, seed: int) -> None:
        self.name = name
        self.arms = ARMS
        self.table = table
        self.rng = np.random.default_rng(seed)

    def choose(
        self, context: Sequence[float] | None = None, *, decision_id: str | None = None
    ) -> tuple[str, dict[str, float], str]:
        s = int((context or [0, 0])[1])
        probs = dict(zip(ARMS, self.table[s].tolist(), strict=True))
        arm = ARMS[int(self.rng.choice(3, p=self.table[s]))]
        return arm, probs, decision_id or "x"

    def update(self, arm: str, reward: float, context: Sequence[float] | None = None) -> None:
        return None


GOOD = np.array([[0.9, 0.05, 0.05], [0.05, 0.05, 0.9]])
BAD = np.array([[0.05, 0.05, 0.9], [0.9, 0.05, 0.05]])
UNIFORM = np.full((2, 3), 1 / 3)


async def _run(loop: DecisionLoop, n: int, start: int, rng: np.random.Generator,
               complaints: float = 0.0) -> None:  # fmt: skip
    for i in range(start, start + n):
        s = int(rng.integers(0, 2))
        d = await loop.choose(SEGMENTS[s].tolist(), decision_id=f"c{i}", subject=f"cust{i}")
        a = ARMS.index(d.arm)
        await loop.handle(event("shop.order.paid", f"pay{i}", decision_id=d.decision_id,
                                margin=float(MARGIN[s, a] + rng.normal(0, 2))))  # fmt: skip
        if d.policy != loop.service.policy.name and rng.random() < complaints:
            await loop.handle(
                event("support.complaint.filed", f"cmp{i}", decision_id=d.decision_id)
            )
        await loop.settle(d.decision_id)


async def test_shadow_mode_logs_the_candidate_without_acting_and_reports_the_comparison() -> None:
    """In shadow mode every decision acts with the live policy; the candidate's choice is logged as
    shadow:<id>, never rewarded; the report's DR estimate finds the better candidate."""
    clock = FakeClock(T0)
    live = BanditService(TablePolicy("live", UNIFORM, 1), clock=clock)
    loop = DecisionLoop(live, REWARD, shadow=TablePolicy("cand", GOOD, 2), clock=clock)
    await _run(loop, 600, 0, np.random.default_rng(5))
    decisions = await live.log.decisions()
    assert len(decisions) == 1200
    assert {d.policy for d in decisions if not d.decision_id.startswith(SHADOW_PREFIX)} == {"live"}
    shadows = [d for d in decisions if d.decision_id.startswith(SHADOW_PREFIX)]
    assert len(shadows) == 600
    assert all(d.policy == "cand" and d.reward is None for d in shadows)
    with pytest.raises(SpecValidationError):
        await loop.settle(shadows[0].decision_id)
    report = await loop.shadow_report()
    assert (report.n, report.pending) == (600, 0)
    truth_live = float(MARGIN.mean())
    truth_cand = float(np.mean(np.sum(GOOD * MARGIN, axis=1)))
    assert report.live.covers(truth_live)
    assert report.candidate.dr.covers(truth_cand)
    assert report.lift > 5
    assert 0.2 < report.agreement < 0.5
    assert sum(c[0] for c in report.arm_counts.values()) == 600
    assert report.to_dict()["candidate"]["dr"]["method"] == "dr"


async def test_a_worse_candidate_is_not_promoted() -> None:
    """A candidate whose DR lower bound is under the live mean is refused by name, with no rollout."""
    clock = FakeClock(T0)
    loop = DecisionLoop(BanditService(TablePolicy("live", UNIFORM, 1), clock=clock), REWARD,
                        shadow=TablePolicy("cand", BAD, 2), clock=clock)  # fmt: skip
    await _run(loop, 300, 0, np.random.default_rng(6))
    report = await loop.shadow_report()
    controller = SpecExperimentController(MemoryRolloutStore(), clock=clock)
    with pytest.raises(PromotionRefusedError) as err:
        await loop.promote(report, controller, min_decisions=100)
    assert err.value.code == "promotion_refused"
    with pytest.raises(PromotionRefusedError):
        await loop.promote(report, controller, min_decisions=1000)
    assert await controller.store.all() == []


async def _promoted(complaints: float) -> tuple[DecisionLoop, SpecExperimentController]:
    clock = FakeClock(T0)
    loop = DecisionLoop(BanditService(TablePolicy("live", UNIFORM, 1), clock=clock), REWARD,
                        shadow=TablePolicy("cand", GOOD, 2), clock=clock)  # fmt: skip
    rng = np.random.default_rng(8)
    await _run(loop, 400, 0, rng)
    controller = SpecExperimentController(MemoryRolloutStore(), clock=clock)
    report = await loop.shadow_report()
    with pytest.raises(PromotionRefusedError) as err:  # a good candidate, too few decisions
        await loop.promote(report, controller, min_decisions=report.n + 1)
    assert err.value.details["field"] == "min_decisions"
    assert await controller.store.all() == []
    state = await loop.promote(
        report, controller, stages=(0.5, 1.0), min_samples=30,
        min_dwell=dt.timedelta(0),
    )  # fmt: skip
    assert (state.status, state.coverage) == (RolloutStatus.RUNNING, 0.5)
    await _run(loop, 300, 1000, rng, complaints=complaints)
    await controller.flush()
    return loop, controller


async def test_a_promoted_candidate_acts_for_its_share_and_completes_the_rollout() -> None:
    """After promotion the candidate decides for a share of subjects (no more shadow logging);
    with clean outcomes the rollout advances and completes, then the candidate decides for all."""
    loop, controller = await _promoted(complaints=0.0)
    state = controller.state(loop.operation)
    assert state is not None
    assert state.status is RolloutStatus.COMPLETED
    rollout_decisions = list(await loop.service.log.decisions(after=SHADOW_PREFIX + "c399"))
    assert not any(d.decision_id.startswith(SHADOW_PREFIX) for d in rollout_decisions)
    assert {d.policy for d in rollout_decisions} == {"live", "cand"}
    d = await loop.choose([1.0, 1.0], decision_id="after", subject="someone")
    assert d.policy == "cand"
    with pytest.raises(ConflictError):
        loop.start_shadow(TablePolicy("next", UNIFORM, 3))


async def test_guardrail_outcomes_roll_the_candidate_back() -> None:
    """When 40 % of the candidate's decisions bring complaints the rollout is rolled back and the
    live policy decides for everyone again."""
    loop, controller = await _promoted(complaints=0.4)
    state = controller.state(loop.operation)
    assert state is not None
    assert state.status is RolloutStatus.ROLLED_BACK
    assert state.reason is not None
    assert "error rate" in state.reason
    for i in range(20):
        d = await loop.choose([1.0, 0.0], decision_id=f"z{i}", subject=f"s{i}")
        assert d.policy == "live"


def test_a_candidate_named_like_the_live_policy_is_refused() -> None:
    """The shadow candidate needs its own name (the log keeps policies apart by name)."""
    service = BanditService(ThompsonSampling("same", ARMS, seed=1))
    with pytest.raises(SpecDefinitionError) as err:
        DecisionLoop(service, REWARD, shadow=ThompsonSampling("same", ARMS, seed=2))
    assert err.value.details["field"] == "shadow"


# -- hostile input --------------------------------------------------------------------------------

UNSTORABLE = ["a\x00b", "a\ud800b"]


@pytest.mark.parametrize("bad", UNSTORABLE)
async def test_unstorable_text_is_refused_naming_the_field_on_every_store(
    stores: tuple[DecisionLog, OutcomeStore], bad: str
) -> None:
    """NUL or a lone surrogate in a decision id, a label's actor or reason, or an outcome
    event's id is refused with SpecValidationError naming the field (never a database or
    encoding error, nothing stored); an outcome naming such a decision id is an unknown
    decision; an amount beyond the float range is refused like infinity."""
    log, outcomes = stores
    loop = _loop(log, outcomes, FakeClock(T0))
    d = await loop.choose([1.0, 0.0], decision_id="c1")
    calls: list[tuple[Any, str]] = [
        (lambda: loop.choose([1.0, 0.0], decision_id=bad), "decision_id"),
        (lambda: loop.settle(bad), "decision_id"),
        (lambda: loop.label(bad, d.arm, actor="maria"), "decision_id"),
        (lambda: loop.label("c1", d.arm, actor=bad), "actor"),
        (lambda: loop.label("c1", d.arm, actor="maria", reason=bad), "reason"),
        (lambda: loop.handle(event("shop.order.paid", bad, decision_id="c1", margin=3)), "event_id"),
        (lambda: loop.handle(event("shop.order.paid", "e1", decision_id="c1", margin=10**400)),
         "margin"),
    ]  # fmt: skip
    for call, field_name in calls:
        with pytest.raises(SpecValidationError) as err:
            await call()
        assert err.value.details["field"] == field_name
    status = await loop.handle(event("shop.order.paid", "e2", decision_id=bad, margin=3))
    assert status is OutcomeStatus.UNKNOWN_DECISION
    assert await outcomes.labels() == []
    assert await outcomes.outcomes("c1") == []
    assert [x.decision_id for x in await log.decisions("offers")] == ["c1"]


@pytest.mark.parametrize("huge", [10**400, -(10**400)])
def test_numbers_past_the_float_range_are_refused_naming_the_field(huge: int) -> None:
    """An int too large for a float is a SpecDefinitionError naming the field, not an
    OverflowError, wherever growth takes a number in a definition."""
    from contractspec.growth.experiments import define_experiment
    from contractspec.growth.flags import rollout

    cases = [
        (lambda: RewardTerm("shop.order.paid", weight=huge), "weight"),
        (lambda: define_experiment("exp.k", ["a", "b"], coverage=huge), "coverage"),
        (lambda: define_experiment("exp.k", ["a", "b"], weights=[huge, 0.5]), "weights[0]"),
        (lambda: rollout(True, huge), "coverage"),
    ]
    for build, field in cases:
        with pytest.raises(SpecDefinitionError) as err:
            build()
        assert err.value.details["field"] == field
