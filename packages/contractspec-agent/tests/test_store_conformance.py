"""One conformance suite for the run, ledger, approval and memory stores (memory, SQLite, PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from agent_support import AgentEnv

from contractspec.agent import (
    ActionRecord,
    ActionStatus,
    AgentMemory,
    ApprovalDecision,
    ApprovalRequest,
    ApprovalStatus,
    AssistantMessage,
    InMemoryAgentMemory,
    Message,
    Run,
    RunLog,
    RunStatus,
    RunStep,
    SystemMessage,
    ToolCall,
    ToolMessage,
    UserMessage,
)
from contractspec.core import ConfigurationError, ConflictError, NotFoundError
from contractspec.core.testing import FakeClock, temporary_sql_engine

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def make_run(
    run_id: str, *, org: str | None = "org-1", agent: str = "shop.helper", minutes: int = 0
) -> Run:
    at = T0 + timedelta(minutes=minutes)
    return Run(
        id=run_id,
        agent=agent,
        agent_version=1,
        org_id=org,
        actor={"id": "u-1", "kind": "user", "roles": ["support"]},
        status=RunStatus.RUNNING,
        input="hello",
        created_at=at,
        updated_at=at,
        messages=({"role": "user", "content": "hello"},),
    )


def make_request(
    rid: str, *, key: str | None = None, org: str | None = "org-1", minutes: int = 0
) -> ApprovalRequest:
    at = T0 + timedelta(minutes=minutes)
    return ApprovalRequest(
        id=rid,
        org_id=org,
        subject_type="agent.tool_call",
        subject_id="run-1",
        action="refund",
        arguments={"order_id": "o1", "amount_cents": 500},
        arguments_hash="a" * 64,
        reason="damaged",
        risk=2,
        requested_by="u-1",
        requested_at=at,
        expires_at=at + timedelta(hours=1),
        quorum=2,
        approvers=("u-a", "u-b"),
        key=key,
        metadata={"step": 1},
    )


async def test_run_create_get_update_with_compare_and_set(env: AgentEnv) -> None:
    """A run round-trips; updates bump the version and a stale version conflicts."""
    uow = env.backend.unit_of_work
    tx = await uow.begin()
    await env.runs.create(tx, make_run("run-1"))
    await tx.commit()
    tx = await uow.begin()
    stored = await env.runs.get(tx, "run-1")
    assert stored is not None
    assert stored.actor == {"id": "u-1", "kind": "user", "roles": ["support"]}
    assert stored.messages == ({"role": "user", "content": "hello"},)
    assert stored.version == 1
    updated = await env.runs.update(
        tx,
        stored.evolve(status=RunStatus.WAITING_APPROVAL, steps=2, usage={"requests": 2},
                      pending=({"tool_call_id": "c1", "step": 2, "action_id": "x", "approval_id": "ap"},)),
        expected_version=1,
    )  # fmt: skip
    assert updated.version == 2
    with pytest.raises(ConflictError):
        await env.runs.update(tx, stored.evolve(status=RunStatus.FAILED), expected_version=1)
    with pytest.raises(NotFoundError):
        await env.runs.update(tx, make_run("missing"), expected_version=1)
    await tx.commit()
    tx = await uow.begin(readonly=True)
    again = await env.runs.get(tx, "run-1")
    await tx.rollback()
    assert again is not None
    assert (again.status, again.steps, again.version) == (RunStatus.WAITING_APPROVAL, 2, 2)
    assert again.pending == (
        {"tool_call_id": "c1", "step": 2, "action_id": "x", "approval_id": "ap"},
    )
    assert again.created_at == T0


async def test_run_create_twice_conflicts_and_rollback_undoes(env: AgentEnv) -> None:
    """A duplicate run id conflicts; a rolled-back create leaves nothing behind."""
    uow = env.backend.unit_of_work
    tx = await uow.begin()
    await env.runs.create(tx, make_run("run-1"))
    await tx.commit()
    tx = await uow.begin()
    with pytest.raises(ConflictError):
        await env.runs.create(tx, make_run("run-1"))
    await tx.rollback()
    tx = await uow.begin()
    await env.runs.create(tx, make_run("run-2"))
    await tx.rollback()
    tx = await uow.begin(readonly=True)
    assert await env.runs.get(tx, "run-2") is None
    assert await env.runs.get(tx, "run-1") is not None
    await tx.rollback()


async def test_find_runs_by_org_agent_status_newest_first(env: AgentEnv) -> None:
    """Runs are listed per org, filtered by agent and status, newest first, limited."""
    uow = env.backend.unit_of_work
    tx = await uow.begin()
    await env.runs.create(tx, make_run("r1", minutes=1))
    await env.runs.create(tx, make_run("r2", minutes=2, agent="shop.other"))
    await env.runs.create(tx, make_run("r3", minutes=3))
    await env.runs.create(tx, make_run("r4", minutes=4, org="org-2"))
    await env.runs.create(tx, make_run("r5", minutes=5, org=None))
    await tx.commit()
    tx = await uow.begin(readonly=True)
    assert [r.id for r in await env.runs.find(tx, org_id="org-1")] == ["r3", "r2", "r1"]
    assert [r.id for r in await env.runs.find(tx, org_id="org-1", agent="shop.helper")] == [
        "r3",
        "r1",
    ]
    assert [r.id for r in await env.runs.find(tx, org_id="org-1", limit=1)] == ["r3"]
    assert [r.id for r in await env.runs.find(tx, org_id=None)] == ["r5"]
    assert await env.runs.find(tx, org_id="org-1", status=RunStatus.FAILED) == []
    await tx.rollback()


async def test_steps_and_logs_keep_their_order(env: AgentEnv) -> None:
    """Steps come back by index (duplicates conflict); log lines get seq 1, 2, 3 in order."""
    uow = env.backend.unit_of_work
    tx = await uow.begin()
    await env.runs.create(tx, make_run("run-1"))
    for index in (2, 1):
        await env.runs.add_step(
            tx,
            RunStep("run-1", index, {"role": "assistant", "content": f"s{index}"},
                    ({"name": "t", "status": "ok"},), {"requests": 1}, T0, T0 + timedelta(seconds=index)),
        )  # fmt: skip
    for event in ("run.started", "tool.ok", "run.completed"):
        await env.runs.log(tx, RunLog("run-1", T0, "info", event, event.upper(), {"k": event}))
    await tx.commit()
    tx = await uow.begin()
    with pytest.raises(ConflictError):
        await env.runs.add_step(tx, RunStep("run-1", 1, {}, (), {}, T0, T0))
    await tx.rollback()
    tx = await uow.begin(readonly=True)
    steps = await env.runs.steps(tx, "run-1")
    logs = await env.runs.logs(tx, "run-1")
    await tx.rollback()
    assert [(s.index, s.response["content"]) for s in steps] == [(1, "s1"), (2, "s2")]
    assert steps[1].finished_at == T0 + timedelta(seconds=2)
    assert steps[0].tool_results == ({"name": "t", "status": "ok"},)
    assert [(line.seq, line.event, line.data) for line in logs] == [
        (1, "run.started", {"k": "run.started"}),
        (2, "tool.ok", {"k": "tool.ok"}),
        (3, "run.completed", {"k": "run.completed"}),
    ]


async def test_action_ledger_records_once_and_finishes(env: AgentEnv) -> None:
    """An action id is recorded once (a second begin conflicts) and finishes with its result."""
    uow = env.backend.unit_of_work
    record = ActionRecord("act-1", "run-1", 1, "refund", "org-1", "h" * 64, ActionStatus.STARTED,
                          T0, T0, None, {"decision": "execute"})  # fmt: skip
    tx = await uow.begin()
    await env.runs.begin_action(tx, record)
    await tx.commit()
    tx = await uow.begin()
    with pytest.raises(ConflictError):
        await env.runs.begin_action(tx, record)
    await tx.rollback()
    tx = await uow.begin()
    done = await env.runs.finish_action(
        tx,
        "act-1",
        ActionStatus.SUCCEEDED,
        {"content": "{}", "result": {"ok": 1}},
        T0 + timedelta(seconds=1),
    )
    with pytest.raises(NotFoundError):
        await env.runs.finish_action(tx, "nope", ActionStatus.FAILED, None, T0)
    await tx.commit()
    assert done.status is ActionStatus.SUCCEEDED
    tx = await uow.begin(readonly=True)
    got = await env.runs.get_action(tx, "act-1")
    listed = await env.runs.actions(tx, "run-1")
    missing = await env.runs.get_action(tx, "act-2")
    await tx.rollback()
    assert got is not None
    assert (got.status, got.result, got.packet, got.org_id) == (
        ActionStatus.SUCCEEDED, {"content": "{}", "result": {"ok": 1}}, {"decision": "execute"}, "org-1",
    )  # fmt: skip
    assert got.updated_at == T0 + timedelta(seconds=1)
    assert [a.action_id for a in listed] == ["act-1"]
    assert missing is None


async def test_approval_requests_round_trip_with_keys_and_decisions(env: AgentEnv) -> None:
    """Requests round-trip; keys are unique per org; decisions are unique per approver; save is CAS."""
    uow = env.backend.unit_of_work
    store = env.approval_store
    tx = await uow.begin()
    await store.add(tx, make_request("ap-1", key="k-1"))
    await store.add(tx, make_request("ap-2", key="k-1", org="org-2", minutes=1))
    await store.add(tx, make_request("ap-3", minutes=2))
    await store.add(tx, make_request("ap-4", minutes=3))  # keys None never collide
    await tx.commit()
    tx = await uow.begin()
    with pytest.raises(ConflictError):
        await store.add(tx, make_request("ap-5", key="k-1"))
    await tx.rollback()
    tx = await uow.begin()
    await store.add_decision(
        tx, ApprovalDecision("ap-1", "u-a", "approve", "ok", T0 + timedelta(minutes=5))
    )
    await tx.commit()
    tx = await uow.begin()
    with pytest.raises(ConflictError):
        await store.add_decision(tx, ApprovalDecision("ap-1", "u-a", "reject", "", T0))
    await tx.rollback()
    tx = await uow.begin()
    by_key = await store.get_by_key(tx, "org-1", "k-1")
    assert by_key is not None
    assert by_key.id == "ap-1"
    assert [(d.approver_id, d.verdict, d.comment) for d in by_key.decisions] == [
        ("u-a", "approve", "ok")
    ]
    assert by_key.approvals == 1
    assert (by_key.approvers, by_key.quorum, by_key.arguments) == (
        ("u-a", "u-b"), 2, {"order_id": "o1", "amount_cents": 500},
    )  # fmt: skip
    saved = await store.save(
        tx, by_key.evolve(status=ApprovalStatus.APPROVED, decided_at=T0 + timedelta(minutes=6)),
        expected_version=1,
    )  # fmt: skip
    assert (saved.status, saved.version, saved.approvals) == (ApprovalStatus.APPROVED, 2, 1)
    with pytest.raises(ConflictError):
        await store.save(tx, by_key.evolve(status=ApprovalStatus.REJECTED), expected_version=1)
    await tx.commit()
    tx = await uow.begin(readonly=True)
    pending = await store.find(tx, org_id="org-1", status=ApprovalStatus.PENDING)
    every = await store.find(tx, org_id="org-1")
    other = await store.get_by_key(tx, "org-2", "k-1")
    none = await store.get(tx, "ap-x")
    await tx.rollback()
    assert [r.id for r in pending] == ["ap-3", "ap-4"]
    assert [r.id for r in every] == ["ap-1", "ap-3", "ap-4"]
    assert other is not None
    assert other.id == "ap-2"
    assert none is None


async def test_find_pages_newest_first_with_a_keyset_cursor(env: AgentEnv) -> None:
    """`before=(time, id)` continues after that key, ties on the time ordered by id (runs and
    approvals); approvals also list newest first on request."""
    uow = env.backend.unit_of_work
    tx = await uow.begin()
    for rid, minutes in [("a", 1), ("b", 2), ("c", 2), ("d", 2), ("e", 3)]:
        await env.runs.create(tx, make_run(f"r-{rid}", minutes=minutes))
        await env.approval_store.add(tx, make_request(f"ap-{rid}", minutes=minutes))
    await env.runs.create(tx, make_run("r-z", minutes=2, org="org-2"))
    await env.approval_store.add(tx, make_request("ap-z", minutes=2, org="org-2"))
    await tx.commit()
    tx = await uow.begin(readonly=True)
    key = (T0 + timedelta(minutes=2), "r-d")
    assert [r.id for r in await env.runs.find(tx, org_id="org-1", before=key)] == [
        "r-c", "r-b", "r-a",
    ]  # fmt: skip
    assert [r.id for r in await env.runs.find(tx, org_id="org-1", before=key, limit=1)] == ["r-c"]
    store = env.approval_store
    newest = await store.find(tx, org_id="org-1", newest_first=True)
    after = await store.find(
        tx, org_id="org-1", newest_first=True, before=(T0 + timedelta(minutes=2), "ap-c")
    )
    await tx.rollback()
    assert [r.id for r in newest] == ["ap-e", "ap-d", "ap-c", "ap-b", "ap-a"]
    assert [r.id for r in after] == ["ap-b", "ap-a"]


# -- agent memory -------------------------------------------------------------------------------


@pytest.fixture
async def memory_factory(backend_kind: str, tmp_path: Path) -> AsyncIterator[object]:
    """Builds `AgentMemory` adapters of the parametrised kind."""
    if backend_kind == "memory":
        yield lambda **kw: InMemoryAgentMemory(**kw)
        return
    from contractspec.agent.sql import SqlAgentMemory, create_all

    async with temporary_sql_engine(backend_kind, tmp_path) as engine:
        await create_all(engine)
        yield lambda **kw: SqlAgentMemory(engine, **kw)


def texts(messages: Sequence[Message]) -> list[str]:
    return [getattr(m, "content", None) or "" for m in messages]


async def test_memory_sessions_are_separate_per_org_and_clearable(memory_factory: object) -> None:
    """Messages come back in order per (org, session); clear forgets one session."""
    memory: AgentMemory = memory_factory()  # type: ignore[operator]
    await memory.append(
        "s1",
        [UserMessage("hi"), AssistantMessage("hello", (ToolCall("c1", "t", {"a": 1}),))],
        org_id="o1",
    )
    await memory.append("s1", [ToolMessage("c1", "t", "{}", True)], org_id="o1")
    await memory.append("s1", [UserMessage("other org")], org_id="o2")
    loaded = await memory.load("s1", org_id="o1")
    assert loaded == [
        UserMessage("hi"),
        AssistantMessage("hello", (ToolCall("c1", "t", {"a": 1}),)),
        ToolMessage("c1", "t", "{}", True),
    ]
    assert texts(await memory.load("s1", org_id="o2")) == ["other org"]
    await memory.clear("s1", org_id="o1")
    assert await memory.load("s1", org_id="o1") == []
    assert texts(await memory.load("s1", org_id="o2")) == ["other org"]


async def test_memory_ttl_forgets_old_entries(memory_factory: object) -> None:
    """Entries older than ttl_s are not loaded."""
    clock = FakeClock()
    memory: AgentMemory = memory_factory(ttl_s=60, clock=clock)  # type: ignore[operator]
    await memory.append("s", [UserMessage("old")])
    clock.advance(30)
    await memory.append("s", [UserMessage("new")])
    assert texts(await memory.load("s")) == ["old", "new"]
    clock.advance(31)
    assert texts(await memory.load("s")) == ["new"]
    clock.advance(30)
    assert await memory.load("s") == []


async def test_memory_max_entries_drops_or_summarises_the_oldest(memory_factory: object) -> None:
    """Without a hook the oldest overflow is dropped; with one it becomes one summary entry."""
    dropping: AgentMemory = memory_factory(max_entries=3)  # type: ignore[operator]
    await dropping.append("s", [UserMessage(str(i)) for i in range(5)])
    assert texts(await dropping.load("s")) == ["2", "3", "4"]
    seen: list[list[str]] = []

    async def summarize(messages: Sequence[Message]) -> str:
        seen.append(texts(messages))
        return "summary of " + ",".join(texts(messages))

    summarising: AgentMemory = memory_factory(max_entries=3, summarize=summarize)  # type: ignore[operator]
    await summarising.append("t", [UserMessage(str(i)) for i in range(4)])
    assert await summarising.load("t") == [
        SystemMessage("summary of 0,1"),
        UserMessage("2"),
        UserMessage("3"),
    ]
    await summarising.append("t", [UserMessage("4")])
    assert texts(await summarising.load("t")) == ["summary of summary of 0,1,2", "3", "4"]
    assert seen == [["0", "1"], ["summary of 0,1", "2"]]


@pytest.mark.parametrize(
    ("ttl", "cap"), [(0, None), (-1.5, None), (None, 1), (None, 0), (None, True)]
)
def test_memory_rejects_bad_options(ttl: float | None, cap: int | None) -> None:
    """Non-positive ttl_s or a max_entries below 2 raise ConfigurationError."""
    with pytest.raises(ConfigurationError):
        InMemoryAgentMemory(ttl_s=ttl, max_entries=cap)


async def test_claim_takes_a_run_once_and_only_after_its_lease_expired(env: AgentEnv) -> None:
    """`claim` wins once per version, never while a live lease is held; `heartbeat` extends only
    the owner's lease; `expired` lists running runs whose lease passed, oldest first."""
    uow = env.backend.unit_of_work
    held = make_run("run-held").evolve(
        lease_owner="w-1", lease_expires_at=T0 + timedelta(seconds=30)
    )
    late = make_run("run-late", minutes=1).evolve(lease_owner="w-1", lease_expires_at=T0)
    tx = await uow.begin()
    for run in (held, late):
        await env.runs.create(tx, run)
    await tx.commit()

    now = T0 + timedelta(seconds=10)
    tx = await uow.begin(readonly=True)
    assert [r.id for r in await env.runs.expired(tx, now=now)] == ["run-late"]
    assert await env.runs.expired(tx, now=now, org_id="org-2") == []
    await tx.rollback()
    tx = await uow.begin()
    with pytest.raises(ConflictError):  # a live lease
        await env.runs.claim(tx, held, owner="w-2", lease_until=now, now=now)
    await tx.rollback()

    tx = await uow.begin()
    claimed = await env.runs.claim(
        tx, late, owner="w-2", lease_until=now + timedelta(seconds=30), now=now
    )
    await tx.commit()
    assert (claimed.lease_owner, claimed.version) == ("w-2", late.version + 1)
    tx = await uow.begin()
    with pytest.raises(ConflictError):  # the same read, claimed already
        await env.runs.claim(tx, late, owner="w-3", lease_until=now, now=now)
    await tx.rollback()
    tx = await uow.begin()
    with pytest.raises(NotFoundError):
        await env.runs.claim(tx, make_run("nope"), owner="w-3", lease_until=now, now=now)
    await tx.rollback()

    until = now + timedelta(minutes=5)
    tx = await uow.begin()
    assert await env.runs.heartbeat(tx, "run-late", owner="w-2", lease_until=until)
    assert not await env.runs.heartbeat(tx, "run-late", owner="w-1", lease_until=until)
    await tx.commit()
    tx = await uow.begin(readonly=True)
    stored = await env.runs.get(tx, "run-late")
    await tx.rollback()
    assert stored is not None
    assert (stored.lease_owner, stored.lease_expires_at, stored.version) == (
        "w-2", until, claimed.version,
    )  # fmt: skip


async def test_update_action_is_compare_and_set_on_status_and_attempt(env: AgentEnv) -> None:
    """`update_action` moves an action only from an expected status (and attempt)."""
    uow = env.backend.unit_of_work
    record = ActionRecord("act-9", "run-1", 1, "ship", "org-1", "h" * 64, ActionStatus.STARTED,
                          T0, T0)  # fmt: skip
    tx = await uow.begin()
    await env.runs.begin_action(tx, record)
    await tx.commit()
    later = T0 + timedelta(seconds=5)
    tx = await uow.begin()
    doubt = await env.runs.update_action(
        tx, "act-9", ActionStatus.IN_DOUBT, expected=(ActionStatus.STARTED,),
        expected_attempts=1, updated_at=later, result={"status": "in_doubt"},
    )  # fmt: skip
    await tx.commit()
    assert (doubt.status, doubt.attempts, doubt.result) == (
        ActionStatus.IN_DOUBT, 1, {"status": "in_doubt"},
    )  # fmt: skip
    tx = await uow.begin()
    with pytest.raises(ConflictError):
        await env.runs.update_action(
            tx, "act-9", ActionStatus.SUCCEEDED, expected=(ActionStatus.STARTED,), updated_at=later
        )
    await tx.rollback()
    tx = await uow.begin()
    with pytest.raises(ConflictError):
        await env.runs.update_action(
            tx, "act-9", ActionStatus.STARTED, expected=(ActionStatus.IN_DOUBT,),
            expected_attempts=2, updated_at=later,
        )  # fmt: skip
    await tx.rollback()
    tx = await uow.begin()
    again = await env.runs.update_action(
        tx, "act-9", ActionStatus.STARTED, expected=(ActionStatus.IN_DOUBT,), expected_attempts=1,
        updated_at=later, step=2, attempts=2,
    )  # fmt: skip
    with pytest.raises(NotFoundError):
        await env.runs.update_action(
            tx, "nope", ActionStatus.FAILED, expected=(ActionStatus.STARTED,), updated_at=later
        )
    await tx.commit()
    assert (again.status, again.step, again.attempts) == (ActionStatus.STARTED, 2, 2)
