"""The tool gateway: every tool call is checked, proven, approved, idempotent and audited.

One call goes through these stages, in this order:

```text
validate -> invariants (action packet + proof) -> risk (L0-L3) -> approval if required
         -> idempotency (gateway-minted action id, recorded before executing)
         -> execute (or shadow) -> audit + events
```

* **validate**: arguments are parsed and validated against the tool's pydantic model; errors go
  back to the model as a tool result (`status: "invalid"`) so it can correct itself.
* **invariants**: the tool's declared `Invariant`s are evaluated over the arguments and the
  tool's evidence; each call gets an `ActionPacket` with the proof (PASS/FAIL and the values
  seen). Any FAIL blocks the call and the packet says why.
* **risk**: the declared `RiskLevel`, raised by `RiskRule`s that match the data.
* **approval**: from the agent's `approval_from` level (default L2) the call waits for a human
  approval bound to the hash of its exact arguments; L3 needs the tool's named approvers. If
  the approval store is unavailable nothing executes (fail closed).
* **idempotency**: the action id is `sha256(run_id, step, tool, arguments_hash)`, never the
  model's tool-call id (which changes on retry). It is written to the ledger *before* the effect;
  a retried or resumed step finds it and replays the recorded result instead of acting again.
* **execute or shadow**: in shadow mode (per agent or tool) nothing executes; the packet records
  what would have happened.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
from collections.abc import Iterable, Mapping, Sequence
from time import perf_counter
from typing import Any, Literal

import structlog
from attrs import define, evolve, field
from pydantic import BaseModel, ValidationError
from pydantic_core import to_jsonable_python

from contractspec.agent.approvals import ApprovalWorkflow
from contractspec.agent.errors import ApprovalUnavailableError, InvariantFailedError
from contractspec.agent.events import envelope, tool_called, tool_failed
from contractspec.agent.invariants import InvariantResult
from contractspec.agent.messages import ToolCall, ToolMessage
from contractspec.agent.specs import AgentSpec
from contractspec.agent.stores import ActionRecord, ActionStatus, ApprovalStatus, RunStore
from contractspec.agent.tools import RiskLevel, Tool, ToolContext
from contractspec.core import (
    AuditRecord,
    AuditSink,
    CallContext,
    Clock,
    ConflictError,
    ContractSpecError,
    EventPublisher,
    Executor,
    IdGenerator,
    Transaction,
    UnitOfWork,
    canonical_json,
)

__all__ = [
    "ActionPacket",
    "OutcomeStatus",
    "RunScope",
    "ShadowReport",
    "ToolExecutor",
    "ToolGateway",
    "ToolOutcome",
    "action_id_for",
    "shadow_report",
]

_log = structlog.get_logger(__name__)

OutcomeStatus = Literal[
    "ok",
    "replayed",
    "invalid",
    "blocked",
    "needs_approval",
    "rejected",
    "unavailable",
    "shadowed",
    "timeout",
    "error",
    "in_doubt",
    "unknown_tool",
]


def action_id_for(run_id: str, step: int, tool: str, arguments_hash: str) -> str:
    """The gateway's idempotency id: SHA-256 hex of run id, step, tool name and argument hash."""
    return hashlib.sha256(f"{run_id}\n{step}\n{tool}\n{arguments_hash}".encode()).hexdigest()


@define(frozen=True)
class RunScope:
    """What the gateway needs to know about the run a call belongs to.

    Attributes:
        run_id: The run.
        agent: The agent spec.
        step: 1-based model step of the call.
        call: The `CallContext` of the run (its actor is who the tools act for).
        deps: User dependencies for function tools.
        reason: The model's text next to its tool calls (shown to approvers as the "why").
    """

    run_id: str
    agent: AgentSpec
    step: int
    call: CallContext
    deps: Any = None
    reason: str = ""


@define(frozen=True)
class ActionPacket:
    """The proof-carrying record of one tool call.

    Attributes:
        action_id: Gateway idempotency id (`None` when arguments were invalid).
        run_id, step, agent, tool: Where the call comes from.
        arguments: Validated arguments (JSON form).
        arguments_hash: SHA-256 of their canonical JSON.
        evidence: Facts computed by the tool's evidence function.
        proof: One `InvariantResult` per invariant.
        declared_risk, risk: Declared and effective `RiskLevel` values (0-3).
        decision: `execute`, `blocked`, `needs_approval`, `rejected`, `unavailable`,
            `replayed`, `in_doubt` or `shadow`.
        reason: Why (the failed invariants, the approval state, ...).
        mode: `live` or `shadow`.
        would: In shadow mode, what would have happened (`execute`, `blocked`,
            `needs_approval`).
        approval_id: The approval request, when one was involved.
    """

    action_id: str | None
    run_id: str
    step: int
    agent: str
    tool: str
    arguments: Mapping[str, Any]
    arguments_hash: str
    evidence: Mapping[str, Any] = field(factory=dict)
    proof: tuple[InvariantResult, ...] = ()
    declared_risk: int = 0
    risk: int = 0
    decision: str = "execute"
    reason: str = ""
    mode: Literal["live", "shadow"] = "live"
    would: str | None = None
    approval_id: str | None = None

    @property
    def passed(self) -> bool:
        """Whether every invariant passed."""
        return all(r.passed for r in self.proof)

    def evolve(self, **changes: Any) -> ActionPacket:
        """A copy with `changes` applied."""
        return evolve(self, **changes)

    def raise_if_blocked(self) -> None:
        """Raise `InvariantFailedError` (with this packet in `details["packet"]`) when an
        invariant failed; for code that uses the gateway outside a run and wants an exception.

        Raises:
            InvariantFailedError: The packet's decision is `blocked`.
        """
        if self.decision == "blocked":
            raise InvariantFailedError(
                f"{self.tool} was blocked: {self.reason}",
                reason=self.reason,
                action=self.tool,
                details={"packet": self.to_dict()},
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON form (stored in the ledger, the audit trail and approval requests)."""
        return {
            "action_id": self.action_id,
            "run_id": self.run_id,
            "step": self.step,
            "agent": self.agent,
            "tool": self.tool,
            "arguments": to_jsonable_python(dict(self.arguments)),
            "arguments_hash": self.arguments_hash,
            "evidence": to_jsonable_python(dict(self.evidence)),
            "proof": [r.to_dict() for r in self.proof],
            "declared_risk": self.declared_risk,
            "risk": self.risk,
            "decision": self.decision,
            "reason": self.reason,
            "mode": self.mode,
            "would": self.would,
            "approval_id": self.approval_id,
        }


@define(frozen=True)
class ToolOutcome:
    """The result of one tool call, as returned to the runner.

    Attributes:
        call: The model's tool call.
        status: `OutcomeStatus`.
        content: JSON text for the model.
        is_error: Whether the model should treat it as a failure.
        packet: The action packet (`None` for unknown tools and invalid arguments).
        result: The tool's result (JSON form) when it ran or was replayed.
        duration_ms: Gateway time for this call, in milliseconds.
    """

    call: ToolCall
    status: OutcomeStatus
    content: str
    is_error: bool = False
    packet: ActionPacket | None = None
    result: Any = None
    duration_ms: float = 0.0

    @property
    def action_id(self) -> str | None:
        """The packet's action id."""
        return self.packet.action_id if self.packet else None

    @property
    def approval_id(self) -> str | None:
        """The packet's approval id."""
        return self.packet.approval_id if self.packet else None

    @property
    def pending(self) -> bool:
        """True while the call waits for an approval."""
        return self.status == "needs_approval"

    def message(self) -> ToolMessage:
        """The tool message for the conversation."""
        return ToolMessage(self.call.id, self.call.name, self.content, self.is_error)

    def to_dict(self) -> dict[str, Any]:
        """JSON summary stored in the run step."""
        return {
            "tool_call_id": self.call.id,
            "name": self.call.name,
            "status": self.status,
            "action_id": self.action_id,
            "approval_id": self.approval_id,
            "is_error": self.is_error,
            "content": self.content,
        }


def _dumps(value: Any) -> str:
    return json.dumps(to_jsonable_python(value), separators=(",", ":"), sort_keys=True)


def _problem(status: str, message: str, **extra: Any) -> str:
    return _dumps({"status": status, "error": message, **extra})


class ToolGateway:
    """Runs one tool call through validate → invariants → risk → approval → idempotency →
    execute/shadow → audit.

    Args:
        runs: Run store holding the idempotency ledger.
        unit_of_work: Begins the transactions the ledger, audit and events are written in.
        events: Publishes `agent.tool.called` / `agent.tool.failed`.
        audit: Receives one record per side-effecting, blocked or shadowed call.
        clock: Time source.
        ids: Id source.
        executor: Core `Executor` running operation tools (required if an agent uses one).
        approvals: The `ApprovalWorkflow`; without one, calls that need approval are blocked.
    """

    def __init__(
        self,
        *,
        runs: RunStore,
        unit_of_work: UnitOfWork,
        events: EventPublisher,
        audit: AuditSink | None,
        clock: Clock,
        ids: IdGenerator,
        executor: Executor | None = None,
        approvals: ApprovalWorkflow | None = None,
    ) -> None:
        self.runs = runs
        self.unit_of_work = unit_of_work
        self.events = events
        self.audit = audit
        self.clock = clock
        self.ids = ids
        self.executor = executor
        self.approvals = approvals

    # -- the pipeline -----------------------------------------------------------------------------

    async def invoke(
        self, tool: Tool, call: ToolCall, scope: RunScope, *, report: bool = True
    ) -> ToolOutcome:
        """Run one call through the pipeline and return its outcome (never raises for tool
        failures; they become failed outcomes).

        Args:
            tool: The tool.
            call: The model's call.
            scope: The run it belongs to.
            report: Publish the outcome's event (and audit blocked/shadowed calls) in a
                transaction of its own. The runner passes `False` and calls `report()` inside
                the transaction that persists the step, so events commit with the run state.
        """
        started = perf_counter()
        outcome = await self._invoke(tool, call, scope)
        outcome = _with_duration(outcome, started)
        if report:
            tx = await self.unit_of_work.begin()
            try:
                await self.report(tx, tool, scope, outcome)
                await tx.commit()
            except BaseException:
                await tx.rollback()
                raise
        return outcome

    async def _invoke(self, tool: Tool, call: ToolCall, scope: RunScope) -> ToolOutcome:
        # 1. validate
        validated = self._validate(tool, call)
        if isinstance(validated, ToolOutcome):
            return validated
        args_json = validated.model_dump(mode="json")
        digest = hashlib.sha256(canonical_json(args_json).encode()).hexdigest()
        action_id = action_id_for(scope.run_id, scope.step, tool.name, digest)
        packet = ActionPacket(
            action_id=action_id,
            run_id=scope.run_id,
            step=scope.step,
            agent=scope.agent.ref,
            tool=tool.name,
            arguments=args_json,
            arguments_hash=digest,
            declared_risk=int(tool.risk),
            risk=int(tool.risk),
        )
        shadow = scope.agent.policy.shadow or tool.shadow
        # A finished action is not a new action: replay what it did.
        if tool.side_effects and not shadow:
            known = await self._ledger_get(action_id)  # one indexed read
            if known is not None:
                replay = self._replay(tool, call, known, packet)
                if replay is not None:
                    return replay
        tool_ctx = ToolContext(
            scope.run_id, scope.agent.ref, scope.step, action_id, self._call_ctx(scope, action_id),
            scope.deps,
        )  # fmt: skip
        # 2. invariants
        packet = await self._prove(tool, validated, tool_ctx, packet)
        # 3. risk
        namespace = _namespace(validated, packet.evidence)
        risk = int(tool.risk)
        for rule in tool.risk_rules:
            if rule.applies(namespace):
                risk = max(risk, int(rule.level))
        packet = packet.evolve(risk=risk)
        needs_approval = risk >= int(scope.agent.policy.approval_from) or risk == RiskLevel.L3
        if shadow:
            would = (
                "blocked"
                if not packet.passed
                else "needs_approval"
                if needs_approval
                else "execute"
            )
            packet = packet.evolve(
                decision="shadow",
                mode="shadow",
                would=would,
                reason=f"shadow mode: nothing executed; live mode would {would.replace('_', ' ')}",
            )
            return ToolOutcome(
                call,
                "shadowed",
                _dumps({"status": "shadowed", "would": would, "note": packet.reason}),
                packet=packet,
            )
        if not packet.passed:
            failed = [r for r in packet.proof if not r.passed]
            reason = "; ".join(f"{r.name}: {r.message}" for r in failed)
            packet = packet.evolve(decision="blocked", reason=f"invariant failed: {reason}")
            return ToolOutcome(
                call,
                "blocked",
                _problem("blocked", packet.reason, proof=[r.to_dict() for r in packet.proof]),
                is_error=True,
                packet=packet,
            )
        # 4. approval
        if needs_approval:
            gate = await self._approval(tool, call, scope, packet)
            if isinstance(gate, ToolOutcome):
                return gate
            packet = gate
        # 5. idempotency, 6. execute
        timeout = tool.timeout if tool.timeout is not None else scope.agent.tool_timeout_s
        if tool.side_effects:
            return await self._execute_once(tool, call, validated, tool_ctx, packet, timeout)
        return await self._execute(tool, call, validated, tool_ctx, packet, timeout)

    def _validate(self, tool: Tool, call: ToolCall) -> BaseModel | ToolOutcome:
        raw: Any = call.arguments
        if isinstance(raw, str):
            try:
                raw = json.loads(raw) if raw.strip() else {}
            except json.JSONDecodeError as exc:
                return ToolOutcome(
                    call,
                    "invalid",
                    _problem(
                        "invalid",
                        f"arguments are not valid JSON ({exc.msg} at position {exc.pos}); send a "
                        "JSON object matching the tool schema",
                    ),
                    is_error=True,
                )
        try:
            return tool.input.model_validate(raw)
        except ValidationError as exc:
            errors = [
                {
                    "field": ".".join(str(p) for p in err["loc"]) or "(root)",
                    "message": err["msg"],
                    "type": err["type"],
                }
                for err in exc.errors(include_url=False)
            ]
            return ToolOutcome(
                call,
                "invalid",
                _problem(
                    "invalid",
                    "the arguments do not match the tool schema; fix these fields and call again",
                    errors=errors,
                ),
                is_error=True,
            )

    async def _prove(
        self, tool: Tool, args: BaseModel, ctx: ToolContext, packet: ActionPacket
    ) -> ActionPacket:
        evidence: Mapping[str, Any] = {}
        if tool.evidence is not None:
            try:
                found = tool.evidence(args, ctx)
                if inspect.isawaitable(found):
                    found = await found
                evidence = dict(found)
            except Exception as exc:  # fail closed: no evidence, no proof
                _log.warning("agent.evidence_failed", tool=tool.name, exc_info=exc)
                failed = InvariantResult(
                    "evidence",
                    "evidence()",
                    False,
                    {},
                    f"the evidence could not be gathered ({type(exc).__name__})",
                )
                return packet.evolve(proof=(failed,))
        namespace = _namespace(args, evidence)
        proof = tuple(inv.check(namespace) for inv in tool.invariants)
        return packet.evolve(evidence=evidence, proof=proof)

    async def _approval(
        self, tool: Tool, call: ToolCall, scope: RunScope, packet: ActionPacket
    ) -> ActionPacket | ToolOutcome:
        wf = self.approvals
        if wf is None:
            packet = packet.evolve(
                decision="unavailable",
                reason="this call needs an approval and no ApprovalWorkflow is configured",
            )
            return ToolOutcome(
                call, "unavailable", _problem("unavailable", packet.reason), True, packet
            )
        assert packet.action_id is not None
        try:
            req = await wf.get_by_key(scope.call.org_id, packet.action_id)
            if req is None:
                req = await wf.request(
                    action=tool.name,
                    arguments=packet.arguments,
                    requested_by=scope.call.actor,
                    reason=scope.reason or f"{scope.agent.ref} wants to call {tool.name}",
                    risk=packet.risk,
                    org_id=scope.call.org_id,
                    subject_type="agent.tool_call",
                    subject_id=scope.run_id,
                    key=packet.action_id,
                    expires_in_s=scope.agent.policy.approval_ttl_s,
                    quorum=tool.quorum,
                    approvers=tool.approvers,
                    metadata={
                        "agent": scope.agent.ref,
                        "step": scope.step,
                        "packet": packet.to_dict(),
                    },
                )
            if req.status is ApprovalStatus.APPROVED:
                await wf.verify(req, packet.arguments)  # the request just read: no second read
                return packet.evolve(approval_id=req.id, reason=f"approved ({req.id})")
        except ApprovalUnavailableError as exc:
            packet = packet.evolve(decision="unavailable", reason=exc.message)
            return ToolOutcome(
                call, "unavailable", _problem("unavailable", exc.message), True, packet
            )
        except ContractSpecError as exc:
            packet = packet.evolve(decision="rejected", reason=exc.message)
            return ToolOutcome(call, "rejected", _problem(exc.code, exc.message), True, packet)
        if req.status is ApprovalStatus.PENDING:
            packet = packet.evolve(
                decision="needs_approval",
                approval_id=req.id,
                reason=f"waiting for approval {req.id} ({req.approvals}/{req.quorum})",
            )
            return ToolOutcome(
                call,
                "needs_approval",
                _dumps({"status": "needs_approval", "approval_id": req.id}),
                packet=packet,
            )
        packet = packet.evolve(
            decision="rejected", approval_id=req.id, reason=f"approval {req.status.value}"
        )
        return ToolOutcome(
            call,
            "rejected",
            _problem(
                "rejected",
                f"a person {req.status.value} this action (approval {req.id}); do not retry it "
                "unchanged",
            ),
            is_error=True,
            packet=packet,
        )

    # -- idempotent execution ---------------------------------------------------------------------

    async def _ledger_get(self, action_id: str) -> ActionRecord | None:
        tx = await self.unit_of_work.begin(readonly=True)
        try:
            return await self.runs.get_action(tx, action_id)
        finally:
            await tx.rollback()

    def _replay(
        self, tool: Tool, call: ToolCall, known: ActionRecord, packet: ActionPacket
    ) -> ToolOutcome | None:
        if known.status is ActionStatus.STARTED:
            if self._recoverable(tool):
                return None  # the executor's idempotency key makes a re-run a replay
            packet = packet.evolve(
                decision="in_doubt",
                reason="this action was started before and its outcome is unknown; it is not "
                "repeated",
            )
            return ToolOutcome(call, "in_doubt", _problem("in_doubt", packet.reason), True, packet)
        stored = known.result if isinstance(known.result, Mapping) else {}
        failed = known.status is ActionStatus.FAILED
        packet = packet.evolve(
            decision="replayed",
            reason="already done: the recorded result is returned, nothing runs again",
            proof=tuple(
                InvariantResult(r["name"], r["expression"], r["verdict"] == "PASS", r["values"],
                                r["message"])
                for r in known.packet.get("proof", ())
            ),
            risk=int(known.packet.get("risk", packet.risk)),
            approval_id=known.packet.get("approval_id"),
        )  # fmt: skip
        content = stored.get("content", "")
        return ToolOutcome(call, "replayed", content, failed, packet, stored.get("result"))

    def _recoverable(self, tool: Tool) -> bool:
        if tool.kind != "operation" or self.executor is None or tool.operation is None:
            return False
        spec = self.executor.registry.get(tool.operation, tool.version)
        return spec.idempotent and spec.is_command

    async def _execute_once(
        self,
        tool: Tool,
        call: ToolCall,
        args: BaseModel,
        ctx: ToolContext,
        packet: ActionPacket,
        limit_s: float,
    ) -> ToolOutcome:
        assert packet.action_id is not None
        now = self.clock.now()
        record = ActionRecord(
            action_id=packet.action_id,
            run_id=packet.run_id,
            step=packet.step,
            tool=tool.name,
            org_id=ctx.call.org_id,
            arguments_hash=packet.arguments_hash,
            status=ActionStatus.STARTED,
            created_at=now,
            updated_at=now,
            packet=packet.to_dict(),
        )
        tx = await self.unit_of_work.begin()
        try:
            await self.runs.begin_action(tx, record)
            await tx.commit()
        except ConflictError:
            await tx.rollback()
            known = await self._ledger_get(packet.action_id)
            if known is None:  # pragma: no cover - the conflicting row vanished
                raise
            replay = self._replay(tool, call, known, packet)
            if replay is not None:
                return replay
        except BaseException:
            await tx.rollback()
            raise
        outcome = await self._execute(tool, call, args, ctx, packet, limit_s)
        status = ActionStatus.FAILED if outcome.is_error else ActionStatus.SUCCEEDED
        tx = await self.unit_of_work.begin()
        try:
            await self.runs.finish_action(
                tx,
                packet.action_id,
                status,
                {"content": outcome.content, "result": outcome.result, "status": outcome.status},
                self.clock.now(),
            )
            await self._audit(tx, tool, ctx.call, outcome)
            await tx.commit()
        except BaseException:
            await tx.rollback()
            raise
        return outcome

    async def _execute(
        self,
        tool: Tool,
        call: ToolCall,
        args: BaseModel,
        ctx: ToolContext,
        packet: ActionPacket,
        limit_s: float,
    ) -> ToolOutcome:
        packet = packet.evolve(decision="execute")
        try:
            async with asyncio.timeout(limit_s):
                result = await self._run_tool(tool, args, ctx)
        except TimeoutError:
            return ToolOutcome(
                call,
                "timeout",
                _problem(
                    "timeout", f"{tool.name} took longer than {limit_s:g} s and was cancelled"
                ),
                True,
                packet,
            )
        except ContractSpecError as exc:
            return ToolOutcome(
                call, "error", _problem(exc.code, exc.message, details=exc.details), True, packet
            )
        except Exception as exc:
            _log.warning("agent.tool_raised", tool=tool.name, run_id=ctx.run_id, exc_info=exc)
            return ToolOutcome(
                call,
                "error",
                _problem("tool_error", f"{tool.name} failed: {type(exc).__name__}: {exc}"),
                True,
                packet,
            )
        return ToolOutcome(call, "ok", _dumps(result), False, packet, result)

    async def _run_tool(self, tool: Tool, args: BaseModel, ctx: ToolContext) -> Any:
        if tool.kind == "operation":
            if self.executor is None:
                raise ContractSpecError(
                    f"tool {tool.name} runs operation {tool.operation} but the runner has no "
                    "Executor; pass AgentRunner(executor=...)"
                )
            assert tool.operation is not None
            spec = self.executor.registry.get(tool.operation, tool.version)
            call = ctx.call
            if spec.is_command and spec.idempotent:
                call = call.replace(idempotency_key=ctx.action_id)
            out = await self.executor.execute(tool.operation, args, call, version=tool.version)
            return out.model_dump(mode="json")
        fn = tool.function
        assert fn is not None
        kwargs: dict[str, Any] = {}
        if tool.positional:
            (param,) = [p for p in inspect.signature(fn).parameters if p != tool.context_param]
            kwargs[param] = args
        else:
            kwargs = {name: getattr(args, name) for name in type(args).model_fields}
        if tool.context_param is not None:
            kwargs[tool.context_param] = ctx
        if inspect.iscoroutinefunction(fn):
            result = await fn(**kwargs)
        else:
            result = await asyncio.to_thread(fn, **kwargs)
            if inspect.isawaitable(result):
                result = await result
        return to_jsonable_python(result)

    def _call_ctx(self, scope: RunScope, action_id: str) -> CallContext:
        attributes = dict(scope.call.attributes)
        attributes.update({"agent": scope.agent.ref, "run_id": scope.run_id})
        return scope.call.replace(
            channel="agent",
            correlation_id=scope.call.correlation_id or scope.run_id,
            causation_id=action_id,
            attributes=attributes,
        )

    # -- audit and events -------------------------------------------------------------------------

    async def _audit(
        self, tx: Transaction | None, tool: Tool, call: CallContext, outcome: ToolOutcome
    ) -> None:
        if self.audit is None:
            return
        packet = outcome.packet
        outcome_kind = (
            "denied"
            if outcome.status in ("blocked", "rejected", "unavailable")
            else "failed"
            if outcome.is_error
            else "success"
        )
        await self.audit.record(
            AuditRecord(
                id=self.ids.new_id(),
                occurred_at=self.clock.now(),
                action=f"agent.tool.{tool.name}",
                outcome=outcome_kind,  # type: ignore[arg-type]  # literal chosen above
                org_id=call.org_id,
                actor_id=call.actor.id,
                actor_kind=call.actor.kind.value,
                target_type="agent.action",
                target_id=outcome.action_id,
                request_id=call.request_id,
                trace_id=call.trace_id,
                details={"status": outcome.status, "packet": packet.to_dict() if packet else None},
            ),
            tx,
        )

    async def report(
        self, tx: Transaction, tool: Tool, scope: RunScope, outcome: ToolOutcome
    ) -> None:
        """Stage in `tx` the outcome's event (`agent.tool.called` or `agent.tool.failed`) and, for
        blocked, refused and shadowed calls, its audit record (executed side-effecting calls were
        audited with their ledger entry)."""
        failed = outcome.is_error
        payload: dict[str, Any]
        if failed:
            spec = tool_failed
            payload = {
                "run_id": scope.run_id,
                "step": scope.step,
                "tool": tool.name,
                "action_id": outcome.action_id,
                "status": outcome.status,
                "error": outcome.packet.reason
                if outcome.packet and outcome.packet.reason
                else outcome.content[:500],
            }
        else:
            spec = tool_called
            payload = {
                "run_id": scope.run_id,
                "step": scope.step,
                "tool": tool.name,
                "action_id": outcome.action_id,
                "risk": outcome.packet.risk if outcome.packet else int(tool.risk),
                "decision": outcome.status,
                "duration_ms": outcome.duration_ms,
            }
        env = envelope(
            spec,
            payload,
            clock=self.clock,
            ids=self.ids,
            org_id=scope.call.org_id,
            actor=scope.call.actor,
            correlation_id=scope.run_id,
        )
        if outcome.status in ("blocked", "rejected", "unavailable", "shadowed") or (
            outcome.is_error and not tool.side_effects and outcome.packet is not None
        ):
            await self._audit(tx, tool, scope.call, outcome)
        await self.events.publish([env], tx)


def _namespace(args: BaseModel, evidence: Mapping[str, Any]) -> dict[str, Any]:
    values = args.model_dump()
    return {**values, **evidence, "args": values, "evidence": dict(evidence)}


def _with_duration(outcome: ToolOutcome, started: float) -> ToolOutcome:
    return evolve(outcome, duration_ms=(perf_counter() - started) * 1000.0)


class ToolExecutor:
    """Executes the tool calls of one model step, each decided and executed independently.

    Unknown tools and unexpected exceptions become failed tool results (the run goes on);
    parallel calls run concurrently (`asyncio.gather`), so one waiting for approval or timing out
    does not hold the others back.

    Args:
        gateway: The `ToolGateway` each call goes through.
        report: Let the gateway publish each outcome's event in its own transaction (`False`
            when the caller reports them itself, as the runner does with each step).
    """

    def __init__(self, gateway: ToolGateway, *, report: bool = True) -> None:
        self.gateway = gateway
        self.report = report

    async def execute(self, calls: Sequence[ToolCall], scope: RunScope) -> list[ToolOutcome]:
        """Outcomes in the order of `calls`."""
        if len(calls) == 1:
            return [await self._one(calls[0], scope)]
        return list(await asyncio.gather(*(self._one(c, scope) for c in calls)))

    async def _one(self, call: ToolCall, scope: RunScope) -> ToolOutcome:
        tool = scope.agent.tool(call.name)
        if tool is None:
            allowed = ", ".join(t.name for t in scope.agent.tools) or "none"
            return ToolOutcome(
                call,
                "unknown_tool",
                _problem(
                    "unknown_tool",
                    f"{call.name!r} is not one of this agent's tools; allowed: {allowed}",
                ),
                is_error=True,
            )
        try:
            return await self.gateway.invoke(tool, call, scope, report=self.report)
        except Exception as exc:  # a failed tool is a failed result, never a crashed run
            _log.error("agent.tool_crashed", tool=call.name, run_id=scope.run_id, exc_info=exc)
            return ToolOutcome(
                call,
                "error",
                _problem("tool_error", f"{call.name} failed unexpectedly ({type(exc).__name__})"),
                is_error=True,
            )


@define(frozen=True)
class ShadowReport:
    """How shadow decisions compare with what people actually did.

    Attributes:
        total: Shadow decisions with a known human outcome.
        agreed: Decisions where the agent would have done what the person did.
        disagreements: `{"subject", "tool", "agent_would", "human_did", "action_id"}` rows.
        unmatched: Shadow decisions with no human outcome (subjects).
        by_decision: Counts of `(agent_would, human_did)` pairs, keyed `"execute->blocked"`.
    """

    total: int
    agreed: int
    disagreements: tuple[Mapping[str, Any], ...]
    unmatched: tuple[str, ...]
    by_decision: Mapping[str, int]

    @property
    def agreement_rate(self) -> float | None:
        """`agreed / total` (a fraction), or `None` with nothing to compare."""
        return self.agreed / self.total if self.total else None


def shadow_report(
    packets: Iterable[ActionPacket | Mapping[str, Any]],
    actual: Mapping[str, str],
    *,
    subject: str = "action_id",
) -> ShadowReport:
    """Compare shadow decisions with what people did.

    Args:
        packets: Shadow `ActionPacket`s (or their `to_dict()` forms, e.g. from run logs).
        actual: What people did per subject: `execute`, `blocked` or `needs_approval`.
        subject: How a packet is matched to `actual`: `"action_id"`, or `"arguments.<field>"`
            (e.g. `"arguments.ticket_id"`).

    Returns:
        The `ShadowReport`.
    """
    total = agreed = 0
    disagreements: list[Mapping[str, Any]] = []
    unmatched: list[str] = []
    counts: dict[str, int] = {}
    for p in packets:
        data = p.to_dict() if isinstance(p, ActionPacket) else dict(p)
        if data.get("mode") != "shadow":
            continue
        if subject == "action_id":
            key = str(data.get("action_id"))
        else:
            path = subject.removeprefix("arguments.")
            key = str(data.get("arguments", {}).get(path))
        would = str(data.get("would"))
        human = actual.get(key)
        if human is None:
            unmatched.append(key)
            continue
        total += 1
        pair = f"{would}->{human}"
        counts[pair] = counts.get(pair, 0) + 1
        if would == human:
            agreed += 1
        else:
            disagreements.append(
                {
                    "subject": key,
                    "tool": data.get("tool"),
                    "agent_would": would,
                    "human_did": human,
                    "action_id": data.get("action_id"),
                }
            )
    return ShadowReport(total, agreed, tuple(disagreements), tuple(unmatched), counts)
