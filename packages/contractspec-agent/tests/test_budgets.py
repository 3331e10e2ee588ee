"""Budget reservations: one store conformance suite and the gateway's use of it (memory, SQLite,
PostgreSQL): totals hold under parallel calls of one step and concurrent runs, known failures
release, in-doubt calls keep, approvals and shadow mode reserve nothing."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from agent_support import LEAD, OWNER, AgentEnv, audit_actions, issue_refund
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from contractspec.agent import (
    AgentPolicy,
    Budget,
    BudgetStore,
    MemoryBudgetStore,
    MemoryRunStore,
    Reconciled,
    RiskLevel,
    RunStatus,
    ToolMessage,
    define_agent,
    operation_tool,
    tool,
)
from contractspec.agent.testing import ScriptedModel, call
from contractspec.core import CallContext, SpecDefinitionError

T0 = datetime(2024, 1, 1, tzinfo=UTC)
CAP = Decimal(50)


def store_for(env: AgentEnv) -> BudgetStore:
    if env.kind == "memory":
        return MemoryBudgetStore()
    from contractspec.agent.sql import SqlBudgetStore

    return SqlBudgetStore()


async def reserve(
    env: AgentEnv, store: BudgetStore, action: str, amount: int | str, *, org: str = "org-1",
    key: str = "refunds", cap: Decimal = CAP, commit: bool = True,
) -> bool:  # fmt: skip
    tx = await env.backend.unit_of_work.begin()
    got = await store.reserve(
        tx, org_id=org, key=key, action_id=action, amount=Decimal(amount), cap=cap, now=T0
    )
    await (tx.commit() if commit else tx.rollback())
    return got.granted


async def usage(env: AgentEnv, store: BudgetStore, key: str = "refunds", **kw: Any) -> Decimal:
    tx = await env.backend.unit_of_work.begin(readonly=True)
    try:
        return (await store.usage(tx, key=key, org_id=kw.pop("org", "org-1"), **kw)).reserved
    finally:
        await tx.rollback()


async def release(env: AgentEnv, store: BudgetStore, action: str, org: str = "org-1") -> Decimal:
    tx = await env.backend.unit_of_work.begin()
    released = await store.release(tx, org_id=org, action_id=action, now=T0)
    await tx.commit()
    return released


# -- the store --------------------------------------------------------------------------------


async def test_reserve_up_to_the_cap_then_refuse_release_once_and_reserve_again(
    env: AgentEnv,
) -> None:
    """Reservations grant while reserved + amount <= cap and refuse past it (the refusal reports
    the total found); a release gives the amount back once; a held action is granted again
    without reserving twice; a released one reserves anew."""
    store = store_for(env)
    assert [await reserve(env, store, f"a{i}", 20) for i in range(3)] == [True, True, False]
    tx = await env.backend.unit_of_work.begin()
    refused = await store.reserve(
        tx, org_id="org-1", key="refunds", action_id="a9", amount=Decimal(11), cap=CAP, now=T0
    )
    again = await store.reserve(
        tx, org_id="org-1", key="refunds", action_id="a0", amount=Decimal(20), cap=CAP, now=T0
    )
    await tx.commit()
    assert (refused.granted, refused.reserved) == (False, Decimal(40))
    assert (again.granted, again.held_before, again.reserved) == (True, True, Decimal(40))
    assert await usage(env, store) == 40
    assert await release(env, store, "a0") == 20
    assert await release(env, store, "a0") == 0  # releasing twice releases once
    assert await usage(env, store) == 20
    assert await reserve(env, store, "a0", 30)  # released: reserves anew, now 50
    assert not await reserve(env, store, "a3", "0.000001")
    assert await reserve(env, store, "a4", 0)  # nothing more fits, but nothing fits in 0
    tx = await env.backend.unit_of_work.begin(readonly=True)
    holds = await store.holds(tx, org_id="org-1", action_id="a0")
    held = await store.usage(tx, org_id="org-1", key="refunds", action_id="a0")
    await tx.rollback()
    assert [(h.key, h.amount, h.status) for h in holds] == [("refunds", Decimal(30), "held")]
    assert (held.reserved, held.held) == (Decimal(50), Decimal(30))


async def test_budgets_are_per_tenant_and_key_and_roll_back_with_their_transaction(
    env: AgentEnv,
) -> None:
    """The same key in two tenants (and two keys in one) are separate totals; a reservation in a
    transaction that rolls back leaves nothing, while another one made meanwhile stays."""
    store = store_for(env)
    assert await reserve(env, store, "a1", 50, org="org-a")
    assert await reserve(env, store, "a1", 50, org="org-b")
    assert await reserve(env, store, "a2", 50, org="org-a", key="credits")
    assert not await reserve(env, store, "a3", 1, org="org-a")
    assert await release(env, store, "a1", org="org-b") == 50
    assert (await usage(env, store, org="org-a"), await usage(env, store, org="org-b")) == (50, 0)
    if env.kind == "memory":  # interleaved transactions (SQL ones serialise on the row)
        first = await env.backend.unit_of_work.begin()
        second = await env.backend.unit_of_work.begin()
        for tx, action in ((first, "r1"), (second, "r2")):
            got = await store.reserve(
                tx, org_id="org-c", key="k", action_id=action, amount=Decimal(10), cap=CAP, now=T0
            )
            assert got.granted
        await first.rollback()
        await second.commit()
    else:
        assert await reserve(env, store, "r1", 10, org="org-c", key="k", commit=False)
        assert await reserve(env, store, "r2", 10, org="org-c", key="k")
    assert await usage(env, store, org="org-c", key="k") == 10


async def test_twenty_concurrent_reservers_admit_exactly_floor_cap_over_amount(
    env: AgentEnv,
) -> None:
    """20 transactions reserving 3 each against a cap of 50 at the same time: exactly 16 are
    granted and 48 is reserved (PostgreSQL: 20 connections racing on one row)."""
    store = store_for(env)
    await reserve(env, store, "seed", 0)  # the row exists: every reserver takes the update path
    gate = asyncio.Event()

    async def one(i: int) -> bool:
        await gate.wait()
        return await reserve(env, store, f"c{i}", 3)

    tasks = [asyncio.create_task(one(i)) for i in range(20)]
    await asyncio.sleep(0)
    gate.set()
    granted = await asyncio.gather(*tasks)
    assert sum(granted) == 16
    assert await usage(env, store) == 48


# -- the gateway ------------------------------------------------------------------------------


def refund_agent(*, risk: RiskLevel = RiskLevel.L1, shadow: bool = False) -> Any:
    refund = operation_tool(
        issue_refund,
        name="refund",
        risk=risk,
        budget=Budget(key="refunds:{order_id}", amount="amount_cents", cap=50),
    )
    return define_agent(
        "shop.refunder", model="m", instructions="Refund.", tools=[refund],
        policy=AgentPolicy(shadow=shadow),
    )  # fmt: skip


def runner_for(env: AgentEnv, model: ScriptedModel, store: BudgetStore | None = None) -> Any:
    return env.runner(model, budgets=store or store_for(env))


async def test_parallel_calls_of_one_step_cannot_pass_the_cap_together(env: AgentEnv) -> None:
    """Six refunds of 9 in one step (each fits on its own): five are reserved and run, the sixth
    is blocked by its reservation with a budget proof line; 45 refunded; the block is audited
    and the model told why."""
    store = store_for(env)
    calls = [call("refund", order_id="o-1", amount_cents=9, reason=f"r{i}") for i in range(6)]
    model = ScriptedModel([calls, "done"])
    result = await runner_for(env, model, store).run(refund_agent(), "split", OWNER)
    decisions = [p.decision for p in result.packets]
    assert sorted(decisions) == ["blocked"] + ["execute"] * 5
    blocked = result.packets[decisions.index("blocked")]
    (line,) = blocked.proof
    assert (line.name, line.verdict, dict(line.values)) == (
        "budget_reservation", "FAIL",
        {"key": "refunds:o-1", "reserved": "45", "amount": "9", "cap": "50"},
    )  # fmt: skip
    assert blocked.reason == (
        "budget exceeded: budget 'refunds:o-1' has 45 of 50 reserved; 9 more would exceed it"
    )
    assert (await env.refunds()).amount_cents == 45
    assert await usage(env, store, key="refunds:o-1") == 45
    told = [m for m in model.requests[1].messages if isinstance(m, ToolMessage) and m.is_error]
    assert [json.loads(m.content)["status"] for m in told] == ["blocked"]
    assert ("agent.tool.refund", "denied") in await audit_actions(env)
    ok = result.packets[decisions.index("execute")]
    assert ok.proof[0].verdict == "PASS"


async def test_concurrent_runs_cannot_pass_the_cap_together(env: AgentEnv) -> None:
    """Six runs refunding 9 each at once: exactly five refunds run (45), one is blocked."""
    store = store_for(env)

    async def one(i: int) -> Any:
        model = ScriptedModel([call("refund", order_id="o-1", amount_cents=9), "done"])
        return await runner_for(env, model, store).run(refund_agent(), f"refund {i}", OWNER)

    results = await asyncio.gather(*(one(i) for i in range(6)))
    decisions = sorted(r.packets[0].decision for r in results)
    assert decisions == ["blocked"] + ["execute"] * 5
    assert (await env.refunds()).amount_cents == 45


async def test_a_known_failure_releases_and_an_in_doubt_call_keeps_its_reservation(
    env: AgentEnv,
) -> None:
    """A call that fails with a known outcome gives its amount back (the next call may use it);
    a call that timed out (in doubt) keeps it, so the budget still counts what may have been
    paid."""
    store = store_for(env)
    started = asyncio.Event()

    @tool(risk=RiskLevel.L1, budget=Budget(key="pay", amount="amount", cap=10))
    async def pay(amount: int, fail: bool = False) -> str:
        """Pay."""
        if fail:
            raise RuntimeError("card declined")
        return f"paid {amount}"

    @tool(risk=RiskLevel.L1, timeout=0.05, budget=Budget(key="pay", amount="amount", cap=10))
    async def slow_pay(amount: int) -> str:
        """Pay slowly."""
        started.set()
        await asyncio.sleep(5)
        return "late"

    agent = define_agent("shop.payer", model="m", instructions="i", tools=[pay, slow_pay])
    model = ScriptedModel(
        [
            [call("pay", amount=8, fail=True)],
            [call("pay", amount=8)],
            [call("slow_pay", amount=2)],
            [call("pay", amount=1)],
            "done",
        ]
    )
    result = await runner_for(env, model, store).run(agent, "pay", OWNER)
    assert [(p.tool, p.decision) for p in result.packets] == [
        ("pay", "execute"), ("pay", "execute"), ("slow_pay", "in_doubt"), ("pay", "blocked"),
    ]  # fmt: skip
    told = [json.loads(m.content) for m in _tool_messages(model)]
    assert (told[0]["status"], told[1], told[2]["status"]) == ("tool_error", "paid 8", "in_doubt")
    assert await usage(env, store, key="pay") == 10  # 8 paid + 2 in doubt; the failed 8 released
    tx = await env.backend.unit_of_work.begin(readonly=True)
    holds = await store.holds(tx, org_id=OWNER.org_id, action_id=str(result.packets[0].action_id))
    await tx.rollback()
    assert [h.status for h in holds] == ["released"]


async def test_an_in_doubt_call_run_again_reuses_its_reservation(env: AgentEnv) -> None:
    """A call that timed out holds 6 of 10; reconcile finds it not done, so it runs again with
    the same reservation (reserving again would need 12 > 10 and block it)."""
    store = store_for(env)
    attempts: list[int] = []

    def lookup(args: Any, ctx: Any) -> Reconciled:
        return Reconciled(done=False)

    @tool(
        risk=RiskLevel.L1, timeout=0.05, reconcile=lookup,
        budget=Budget(key="pay", amount="amount", cap=10),
    )  # fmt: skip
    async def pay(amount: int) -> str:
        """Pay."""
        attempts.append(amount)
        if len(attempts) == 1:
            await asyncio.sleep(5)
        return "paid"

    agent = define_agent("shop.payer", model="m", instructions="i", tools=[pay])
    model = ScriptedModel([call("pay", amount=6), call("pay", amount=6), "done"])
    result = await runner_for(env, model, store).run(agent, "pay", OWNER)
    assert [p.decision for p in result.packets] == ["in_doubt", "execute"]
    assert attempts == [6, 6]
    assert await usage(env, store, key="pay") == 6


async def test_a_call_refused_on_one_budget_can_run_in_a_later_step(env: AgentEnv) -> None:
    """y reserves on "a-amount" then is refused on "b-count" (released in the same transaction);
    x fails (its reservations released); the same y in the next step finds room and runs (its
    released reservation is held again, not a conflict that would leave it in doubt)."""
    store = store_for(env)

    @tool(
        risk=RiskLevel.L1,
        budget=[Budget(key="a-amount", amount="amount", cap=100), Budget(key="b-count", amount=1, cap=1)],
    )  # fmt: skip
    async def pay(amount: int, ref: str) -> str:
        """Pay."""
        if ref == "x":
            raise RuntimeError("declined")
        return f"paid {ref}"

    agent = define_agent("shop.payer", model="m", instructions="i", tools=[pay])
    model = ScriptedModel(
        [
            [call("pay", amount=5, ref="x"), call("pay", amount=7, ref="y")],
            [call("pay", amount=7, ref="y")],
            "done",
        ]
    )
    result = await runner_for(env, model, store).run(agent, "pay", OWNER)
    assert [(p.arguments["ref"], p.decision) for p in result.packets] == [
        ("x", "execute"), ("y", "blocked"), ("y", "execute"),
    ]  # fmt: skip
    assert json.loads(_tool_messages(model)[-1].content) == "paid y"
    assert (await usage(env, store, key="a-amount"), await usage(env, store, key="b-count")) == (
        7,
        1,
    )


def _tool_messages(model: ScriptedModel) -> list[ToolMessage]:
    last = model.requests[-1].messages
    return [m for m in last if isinstance(m, ToolMessage)]


async def test_approval_waits_without_holding_budget_and_is_checked_again_when_it_runs(
    env: AgentEnv,
) -> None:
    """An L2 refund waiting for approval reserves nothing (another call uses the budget
    meanwhile); once approved it is reserved when it runs and blocked if it no longer fits; a
    rejected one never reserves."""
    store = store_for(env)
    runner = runner_for(
        env, ScriptedModel([call("refund", order_id="o-1", amount_cents=30)]), store
    )
    waiting = await runner.run(refund_agent(risk=RiskLevel.L2), "refund 30", OWNER)
    assert waiting.status is RunStatus.WAITING_APPROVAL
    assert waiting.packets[0].proof[0].verdict == "PASS"  # it fit when it was asked for
    assert await usage(env, store, key="refunds:o-1") == 0
    other = ScriptedModel([call("refund", order_id="o-1", amount_cents=25), "ok"])
    assert (await runner_for(env, other, store).run(refund_agent(), "25", OWNER)).packets[
        0
    ].decision == "execute"
    await env.approvals.approve(waiting.pending_approvals[0], LEAD)
    with runner.override(model=ScriptedModel(["could not"])):
        done = await runner.resume(waiting.run_id)
    assert done.packets[-1].decision == "blocked"
    assert done.packets[-1].reason == (
        "budget exceeded: budget 'refunds:o-1' has 25 of 50 reserved; 30 more would exceed it"
    )
    assert (await env.refunds()).amount_cents == 25
    rejected = runner_for(
        env, ScriptedModel([call("refund", order_id="o-2", amount_cents=5)]), store
    )
    waiting = await rejected.run(refund_agent(risk=RiskLevel.L2), "refund 5", OWNER)
    await env.approvals.reject(waiting.pending_approvals[0], LEAD, comment="no")
    with rejected.override(model=ScriptedModel(["no"])):
        await rejected.resume(waiting.run_id)
    assert await usage(env, store, key="refunds:o-2") == 0


async def test_shadow_mode_reserves_nothing_and_reports_what_would_be_blocked(
    env: AgentEnv,
) -> None:
    """Shadowed calls reserve nothing; one that cannot fit the budget as it stands is reported
    as `would: blocked`."""
    store = store_for(env)
    assert await reserve(env, store, "x", 45, org=str(OWNER.org_id), key="refunds:o-1")
    calls = [call("refund", order_id="o-1", amount_cents=n) for n in (5, 9)]
    result = await runner_for(env, ScriptedModel([calls, "ok"]), store).run(
        refund_agent(shadow=True), "refund", OWNER
    )
    assert [(p.decision, p.would) for p in result.packets] == [
        ("shadow", "execute"), ("shadow", "blocked"),
    ]  # fmt: skip
    assert await usage(env, store, key="refunds:o-1") == 45


async def test_without_a_budget_store_calls_of_budgeted_tools_are_blocked(env: AgentEnv) -> None:
    """Fail closed: SQL stores and no BudgetStore block the call and say how to configure one;
    memory runs get a MemoryBudgetStore by default."""
    model = ScriptedModel([call("refund", order_id="o-1", amount_cents=5), "ok"])
    runner = env.runner(model)
    result = await runner.run(refund_agent(), "refund", OWNER)
    if isinstance(env.runs, MemoryRunStore):
        assert isinstance(runner.budgets, MemoryBudgetStore)
        assert result.packets[0].decision == "execute"
        return
    assert runner.budgets is None
    assert result.packets[0].decision == "blocked"
    assert "budgets=SqlBudgetStore()" in result.packets[0].proof[0].message
    assert (await env.refunds()).total == 0


# -- definitions and hostile input ------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"key": "", "amount": "amount", "cap": 5}, "key"),
        ({"key": "r:{order.id}", "amount": "amount", "cap": 5}, "key"),
        ({"key": "r:{order_id!r}", "amount": "amount", "cap": 5}, "key"),
        ({"key": "r:{", "amount": "amount", "cap": 5}, "key"),
        ({"key": "r", "amount": "a.b", "cap": 5}, "amount"),
        ({"key": "r", "amount": -1, "cap": 5}, "amount"),
        ({"key": "r", "amount": True, "cap": 5}, "amount"),
        ({"key": "r", "amount": "amount", "cap": -1}, "cap"),
        ({"key": "r", "amount": "amount", "cap": float("nan")}, "cap"),
        ({"key": "r", "amount": "amount", "cap": "0.0000001"}, "cap"),
        ({"key": "r", "amount": "amount", "cap": 10**13}, "cap"),
        ({"key": "r", "amount": "amount", "cap": None}, "cap"),
    ],
)
def test_bad_budgets_are_refused_naming_the_field(kwargs: dict[str, Any], field: str) -> None:
    """A bad key, amount or cap is a SpecDefinitionError naming the field."""
    with pytest.raises(SpecDefinitionError) as info:
        Budget(**kwargs)
    assert info.value.details["field"] == field


def test_budgets_must_fit_the_tool() -> None:
    """A budget naming no argument of the tool, on a tool without side effects, or twice with the
    same key is refused when the tool is built."""
    for budget, side_effects in (
        (Budget(key="r:{customer}", amount="amount", cap=5), True),
        (Budget(key="r", amount="total", cap=5), True),
        (Budget(key="r", amount="amount", cap=5), False),
        ([Budget(key="r", amount=1, cap=5), Budget(key="r", amount=2, cap=5)], True),
        (["not a budget"], True),
    ):
        with pytest.raises(SpecDefinitionError, match="budget") as info:

            @tool(risk=RiskLevel.L1, side_effects=side_effects, budget=budget)  # type: ignore[arg-type]  # hostile on purpose
            async def pay(amount: int) -> int:
                """Pay."""
                return amount

        assert info.value.details["field"] == "budget"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60), st.one_of(st.text(max_size=20), st.integers(), st.floats()))
def test_any_key_or_amount_text_builds_a_budget_or_names_the_field(key: str, amount: Any) -> None:
    """Hostile definitions: any key text and amount either build a Budget whose placeholders are
    plain argument names, or raise SpecDefinitionError naming the field (nothing else)."""
    field = ""
    try:
        budget = Budget(key=key, amount=amount, cap=5)
    except SpecDefinitionError as exc:
        field = exc.details["field"]
    else:
        assert all(name.isidentifier() for name in budget.fields)
        assert len(budget.key_for(dict.fromkeys(budget.fields, "x" * 300))) <= 200
    assert field in ("", "key", "amount")


class Pay(BaseModel):
    ref: str
    amount: Any


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.integers(min_value=-(10**30), max_value=10**30),
        st.floats(allow_nan=True, allow_infinity=True),
        st.decimals(allow_nan=True, allow_infinity=True),
        st.text(max_size=30),
        st.booleans(),
        st.none(),
    ),
    st.text(max_size=400),
)
def test_hostile_amounts_and_keys_never_slip_past_the_cap(amount: Any, ref: str) -> None:
    """Any amount a model may send is either refused (not a finite number >= 0) or a claim
    rounded up to 6 places; any key text gives a stored key of at most 200 characters."""
    budget = Budget(key="pay:{ref}", amount="amount", cap=50)
    try:
        claim = budget.claim(Pay(ref=ref, amount=amount))
    except ValueError as exc:
        refused = str(exc)
    else:
        refused = ""
        assert claim.amount.is_finite()
        assert claim.amount >= max(Decimal(str(amount)), Decimal(0))
        assert len(claim.key) <= 200
        assert claim.key == budget.key_for({"ref": ref})
    if refused:
        assert any(w in refused for w in ("number", "negative", "boolean"))


async def test_hostile_amounts_through_the_gateway_are_blocked_not_crashed(env: AgentEnv) -> None:
    """Negative, NaN and infinite amounts from the model are blocked with a budget proof line;
    a fixed amount counts calls; a call refused on one budget gives back what it reserved on
    another; another tenant has budgets of its own."""
    store = store_for(env)

    @tool(risk=RiskLevel.L1, budget=[Budget(key="amounts", amount="amount", cap=100),
                                     Budget(key="calls", amount=1, cap=2)])  # fmt: skip
    async def tip(amount: str, ref: str) -> str:
        """Tip."""
        return "ok"

    agent = define_agent("shop.tipper", model="m", instructions="i", tools=[tip])
    calls = [
        call("tip", amount="-5", ref="a"), call("tip", amount="NaN", ref="b"),
        call("tip", amount="Infinity", ref="c"), call("tip", amount="1", ref="d"),
        call("tip", amount="2", ref="e"), call("tip", amount="3", ref="f"),
    ]  # fmt: skip
    result = await runner_for(env, ScriptedModel([calls, "ok"]), store).run(agent, "tip", OWNER)
    decisions = [p.decision for p in result.packets]
    assert decisions[:3] == ["blocked"] * 3
    assert sorted(decisions[3:]) == ["blocked", "execute", "execute"]  # two calls fit "calls"
    assert result.packets[0].reason == (
        "budget not reserved: argument 'amount' is negative (-5); a budget only grows: nothing "
        "can be reserved"
    )
    assert await usage(env, store, key="calls") == 2
    # the third refused on "calls" after reserving on "amounts" (key order): released in the
    # same transaction, so only 1 + 2 stay reserved
    assert await usage(env, store, key="amounts") == 3
    ctx = CallContext(actor=OWNER.actor, org_id="org-other")
    other = await runner_for(
        env, ScriptedModel([call("tip", amount="1", ref="x"), "ok"]), store
    ).run(agent, "tip", ctx)
    assert other.packets[0].decision == "execute"  # another tenant's "calls" budget
