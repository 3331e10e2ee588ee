"""`AgentRunner`: the agent loop, durable after every step, resumable after approvals.

```text
run(agent, input, ctx)
  -> policy check (agent's run_permission) -> run created (agent.run.started)
  -> loop: model request (limits checked) -> tool calls through the ToolExecutor / gateway
           -> step persisted (run, step, logs, events in one transaction)
           -> a call needs approval: run suspended as waiting_approval (agent.run.waiting)
  -> final answer validated (structured output, retried on errors) -> confidence -> escalation
  -> agent.run.completed | agent.escalated | agent.run.failed
resume(run_id)  # after the approvals are decided, in any process: claims the run exactly once
recover()       # runs whose worker died (lease expired): claimed once, resumed from the last
                # durable step; calls that were started and never finished are in doubt
```

Leases: a run that is `running` is held by one worker (`AgentRunner.worker_id`) until
`lease_expires_at`. Every persisted step extends the lease, and a heartbeat task extends it every
`heartbeat_s` while a model request or a tool call is slow. A worker that dies stops
heartbeating; once the lease expired, `recover()` (or `resume_ready()`, or `resume(run_id)`) in
any process claims the run with a compare-and-set and goes on from what was made durable:

* the step's tool calls are made durable with their ledger entries *before* any of them takes
  effect, so a recovered run re-submits exactly these calls to the gateway: finished ones replay
  their recorded result, started-but-unfinished ones are in doubt and resolved per the tool
  (`reconcile`, an idempotent operation's key, a re-run for L0, otherwise a person's approval);
* a crash during a model request repeats that request (model requests are not effects).

A cancelled task (`CancelledError`) marks its run `cancelled` (final) and the call it was
running in doubt.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import os
import socket
import uuid
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import contextmanager
from datetime import datetime, timedelta
from time import perf_counter
from types import EllipsisType
from typing import Any

from attrs import define, field
from pydantic import BaseModel, ValidationError
from pydantic_core import to_jsonable_python

from contractspec.agent.approvals import ApprovalWorkflow
from contractspec.agent.budgets import BudgetStore, MemoryBudgetStore
from contractspec.agent.errors import (
    AgentRunError,
    LeaseLostError,
    UnexpectedModelBehavior,
    UsageLimitExceeded,
)
from contractspec.agent.events import (
    agent_escalated,
    envelope,
    run_cancelled,
    run_completed,
    run_failed,
    run_recovered,
    run_started,
    run_waiting,
)
from contractspec.agent.gateway import (
    ActionPacket,
    RunScope,
    ToolExecutor,
    ToolGateway,
    ToolOutcome,
    escape_unstorable,
    storable_text,
    unstorable_values,
)
from contractspec.agent.messages import (
    AssistantMessage,
    Message,
    ModelClient,
    ModelRequest,
    ModelResponse,
    StreamingModelClient,
    SystemMessage,
    ToolCall,
    Usage,
    UserMessage,
    message_from_dict,
)
from contractspec.agent.specs import AgentRegistry, AgentSpec
from contractspec.agent.stores import (
    ApprovalStatus,
    MemoryApprovalStore,
    MemoryRunStore,
    Run,
    RunLog,
    RunStatus,
    RunStep,
    RunStore,
    claimable,
)
from contractspec.agent.streaming import (
    RunFinished,
    StreamEvent,
    TextDelta,
    ToolCallFinished,
    ToolCallRequested,
)
from contractspec.core import (
    Actor,
    ActorKind,
    AuditSink,
    Backend,
    CallContext,
    Clock,
    ConfigurationError,
    ConflictError,
    ContractSpecError,
    EventEnvelope,
    EventPublisher,
    Executor,
    IdGenerator,
    MemoryBackend,
    NotFoundError,
    PolicyDecider,
    PolicyDeniedError,
    Resource,
    SystemClock,
    TelemetrySample,
    TelemetrySink,
    Transaction,
    UnitOfWork,
    UuidGenerator,
)
from contractspec.core._log import get_logger
from contractspec.core.records import Decision
from contractspec.core.sync import SyncRunner

__all__ = ["AgentRunner", "RunResult"]

_log = get_logger(__name__)
_OVERRIDE: contextvars.ContextVar[ModelClient | None] = contextvars.ContextVar(
    "contractspec_agent_model_override", default=None
)


@define(frozen=True)
class RunResult:
    """What a run produced (so far).

    Attributes:
        run_id: The run.
        status: `RunStatus` (`waiting_approval` when suspended).
        output: The final answer: text, or an instance of the agent's `output_type`.
        confidence: Reported confidence (0-1), or `None`.
        escalated: Whether the run was handed to a person (confidence below the threshold).
        usage: Requests, tokens, tool calls and cost.
        steps: Model steps taken.
        pending_approvals: Approval ids the run waits for.
        packets: Action packets of this invocation's tool calls (oldest first).
        messages: The conversation.
    """

    run_id: str
    status: RunStatus
    output: Any = None
    confidence: float | None = None
    escalated: bool = False
    usage: Usage = field(factory=Usage)
    steps: int = 0
    pending_approvals: tuple[str, ...] = ()
    packets: tuple[ActionPacket, ...] = ()
    messages: tuple[Message, ...] = ()

    @property
    def waiting(self) -> bool:
        """True while the run waits for approvals."""
        return self.status is RunStatus.WAITING_APPROVAL


#: Receives the run's `StreamEvent`s as they happen (`AgentRunner.run(on_event=...)`).
EventHandler = Callable[[StreamEvent], Awaitable[None] | None]


@define
class _State:
    run: Run
    spec: AgentSpec
    call: CallContext
    messages: list[Message]
    usage: Usage
    deps: Any
    packets: list[ActionPacket] = field(factory=list)
    output_retries: int = 0
    started: float = 0.0
    unsaved_steps: list[RunStep] = field(factory=list)
    on_event: EventHandler | None = None
    lease_lost: bool = False
    deadline: datetime | None = None

    async def emit(self, event: StreamEvent) -> None:
        if self.on_event is None:
            return
        done = self.on_event(event)
        if inspect.isawaitable(done):
            await done


def _actor_dict(actor: Actor) -> dict[str, Any]:
    return {"id": actor.id, "kind": actor.kind.value, "roles": sorted(actor.roles)}


def _actor(data: Mapping[str, Any]) -> Actor:
    return Actor(str(data["id"]), ActorKind(data.get("kind", "user")), data.get("roles") or ())


class AgentRunner:
    """Runs agents: the model loop, tools through the gateway, durable runs, approvals.

    Args:
        agents: An `AgentRegistry` (or agents) the runner knows; agents passed to `run` are
            registered automatically (needed to `resume` by run id).
        model: The `ModelClient` for every agent (`ScriptedModel`, `FunctionModel`,
            `LiteLLMModel`). Default: `LiteLLMModel()` (needs `contractspec-agent[litellm]`).
        backend: Core backend: unit of work, event publisher (outbox) and audit sink
            (`MemoryBackend()` by default; a `SqlBackend` with SQL stores on the same engine).
        runs: `RunStore` (default `MemoryRunStore()`).
        approvals: `ApprovalWorkflow` (default: memory store on the same backend and policy).
        executor: Core `Executor` for operation tools.
        policy: `PolicyDecider` for the agents' `run_permission` (and the default workflow).
        telemetry: Receives one `TelemetrySample` per run (`operation="agent.<name>"`).
        clock: Time source.
        ids: Id source.
        unit_of_work: Overrides the backend's unit of work.
        events: Overrides the backend's event publisher.
        audit: Overrides the backend's audit sink.
        worker_id: Names this worker in run leases (default: host, process id and a random
            suffix).
        lease_s: Seconds a run's lease lasts without a heartbeat (default 30): how long after a
            worker dies its runs can be recovered.
        heartbeat_s: Seconds between heartbeats of a running run (default `lease_s / 3`).
        budgets: The `BudgetStore` tools' `Budget`s reserve in, in the ledger's transactions
            (default: a `MemoryBudgetStore` with memory runs; pass `SqlBudgetStore()` with
            `SqlRunStore`, else calls of tools with budgets are blocked).

    Example:
        ```python
        runner = AgentRunner(model=ScriptedModel([...]))
        result = await runner.run(agent, "Where is my order 42?", CallContext(actor=Actor.user("u1")))
        ```
    """

    def __init__(
        self,
        agents: AgentRegistry | Iterable[AgentSpec] | None = None,
        *,
        model: ModelClient | None = None,
        backend: Backend | None = None,
        runs: RunStore | None = None,
        approvals: ApprovalWorkflow | None = None,
        executor: Executor | None = None,
        policy: PolicyDecider | None = None,
        telemetry: TelemetrySink | None = None,
        clock: Clock | None = None,
        ids: IdGenerator | None = None,
        unit_of_work: UnitOfWork | None = None,
        events: EventPublisher | None = None,
        audit: AuditSink | None = None,
        worker_id: str | None = None,
        lease_s: float = 30.0,
        heartbeat_s: float | None = None,
        budgets: BudgetStore | None = None,
    ) -> None:
        if not lease_s > 0 or (heartbeat_s is not None and not 0 < heartbeat_s < lease_s):
            raise ConfigurationError(
                f"lease_s must be > 0 and heartbeat_s between 0 and lease_s (got lease_s="
                f"{lease_s!r}, heartbeat_s={heartbeat_s!r}); e.g. lease_s=30, heartbeat_s=10",
                details={"field": "heartbeat_s" if lease_s > 0 else "lease_s"},
            )
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease_s = float(lease_s)
        self.heartbeat_s = float(heartbeat_s) if heartbeat_s is not None else self.lease_s / 3
        base: Backend = backend if backend is not None else MemoryBackend()
        self.registry = agents if isinstance(agents, AgentRegistry) else AgentRegistry()
        if agents is not None and not isinstance(agents, AgentRegistry):
            self.registry.register(*agents)
        self.model = model
        self.unit_of_work: UnitOfWork = unit_of_work or base.unit_of_work
        self.events: EventPublisher = events or base.events
        self.audit: AuditSink | None = audit or base.audit
        self.runs: RunStore = runs if runs is not None else MemoryRunStore()
        self.clock: Clock = clock or SystemClock()
        self.ids: IdGenerator = ids or UuidGenerator()
        self.policy = policy
        self.telemetry = telemetry
        self.executor = executor
        self.approvals = (
            approvals
            if approvals is not None
            else ApprovalWorkflow(
                MemoryApprovalStore(),
                unit_of_work=self.unit_of_work,
                events=self.events,
                audit=self.audit,
                policy=policy,
                clock=self.clock,
                ids=self.ids,
            )
        )
        self.gateway = ToolGateway(
            runs=self.runs,
            unit_of_work=self.unit_of_work,
            events=self.events,
            audit=self.audit,
            clock=self.clock,
            ids=self.ids,
            executor=executor,
            approvals=self.approvals,
            budgets=budgets
            if budgets is not None
            else MemoryBudgetStore()
            if isinstance(self.runs, MemoryRunStore)
            else None,
        )
        self.budgets = self.gateway.budgets
        self.tools = ToolExecutor(self.gateway, report=False)
        self._sync_runner: SyncRunner | None = None

    # -- configuration ----------------------------------------------------------------------------

    @contextmanager
    def override(self, *, model: ModelClient) -> Iterator[None]:
        """Use `model` for every run inside the block (tests), like pydantic-ai's
        `Agent.override`."""
        token = _OVERRIDE.set(model)
        try:
            yield
        finally:
            _OVERRIDE.reset(token)

    def _client(self) -> ModelClient:
        override = _OVERRIDE.get()
        if override is not None:
            return override
        if self.model is None:
            from contractspec.agent.litellm import LiteLLMModel

            self.model = LiteLLMModel()
        return self.model

    def _spec(self, agent: AgentSpec | str) -> AgentSpec:
        if isinstance(agent, AgentSpec):
            if agent.name not in self.registry or agent.version not in self.registry.versions(
                agent.name
            ):
                self.registry.register(agent)
            return agent
        return self.registry.get(agent)

    # -- public API -------------------------------------------------------------------------------

    async def run(
        self,
        agent: AgentSpec | str,
        input: str | BaseModel | Mapping[str, Any],
        ctx: CallContext | None = None,
        *,
        session_id: str | None = None,
        deps: Any = None,
        on_event: EventHandler | None = None,
        deadline: datetime | None = None,
    ) -> RunResult:
        """Run `agent` on `input` until it answers, fails or waits for an approval.

        Args:
            agent: The spec, or the name of a registered agent (latest version).
            input: The user's request (text, or a model/mapping sent as JSON).
            ctx: Who runs it (tools act for this actor) and for which org.
            session_id: Memory session: earlier runs' messages are loaded and this run's are
                appended (when the agent has `memory`).
            deps: Passed to function tools through `ToolContext.deps`.
            on_event: Called (or awaited) with each `StreamEvent` as it happens: text deltas
                (streamed when the model client has `stream`), tool calls and their outcomes,
                and `RunFinished` last. See `run_stream`.
            deadline: Timezone-aware wall-clock time (read from the runner's `clock`) after
                which the run does no more work: it is checked before each model request and
                before each step's tool calls execute (a call already executing is never
                interrupted; none of a refused step's calls runs). Passing it fails the run
                with `UsageLimitExceeded` (`details["limit"] == "deadline"`). `None`: no
                time limit.

        Returns:
            The `RunResult` (`status` `completed`, `escalated` or `waiting_approval`).

        Raises:
            PolicyDeniedError: The actor may not run the agent (`run_permission`).
            UsageLimitExceeded: A usage limit was crossed, the `deadline` passed, or a model
                response asked for more tool calls than `max_tool_calls` leaves (checked
                before any of them executes; the run is marked failed).
            UnexpectedModelBehavior: Unusable model output after every retry.
            AgentRunError: The model request failed.
            LeaseLostError: This worker stalled past the run's lease and another worker
                recovered the run.
            ConfigurationError: `deadline` is not a timezone-aware `datetime`.
        """
        _check_deadline_arg(deadline)
        spec = self._spec(agent)
        call = ctx or CallContext(channel="agent")
        await self._check_run_permission(spec, call)
        text = input if isinstance(input, str) else _json_text(input)
        messages: list[Message] = [SystemMessage(_instructions(spec))]
        if spec.memory is not None and session_id is not None:
            messages.extend(await spec.memory.load(session_id, org_id=call.org_id))
        messages.append(UserMessage(text))
        now = self.clock.now()
        run = Run(
            id=self.ids.new_id(),
            agent=spec.name,
            agent_version=spec.version,
            org_id=call.org_id,
            actor=_actor_dict(call.actor),
            status=RunStatus.RUNNING,
            input=text,
            created_at=now,
            updated_at=now,
            session_id=session_id,
            messages=tuple(m.to_dict() for m in messages),
            lease_owner=self.worker_id,
            lease_expires_at=now + timedelta(seconds=self.lease_s),
        )
        state = _State(
            run, spec, call, messages, Usage(), deps, started=perf_counter(), on_event=on_event,
            deadline=deadline,
        )  # fmt: skip
        tx = await self.unit_of_work.begin()
        try:
            await self.runs.create(tx, run)
            await self.runs.log(
                tx, self._line(run.id, "run.started", f"{spec.ref} started", actor=call.actor.id)
            )
            await self.events.publish(
                [
                    self._event(
                        state,
                        run_started,
                        {"run_id": run.id, "agent": spec.name, "agent_version": spec.version},
                    )
                ],
                tx,
            )
            await tx.commit()
        except BaseException:
            await tx.rollback()
            raise
        return await self._drive(state)

    async def run_stream(
        self,
        agent: AgentSpec | str,
        input: str | BaseModel | Mapping[str, Any],
        ctx: CallContext | None = None,
        *,
        session_id: str | None = None,
        deps: Any = None,
        deadline: datetime | None = None,
    ) -> AsyncIterator[StreamEvent]:
        """`run`, yielding its `StreamEvent`s as they happen: `TextDelta`s of the model's text
        (token by token when the model client streams, else the whole text once),
        `ToolCallRequested` / `ToolCallFinished` around each call, and `RunFinished` with the
        `RunResult` last. The errors `run` raises are raised from the iteration. Closing the
        iterator early cancels the run (it is marked `cancelled`).
        """
        queue: asyncio.Queue[StreamEvent | BaseException] = asyncio.Queue()

        async def drive() -> None:
            try:
                await self.run(
                    agent, input, ctx, session_id=session_id, deps=deps,
                    on_event=queue.put_nowait, deadline=deadline,
                )  # fmt: skip
            except BaseException as exc:
                queue.put_nowait(exc)
                raise

        task = asyncio.get_running_loop().create_task(drive(), name="contractspec.agent.run_stream")
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, RunFinished):
                    return
        finally:
            if not task.done():
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def run_sync(
        self,
        agent: AgentSpec | str,
        input: str | BaseModel | Mapping[str, Any],
        ctx: CallContext | None = None,
        *,
        session_id: str | None = None,
        deps: Any = None,
    ) -> RunResult:
        """`run` for scripts and notebooks (also inside a running event loop: the run goes to
        this runner's own loop thread, `contractspec.core.sync.SyncRunner`).

        Raises every error `run` raises.
        """
        return self._sync(self.run(agent, input, ctx, session_id=session_id, deps=deps))

    def resume_sync(
        self, run_id: str, ctx: CallContext | None = None, *, deps: Any = None
    ) -> RunResult:
        """`resume` for scripts and notebooks (like `run_sync`)."""
        return self._sync(self.resume(run_id, ctx, deps=deps))

    def _sync(self, coro: Any) -> RunResult:
        if self._sync_runner is None:
            self._sync_runner = SyncRunner()
        result: RunResult = self._sync_runner.run(coro, what="run_sync()/resume_sync()")
        return result

    def close(self) -> None:
        """Close the event loop used by the `*_sync` methods (if one was started)."""
        if self._sync_runner is not None:
            self._sync_runner.close()
            self._sync_runner = None

    async def get(self, run_id: str) -> Run:
        """The stored run.

        Raises:
            NotFoundError: No such run.
        """
        tx = await self.unit_of_work.begin(readonly=True)
        try:
            run = await self.runs.get(tx, run_id)
        finally:
            await tx.rollback()
        if run is None:
            raise NotFoundError(f"run {run_id!r} does not exist", details={"run_id": run_id})
        return run

    async def history(
        self,
        *,
        org_id: str | None,
        agent: str | None = None,
        status: RunStatus | None = None,
        limit: int = 100,
    ) -> list[Run]:
        """Runs of an org, newest first."""
        tx = await self.unit_of_work.begin(readonly=True)
        try:
            return await self.runs.find(tx, org_id=org_id, agent=agent, status=status, limit=limit)
        finally:
            await tx.rollback()

    async def logs(self, run_id: str) -> list[RunLog]:
        """The run's log lines, oldest first."""
        tx = await self.unit_of_work.begin(readonly=True)
        try:
            return await self.runs.logs(tx, run_id)
        finally:
            await tx.rollback()

    async def steps(self, run_id: str) -> list[RunStep]:
        """The run's steps by index."""
        tx = await self.unit_of_work.begin(readonly=True)
        try:
            return await self.runs.steps(tx, run_id)
        finally:
            await tx.rollback()

    async def packets(self, run_id: str) -> list[dict[str, Any]]:
        """Action packets (JSON forms) logged for the run, oldest first (shadow reports)."""
        return [
            dict(line.data["packet"])
            for line in await self.logs(run_id)
            if isinstance(line.data.get("packet"), Mapping)
        ]

    async def cancel(
        self,
        run_id: str,
        *,
        actor: Actor | None = None,
        reason: str = "",
        tx: Transaction | None = None,
    ) -> Run:
        """Cancel a stored run that has not finished (a person stops it, e.g. from a review
        queue): it becomes `cancelled` (final), its lease is released, a `run.cancelled` log line
        and an `agent.run.cancelled` event are written with it.

        A run `waiting_approval` never resumes; a run another worker is driving stops at that
        worker's next write (its compare-and-set fails and it raises `LeaseLostError`).
        Cancelling a cancelled run returns it unchanged (idempotent).

        Args:
            run_id: The run.
            actor: Who cancels (recorded in the log line and the event).
            reason: Why (recorded in the log line).
            tx: Join this transaction (e.g. an operation handler's `ctx.tx`) instead of opening
                one; the caller commits or rolls it back.

        Returns:
            The run as stored after the cancellation.

        Raises:
            NotFoundError: No such run.
            ConflictError: The run already finished otherwise (`completed`, `escalated`,
                `failed`), or another writer changed it at the same moment (retry).
        """
        own = tx is None
        t = tx if tx is not None else await self.unit_of_work.begin()
        try:
            run = await self.runs.get(t, run_id)
            if run is None:
                raise NotFoundError(f"run {run_id!r} does not exist", details={"run_id": run_id})
            if run.status is RunStatus.CANCELLED:
                saved = run
            elif run.status.finished:
                raise ConflictError(
                    f"run {run_id!r} already finished ({run.status.value}); only a running or "
                    "waiting run can be cancelled",
                    details={"run_id": run_id, "status": run.status.value},
                )
            else:
                now = self.clock.now()
                saved = await self.runs.update(
                    t,
                    run.evolve(
                        status=RunStatus.CANCELLED,
                        updated_at=now,
                        lease_owner=None,
                        lease_expires_at=None,
                    ),
                    expected_version=run.version,
                )
                who = actor.id if actor is not None else None
                await self.runs.log(
                    t,
                    RunLog(
                        run.id,
                        now,
                        "warning",
                        "run.cancelled",
                        f"cancelled by {who or 'the system'}" + (f": {reason}" if reason else ""),
                        {"actor_id": who, "reason": reason, "previous_status": run.status.value},
                    ),
                )
                event = envelope(
                    run_cancelled,
                    {"run_id": run.id, "agent": run.agent, "steps": run.steps},
                    clock=self.clock,
                    ids=self.ids,
                    org_id=run.org_id,
                    actor=actor,
                    correlation_id=run.id,
                )
                await self.events.publish([event], t)
            if own:
                await t.commit()
        except BaseException:
            if own:
                await t.rollback()
            raise
        return saved

    async def resume(
        self,
        run_id: str,
        ctx: CallContext | None = None,
        *,
        deps: Any = None,
        deadline: datetime | None = None,
    ) -> RunResult:
        """Continue a run that waited for approvals, once they are decided, or a run whose
        worker died (its lease expired; see `recover`).

        Safe to call from several processes: the run is claimed with a compare-and-set, so it
        resumes exactly once; approved calls execute (once, through the idempotency ledger),
        rejected or expired ones are reported to the model as refused; earlier tool calls are
        never re-run.

        Args:
            run_id: The run.
            ctx: Call context; by default the run's own actor and org.
            deps: Dependencies for function tools.
            deadline: Time after which the resumed run does no more work, as in `run`
                (approved calls of a step refused this way do not execute).

        Returns:
            The new `RunResult`; still `waiting_approval` (nothing done) while an approval is
            pending; the stored result for a run that already finished.

        Raises:
            NotFoundError: No such run.
            ConflictError: Another worker is resuming (or running, with a live lease) it now.
            ConfigurationError: The run's agent version is not registered in this runner.
            ApprovalUnavailableError: The approval store is unavailable (nothing executes).
            UsageLimitExceeded: A usage limit was crossed or the `deadline` passed.
            ConfigurationError: `deadline` is not a timezone-aware `datetime`.
        """
        _check_deadline_arg(deadline)
        run = await self.get(run_id)
        if run.status.finished:
            return self._stored_result(run)
        if run.status is RunStatus.RUNNING:
            if not claimable(run, self.clock.now()):
                raise ConflictError(
                    f"run {run_id!r} is running in worker {run.lease_owner!r} (lease until "
                    f"{run.lease_expires_at}); nothing to resume",
                    details={"run_id": run_id},
                )
            return await self._recover_run(run, ctx, deps, deadline)
        for item in run.pending:
            req = await self.approvals.get(str(item["approval_id"]))
            if req.status is ApprovalStatus.PENDING:
                return self._stored_result(run)
        spec = self._run_spec(run)
        call = ctx or CallContext(actor=_actor(run.actor), org_id=run.org_id, channel="agent")
        claimed = await self._claim(
            run, self._line(run_id, "run.resumed", "approvals decided; resuming"), ()
        )
        return await self._continue(claimed, spec, call, deps, deadline)

    async def recover(
        self,
        *,
        org_id: str | EllipsisType | None = ...,
        limit: int = 100,
        deps: Any = None,
    ) -> list[RunResult]:
        """Take over running runs whose lease expired (their worker died or stalled) and resume
        each from its last durable step.

        Each run is claimed with a compare-and-set (one worker wins; the others skip it). Tool
        calls of the interrupted step that were started and never finished are in doubt: the
        gateway resolves them per tool (`reconcile`, an idempotent operation's key, a re-run
        for L0, otherwise the run waits for a person's approval). Runs whose agent this runner
        does not know, or that fail, are logged and skipped.

        Args:
            org_id: Only this org's runs (`...`, the default: every org).
            limit: Runs to look at, oldest lease first.
            deps: Dependencies for function tools.

        Returns:
            The results of the runs recovered here.
        """
        tx = await self.unit_of_work.begin(readonly=True)
        try:
            expired = await self.runs.expired(tx, now=self.clock.now(), org_id=org_id, limit=limit)
        finally:
            await tx.rollback()
        out: list[RunResult] = []
        for run in expired:
            try:
                out.append(await self._recover_run(run, None, deps))
            except ConflictError:
                continue
            except ContractSpecError as exc:
                _log.warning(
                    "agent.recover_failed", run_id=run.id, code=exc.code, error=exc.message
                )
        return out

    async def _recover_run(
        self, run: Run, ctx: CallContext | None, deps: Any, deadline: datetime | None = None
    ) -> RunResult:
        spec = self._run_spec(run)
        call = ctx or CallContext(actor=_actor(run.actor), org_id=run.org_id, channel="agent")
        inflight = [p for p in run.pending if p.get("inflight")]
        line = self._line(
            run.id,
            "run.recovered",
            f"lease of {run.lease_owner!r} expired; recovered by {self.worker_id!r}"
            + (f" with {len(inflight)} call(s) in flight" if inflight else ""),
            level="warning",
            previous_owner=run.lease_owner,
        )
        event = envelope(
            run_recovered,
            {"run_id": run.id, "agent": run.agent, "previous_owner": run.lease_owner,
             "in_doubt": len(inflight)},
            clock=self.clock, ids=self.ids, org_id=run.org_id, actor=call.actor,
            correlation_id=run.id,
        )  # fmt: skip
        claimed = await self._claim(run, line, (event,))
        return await self._continue(claimed, spec, call, deps, deadline)

    def _run_spec(self, run: Run) -> AgentSpec:
        try:
            return self.registry.get(run.agent, run.agent_version)
        except ContractSpecError:
            raise ConfigurationError(
                f"run {run.id!r} belongs to agent {run.agent}@{run.agent_version}, which this "
                "runner does not know; pass it in AgentRunner(agents=[...])",
                details={"run_id": run.id},
            ) from None

    async def _claim(self, run: Run, line: RunLog, events: Sequence[EventEnvelope]) -> Run:
        now = self.clock.now()
        tx = await self.unit_of_work.begin()
        try:
            claimed = await self.runs.claim(
                tx, run, owner=self.worker_id,
                lease_until=now + timedelta(seconds=self.lease_s), now=now,
            )  # fmt: skip
            await self.runs.log(tx, line)
            if events:
                await self.events.publish(list(events), tx)
            await tx.commit()
        except ConflictError:
            await tx.rollback()
            raise ConflictError(
                f"run {run.id!r} was resumed by another worker", details={"run_id": run.id}
            ) from None
        except BaseException:
            await tx.rollback()
            raise
        return claimed

    async def _continue(
        self,
        claimed: Run,
        spec: AgentSpec,
        call: CallContext,
        deps: Any,
        deadline: datetime | None = None,
    ) -> RunResult:
        messages = [message_from_dict(m) for m in claimed.messages]
        state = _State(
            claimed, spec, call, messages, Usage.from_dict(claimed.usage), deps,
            started=perf_counter(), deadline=deadline,
        )  # fmt: skip
        return await self._drive(state, resume=True)

    async def resume_ready(self, *, org_id: str | None, limit: int = 100) -> list[RunResult]:
        """Resume every waiting run of `org_id` whose approvals are all decided, and recover
        the org's running runs whose lease expired (see `recover`).

        Runs another worker claims first are skipped. Returns the results of the runs resumed
        here.
        """
        out = await self.recover(org_id=org_id, limit=limit)
        for run in await self.history(
            org_id=org_id, status=RunStatus.WAITING_APPROVAL, limit=limit
        ):
            decided = True
            for item in run.pending:
                req = await self.approvals.get(str(item["approval_id"]))
                if req.status is ApprovalStatus.PENDING:
                    decided = False
                    break
            if not decided:
                continue
            try:
                out.append(await self.resume(run.id))
            except ConflictError:
                continue
        return out

    # -- the loop ---------------------------------------------------------------------------------

    async def _drive(self, state: _State, *, resume: bool = False) -> RunResult:
        log = _log.bind(run_id=state.run.id, agent=state.spec.ref, org_id=state.call.org_id)
        heartbeat = asyncio.get_running_loop().create_task(
            self._heartbeat(state), name="contractspec.agent.heartbeat"
        )
        try:
            result = await self._resume_pending(state) if resume else None
            if result is None:
                result = await self._loop(state)
        except asyncio.CancelledError:
            heartbeat.cancel()
            log.warning("agent.run_cancelled")
            await asyncio.shield(self._cancel(state))
            self._telemetry(state, "run_cancelled")
            raise
        except BaseException as exc:
            heartbeat.cancel()
            if isinstance(exc, Exception) and await self._lease_lost(state, exc):
                log.warning("agent.run_lease_lost", worker=self.worker_id)
                raise LeaseLostError(
                    f"run {state.run.id} was recovered by another worker after this worker "
                    f"({self.worker_id}) held it past its lease; it stopped driving the run",
                    details={"run_id": state.run.id},
                ) from exc
            error = exc if isinstance(exc, ContractSpecError) else None
            if isinstance(exc, Exception) and error is None:
                error = AgentRunError(
                    f"run {state.run.id} of {state.spec.ref} failed unexpectedly "
                    f"({type(exc).__name__}); see the chained exception",
                    details={"run_id": state.run.id},
                )
            if error is not None:
                log.warning("agent.run_failed", code=error.code, message=error.message)
                await self._fail(state, error)
                self._telemetry(state, error.code)
                if error is not exc:
                    raise error from exc
            raise
        heartbeat.cancel()
        log.info("agent.run_finished", status=result.status.value, steps=result.steps)
        self._telemetry(state, None)
        await state.emit(RunFinished(result))
        return result

    async def _heartbeat(self, state: _State) -> None:
        """Extend the run's lease every `heartbeat_s` while the run works (slow model requests
        and tool calls); each persisted step extends it too."""
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                tx = await self.unit_of_work.begin()
                try:
                    held = await self.runs.heartbeat(
                        tx, state.run.id, owner=self.worker_id,
                        lease_until=self.clock.now() + timedelta(seconds=self.lease_s),
                    )  # fmt: skip
                    await tx.commit()
                except BaseException:
                    await tx.rollback()
                    raise
            except Exception:  # a failing store: the next beat (or step) tries again
                _log.warning("agent.heartbeat_failed", run_id=state.run.id, exc_info=True)
                continue
            if not held:
                state.lease_lost = True
                return

    async def _lease_lost(self, state: _State, exc: Exception) -> bool:
        if not (state.lease_lost or isinstance(exc, ConflictError)):
            return False
        try:
            stored = await self.get(state.run.id)
        except Exception:
            return state.lease_lost
        return stored.lease_owner != self.worker_id or stored.status.finished

    async def _cancel(self, state: _State) -> None:
        """The task driving the run was cancelled: the run is final (`cancelled`)."""
        try:
            await self._persist(
                state,
                steps=state.run.steps,
                status=RunStatus.CANCELLED,
                lines=[
                    self._line(
                        state.run.id,
                        "run.cancelled",
                        "the task driving the run was cancelled",
                        level="warning",
                    )
                ],
                events=[
                    self._event(
                        state,
                        run_cancelled,
                        {
                            "run_id": state.run.id,
                            "agent": state.spec.name,
                            "steps": state.run.steps,
                        },
                    )
                ],
            )
        except Exception:  # another worker holds it, or the store fails: the lease decides
            _log.warning("agent.run_cancel_persist_failed", run_id=state.run.id, exc_info=True)

    async def _resume_pending(self, state: _State) -> RunResult | None:
        """Finish the open step of a resumed or recovered run: the calls that waited for
        approval, or the calls that were in flight when its worker died."""
        pending = state.run.pending
        if not pending:
            return None
        calls, message = _step_calls(state.messages, pending)
        if message is None:
            return None
        inflight = any(p.get("inflight") for p in pending)
        step = int(pending[0]["step"])
        scope = RunScope(
            state.run.id, state.spec, step, state.call, state.deps, message.content or ""
        )
        only = None if inflight else {str(p["tool_call_id"]) for p in pending}
        response = None
        if inflight:  # the step was never recorded: record it now
            response = ModelResponse(message.content, message.tool_calls, Usage())
        await self._tools_step(
            state, scope, calls, only=only, response=response, started_at=self.clock.now(),
            resumed=not inflight,
        )  # fmt: skip
        if state.run.status is RunStatus.WAITING_APPROVAL:
            return self._result(state)
        return None

    async def _loop(self, state: _State) -> RunResult:
        spec = state.spec
        client = self._client()
        tool_defs = [t.definition() for t in spec.tools]
        schema = spec.output_type.model_json_schema() if spec.output_type else None
        settings = dict(spec.model_settings)
        while True:
            self._check_limits(state)
            step = state.run.steps + 1
            request = ModelRequest(
                model=spec.model,
                messages=tuple(state.messages),
                tools=tool_defs,
                output_schema=schema,
                timeout=spec.timeout_s,
                settings=settings,
                step=step,
            )
            started_at = self.clock.now()
            response = _storable_response(await self._complete(client, request, state))
            state.usage.add(response.usage)
            state.messages.append(response.message())
            if response.tool_calls:
                scope = RunScope(
                    state.run.id, spec, step, state.call, state.deps, response.content or ""
                )
                await self._tools_step(
                    state, scope, response.tool_calls, response=response, started_at=started_at
                )
                if state.run.status is RunStatus.WAITING_APPROVAL:
                    return self._result(state)
                continue
            final = self._final(state, response)
            if final is None:  # invalid structured output, sent back for correction
                await self._save_step(state, step, response, (), started_at)
                continue
            output, confidence = final
            await self._save_step(state, step, response, (), started_at)
            return await self._complete_run(state, output, confidence)

    async def _tools_step(
        self,
        state: _State,
        scope: RunScope,
        calls: Sequence[ToolCall],
        *,
        only: Iterable[str] | None = None,
        response: ModelResponse | None = None,
        started_at: Any = None,
        resumed: bool = False,
    ) -> None:
        """Decide the step's calls, make them durable with their ledger entries before any
        takes effect, execute them, and persist the step with their outcomes (one transaction
        each side)."""
        plans = self.tools._identify(calls, scope, only)
        self._check_deadline(state, f"the tool calls of step {scope.step}")
        if not resumed:
            self._check_tool_budget(state, sum(1 for p in plans if p.counts))
        if state.on_event is not None:
            for p in plans:
                await state.emit(ToolCallRequested(state.run.id, scope.step, p.call))
        await self.tools._decide(plans)
        base = state.run
        unsaved = list(state.unsaved_steps)

        async def open(tx: Transaction) -> None:
            # the step's calls are in flight: a worker recovering the run re-submits them
            now = self.clock.now()
            inflight = tuple(
                {"tool_call_id": p.call.id, "step": scope.step, "inflight": True} for p in plans
            )
            updated = base.evolve(
                pending=inflight,
                messages=tuple(m.to_dict() for m in state.messages),
                usage=state.usage.to_dict(),
                updated_at=now,
                lease_owner=self.worker_id,
                lease_expires_at=now + timedelta(seconds=self.lease_s),
            )
            state.run = await self.runs.update(tx, updated, expected_version=base.version)
            for earlier in unsaved:
                await self.runs.add_step(tx, earlier)
            state.unsaved_steps = []

        async def close(tx: Transaction, outcomes: Sequence[ToolOutcome]) -> None:
            await self._after_tools(
                state, scope, outcomes, response=response, started_at=started_at,
                resumed=resumed, tx=tx,
            )  # fmt: skip

        outcomes = await self.tools._run(plans, open=open, close=close)
        if state.on_event is not None:
            for o in outcomes:
                await state.emit(ToolCallFinished(state.run.id, scope.step, o))

    async def _complete(
        self, client: ModelClient, request: ModelRequest, state: _State
    ) -> ModelResponse:
        try:
            if state.on_event is not None and isinstance(client, StreamingModelClient):
                response: Any = None
                async for item in client.stream(request):
                    if isinstance(item, str):
                        if item:
                            await state.emit(TextDelta(state.run.id, request.step, item))
                    else:
                        response = item
            else:
                response = await client.complete(request)
                if (
                    state.on_event is not None
                    and isinstance(response, ModelResponse)
                    and response.content
                ):
                    await state.emit(TextDelta(state.run.id, request.step, response.content))
        except ContractSpecError:
            raise
        except Exception as exc:
            raise AgentRunError(
                f"the model request of step {request.step} failed ({type(exc).__name__}: {exc})",
                details={"run_id": state.run.id, "step": request.step},
            ) from exc
        if not isinstance(response, ModelResponse):
            raise UnexpectedModelBehavior(
                f"the model client returned {type(response).__name__}; it must return a "
                "ModelResponse",
                details={"run_id": state.run.id},
            )
        return response

    def _check_tool_budget(self, state: _State, calls: int) -> None:
        """Before a step's calls execute: refuse the whole step if it would go past
        `max_tool_calls` (none of its calls runs)."""
        limit = state.spec.limits.max_tool_calls
        used = state.usage.tool_calls
        if limit is not None and used + calls > limit:
            raise UsageLimitExceeded(
                f"run {state.run.id}: the model asked for {calls} tool call(s) with {used} of "
                f"max_tool_calls={limit} used; none of them was executed. Raise the agent's "
                "limits or simplify the task",
                details={"run_id": state.run.id, "limit": "max_tool_calls", "value": used + calls},
            )

    def _check_deadline(self, state: _State, before: str) -> None:
        """Between steps only: refuse `before` (a model request, a step's tool calls) once the
        run's deadline has passed; nothing of it has started."""
        if state.deadline is None:
            return
        now = self.clock.now()
        if now >= state.deadline:
            late = (now - state.deadline).total_seconds()
            raise UsageLimitExceeded(
                f"run {state.run.id} passed its deadline {state.deadline.isoformat()} "
                f"({late:g} s ago) before {before}; that did not start. Give the run more time "
                "(a later deadline or a larger seconds budget) or simplify the task",
                details={
                    "run_id": state.run.id,
                    "limit": "deadline",
                    "deadline": state.deadline.isoformat(),
                    "value": now.isoformat(),
                },
            )

    def _check_limits(self, state: _State) -> None:
        self._check_deadline(state, f"model request {state.run.steps + 1}")
        lim = state.spec.limits
        usage = state.usage
        checks: list[tuple[str, float | int | None, float | int | None]] = [
            ("max_steps", lim.max_steps, state.run.steps),
            ("max_requests", lim.max_requests, usage.requests),
            ("max_tokens", lim.max_tokens, usage.total_tokens),
            ("max_tool_calls", lim.max_tool_calls, usage.tool_calls),
            ("max_cost", lim.max_cost, usage.cost),
        ]
        for name, limit, value in checks:
            if limit is not None and value is not None and value >= limit:
                if name == "max_tool_calls" and value == limit:
                    continue  # reaching the tool-call limit is fine; exceeding it is not
                raise UsageLimitExceeded(
                    f"run {state.run.id} reached {name}={limit} (used {value}); raise the "
                    f"agent's limits or simplify the task",
                    details={"run_id": state.run.id, "limit": name, "value": value},
                )
        if lim.max_tool_calls is not None and usage.tool_calls > lim.max_tool_calls:
            raise UsageLimitExceeded(
                f"run {state.run.id} exceeded max_tool_calls={lim.max_tool_calls} "
                f"(used {usage.tool_calls})",
                details={
                    "run_id": state.run.id,
                    "limit": "max_tool_calls",
                    "value": usage.tool_calls,
                },
            )

    def _final(self, state: _State, response: ModelResponse) -> tuple[Any, float | None] | None:
        spec = state.spec
        text = response.content
        if spec.output_type is None:
            if text is None or not text.strip():
                raise UnexpectedModelBehavior(
                    f"the model answered step {state.run.steps + 1} with neither text nor tool "
                    "calls",
                    details={"run_id": state.run.id},
                )
            return text, None
        output: Any = None
        try:
            output = spec.output_type.model_validate_json(_strip_fences(text or ""))
        except ValidationError as exc:
            errors = [
                {"field": ".".join(str(p) for p in e["loc"]) or "(root)", "message": e["msg"]}
                for e in exc.errors(include_url=False)
            ]
        else:
            # JSON escapes and NaN/Infinity parse into values no store can hold: refuse them too
            errors = [
                {"field": name, "message": message}
                for name, message in unstorable_values(output.model_dump(mode="json"))
            ]
        if errors:
            if state.output_retries >= spec.output_retries:
                raise UnexpectedModelBehavior(
                    f"the final answer does not match {spec.output_type.__name__} after "
                    f"{state.output_retries} correction(s): {errors[:3]}",
                    details={"run_id": state.run.id},
                ) from None
            state.output_retries += 1
            state.messages.append(
                UserMessage(
                    "Your answer does not match the required JSON Schema. Fix these errors and "
                    "answer again with only the JSON object: " + json.dumps(errors)
                )
            )
            return None
        confidence: float | None = None
        raw = getattr(output, "confidence", None)
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            confidence = float(raw)
        return output, confidence

    # -- persistence ------------------------------------------------------------------------------

    async def _after_tools(
        self,
        state: _State,
        scope: RunScope,
        outcomes: Sequence[ToolOutcome],
        *,
        response: ModelResponse | None = None,
        started_at: Any = None,
        resumed: bool = False,
        tx: Transaction | None = None,
    ) -> None:
        step = scope.step
        pending = [o for o in outcomes if o.pending]
        for o in outcomes:
            if o.packet is not None:
                state.packets.append(o.packet)
            if not o.pending:
                state.messages.append(o.message())
                if o.status not in ("unknown_tool", "invalid", "replayed"):
                    state.usage.tool_calls += 1
        lines = [
            self._line(
                state.run.id,
                f"tool.{o.status}",
                f"{o.call.name}: {o.status}"
                + (f" ({o.packet.reason})" if o.packet and o.packet.reason else ""),
                level="info" if not o.is_error else "warning",
                step=step,
                tool=o.call.name,
                action_id=o.action_id,
                packet=o.packet.to_dict() if o.packet else None,
            )
            for o in outcomes
        ]
        events: list[EventEnvelope] = []
        status = RunStatus.RUNNING
        pending_items: tuple[Mapping[str, Any], ...] = ()
        if pending:
            status = RunStatus.WAITING_APPROVAL
            pending_items = tuple(
                {
                    "tool_call_id": o.call.id,
                    "step": step,
                    "action_id": o.action_id,
                    "approval_id": o.approval_id,
                }
                for o in pending
            )
            ids = [str(o.approval_id) for o in pending]
            lines.append(
                self._line(
                    state.run.id,
                    "run.waiting",
                    f"waiting for approval(s) {', '.join(ids)}",
                    approval_ids=ids,
                )
            )
            events.append(
                self._event(
                    state,
                    run_waiting,
                    {"run_id": state.run.id, "agent": state.spec.name, "approval_ids": ids},
                )
            )
        run_step = None
        if response is not None:
            run_step = RunStep(
                run_id=state.run.id,
                index=step,
                response=response.message().to_dict(),
                tool_results=tuple(o.to_dict() for o in outcomes),
                usage=response.usage.to_dict(),
                started_at=started_at,
                finished_at=self.clock.now(),
            )

        async def stage(tx: Transaction) -> None:
            for o in outcomes:
                tool = state.spec.tool(o.call.name)
                if tool is not None:
                    await self.gateway.report(tx, tool, scope, o)

        await self._persist(
            state,
            steps=step if not resumed else state.run.steps,
            status=status,
            pending=pending_items,
            step=run_step,
            lines=lines,
            events=events,
            stage=stage,
            tx=tx,
        )

    async def _save_step(
        self,
        state: _State,
        step: int,
        response: ModelResponse,
        outcomes: Sequence[ToolOutcome],
        started_at: Any,
    ) -> None:
        run_step = RunStep(
            run_id=state.run.id,
            index=step,
            response=response.message().to_dict(),
            tool_results=tuple(o.to_dict() for o in outcomes),
            usage=response.usage.to_dict(),
            started_at=started_at,
            finished_at=self.clock.now(),
        )
        # written with the next persisted run state (the final one, or the next step's)
        state.run = state.run.evolve(steps=step)
        state.unsaved_steps.append(run_step)

    async def _persist(
        self,
        state: _State,
        *,
        steps: int,
        status: RunStatus,
        pending: tuple[Mapping[str, Any], ...] = (),
        step: RunStep | None = None,
        lines: Sequence[RunLog] = (),
        events: Sequence[EventEnvelope] = (),
        stage: Callable[[Transaction], Awaitable[None]] | None = None,
        tx: Transaction | None = None,
        **changes: Any,
    ) -> None:
        """Write the run's state (and the step, log lines, events) in `tx`, or in a
        transaction of its own. A running run's lease is extended; a run that stops running
        releases it."""
        run = state.run
        now = self.clock.now()
        running = status is RunStatus.RUNNING
        updated = run.evolve(
            status=status,
            steps=steps,
            pending=pending,
            messages=tuple(m.to_dict() for m in state.messages),
            usage=state.usage.to_dict(),
            updated_at=now,
            lease_owner=self.worker_id if running else None,
            lease_expires_at=now + timedelta(seconds=self.lease_s) if running else None,
            **changes,
        )
        unsaved, state.unsaved_steps = state.unsaved_steps, []
        own = tx is None
        if tx is None:
            tx = await self.unit_of_work.begin()
        try:
            state.run = await self.runs.update(tx, updated, expected_version=run.version)
            for earlier in unsaved:
                await self.runs.add_step(tx, earlier)
            if step is not None:
                await self.runs.add_step(tx, step)
            for line in lines:
                await self.runs.log(tx, line)
            if stage is not None:
                await stage(tx)
            if events:
                await self.events.publish(list(events), tx)
            if own:
                await tx.commit()
        except BaseException:
            if own:
                await tx.rollback()
            raise

    async def _complete_run(
        self, state: _State, output: Any, confidence: float | None
    ) -> RunResult:
        spec = state.spec
        threshold = spec.policy.confidence_threshold
        escalated = threshold is not None and (confidence is None or confidence < threshold)
        status = RunStatus.ESCALATED if escalated else RunStatus.COMPLETED
        stored_output = output.model_dump(mode="json") if isinstance(output, BaseModel) else output
        usage = state.usage
        lines = []
        events = []
        if escalated:
            assert threshold is not None
            lines.append(
                self._line(
                    state.run.id,
                    "run.escalated",
                    f"confidence {confidence} is below {threshold}: handed to a person",
                    level="warning",
                    confidence=confidence,
                    threshold=threshold,
                )
            )
            events.append(
                self._event(
                    state,
                    agent_escalated,
                    {
                        "run_id": state.run.id,
                        "agent": spec.name,
                        "confidence": confidence,
                        "threshold": threshold,
                    },
                )
            )
        lines.append(
            self._line(
                state.run.id,
                "run.completed",
                f"{spec.ref} finished: {status.value} after {state.run.steps} step(s)",
            )
        )
        events.append(
            self._event(
                state,
                run_completed,
                {
                    "run_id": state.run.id,
                    "agent": spec.name,
                    "status": status.value,
                    "steps": state.run.steps,
                    "requests": usage.requests,
                    "tool_calls": usage.tool_calls,
                    "total_tokens": usage.total_tokens,
                    "cost": usage.cost,
                    "confidence": confidence,
                },
            )
        )
        await self._persist(
            state,
            steps=state.run.steps,
            status=status,
            lines=lines,
            events=events,
            output=stored_output,
            confidence=confidence,
        )
        if spec.memory is not None and state.run.session_id is not None:
            answer = output.model_dump_json() if isinstance(output, BaseModel) else str(output)
            await spec.memory.append(
                state.run.session_id,
                [UserMessage(state.run.input), AssistantMessage(answer)],
                org_id=state.run.org_id,
            )
        return self._result(state, output=output, confidence=confidence, escalated=escalated)

    async def _fail(self, state: _State, error: ContractSpecError) -> None:
        # the message may quote what a model or a provider sent: keep the failed run saveable
        message = storable_text(error.message)
        try:
            await self._persist(
                state,
                steps=state.run.steps,
                status=RunStatus.FAILED,
                lines=[
                    self._line(state.run.id, "run.failed", message, level="error", code=error.code)
                ],
                events=[
                    self._event(
                        state,
                        run_failed,
                        {
                            "run_id": state.run.id,
                            "agent": state.spec.name,
                            "error_code": error.code,
                            "message": message[:500],
                        },
                    )
                ],
                error={"code": error.code, "message": message},
            )
        except Exception:  # keep the original error; the store is failing too
            _log.exception("agent.run_fail_persist_failed", run_id=state.run.id)

    # -- helpers ----------------------------------------------------------------------------------

    async def _check_run_permission(self, spec: AgentSpec, call: CallContext) -> None:
        permission = spec.policy.run_permission
        if permission is None:
            return
        decision: Any = None
        if self.policy is not None and not call.actor.is_anonymous:
            decision = self.policy.decide(
                call.actor, permission, Resource("agent", spec.name, call.org_id), call
            )
            if inspect.isawaitable(decision):
                decision = await decision
        if not isinstance(decision, Decision) or not decision.allowed:
            reason = (
                decision.reason
                if isinstance(decision, Decision)
                else "no PolicyDecider is configured (deny by default)"
                if self.policy is None
                else "anonymous actors may not run agents"
            )
            raise PolicyDeniedError(
                f"{call.actor.id!r} may not run {spec.ref}: {reason}",
                reason=reason,
                action=permission,
                details={"agent": spec.ref},
            )

    def _line(
        self, run_id: str, event: str, message: str, *, level: str = "info", **data: Any
    ) -> RunLog:
        return RunLog(run_id, self.clock.now(), level, event, message, data)

    def _event(self, state: _State, spec: Any, payload: Mapping[str, Any]) -> EventEnvelope:
        return envelope(
            spec,
            payload,
            clock=self.clock,
            ids=self.ids,
            org_id=state.call.org_id,
            actor=state.call.actor,
            correlation_id=state.run.id,
        )

    def _result(
        self,
        state: _State,
        *,
        output: Any = None,
        confidence: float | None = None,
        escalated: bool = False,
    ) -> RunResult:
        run = state.run
        return RunResult(
            run_id=run.id,
            status=run.status,
            output=output,
            confidence=confidence,
            escalated=escalated,
            usage=state.usage,
            steps=run.steps,
            pending_approvals=tuple(str(p["approval_id"]) for p in run.pending),
            packets=tuple(state.packets),
            messages=tuple(state.messages),
        )

    def _stored_result(self, run: Run) -> RunResult:
        output: Any = run.output
        try:
            spec = self.registry.get(run.agent, run.agent_version)
        except ContractSpecError:
            spec = None
        if spec is not None and spec.output_type is not None and isinstance(output, Mapping):
            output = spec.output_type.model_validate(output)
        return RunResult(
            run_id=run.id,
            status=run.status,
            output=output,
            confidence=run.confidence,
            escalated=run.status is RunStatus.ESCALATED,
            usage=Usage.from_dict(run.usage),
            steps=run.steps,
            pending_approvals=tuple(str(p["approval_id"]) for p in run.pending),
            messages=tuple(message_from_dict(m) for m in run.messages),
        )

    def _telemetry(self, state: _State, error_code: str | None) -> None:
        if self.telemetry is None:
            return
        duration_ms = (perf_counter() - state.started) * 1000.0
        try:
            self.telemetry.record(
                TelemetrySample(
                    operation=f"agent.{state.spec.name}",
                    version=state.spec.version,
                    variant=None,
                    org_id=state.call.org_id,
                    actor_id=state.call.actor.id,
                    channel="agent",
                    duration_ms=duration_ms,
                    success=error_code is None,
                    error_code=error_code,
                    payload_size=None,
                    trace_id=state.call.trace_id,
                    timestamp=self.clock.now() - timedelta(milliseconds=duration_ms),
                )
            )
        except Exception:  # sinks must never fail a run
            _log.exception("agent.telemetry_failed", run_id=state.run.id)


def _check_deadline_arg(deadline: Any) -> None:
    if deadline is not None and (
        not isinstance(deadline, datetime) or deadline.utcoffset() is None
    ):
        raise ConfigurationError(
            f"deadline must be a timezone-aware datetime or None, got {deadline!r}; pass e.g. "
            "clock.now() + timedelta(seconds=60)",
            details={"field": "deadline"},
        )


def _instructions(spec: AgentSpec) -> str:
    text = spec.instructions
    if spec.output_type is not None:
        schema = json.dumps(spec.output_type.model_json_schema(), separators=(",", ":"))
        text += (
            "\n\nWhen you give your final answer, answer with only a JSON object matching this "
            f"JSON Schema: {schema}"
        )
    return text


def _json_text(value: BaseModel | Mapping[str, Any]) -> str:
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    return json.dumps(dict(value), default=str)


def _strip_fences(text: str) -> str:
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = stripped.split("\n", 1)[1] if "\n" in stripped else ""
        if stripped.rstrip().endswith("```"):
            stripped = stripped.rstrip()[:-3]
    return stripped.strip()


def _step_calls(
    messages: Sequence[Message], pending: Sequence[Mapping[str, Any]]
) -> tuple[list[ToolCall], AssistantMessage | None]:
    """Every tool call of the assistant message the pending calls belong to (ordinals count
    all of them), and that message."""
    wanted = {str(p["tool_call_id"]) for p in pending}
    for message in reversed(messages):
        if isinstance(message, AssistantMessage) and any(
            c.id in wanted for c in message.tool_calls
        ):
            return list(message.tool_calls), message
    return [], None


def _storable_response(response: ModelResponse) -> ModelResponse:
    """The response as the run stores and replays it: whatever the model sent, the run can be
    saved. NUL characters and lone surrogates in its text, names and ids become U+FFFD; a tool
    call whose arguments hold a value no store can hold (NaN, an infinite number, such a
    character) keeps them as ASCII JSON text, which the gateway parses and refuses naming the
    fields, so the model can correct itself."""
    calls: list[ToolCall] = []
    changed = False
    for tc in response.tool_calls:
        arguments: Mapping[str, Any] | str = tc.arguments
        if isinstance(arguments, str):
            arguments = escape_unstorable(arguments)
        elif unstorable_values(arguments):
            arguments = json.dumps(
                to_jsonable_python(arguments, fallback=str), ensure_ascii=True, allow_nan=True
            )
        fixed = ToolCall(storable_text(tc.id), storable_text(tc.name), arguments)
        changed = changed or fixed != tc
        calls.append(fixed)
    content = storable_text(response.content) if response.content is not None else None
    model_name = storable_text(response.model_name) if response.model_name is not None else None
    finish = storable_text(response.finish_reason) if response.finish_reason is not None else None
    if not changed and (content, model_name, finish) == (
        response.content,
        response.model_name,
        response.finish_reason,
    ):
        return response
    return ModelResponse(content, tuple(calls), response.usage, model_name, finish)
