"""Durable records (runs, steps, logs, actions, approvals) and their store protocols.

Stores work inside core `Transaction`s, like core's own stores: what a method writes commits or
rolls back with the transaction, so a run's state, its events (outbox) and its audit records
change together. The in-memory adapters here and the SQL adapters in `contractspec.agent.sql`
pass one conformance suite (memory, SQLite, PostgreSQL).

Concurrency: `RunStore.update` and `ApprovalStore.save` are compare-and-set on a `version`
column (a stale writer gets `ConflictError`), `begin_action` and `add_decision` rely on unique
keys, `update_action` is compare-and-set on an action's status and attempt, and `claim` takes a
run only while nobody holds a live lease on it. That is what makes "resume exactly once",
"recover a crashed run once" and "distinct approvers" hold across processes.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from datetime import datetime
from types import EllipsisType
from typing import Any, Protocol, runtime_checkable

from attrs import define, evolve, field

from contractspec.core import ConflictError, NotFoundError, Transaction

__all__ = [
    "ActionRecord",
    "ActionStatus",
    "ApprovalDecision",
    "ApprovalRequest",
    "ApprovalStatus",
    "ApprovalStore",
    "MemoryApprovalStore",
    "MemoryRunStore",
    "Run",
    "RunLog",
    "RunStatus",
    "RunStep",
    "RunStore",
    "claimable",
]


class RunStatus(enum.StrEnum):
    """Where a run is: `running` (a worker holds its lease), `waiting_approval` (suspended,
    resumable), or finished (`completed`, `escalated` — finished but handed to a person,
    `failed`, `cancelled`)."""

    RUNNING = "running"
    WAITING_APPROVAL = "waiting_approval"
    COMPLETED = "completed"
    ESCALATED = "escalated"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """True for `completed`, `escalated`, `failed` and `cancelled`."""
        return self in (
            RunStatus.COMPLETED,
            RunStatus.ESCALATED,
            RunStatus.FAILED,
            RunStatus.CANCELLED,
        )


@define(frozen=True)
class Run:
    """One agent run, persisted after every step so it can resume after a restart.

    Attributes:
        id: Run id.
        agent, agent_version: The agent spec that runs.
        org_id: Tenant.
        actor: `{"id", "kind", "roles"}` of the actor who started the run (tools act for them).
        session_id: Memory session, if any.
        status: `RunStatus`.
        input: The user input text.
        output: JSON form of the final output (text or the structured model), when finished.
        error: `{"code", "message"}` when failed.
        messages: The conversation so far (JSON message forms), oldest first.
        steps: Model steps taken.
        usage: `Usage.to_dict()` so far.
        confidence: Reported confidence (0-1), when known.
        pending: Tool calls of the open step: waiting for approval (`{"tool_call_id", "step",
            "action_id", "approval_id"}`) or, while `running`, in flight (`"inflight": true`:
            the step's calls were made durable before any of them took effect, so a recovered
            run finishes exactly these calls).
        created_at, updated_at: UTC times.
        version: Compare-and-set counter, incremented by every `RunStore.update` and `claim`.
        lease_owner: The worker driving the run while it is `running` (else `None`).
        lease_expires_at: Until when that worker's lease holds (UTC). Heartbeats extend it; once
            it passes, `AgentRunner.recover()` in any process may take the run over.
    """

    id: str
    agent: str
    agent_version: int
    org_id: str | None
    actor: Mapping[str, Any]
    status: RunStatus
    input: str
    created_at: datetime
    updated_at: datetime
    session_id: str | None = None
    output: Any = None
    error: Mapping[str, Any] | None = None
    messages: tuple[Mapping[str, Any], ...] = ()
    steps: int = 0
    usage: Mapping[str, Any] = field(factory=dict)
    confidence: float | None = None
    pending: tuple[Mapping[str, Any], ...] = ()
    version: int = 1
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None

    def evolve(self, **changes: Any) -> Run:
        """A copy with `changes` applied."""
        return evolve(self, **changes)


@define(frozen=True)
class RunStep:
    """One model step of a run: the model's reply and the results of its tool calls.

    Attributes:
        run_id: The run.
        index: 1-based step number.
        response: The assistant message (JSON form).
        tool_results: One `{"tool_call_id", "name", "status", "action_id", "is_error",
            "content"}` per call.
        usage: What the step's model request used.
        started_at, finished_at: UTC times.
    """

    run_id: str
    index: int
    response: Mapping[str, Any]
    tool_results: tuple[Mapping[str, Any], ...]
    usage: Mapping[str, Any]
    started_at: datetime
    finished_at: datetime


@define(frozen=True)
class RunLog:
    """One log line of a run (what the console shows).

    Attributes:
        run_id: The run.
        at: UTC time.
        level: `info`, `warning` or `error`.
        event: Machine-readable name (`run.started`, `tool.called`, `approval.requested`...).
        message: Human-readable text.
        data: JSON details.
        seq: Position in the run's log (assigned by the store, from 1).
    """

    run_id: str
    at: datetime
    level: str
    event: str
    message: str
    data: Mapping[str, Any] = field(factory=dict)
    seq: int = 0


class ActionStatus(enum.StrEnum):
    """States of a gateway action in the idempotency ledger.

    * `started`: recorded before the effect; the outcome is not known yet.
    * `succeeded` / `failed`: the outcome is known (a failed action took no effect).
    * `in_doubt`: the outcome is unknown and will not be guessed: the call timed out or was
      cancelled, or its worker crashed while it was `started`. It is never re-run silently:
      the tool's `reconcile`, an idempotent operation's key, or a person's approval decides.
      A worker thread that outlived its timeout records its late outcome here.
    """

    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    IN_DOUBT = "in_doubt"


@define(frozen=True)
class ActionRecord:
    """The idempotency-ledger entry of one side-effecting tool call.

    Attributes:
        action_id: Gateway-minted id: hash of run, tool, argument hash and the call's ordinal
            among identical calls of its step.
        run_id, tool: Where it comes from.
        step: The step of the latest attempt.
        org_id: Tenant.
        arguments_hash: SHA-256 of the canonical JSON arguments.
        status: `ActionStatus`.
        result: The tool result (JSON) once finished.
        packet: The action packet (JSON), with the proof.
        created_at, updated_at: UTC times.
        attempts: How many times the effect was started (a re-run after a known failure, a
            reconciliation that found nothing done, or an approved retry of an in-doubt call
            adds one).
    """

    action_id: str
    run_id: str
    step: int
    tool: str
    org_id: str | None
    arguments_hash: str
    status: ActionStatus
    created_at: datetime
    updated_at: datetime
    result: Any = None
    packet: Mapping[str, Any] = field(factory=dict)
    attempts: int = 1


class ApprovalStatus(enum.StrEnum):
    """`pending` until a final decision: `approved`, `rejected` or `expired`."""

    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"


@define(frozen=True)
class ApprovalDecision:
    """One approver's verdict on a request.

    Attributes:
        request_id: The request.
        approver_id: Who decided.
        verdict: `approve` or `reject`.
        comment: Their reason.
        decided_at: UTC time.
    """

    request_id: str
    approver_id: str
    verdict: str
    comment: str
    decided_at: datetime

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "request_id": self.request_id,
            "approver_id": self.approver_id,
            "verdict": self.verdict,
            "comment": self.comment,
            "decided_at": self.decided_at.isoformat(),
        }


@define(frozen=True)
class ApprovalRequest:
    """A request for a human decision on an exact action.

    The subject is general (`subject_type` `agent.tool_call`, `evolution.suggestion`, ...): the
    approval binds to `arguments_hash`, the SHA-256 of the canonical JSON of `arguments`.

    Attributes:
        id: Request id.
        org_id: Tenant.
        key: Caller's idempotency key (unique per org): requesting twice returns the same request.
        subject_type, subject_id: What the approval is about.
        action: What would be done (`refund_order`, `apply_suggestion`).
        arguments: The exact arguments (JSON).
        arguments_hash: Their hash.
        reason: Why it is requested.
        risk: Risk level 0-3.
        requested_by: Actor id of the requester (who may not approve it).
        requested_at, expires_at: UTC times.
        quorum: Distinct approvals needed.
        approvers: Named approvers (empty: anyone with the permission).
        status: `ApprovalStatus`.
        decisions: Verdicts so far, oldest first.
        decided_at: When it became final.
        metadata: Free JSON (run id, step, packet...).
        version: Compare-and-set counter.
    """

    id: str
    org_id: str | None
    subject_type: str
    subject_id: str | None
    action: str
    arguments: Mapping[str, Any]
    arguments_hash: str
    reason: str
    risk: int
    requested_by: str
    requested_at: datetime
    expires_at: datetime
    quorum: int = 1
    approvers: tuple[str, ...] = ()
    status: ApprovalStatus = ApprovalStatus.PENDING
    decisions: tuple[ApprovalDecision, ...] = ()
    decided_at: datetime | None = None
    key: str | None = None
    metadata: Mapping[str, Any] = field(factory=dict)
    version: int = 1

    @property
    def approvals(self) -> int:
        """Number of distinct approvals so far."""
        return len({d.approver_id for d in self.decisions if d.verdict == "approve"})

    def evolve(self, **changes: Any) -> ApprovalRequest:
        """A copy with `changes` applied."""
        return evolve(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (for events, audit and APIs)."""
        return {
            "id": self.id,
            "org_id": self.org_id,
            "key": self.key,
            "subject_type": self.subject_type,
            "subject_id": self.subject_id,
            "action": self.action,
            "arguments": dict(self.arguments),
            "arguments_hash": self.arguments_hash,
            "reason": self.reason,
            "risk": self.risk,
            "requested_by": self.requested_by,
            "requested_at": self.requested_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "quorum": self.quorum,
            "approvers": list(self.approvers),
            "status": self.status.value,
            "decisions": [d.to_dict() for d in self.decisions],
            "decided_at": self.decided_at.isoformat() if self.decided_at else None,
            "metadata": dict(self.metadata),
        }


@runtime_checkable
class RunStore(Protocol):
    """Runs, their steps and logs, and the gateway's idempotency ledger."""

    async def create(self, tx: Transaction, run: Run) -> None:
        """Insert a new run. Raises `ConflictError` if the id exists."""
        ...

    async def get(self, tx: Transaction, run_id: str) -> Run | None:
        """The run, or `None`."""
        ...

    async def update(self, tx: Transaction, run: Run, *, expected_version: int) -> Run:
        """Replace the run if its stored version is `expected_version`; return it with the
        version incremented. Raises `ConflictError` when another writer got there first and
        `NotFoundError` when the run does not exist."""
        ...

    async def find(
        self,
        tx: Transaction,
        *,
        org_id: str | None,
        agent: str | None = None,
        status: RunStatus | None = None,
        limit: int = 100,
        before: tuple[datetime, str] | None = None,
    ) -> list[Run]:
        """Runs of one org, newest first (by `(created_at, id)`); with `before`, only the runs
        that come after that `(created_at, id)` key in this order (keyset pagination)."""
        ...

    async def claim(
        self, tx: Transaction, run: Run, *, owner: str, lease_until: datetime, now: datetime
    ) -> Run:
        """Take `run` (as read, at `run.version`) for `owner`: status `running`, lease until
        `lease_until`, version incremented; return it. Only an unfinished run nobody holds a live
        lease on can be claimed: one `waiting_approval`, or `running` with a lease expired at
        `now` (or none). Raises `ConflictError` otherwise (another worker claimed it or still
        holds it) and `NotFoundError` when the run does not exist."""
        ...

    async def heartbeat(
        self, tx: Transaction, run_id: str, *, owner: str, lease_until: datetime
    ) -> bool:
        """Extend `owner`'s lease on a `running` run to `lease_until` (the version does not
        change). Return `False` when `owner` no longer holds the run."""
        ...

    async def expired(
        self,
        tx: Transaction,
        *,
        now: datetime,
        org_id: str | EllipsisType | None = ...,
        limit: int = 100,
    ) -> list[Run]:
        """`running` runs whose lease expired at `now` (or that have none), oldest lease first;
        of one org, or of every org when `org_id` is `...` (the default)."""
        ...

    async def add_step(self, tx: Transaction, step: RunStep) -> None:
        """Record a step. Raises `ConflictError` if the run already has this step index."""
        ...

    async def steps(self, tx: Transaction, run_id: str) -> list[RunStep]:
        """The run's steps by index."""
        ...

    async def log(self, tx: Transaction, entry: RunLog) -> None:
        """Append a log line (its `seq` is assigned by the store)."""
        ...

    async def logs(self, tx: Transaction, run_id: str) -> list[RunLog]:
        """The run's log, oldest first, with `seq` from 1."""
        ...

    async def begin_action(self, tx: Transaction, record: ActionRecord) -> None:
        """Record an action before it executes. Raises `ConflictError` if the id exists."""
        ...

    async def get_action(self, tx: Transaction, action_id: str) -> ActionRecord | None:
        """The ledger entry, or `None`."""
        ...

    async def finish_action(
        self,
        tx: Transaction,
        action_id: str,
        status: ActionStatus,
        result: Any,
        updated_at: datetime,
    ) -> ActionRecord:
        """Mark the action finished with its result. Raises `NotFoundError` if unknown."""
        ...

    async def update_action(
        self,
        tx: Transaction,
        action_id: str,
        status: ActionStatus,
        *,
        expected: Collection[ActionStatus],
        expected_attempts: int | None = None,
        updated_at: datetime,
        result: Any = None,
        step: int | None = None,
        packet: Mapping[str, Any] | None = None,
        attempts: int | None = None,
    ) -> ActionRecord:
        """Compare-and-set: move the action to `status` if its stored status is one of
        `expected` (and its attempts are `expected_attempts`, when given). `result` replaces the
        stored result; `step`, `packet` and `attempts` replace theirs when given. Raises
        `ConflictError` when the stored state differs and `NotFoundError` if unknown."""
        ...

    async def actions(self, tx: Transaction, run_id: str) -> list[ActionRecord]:
        """The run's ledger entries, oldest first."""
        ...


@runtime_checkable
class ApprovalStore(Protocol):
    """Approval requests and their decisions."""

    async def add(self, tx: Transaction, request: ApprovalRequest) -> None:
        """Insert a request. Raises `ConflictError` if its id, or its `(org_id, key)`, exists."""
        ...

    async def get(self, tx: Transaction, request_id: str) -> ApprovalRequest | None:
        """The request with its decisions, or `None`."""
        ...

    async def get_by_key(
        self, tx: Transaction, org_id: str | None, key: str
    ) -> ApprovalRequest | None:
        """The request with this idempotency key in the org, or `None`."""
        ...

    async def save(
        self, tx: Transaction, request: ApprovalRequest, *, expected_version: int
    ) -> ApprovalRequest:
        """Update status fields if the stored version is `expected_version` (compare-and-set);
        return the request with the version incremented. Raises `ConflictError` otherwise."""
        ...

    async def add_decision(self, tx: Transaction, decision: ApprovalDecision) -> None:
        """Record a verdict. Raises `ConflictError` if this approver already decided."""
        ...

    async def find(
        self,
        tx: Transaction,
        *,
        org_id: str | None,
        status: ApprovalStatus | None = None,
        subject_type: str | None = None,
        limit: int = 100,
        newest_first: bool = False,
        before: tuple[datetime, str] | None = None,
    ) -> list[ApprovalRequest]:
        """Requests of one org, oldest first by `(requested_at, id)` (newest first with
        `newest_first`); with `before` (needs `newest_first`), only the requests that come
        after that `(requested_at, id)` key in the newest-first order (keyset pagination)."""
        ...


def claimable(run: Run, now: datetime) -> bool:
    """Whether `run` may be claimed at `now`: waiting for approvals, or running with a lease that
    expired (or none)."""
    if run.status is RunStatus.WAITING_APPROVAL:
        return True
    return run.status is RunStatus.RUNNING and (
        run.lease_expires_at is None or run.lease_expires_at <= now
    )


class MemoryRunStore:
    """`RunStore` in dictionaries; writes are undone if their transaction rolls back."""

    def __init__(self) -> None:
        self._runs: dict[str, Run] = {}
        self._steps: dict[tuple[str, int], RunStep] = {}
        self._logs: dict[str, list[RunLog]] = {}
        self._actions: dict[str, ActionRecord] = {}

    async def create(self, tx: Transaction, run: Run) -> None:
        """Insert a new run."""
        if run.id in self._runs:
            raise ConflictError(f"run {run.id!r} already exists", details={"run_id": run.id})
        tx.undo_item(self._runs, run.id)
        self._runs[run.id] = run

    async def get(self, tx: Transaction, run_id: str) -> Run | None:
        """The run, or `None`."""
        return self._runs.get(run_id)

    async def update(self, tx: Transaction, run: Run, *, expected_version: int) -> Run:
        """Compare-and-set replace."""
        current = self._runs.get(run.id)
        if current is None:
            raise NotFoundError(f"run {run.id!r} does not exist", details={"run_id": run.id})
        if current.version != expected_version:
            raise ConflictError(
                f"run {run.id!r} was changed concurrently (version {current.version}, expected "
                f"{expected_version}); reload it and retry",
                details={"run_id": run.id},
            )
        stored = run.evolve(version=expected_version + 1)
        tx.undo_item(self._runs, run.id)
        self._runs[run.id] = stored
        return stored

    async def claim(
        self, tx: Transaction, run: Run, *, owner: str, lease_until: datetime, now: datetime
    ) -> Run:
        """Take the run if it is claimable (see `RunStore.claim`)."""
        current = self._runs.get(run.id)
        if current is None:
            raise NotFoundError(f"run {run.id!r} does not exist", details={"run_id": run.id})
        if current.version != run.version or not claimable(current, now):
            raise ConflictError(
                f"run {run.id!r} is held or was claimed by another worker; nothing to resume here",
                details={"run_id": run.id},
            )
        stored = current.evolve(
            status=RunStatus.RUNNING,
            lease_owner=owner,
            lease_expires_at=lease_until,
            version=current.version + 1,
            updated_at=now,
        )
        tx.undo_item(self._runs, run.id)
        self._runs[run.id] = stored
        return stored

    async def heartbeat(
        self, tx: Transaction, run_id: str, *, owner: str, lease_until: datetime
    ) -> bool:
        """Extend the owner's lease."""
        current = self._runs.get(run_id)
        if current is None or current.status is not RunStatus.RUNNING:
            return False
        if current.lease_owner != owner:
            return False
        tx.undo_item(self._runs, run_id)
        self._runs[run_id] = current.evolve(lease_expires_at=lease_until)
        return True

    async def expired(
        self,
        tx: Transaction,
        *,
        now: datetime,
        org_id: str | EllipsisType | None = ...,
        limit: int = 100,
    ) -> list[Run]:
        """Running runs whose lease expired, oldest lease first."""
        found = [
            r
            for r in self._runs.values()
            if r.status is RunStatus.RUNNING
            and (r.lease_expires_at is None or r.lease_expires_at <= now)
            and (org_id is ... or r.org_id == org_id)
        ]
        found.sort(key=lambda r: (r.lease_expires_at or r.updated_at, r.id))
        return found[:limit]

    async def find(
        self,
        tx: Transaction,
        *,
        org_id: str | None,
        agent: str | None = None,
        status: RunStatus | None = None,
        limit: int = 100,
        before: tuple[datetime, str] | None = None,
    ) -> list[Run]:
        """Runs of one org, newest first (keyset `before`, as the protocol says)."""
        runs = [
            r
            for r in self._runs.values()
            if r.org_id == org_id
            and (agent is None or r.agent == agent)
            and (status is None or r.status == status)
            and (before is None or (r.created_at, r.id) < before)
        ]
        runs.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        return runs[:limit]

    async def add_step(self, tx: Transaction, step: RunStep) -> None:
        """Record a step."""
        key = (step.run_id, step.index)
        if key in self._steps:
            raise ConflictError(
                f"run {step.run_id!r} already has step {step.index}",
                details={"run_id": step.run_id, "step": step.index},
            )
        tx.undo_item(self._steps, key)
        self._steps[key] = step

    async def steps(self, tx: Transaction, run_id: str) -> list[RunStep]:
        """The run's steps by index."""
        return sorted(
            (s for (rid, _), s in self._steps.items() if rid == run_id), key=lambda s: s.index
        )

    async def log(self, tx: Transaction, entry: RunLog) -> None:
        """Append a log line."""
        lines = self._logs.setdefault(entry.run_id, [])
        lines.append(evolve(entry, seq=len(lines) + 1))

        def undo() -> None:
            if lines:
                lines.pop()

        tx.add_undo(undo)

    async def logs(self, tx: Transaction, run_id: str) -> list[RunLog]:
        """The run's log, oldest first."""
        return list(self._logs.get(run_id, ()))

    async def begin_action(self, tx: Transaction, record: ActionRecord) -> None:
        """Record an action before it executes."""
        if record.action_id in self._actions:
            raise ConflictError(
                f"action {record.action_id!r} is already recorded",
                details={"action_id": record.action_id},
            )
        tx.undo_item(self._actions, record.action_id)
        self._actions[record.action_id] = record

    async def get_action(self, tx: Transaction, action_id: str) -> ActionRecord | None:
        """The ledger entry, or `None`."""
        return self._actions.get(action_id)

    async def finish_action(
        self,
        tx: Transaction,
        action_id: str,
        status: ActionStatus,
        result: Any,
        updated_at: datetime,
    ) -> ActionRecord:
        """Mark the action finished."""
        current = self._actions.get(action_id)
        if current is None:
            raise NotFoundError(f"action {action_id!r} is not recorded")
        done = evolve(current, status=status, result=result, updated_at=updated_at)
        tx.undo_item(self._actions, action_id)
        self._actions[action_id] = done
        return done

    async def update_action(
        self,
        tx: Transaction,
        action_id: str,
        status: ActionStatus,
        *,
        expected: Collection[ActionStatus],
        expected_attempts: int | None = None,
        updated_at: datetime,
        result: Any = None,
        step: int | None = None,
        packet: Mapping[str, Any] | None = None,
        attempts: int | None = None,
    ) -> ActionRecord:
        """Compare-and-set on status (and attempts)."""
        current = self._actions.get(action_id)
        if current is None:
            raise NotFoundError(f"action {action_id!r} is not recorded")
        if current.status not in expected or (
            expected_attempts is not None and current.attempts != expected_attempts
        ):
            raise ConflictError(
                f"action {action_id!r} is {current.status.value} (attempt {current.attempts}); "
                "another worker changed it",
                details={"action_id": action_id, "status": current.status.value},
            )
        changes: dict[str, Any] = {"status": status, "result": result, "updated_at": updated_at}
        if step is not None:
            changes["step"] = step
        if packet is not None:
            changes["packet"] = packet
        if attempts is not None:
            changes["attempts"] = attempts
        done = evolve(current, **changes)
        tx.undo_item(self._actions, action_id)
        self._actions[action_id] = done
        return done

    async def actions(self, tx: Transaction, run_id: str) -> list[ActionRecord]:
        """The run's ledger entries, oldest first."""
        return sorted(
            (a for a in self._actions.values() if a.run_id == run_id),
            key=lambda a: (a.created_at, a.step, a.action_id),
        )


class MemoryApprovalStore:
    """`ApprovalStore` in dictionaries; writes are undone if their transaction rolls back."""

    def __init__(self) -> None:
        self._requests: dict[str, ApprovalRequest] = {}
        self._keys: dict[tuple[str | None, str], str] = {}
        self._decisions: dict[tuple[str, str], ApprovalDecision] = {}

    def _with_decisions(self, request: ApprovalRequest) -> ApprovalRequest:
        decisions = tuple(
            sorted(
                (d for (rid, _), d in self._decisions.items() if rid == request.id),
                key=lambda d: (d.decided_at, d.approver_id),
            )
        )
        return request.evolve(decisions=decisions)

    async def add(self, tx: Transaction, request: ApprovalRequest) -> None:
        """Insert a request."""
        if request.id in self._requests or (
            request.key is not None and (request.org_id, request.key) in self._keys
        ):
            raise ConflictError(
                f"approval request {request.key or request.id!r} already exists",
                details={"approval_id": request.id},
            )
        tx.undo_item(self._requests, request.id)
        self._requests[request.id] = request.evolve(decisions=())
        if request.key is not None:
            tx.undo_item(self._keys, (request.org_id, request.key))
            self._keys[(request.org_id, request.key)] = request.id

    async def get(self, tx: Transaction, request_id: str) -> ApprovalRequest | None:
        """The request with its decisions, or `None`."""
        found = self._requests.get(request_id)
        return None if found is None else self._with_decisions(found)

    async def get_by_key(
        self, tx: Transaction, org_id: str | None, key: str
    ) -> ApprovalRequest | None:
        """The request with this key in the org, or `None`."""
        rid = self._keys.get((org_id, key))
        return None if rid is None else await self.get(tx, rid)

    async def save(
        self, tx: Transaction, request: ApprovalRequest, *, expected_version: int
    ) -> ApprovalRequest:
        """Compare-and-set update."""
        current = self._requests.get(request.id)
        if current is None:
            raise NotFoundError(f"approval request {request.id!r} does not exist")
        if current.version != expected_version:
            raise ConflictError(
                f"approval request {request.id!r} was decided concurrently; reload it and retry",
                details={"approval_id": request.id},
            )
        stored = request.evolve(version=expected_version + 1, decisions=())
        tx.undo_item(self._requests, request.id)
        self._requests[request.id] = stored
        return self._with_decisions(stored)

    async def add_decision(self, tx: Transaction, decision: ApprovalDecision) -> None:
        """Record a verdict."""
        key = (decision.request_id, decision.approver_id)
        if key in self._decisions:
            raise ConflictError(
                f"{decision.approver_id!r} already decided on {decision.request_id!r}",
                details={"approval_id": decision.request_id},
            )
        tx.undo_item(self._decisions, key)
        self._decisions[key] = decision

    async def find(
        self,
        tx: Transaction,
        *,
        org_id: str | None,
        status: ApprovalStatus | None = None,
        subject_type: str | None = None,
        limit: int = 100,
        newest_first: bool = False,
        before: tuple[datetime, str] | None = None,
    ) -> list[ApprovalRequest]:
        """Requests of one org, oldest first (or newest first, keyset `before`)."""
        found = [
            r
            for r in self._requests.values()
            if r.org_id == org_id
            and (status is None or r.status == status)
            and (subject_type is None or r.subject_type == subject_type)
            and (before is None or (r.requested_at, r.id) < before)
        ]
        found.sort(key=lambda r: (r.requested_at, r.id), reverse=newest_first)
        return [self._with_decisions(r) for r in found[:limit]]
