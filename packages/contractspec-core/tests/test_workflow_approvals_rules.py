"""Approval rules stated once (`contractspec.core.approvals`), approval expiry moved on by a timer,
a pluggable `ApprovalDecider`, and `available` reporting guards that need input (memory, SQLite
file, PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from core_guarantees_app import read_stored
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from contractspec.core import (
    ANONYMOUS,
    Actor,
    Approvals,
    Backend,
    CallContext,
    ConflictError,
    Executor,
    HandlerCtx,
    PolicyDeniedError,
    SpecDefinitionError,
    SpecRegistry,
    WorkflowApprovalExpiredError,
    WorkflowInstance,
    define_command,
    define_workflow,
    requires,
    transition,
)
from contractspec.core.approvals import (
    ApprovalCase,
    ApprovalDecider,
    ApprovalOutcome,
    ApprovalRequirement,
    ApprovalRules,
    ApprovalVerdict,
    ApprovalVote,
    RefusalCode,
)
from contractspec.core.policy import RolePermissions
from contractspec.core.testing import FakeClock, SequentialIds
from contractspec.core.workflows import APPROVAL_ENTITY, WorkflowTimerFire, system_call

ORG = "org-1"
NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
EMP = Actor.user("emp-1", roles="staff")
MGR = Actor.user("mgr-1", roles="manager")
MGR2 = Actor.user("mgr-2", roles="manager")
MGR3 = Actor.user("mgr-3", roles="manager")
POLICY = RolePermissions({"staff": ["x.use"], "manager": ["x.use"]})


def ctx(actor: Actor) -> CallContext:
    """A call in the test org."""
    return CallContext(actor=actor, org_id=ORG)


# -- the rules, pure ---------------------------------------------------------------------------


def case(*votes: ApprovalVote, **requirement: Any) -> ApprovalCase:
    """A request by emp-1 needing `requirement` with `votes` so far, expiring at NOW + 1 h."""
    return ApprovalCase(
        requirement=ApprovalRequirement(**requirement),
        subject="request 'r1'",
        requesters={"emp-1": "requested 'r1'"},
        votes=votes,
        expires_at=NOW + timedelta(hours=1),
    )


def approve(who: str, input_hash: str | None = None) -> ApprovalVote:
    """An approving vote."""
    return ApprovalVote(who, "approve", input_hash)


@pytest.mark.parametrize(
    ("the_case", "actor", "vote", "code"),
    [
        (case(), ANONYMOUS, approve("anonymous"), RefusalCode.ANONYMOUS),
        (case(approve("mgr-1"), ApprovalVote("mgr-2", "reject")), MGR3, approve("mgr-3"),
         RefusalCode.FINAL),
        (case(approve("mgr-1"), count=1), MGR2, approve("mgr-2"), RefusalCode.FINAL),
        (case(), Actor.user("emp-1", roles="manager"), approve("emp-1"), RefusalCode.SELF_APPROVAL),
        (case(approvers=("mgr-2",)), MGR, approve("mgr-1"), RefusalCode.NOT_NAMED_APPROVER),
        (case(roles=("director",)), MGR, approve("mgr-1"), RefusalCode.MISSING_ROLE),
        (case(approve("mgr-1"), count=2), MGR, approve("mgr-1"), RefusalCode.ALREADY_DECIDED),
        (case(approve("mgr-1", "h1"), count=2), MGR2, approve("mgr-2", "h2"),
         RefusalCode.INPUT_MISMATCH),
    ],
)  # fmt: skip
def test_each_rule_refuses_with_its_code(
    the_case: ApprovalCase, actor: Actor, vote: ApprovalVote, code: RefusalCode
) -> None:
    """Each rule refuses with its own stable code; the outcome and count are left unchanged."""
    before = ApprovalRules().evaluate(the_case, NOW)
    verdict = ApprovalRules().decide(the_case, vote, actor, NOW)
    assert verdict.refusal is not None
    assert verdict.refusal.code is code
    assert verdict.refusal.is_denial is (
        code in {RefusalCode.ANONYMOUS, RefusalCode.SELF_APPROVAL, RefusalCode.NOT_NAMED_APPROVER,
                 RefusalCode.MISSING_ROLE}
    )  # fmt: skip
    assert (verdict.outcome, verdict.approvals) == (before.outcome, before.approvals)


def test_expiry_starts_at_the_instant_and_beats_every_other_rule() -> None:
    """One microsecond before `expires_at` a vote counts; at `expires_at` even the requester's
    vote is refused as `expired` (not as self-approval)."""
    rules = ApprovalRules()
    at = NOW + timedelta(hours=1)
    ok = rules.decide(case(), approve("mgr-1"), MGR, at - timedelta(microseconds=1))
    assert (ok.accepted, ok.outcome) == (True, ApprovalOutcome.APPROVED)
    late = rules.decide(case(), approve("emp-1"), EMP, at)
    assert late.refusal is not None
    assert late.refusal.code is RefusalCode.EXPIRED
    assert rules.evaluate(case(), at).outcome is ApprovalOutcome.EXPIRED


def test_quorum_counts_distinct_approvers_and_one_rejection_rejects() -> None:
    """Two of three: pending after one, approved after two distinct; any rejection rejects."""
    rules = ApprovalRules()
    one = rules.decide(case(count=2), approve("mgr-1"), MGR, NOW)
    assert (one.outcome, one.approvals, one.required) == (ApprovalOutcome.PENDING, 1, 2)
    two = rules.decide(case(approve("mgr-1"), count=2), approve("mgr-2"), MGR2, NOW)
    assert (two.outcome, two.approvers) == (ApprovalOutcome.APPROVED, ("mgr-1", "mgr-2"))
    veto = rules.decide(case(approve("mgr-1"), count=2), ApprovalVote("mgr-2", "reject"), MGR2, NOW)
    assert (veto.outcome, veto.approvals) == (ApprovalOutcome.REJECTED, 1)


def test_a_recorded_final_status_wins_over_the_votes() -> None:
    """A store that recorded `expired` (or `approved`) keeps it whatever the votes say."""
    recorded = ApprovalCase(
        requirement=ApprovalRequirement(count=2), subject="r", status=ApprovalOutcome.EXPIRED
    )
    assert ApprovalRules().evaluate(recorded, NOW).outcome is ApprovalOutcome.EXPIRED
    verdict = ApprovalRules().decide(recorded, approve("mgr-1"), MGR, NOW)
    assert verdict.refusal is not None
    assert verdict.refusal.code is RefusalCode.EXPIRED


@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.sampled_from(["approve", "reject"])),
        max_size=8,
    ),
    st.integers(1, 3),
)
def test_accepted_votes_never_approve_a_rejected_request_nor_count_an_approver_twice(
    votes: list[tuple[str, str]], count: int
) -> None:
    """Feeding any vote sequence through `decide` (keeping only accepted votes): the outcome is
    rejected iff a rejection was accepted, approved iff `count` distinct approvals came first,
    and nothing is accepted once the outcome is final."""
    rules = ApprovalRules()
    state = case(count=count)
    for who, verdict in votes:
        before = rules.evaluate(state, NOW)
        result = rules.decide(state, ApprovalVote(who, verdict), Actor.user(who), NOW)
        if before.outcome.final:
            assert not result.accepted
        if result.accepted:
            state = ApprovalCase(
                requirement=state.requirement, subject=state.subject,
                requesters=state.requesters, votes=(*state.votes, ApprovalVote(who, verdict)),
                expires_at=state.expires_at,
            )  # fmt: skip
    ids = [v.approver_id for v in state.votes]
    assert len(ids) == len(set(ids))
    final = rules.evaluate(state, NOW)
    approvals = [v for v in state.votes if v.verdict == "approve"]
    if any(v.verdict == "reject" for v in state.votes):
        assert final.outcome is ApprovalOutcome.REJECTED
        assert len(approvals) < count
    else:
        assert final.outcome is (
            ApprovalOutcome.APPROVED if len(approvals) >= count else ApprovalOutcome.PENDING
        )


def test_expiry_and_decider_arguments_are_checked_when_declared() -> None:
    """A non-positive expiry, on_expiry without expires_after and a decider that is not an
    ApprovalDecider are refused by transition()."""
    for bad, field in [
        (Approvals(expires_after=timedelta(0)), "approvals.expires_after"),
        (Approvals(on_expiry="expire"), "approvals.on_expiry"),
        (Approvals(decider=object()), "approvals.decider"),  # type: ignore[arg-type]
    ]:
        with pytest.raises(SpecDefinitionError) as info:
            transition("ok", source="a", target="b", approvals=bad)
        assert info.value.details["field"] == field


def test_on_expiry_must_name_a_plain_transition_out_of_the_state() -> None:
    """The derived expiry timer is checked like a declared one: an unknown transition, or one
    that is itself an approval step, is refused naming the derived timer."""

    def flow(on_expiry: str) -> None:
        define_workflow(
            "x.bad",
            states=["a", "b"],
            initial="a",
            final=["b"],
            transitions=[
                transition("ok", source="a", target="b", approvals=Approvals(
                    expires_after=timedelta(hours=1), on_expiry=on_expiry)),
                transition("other", source="a", target="b", approvals=Approvals()),
            ],
        )  # fmt: skip

    with pytest.raises(SpecDefinitionError, match="timer 'a_ok_expiry' fires 'nope'"):
        flow("nope")
    with pytest.raises(SpecDefinitionError, match="fires 'other', an approval step"):
        flow("other")


# -- in a workflow ------------------------------------------------------------------------------


class Note(BaseModel):
    """A required note: the guard judges it."""

    text: str


def note_is_polite(_instance: WorkflowInstance, value: Note | None) -> bool | str:
    """Guard needing input."""
    return True if value is not None and "please" in value.text else "say please"


def small(instance: WorkflowInstance, _value: object) -> bool | str:
    """Guard on the instance only."""
    return True if instance.data.get("amount", 0) <= 100 else "amount over 100"


class Jobs:
    """A `JobEnqueuer` that records what the workflow enqueued (the jobs package's worker runs
    the same `<wf>.timer` call the tests make below)."""

    def __init__(self) -> None:
        self.enqueued: list[tuple[str, WorkflowTimerFire, dict[str, Any]]] = []

    async def enqueue(self, job_type: str, payload: Any, *, tx: Any = None, **options: Any) -> str:
        self.enqueued.append((job_type, payload, options))
        return f"job-{len(self.enqueued)}"


class DirectorsOnly:
    """A custom decider: core's rules, plus every approver must be a director."""

    def __init__(self) -> None:
        self.calls = 0

    def evaluate(self, case: ApprovalCase, now: datetime) -> ApprovalVerdict:
        return ApprovalRules().evaluate(case, now)

    def decide(
        self, case: ApprovalCase, vote: ApprovalVote, actor: Actor, now: datetime
    ) -> ApprovalVerdict:
        self.calls += 1
        strict = ApprovalCase(
            requirement=ApprovalRequirement(count=case.requirement.count, roles=("director",)),
            subject=case.subject, requesters=case.requesters, votes=case.votes,
            expires_at=case.expires_at,
        )  # fmt: skip
        return ApprovalRules().decide(strict, vote, actor, now)


DIRECTORS = DirectorsOnly()


def spend_workflow() -> Any:
    """requested -> approved (2 managers within 1 h, else expired by timer) | rejected."""
    return define_workflow(
        "x.spend",
        states=["requested", "approved", "expired", "sent", "big", "escalated"],
        initial="requested",
        final=["approved", "expired", "sent", "big", "escalated"],
        transitions=[
            transition(
                "approve", source="requested", target="approved", auth=requires("x.use"),
                approvals=Approvals(count=2, roles=["manager"], expires_after=timedelta(hours=1),
                                    on_expiry="expire"),
            ),
            transition("expire", source="requested", target="expired", auth=requires("x.admin")),
            transition("send", source="requested", target="sent", auth=requires("x.use"),
                       input=Note, guard=note_is_polite),
            transition("enlarge", source="requested", target="big", auth=requires("x.use"),
                       guard=small),
            transition("escalate", source="requested", target="escalated",
                       auth=requires("x.use"), approvals=Approvals(decider=DIRECTORS)),
        ],
    )  # fmt: skip


class Attempt(BaseModel):
    """Input of `x.hook.try`: whether the handler succeeds after recording its refusal."""

    succeed: bool


class Done(BaseModel):
    """Output of `x.hook.try`."""

    ok: bool


hook_try = define_command("x.hook.try", input=Attempt, output=Done, auth=requires("x.use"))


async def try_hook(inp: Attempt, ctx: HandlerCtx) -> Done:
    """Refuses by its own rule; then either fails with its own error or carries on."""
    error = ctx.deny("x.hook.self", "'mgr-1' may not act on their own item", rule="self_item")
    assert isinstance(error, PolicyDeniedError)
    assert error.reason == "'mgr-1' may not act on their own item"
    if not inp.succeed:
        raise ConflictError("own item", details={"refusal": "self_item"})
    return Done(ok=True)


@pytest.fixture
def registry() -> SpecRegistry:
    """The spend workflow and `x.hook.try` (also makes the `backend` fixture create tables)."""
    registry = SpecRegistry(spend_workflow(), hook_try)
    registry.bind(hook_try, try_hook)
    return registry


@pytest.fixture
def clock() -> FakeClock:
    """The executor's clock."""
    return FakeClock(NOW)


@pytest.fixture
def jobs() -> Jobs:
    """The recording job enqueuer."""
    return Jobs()


@pytest.fixture
def executor(registry: SpecRegistry, backend: Backend, clock: FakeClock, jobs: Jobs) -> Executor:
    """An executor over the backend under test."""
    return Executor(
        registry, backend=backend, policy=POLICY, clock=clock, jobs=jobs, ids=SequentialIds("id")
    )


async def _start(ex: Executor, amount: int = 50) -> str:
    out = await ex.execute("x.spend.start", {"data": {"amount": amount}}, ctx(EMP))
    return str(out.model_dump()["id"])


async def _available(ex: Executor, iid: str, actor: Actor) -> dict[str, dict[str, Any]]:
    out = await ex.execute("x.spend.available", {"instance_id": iid}, ctx(actor))
    return {t["name"]: t for t in out.model_dump()["transitions"]}


async def test_an_expired_approval_step_refuses_decisions_and_its_timer_moves_the_instance(
    executor: Executor, backend: Backend, clock: FakeClock, jobs: Jobs
) -> None:
    """Approvals bind to the entry's first hour: one approval inside it counts; from the due
    instant on a second one is refused as expired (nothing stored, not audited as a denial), the
    step disappears from `available`, and the expiry timer enqueued at entry moves the instance
    to `expired` when the jobs worker runs it."""
    iid = await _start(executor)
    [(job_type, fire, options)] = [j for j in jobs.enqueued if j[1].timer.endswith("_expiry")]
    assert (job_type, fire.timer, fire.entry_seq) == (
        "x.spend.timers",
        "requested_approve_expiry",
        1,
    )
    assert options["scheduled_at"] == NOW + timedelta(hours=1)
    step = (await _available(executor, iid, MGR))["approve"]
    assert step["approvals_expire_at"] == NOW + timedelta(hours=1)
    clock.advance(timedelta(minutes=59))
    first = await executor.execute("x.spend.approve.approve", {"instance_id": iid}, ctx(MGR))
    assert (first.model_dump()["approvals"], first.model_dump()["fired"]) == (1, False)
    clock.advance(timedelta(minutes=1))
    with pytest.raises(WorkflowApprovalExpiredError, match="expired at") as info:
        await executor.execute("x.spend.approve.approve", {"instance_id": iid}, ctx(MGR2))
    assert (info.value.code, info.value.details["refusal"]) == ("approval_expired", "expired")
    assert "approve" not in await _available(executor, iid, MGR2)
    stored = await read_stored(backend, ORG, [APPROVAL_ENTITY])
    assert [r["approver_id"] for r in stored.rows["cs.workflow.approval"].values()] == ["mgr-1"]
    assert not [r for r in stored.audit if str(r.outcome) == "denied"]
    result = await executor.execute(
        "x.spend.timer", fire.model_dump(), system_call(ORG, "timer-key-1")
    )
    assert result.model_dump()["fired"] is True
    got = await executor.execute("x.spend.get", {"instance_id": iid}, ctx(EMP))
    assert got.model_dump()["state"] == "expired"


async def test_the_expiry_timer_does_nothing_once_the_step_was_approved(
    executor: Executor, jobs: Jobs
) -> None:
    """Two managers approve inside the hour: the instance is approved and the later expiry job
    reports that the instance left the state."""
    iid = await _start(executor)
    await executor.execute("x.spend.approve.approve", {"instance_id": iid}, ctx(MGR))
    done = await executor.execute("x.spend.approve.approve", {"instance_id": iid}, ctx(MGR2))
    assert done.model_dump()["instance"]["state"] == "approved"
    [fire] = [j[1] for j in jobs.enqueued if j[1].timer.endswith("_expiry")]
    result = await executor.execute("x.spend.timer", fire.model_dump(), system_call(ORG, "k2"))
    assert result.model_dump() == {
        "fired": False, "reason": "instance left the state", "instance": result.model_dump()["instance"],
    }  # fmt: skip


def test_the_expiry_timer_appears_in_the_ir_with_the_step() -> None:
    """The IR lists the step's expiry and on_expiry, the derived timer, and a plugged decider."""
    ir = spend_workflow().to_ir()
    [step] = [t for t in ir["transitions"] if t["name"] == "approve"]
    assert step["approvals"] == {
        "count": 2, "roles": ["manager"], "allow_requester": False, "expires_after_s": 3600.0,
        "on_expiry": "expire",
    }  # fmt: skip
    assert {"name": "requested_approve_expiry", "state": "requested", "fire": "expire",
            "escalate": False, "after_s": 3600.0, "at": None} in ir["timers"]  # fmt: skip
    [plain] = [t for t in ir["transitions"] if t["name"] == "escalate"]
    assert plain["approvals"] == {
        "count": 1, "roles": [], "allow_requester": False, "decider": "DirectorsOnly",
    }  # fmt: skip


async def test_a_plugged_decider_decides_and_its_denials_are_audited_once(
    executor: Executor, backend: Backend
) -> None:
    """`Approvals(decider=...)` is the one asked: a manager (enough for core's defaults) is
    refused by the directors-only decider as a denial, audited exactly once; a director passes."""
    iid = await _start(executor)
    calls = DIRECTORS.calls
    with pytest.raises(PolicyDeniedError, match="one of the roles director") as info:
        await executor.execute("x.spend.escalate.approve", {"instance_id": iid}, ctx(MGR))
    assert info.value.action == "x.spend.escalate.approve"
    assert "escalate" not in await _available(executor, iid, MGR)
    boss = Actor.user("dir-1", roles=("manager", "director"))
    assert "escalate" in await _available(executor, iid, boss)
    done = await executor.execute("x.spend.escalate.approve", {"instance_id": iid}, ctx(boss))
    assert done.model_dump()["instance"]["state"] == "escalated"
    assert DIRECTORS.calls >= calls + 3
    stored = await read_stored(backend, ORG, [])
    audit = [(r.actor_id, str(r.outcome), r.details.get("matched_rule"))
             for r in stored.audit if r.action == "x.spend.escalate.approve"]  # fmt: skip
    assert audit == [("mgr-1", "denied", "missing_role"), ("dir-1", "success", None)]


async def test_available_evaluates_guards_without_input_and_flags_those_needing_input(
    executor: Executor,
) -> None:
    """A guard on the instance alone is evaluated (listed with needs_input False when it allows,
    left out when it refuses); a guard whose input has required fields is listed with
    needs_input True — and firing it then runs the guard on the real input."""
    iid = await _start(executor, amount=50)
    offered = await _available(executor, iid, MGR)
    assert offered["enlarge"]["needs_input"] is False
    assert offered["send"]["needs_input"] is True
    assert offered["send"]["input_schema"]["required"] == ["text"]
    assert offered["approve"]["needs_input"] is False
    big = await _start(executor, amount=500)
    refused = await _available(executor, big, MGR)
    assert "enlarge" not in refused
    assert refused["send"]["needs_input"] is True
    from contractspec.core import WorkflowGuardError

    with pytest.raises(WorkflowGuardError, match="say please"):
        await executor.execute(
            "x.spend.send", {"instance_id": iid, "input": {"text": "now"}}, ctx(MGR)
        )
    sent = await executor.execute(
        "x.spend.send", {"instance_id": iid, "input": {"text": "please"}}, ctx(MGR)
    )
    assert sent.model_dump()["state"] == "sent"


def test_the_default_rules_satisfy_the_port() -> None:
    """`ApprovalRules` is an `ApprovalDecider`; so is the test's custom decider."""
    assert isinstance(ApprovalRules(), ApprovalDecider)
    assert isinstance(DIRECTORS, ApprovalDecider)


async def test_handler_ctx_deny_records_one_denial_whether_the_call_fails_or_succeeds(
    executor: Executor, backend: Backend
) -> None:
    """`ctx.deny` adds one `denied` audit record, written once when the call ends: with the
    handler's own error (the call's writes rolled back) and with a call that then succeeds
    (next to its `success` record)."""
    with pytest.raises(ConflictError, match="own item"):
        await executor.execute("x.hook.try", {"succeed": False}, ctx(MGR))
    await executor.execute("x.hook.try", {"succeed": True}, ctx(MGR))
    stored = await read_stored(backend, ORG, [])
    audit = [
        (str(r.outcome), r.details.get("permission"), r.details.get("matched_rule"))
        for r in stored.audit
        if r.action == "x.hook.try"
    ]
    assert sorted(audit, key=str) == sorted(
        [
            ("denied", "x.hook.self", "self_item"),
            ("denied", "x.hook.self", "self_item"),
            ("success", None, None),
        ],
        key=str,
    )
