"""The tool gateway: every tool call is checked, proven, approved, idempotent and audited.

One call goes through these stages, in this order:

```text
validate -> invariants + budgets (action packet + proof) -> risk (L0-L3) -> approval if required
         -> idempotency (gateway-minted action id, recorded before executing, with the call's
            budget reservations in the same transaction) -> execute (or shadow) -> audit + events
```

* **validate**: arguments are parsed and validated against the tool's pydantic model; errors go
  back to the model as a tool result (`status: "invalid"`) so it can correct itself. Values no
  store can hold (NaN or infinite numbers, NUL characters, lone surrogates) are refused the same
  way, naming each field; a tool *result* holding one fails its call (`status: "error"`).
* **invariants**: the tool's declared `Invariant`s are evaluated over the arguments and the
  tool's evidence; each call gets an `ActionPacket` with the proof (PASS/FAIL and the values
  seen). Any FAIL blocks the call and the packet says why.
* **budgets**: a tool's `Budget`s are checked as they stand (one proof line each), then, when
  the ledger entry is written, *reserved* in the same transaction with a conditional write that
  only succeeds while `reserved + amount <= cap`; a refused reservation blocks the call. A known
  failure releases its reservation, an in-doubt call keeps it (see `contractspec.agent.budgets`).
* **risk**: the declared `RiskLevel`, raised by `RiskRule`s that match the data. A raised level
  carries the requirements of a declared one: L3 is decided by the tool's named approvers.
* **approval**: from the agent's `approval_from` level (default L2) the call waits for a human
  approval bound to the hash of its exact arguments; L3 needs the tool's named approvers. If
  the approval store is unavailable nothing executes (fail closed).
* **idempotency**: the action id is `sha256(run_id, tool, arguments_hash, ordinal)`, never the
  model's tool-call id (which changes on retry). The ordinal numbers identical calls within one
  step (0, 1, ...), so two identical calls of a step are two actions, while the same call made
  again in a later step of the run is the same action. The id is written to the ledger *before*
  the effect; a retried, resumed or recovered call finds it and replays the recorded result
  instead of acting again (a call that failed with a known outcome may run again in a later
  step).
* **in doubt**: a side-effecting call whose outcome is unknown — it timed out, its run was
  cancelled, its worker crashed while it ran, or the tool raised `ToolOutcomeUnknownError` (an
  MCP connection dropped after the request went out) — is `in_doubt`: the model is told the outcome
  is unknown, and the call is never repeated silently. When it is called again (or its run is
  recovered) the gateway resolves it: the tool's `reconcile` function, an idempotent
  operation's key (the executor replays it if it took effect) or, for L0 tools, a re-run;
  otherwise a person approves a re-run (the run waits) or it stays in doubt.
* **execute or shadow**: in shadow mode (per agent or tool) calls with side effects, and calls
  that would need an approval, do not execute; the packet records what would have happened.
  Read-only calls run, so later decisions see real data.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import hashlib
import inspect
import json
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from time import perf_counter
from typing import Any, Literal

from attrs import define, evolve, field
from pydantic import BaseModel, ValidationError
from pydantic_core import to_jsonable_python

from contractspec.agent._isolation import run_in_process
from contractspec.agent.approvals import ApprovalWorkflow
from contractspec.agent.budgets import BudgetClaim, BudgetInputError, BudgetStore
from contractspec.agent.errors import (
    ApprovalUnavailableError,
    InvariantFailedError,
    ToolOutcomeUnknownError,
)
from contractspec.agent.events import envelope, tool_called, tool_failed
from contractspec.agent.invariants import InvariantResult
from contractspec.agent.messages import ToolCall, ToolMessage
from contractspec.agent.specs import AgentSpec
from contractspec.agent.stores import ActionRecord, ActionStatus, ApprovalStatus, RunStore
from contractspec.agent.tools import Reconciled, RiskLevel, Tool, ToolContext
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
from contractspec.core._log import get_logger

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

_log = get_logger(__name__)

OutcomeStatus = Literal[
    "ok",
    "replayed",
    "reconciled",
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

#: A hook the runner stages its own writes with, in the transaction of the gateway's ledger writes.
Stage = Callable[[Transaction], Awaitable[None]]
#: A hook staging writes about the finished calls, in the transaction that records their outcome.
StageOutcomes = Callable[[Transaction, Sequence["ToolOutcome"]], Awaitable[None]]


def action_id_for(run_id: str, tool: str, arguments_hash: str, ordinal: int = 0) -> str:
    """The gateway's idempotency id: SHA-256 hex of run id, tool name, argument hash and the
    call's ordinal among identical calls (same tool and arguments) of its step (0, 1, ...).

    The step is not part of it: the same call made again later in the run is the same action
    (a retry), while two identical calls of one step are two actions.
    """
    return hashlib.sha256(f"{run_id}\n{tool}\n{arguments_hash}\n{ordinal}".encode()).hexdigest()


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
            `replayed`, `reconciled`, `in_doubt` or `shadow`.
        reason: Why (the failed invariants, the approval state, ...).
        mode: `live` or `shadow`.
        would: In shadow mode, what would have happened (`execute`, `blocked`,
            `needs_approval`).
        approval_id: The approval request, when one was involved.
        ordinal: Position among identical calls (same tool and arguments) of the step, from 0.
        attempt: Which attempt of the action this is (from 1; see `ActionRecord.attempts`).
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
    ordinal: int = 0
    attempt: int = 1

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
            "ordinal": self.ordinal,
            "attempt": self.attempt,
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
            # the effective risk level the gateway applied (after risk rules); None when the
            # call never reached a decision (unknown tool, invalid arguments)
            "risk": self.packet.risk if self.packet is not None else None,
        }


def _dumps(value: Any) -> str:
    return json.dumps(to_jsonable_python(value), separators=(",", ":"), sort_keys=True)


def _problem(status: str, message: str, **extra: Any) -> str:
    return _dumps({"status": status, "error": message, **extra})


# Characters no backend stores: NUL (PostgreSQL text and jsonb) and lone surrogates (not UTF-8).
_UNSTORABLE_CHARS = re.compile("[\x00\ud800-\udfff]")
_MAX_UNSTORABLE = 20


def escape_unstorable(text: str) -> str:
    """`text` with unstorable characters written as `\\uXXXX` (JSON escapes; internal)."""
    return _UNSTORABLE_CHARS.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _what(text: str) -> str:
    found = _UNSTORABLE_CHARS.search(text)
    assert found is not None
    if found.group() == "\x00":
        return "holds a NUL character (\\u0000), which cannot be stored; remove it"
    return (
        f"holds a lone surrogate (\\u{ord(found.group()):04x}), which cannot be stored; send "
        "valid Unicode text"
    )


def unstorable_values(value: Any, path: str = "") -> list[tuple[str, str]]:
    """Find the values of JSON-like `value` that no store can hold (internal).

    NaN and infinite floats (JSON has no such numbers; PostgreSQL `jsonb` refuses them) and
    strings or mapping keys holding NUL characters or lone UTF-16 surrogates.

    Args:
        value: Mappings, sequences and scalars, walked recursively.
        path: Dotted path of `value` itself (`""` for the root).

    Returns:
        Up to 20 `(field, message)` pairs: the dotted field (unstorable characters in keys written
        as `\\uXXXX`, `"(root)"` for the root) and what is wrong with it and how to fix it.
    """
    found: list[tuple[str, str]] = []
    _walk_unstorable(value, path, found)
    return found


def _walk_unstorable(value: Any, path: str, found: list[tuple[str, str]]) -> None:
    if len(found) >= _MAX_UNSTORABLE:
        return
    if isinstance(value, str):
        if _UNSTORABLE_CHARS.search(value):
            found.append((path or "(root)", _what(value)))
    elif isinstance(value, float):
        if not math.isfinite(value):
            found.append(
                (
                    path or "(root)",
                    f"is {value!r}, not a finite number, which cannot be stored; send a finite "
                    "number",
                )
            )
    elif isinstance(value, Mapping):
        for key, item in value.items():
            name = str(key)
            here = f"{path}.{escape_unstorable(name)}" if path else escape_unstorable(name)
            if _UNSTORABLE_CHARS.search(name):
                found.append((here, _what(name)))
            _walk_unstorable(item, here, found)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _walk_unstorable(item, f"{path}.{index}" if path else str(index), found)


class _Unencodable:
    """A tool result with a lone surrogate where pydantic cannot even encode it (a mapping key)."""


def _jsonable_result(result: Any) -> Any:
    try:
        return to_jsonable_python(result)
    except UnicodeEncodeError:
        return _Unencodable()


def storable_copy(value: Any) -> Any:
    """A copy of JSON-like `value` every store holds (internal): NaN and infinite floats become
    `None`, NUL characters and lone surrogates in strings and keys become U+FFFD."""
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {storable_text(str(key)): storable_copy(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [storable_copy(item) for item in value]
    return value


def storable_text(text: str) -> str:
    """`text` with NUL characters and lone surrogates replaced by U+FFFD (internal)."""
    return _UNSTORABLE_CHARS.sub("\ufffd", text)


def _unstorable_arguments(call: ToolCall, found: Sequence[tuple[str, str]]) -> ToolOutcome:
    return ToolOutcome(
        call,
        "invalid",
        _problem(
            "invalid",
            "the arguments hold values that cannot be stored; fix these fields and call again",
            errors=[
                {"field": field, "message": message, "type": "unstorable"}
                for field, message in found
            ],
        ),
        is_error=True,
    )


@define(eq=False)
class _Plan:
    """One call on its way through the gateway (internal): identified, then decided, then
    (maybe) executed."""

    tool: Tool | None
    call: ToolCall
    scope: RunScope
    started: float
    args: BaseModel | None = None
    args_json: Mapping[str, Any] | None = None
    digest: str | None = None
    ordinal: int = 0
    packet: ActionPacket | None = None
    ctx: ToolContext | None = None
    #: Decided without executing (invalid, blocked, waiting, replayed, ...), or the result.
    outcome: ToolOutcome | None = None
    #: What to write to the ledger before executing (`begin`: a new action, `restart`: a new
    #: attempt of a known one) or after (`resolve`: reconcile found the effect done).
    ledger: Literal["none", "begin", "restart", "resolve"] = "none"
    known: ActionRecord | None = None
    attempt: int = 1
    #: A worker thread that outlived the call's timeout: its late outcome is recorded.
    late: asyncio.Future[Any] | None = None
    #: What the call reserves against its tool's budgets when its ledger entry is written.
    claims: tuple[BudgetClaim, ...] = ()

    @property
    def counts(self) -> bool:
        """Counted against `max_tool_calls`: a known tool called with valid arguments."""
        return self.args is not None


class _TimedOut(Exception):
    def __init__(self, late: asyncio.Future[Any] | None) -> None:
        super().__init__("timed out")
        self.late = late


class _LedgerRace(Exception):
    """Internal: a ledger write lost a race; decide the call again."""


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
        budgets: The `BudgetStore` tools' `Budget`s reserve in (in the ledger's transactions,
            so the same backend as `runs`); without one, calls of tools with budgets are blocked.
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
        budgets: BudgetStore | None = None,
    ) -> None:
        self.runs = runs
        self.budgets = budgets
        self.unit_of_work = unit_of_work
        self.events = events
        self.audit = audit
        self.clock = clock
        self.ids = ids
        self.executor = executor
        self.approvals = approvals
        self._late: set[asyncio.Task[None]] = set()

    # -- the pipeline -----------------------------------------------------------------------------

    async def invoke(
        self,
        tool: Tool,
        call: ToolCall,
        scope: RunScope,
        *,
        ordinal: int = 0,
        report: bool = True,
    ) -> ToolOutcome:
        """Run one call through the pipeline and return its outcome (never raises for tool
        failures; they become failed outcomes).

        Args:
            tool: The tool.
            call: The model's call.
            scope: The run it belongs to.
            ordinal: Position of this call among identical calls (same tool and arguments) of
                its step, from 0 (`ToolExecutor` numbers a step's calls for you).
            report: Publish the outcome's event (and audit blocked/shadowed calls) in the
                transaction that records the outcome. The runner passes `False` and reports
                outcomes inside the transaction that persists the step.
        """
        plan = self._identify(tool, call, scope, ordinal)
        if plan.outcome is None:
            await self._plan(plan)
        (outcome,) = await self._run([plan], report=report)
        return outcome

    async def drain(self, timeout_s: float | None = None) -> bool:
        """Wait until calls that outlived their timeout in a worker thread have finished and
        their late outcomes are recorded in the ledger (call it before shutting down).

        Args:
            timeout_s: Seconds to wait at most (`None`: until all are recorded).

        Returns:
            `True` when nothing is left to record.
        """
        if not self._late:
            return True
        _, pending = await asyncio.wait(set(self._late), timeout=timeout_s)
        return not pending

    def _identify(self, tool: Tool, call: ToolCall, scope: RunScope, ordinal: int = 0) -> _Plan:
        plan = _Plan(tool, call, scope, perf_counter(), ordinal=ordinal)
        validated = self._validate(tool, call)
        if isinstance(validated, ToolOutcome):
            plan.outcome = validated
            return plan
        plan.args = validated
        plan.args_json = validated.model_dump(mode="json")
        plan.digest = hashlib.sha256(canonical_json(plan.args_json).encode()).hexdigest()
        return plan

    async def _plan(self, plan: _Plan) -> _Plan:
        """Decide a valid call: replay, invariants, risk, shadow, approval, ledger (no effect
        yet; a new or re-run action is marked `plan.ledger` for `_run`)."""
        tool, call, scope = plan.tool, plan.call, plan.scope
        assert tool is not None
        assert plan.args is not None
        assert plan.digest is not None
        assert plan.args_json is not None
        action_id = action_id_for(scope.run_id, tool.name, plan.digest, plan.ordinal)
        packet = ActionPacket(
            action_id=action_id, run_id=scope.run_id, step=scope.step, agent=scope.agent.ref,
            tool=tool.name, arguments=plan.args_json, arguments_hash=plan.digest,
            declared_risk=int(tool.risk), risk=int(tool.risk), ordinal=plan.ordinal,
        )  # fmt: skip
        plan.ctx = ToolContext(
            scope.run_id, scope.agent.ref, scope.step, action_id, self._call_ctx(scope, action_id),
            scope.deps,
        )  # fmt: skip
        plan.outcome, plan.ledger, plan.known, plan.claims = None, "none", None, ()
        policy = scope.agent.policy
        known: ActionRecord | None = None
        if tool.side_effects:
            known = await self._ledger_get(action_id)  # one indexed read
            # A finished action is not a new action: replay what it did (a known failure of an
            # earlier step may run again below).
            if known is not None and (
                known.status is ActionStatus.SUCCEEDED
                or (known.status is ActionStatus.FAILED and known.step >= scope.step)
            ):
                plan.outcome = self._replayed(call, known, packet)
                return plan
        # 2. invariants, and the budgets as they stand
        packet = await self._prove(tool, plan.args, plan.ctx, packet)
        if tool.budgets:
            packet = await self._check_budgets(plan, packet)
        # 3. risk: rules only raise it
        namespace = _namespace(plan.args, packet.evidence)
        risk = int(tool.risk)
        for rule in tool.risk_rules:
            if rule.applies(namespace):
                risk = max(risk, int(rule.level))
        packet = packet.evolve(risk=risk)
        needs_approval = risk >= int(policy.approval_from) or risk >= RiskLevel.L3
        if (policy.shadow or tool.shadow) and (tool.side_effects or needs_approval):
            plan.outcome = _shadowed(call, packet, needs_approval)
            return plan
        if not packet.passed:
            failed = [r for r in packet.proof if not r.passed and r.name != _BUDGET]
            reason = "; ".join(f"{r.name}: {r.message}" for r in failed)
            reasons = [f"invariant failed: {reason}"] if failed else []
            reasons += _budget_reason([r for r in packet.proof if r.name == _BUDGET])
            packet = packet.evolve(decision="blocked", reason="; ".join(reasons))
            plan.outcome = ToolOutcome(
                call,
                "blocked",
                _problem("blocked", packet.reason, proof=[r.to_dict() for r in packet.proof]),
                is_error=True,
                packet=packet,
            )
            return plan
        if risk >= RiskLevel.L3 and not tool.approvers:
            # fail closed: an irreversible call is decided by named approvers, however it became
            # irreversible (tool() and operation_tool() refuse such tools already)
            packet = packet.evolve(
                decision="blocked",
                reason=f"{tool.name} is L3 (irreversible) for these arguments and names no "
                "approvers; it cannot run",
            )
            plan.outcome = ToolOutcome(
                call, "blocked", _problem("blocked", packet.reason), True, packet
            )
            return plan
        # 4. approval
        if needs_approval:
            gate = await self._approval(tool, call, scope, packet, key=action_id)
            if isinstance(gate, ToolOutcome):
                plan.outcome = gate
                return plan
            packet = gate
        plan.packet = packet
        # 5. idempotency: what the ledger says decides whether and how this runs
        if not tool.side_effects:
            return plan
        if known is None:
            plan.ledger = "begin"
        elif known.status is ActionStatus.FAILED:  # a known failure of an earlier step
            plan.ledger, plan.known = "restart", known
            plan.packet = packet.evolve(
                reason=f"attempt {known.attempts} failed in step {known.step}; running again"
            )
        else:  # started or in doubt: the outcome of an earlier attempt is unknown
            await self._resolve_in_doubt(plan, known, risk)
        return plan

    async def _resolve_in_doubt(self, plan: _Plan, known: ActionRecord, risk: int) -> None:
        """An earlier attempt's outcome is unknown: reconcile, replay through the executor's
        key, re-run an L0 call, or let a person decide; never repeat it silently."""
        tool, call, scope = plan.tool, plan.call, plan.scope
        assert tool is not None
        assert plan.packet is not None
        assert plan.ctx is not None
        packet = plan.packet
        action_id = str(packet.action_id)
        plan.known = known
        attempt = known.attempts
        if tool.reconcile is not None:
            found = await self._reconcile(tool, plan)
            if found is not None and found.done:
                result = to_jsonable_python(found.result)
                plan.packet = packet.evolve(
                    decision="reconciled",
                    reason=f"attempt {attempt} had an unknown outcome; reconcile found it done, "
                    "so it is not run again",
                )
                plan.outcome = ToolOutcome(
                    call, "reconciled", _dumps(result), False, plan.packet, result
                )
                plan.ledger = "resolve"
                return
            if found is not None:
                plan.ledger = "restart"
                plan.packet = packet.evolve(
                    reason=f"attempt {attempt} had an unknown outcome; reconcile found it not "
                    "done, so it runs again"
                )
                return
        if self._recoverable(tool):
            plan.ledger = "restart"
            plan.packet = packet.evolve(
                reason=f"attempt {attempt} had an unknown outcome; an idempotent command runs "
                "again with the same idempotency key (replayed if it took effect)"
            )
            return
        if risk <= RiskLevel.L0:
            plan.ledger = "restart"
            plan.packet = packet.evolve(
                reason=f"attempt {attempt} had an unknown outcome; an L0 call is safe to repeat"
            )
            return
        why = (
            f"the outcome of {tool.name} (attempt {attempt}) is unknown: it was started and "
            "never finished (a timeout, a cancelled run or a crashed worker). Approve to run it "
            "again, reject to leave it as it is"
        )
        gate = await self._approval(
            tool, call, scope, packet, key=f"{action_id}:retry:{attempt}", reason=why,
            metadata={"in_doubt": True, "attempt": attempt},
        )  # fmt: skip
        if isinstance(gate, ToolOutcome):
            if gate.pending:
                assert gate.packet is not None
                plan.outcome = evolve(
                    gate,
                    packet=gate.packet.evolve(
                        reason=f"in doubt: waiting for approval {gate.approval_id} to run "
                        f"attempt {attempt + 1}"
                    ),
                )
                return
            reason = (
                f"the outcome of {tool.name} is unknown (attempt {attempt} never finished) and "
                "it is not run again"
                + (f": {gate.packet.reason}" if gate.packet and gate.packet.reason else "")
            )
            in_doubt = (gate.packet or packet).evolve(decision="in_doubt", reason=reason)
            plan.outcome = ToolOutcome(
                call, "in_doubt", _problem("in_doubt", reason), True, in_doubt
            )
            return
        plan.ledger = "restart"
        plan.packet = gate.evolve(
            reason=f"attempt {attempt} had an unknown outcome; a person approved running it "
            f"again ({gate.approval_id})"
        )

    async def _reconcile(self, tool: Tool, plan: _Plan) -> Reconciled | None:
        assert tool.reconcile is not None
        assert plan.args is not None
        assert plan.ctx is not None
        try:
            found = tool.reconcile(plan.args, plan.ctx)
            if inspect.isawaitable(found):
                found = await found
        except Exception as exc:  # still unknown: a person decides
            _log.warning("agent.reconcile_failed", tool=tool.name, exc_info=exc)
            return None
        return found if isinstance(found, Reconciled) else None

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
        found = unstorable_values(raw)
        if found:
            return _unstorable_arguments(call, found)
        try:
            args = tool.input.model_validate(raw)
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
        # a validator may make what was sent unstorable (a float field parses the text "nan")
        found = unstorable_values(args.model_dump(mode="json"))
        if found:
            return _unstorable_arguments(call, found)
        return args

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
            unstorable = unstorable_values(evidence)
            if unstorable:  # it would be stored in the packet: fail closed, as above
                field, message = unstorable[0]
                failed = InvariantResult(
                    "evidence", "evidence()", False, {},
                    f"the evidence cannot be stored ({field}: {message})",
                )  # fmt: skip
                return packet.evolve(evidence={}, proof=(failed,))
        namespace = _namespace(args, evidence)
        proof = tuple(inv.check(namespace) for inv in tool.invariants)
        return packet.evolve(evidence=evidence, proof=proof)

    async def _check_budgets(self, plan: _Plan, packet: ActionPacket) -> ActionPacket:
        """One proof line per budget, from the budget as it stands. The reservation made with the
        ledger entry decides; this read lets a call that cannot fit be blocked before anyone is
        asked to approve it (and shadow mode report it)."""
        tool = plan.tool
        assert tool is not None
        assert plan.args is not None
        assert plan.ctx is not None
        lines: list[InvariantResult] = []
        claims: list[BudgetClaim] = []
        for budget in tool.budgets:
            try:
                claims.append(budget.claim(plan.args))
            except BudgetInputError as exc:
                lines.append(
                    InvariantResult(
                        _BUDGET,
                        budget.expression,
                        False,
                        {"key": budget.key},
                        f"{exc}: nothing can be reserved",
                    )
                )
        store = self.budgets
        if store is None:
            lines += [
                InvariantResult(
                    _BUDGET,
                    c.expression,
                    False,
                    {"key": c.key},
                    f"{tool.name} has a budget and the gateway has no BudgetStore; pass "
                    "AgentRunner(budgets=MemoryBudgetStore()) or, with SQL stores, "
                    "budgets=SqlBudgetStore()",
                )
                for c in claims
            ]
        elif claims:
            tx = await self.unit_of_work.begin(readonly=True)
            try:
                for c in claims:
                    usage = await store.usage(
                        tx, org_id=plan.ctx.call.org_id, key=c.key, action_id=packet.action_id
                    )
                    before = usage.reserved - usage.held
                    lines.append(_budget_line(c, before, before + c.amount <= c.cap))
            finally:
                await tx.rollback()
        plan.claims = tuple(claims)
        return packet.evolve(proof=(*packet.proof, *lines))

    async def _reserve(self, tx: Transaction, plans: Sequence[_Plan]) -> dict[int, InvariantResult]:
        """Reserve the plans' budget claims in `tx`, in key order (one lock order for every
        transaction, so concurrent steps cannot deadlock on PostgreSQL). A plan refused on one
        budget releases what it reserved here on the others. Granted plans get their proof lines
        updated; returns the refused plans (by `id`) with the failing line."""
        order = sorted(
            ((c.key, i, c) for i, p in enumerate(plans) for c in p.claims), key=lambda t: t[:2]
        )
        if not order:
            return {}
        store = self.budgets
        assert store is not None  # without a store, calls with claims were blocked in _plan
        now = self.clock.now()
        refused: dict[int, InvariantResult] = {}
        granted: dict[int, list[InvariantResult]] = {}
        fresh: dict[int, list[str]] = {}
        for _, i, claim in order:
            if i in refused:
                continue
            p = plans[i]
            assert p.ctx is not None
            got = await store.reserve(
                tx, org_id=p.ctx.call.org_id, key=claim.key, action_id=p.ctx.action_id,
                amount=claim.amount, cap=claim.cap, now=now, new=p.ledger == "begin",
            )  # fmt: skip
            if got.granted:
                granted.setdefault(i, []).append(
                    _budget_line(claim, got.reserved - got.amount, True)
                )
                if not got.held_before:
                    fresh.setdefault(i, []).append(claim.key)
                continue
            refused[i] = _budget_line(claim, got.reserved, False)
            if fresh.get(i):
                await store.release(
                    tx, org_id=p.ctx.call.org_id, action_id=p.ctx.action_id, now=now,
                    keys=fresh[i],
                )  # fmt: skip
        for i, lines in granted.items():
            packet = plans[i].packet
            if i not in refused and packet is not None:
                plans[i].packet = packet.evolve(proof=_with_lines(packet.proof, lines))
        return {id(plans[i]): line for i, line in refused.items()}

    def _refuse(self, plans: Sequence[_Plan], refused: Mapping[int, InvariantResult]) -> None:
        """Block the plans whose reservation was refused (after the transaction committed)."""
        for p in plans:
            line = refused.get(id(p))
            if line is None:
                continue
            assert p.packet is not None
            packet = p.packet.evolve(
                proof=_with_lines(p.packet.proof, [line]),
                decision="blocked",
                reason=_budget_reason([line])[0],
            )
            p.outcome = ToolOutcome(
                p.call,
                "blocked",
                _problem("blocked", packet.reason, proof=[r.to_dict() for r in packet.proof]),
                is_error=True,
                packet=packet,
            )
            p.ledger = "none"

    async def _release(self, tx: Transaction, plan: _Plan) -> None:
        """A known failure took no effect: release what the action reserved."""
        if self.budgets is None or plan.tool is None or not plan.tool.budgets:
            return
        assert plan.ctx is not None
        await self.budgets.release(
            tx, org_id=plan.ctx.call.org_id, action_id=plan.ctx.action_id, now=self.clock.now()
        )

    async def _approval(
        self,
        tool: Tool,
        call: ToolCall,
        scope: RunScope,
        packet: ActionPacket,
        *,
        key: str,
        reason: str | None = None,
        metadata: Mapping[str, Any] | None = None,
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
        try:
            req = await wf.get_by_key(scope.call.org_id, key)
            if req is None:
                req = await wf.request(
                    action=tool.name,
                    arguments=packet.arguments,
                    requested_by=scope.call.actor,
                    reason=reason or scope.reason or f"{scope.agent.ref} wants to call {tool.name}",
                    risk=packet.risk,
                    org_id=scope.call.org_id,
                    subject_type="agent.tool_call",
                    subject_id=scope.run_id,
                    key=key,
                    expires_in_s=scope.agent.policy.approval_ttl_s,
                    quorum=tool.quorum,
                    approvers=tool.approvers,
                    metadata={
                        "agent": scope.agent.ref,
                        "step": scope.step,
                        "packet": packet.to_dict(),
                        **dict(metadata or {}),
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

    def _replayed(self, call: ToolCall, known: ActionRecord, packet: ActionPacket) -> ToolOutcome:
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
            attempt=known.attempts,
        )  # fmt: skip
        content = stored.get("content", "")
        return ToolOutcome(call, "replayed", content, failed, packet, stored.get("result"))

    def _recoverable(self, tool: Tool) -> bool:
        if tool.kind != "operation" or self.executor is None or tool.operation is None:
            return False
        spec = self.executor.registry.get(tool.operation, tool.version)
        return spec.idempotent and spec.is_command

    async def _run(
        self,
        plans: Sequence[_Plan],
        *,
        open: Stage | None = None,
        close: StageOutcomes | None = None,
        report: bool = False,
    ) -> list[ToolOutcome]:
        """Record new actions (with `open`'s writes, in one transaction), execute the runnable
        calls concurrently, then record their outcomes (with `close`'s writes, or the outcomes'
        events when `report`, in one transaction)."""
        writes = [p for p in plans if p.ledger in ("begin", "restart")]
        if writes:
            await self._begin(writes, open)
        runnable = [p for p in plans if p.outcome is None]
        if len(runnable) == 1:
            await self._execute(runnable[0])
        elif runnable:
            await asyncio.gather(*(self._execute(p) for p in runnable))
        outcomes: list[ToolOutcome] = []
        for p in plans:
            assert p.outcome is not None
            outcomes.append(evolve(p.outcome, duration_ms=(perf_counter() - p.started) * 1000.0))
        recorded = [p for p in plans if p.ledger != "none"]
        if recorded or close is not None or report:
            tx = await self.unit_of_work.begin()
            try:
                for p, outcome in zip(plans, outcomes, strict=True):
                    if p.ledger != "none":
                        await self._finish(tx, p, outcome)
                if close is not None:
                    await close(tx, outcomes)
                elif report:
                    for p, outcome in zip(plans, outcomes, strict=True):
                        if p.tool is not None:
                            await self.report(tx, p.tool, p.scope, outcome)
                await tx.commit()
            except BaseException:
                await tx.rollback()
                if recorded and close is not None:
                    await asyncio.shield(self._finish_alone(recorded, outcomes, plans))
                raise
        self._watch(plans)
        return outcomes

    async def _begin(self, writes: Sequence[_Plan], open: Stage | None) -> None:
        tx = await self.unit_of_work.begin()
        try:
            if open is not None:
                await open(tx)
            refused = await self._reserve(tx, writes)
            for p in writes:
                if id(p) not in refused:
                    await self._stage_begin(tx, p)
            await tx.commit()
        except ConflictError:
            await tx.rollback()
        except BaseException:
            await tx.rollback()
            raise
        else:
            self._refuse(writes, refused)
            return
        # A ledger write lost a race (another worker recorded the same action meanwhile): take
        # the writes one by one and decide the losers again from what the ledger now says.
        if open is not None:
            tx = await self.unit_of_work.begin()
            try:
                await open(tx)
                await tx.commit()
            except BaseException:
                await tx.rollback()
                raise
        for p in writes:
            for _round in range(2):
                if p.ledger not in ("begin", "restart"):
                    break
                tx = await self.unit_of_work.begin()
                try:
                    refused = await self._reserve(tx, [p])
                    if not refused:
                        await self._stage_begin(tx, p)
                    await tx.commit()
                except ConflictError:
                    await tx.rollback()
                    await self._plan(p)
                except BaseException:
                    await tx.rollback()
                    raise
                else:
                    self._refuse([p], refused)
                    break
            else:
                if p.ledger in ("begin", "restart"):  # lost twice: leave it to the other worker
                    assert p.packet is not None
                    packet = p.packet.evolve(
                        decision="in_doubt",
                        reason="another worker is running this action right now; its outcome "
                        "is not known here",
                    )
                    p.outcome = ToolOutcome(
                        p.call, "in_doubt", _problem("in_doubt", packet.reason), True, packet
                    )
                    p.ledger = "none"

    async def _stage_begin(self, tx: Transaction, plan: _Plan) -> None:
        assert plan.packet is not None
        assert plan.tool is not None
        assert plan.ctx is not None
        now = self.clock.now()
        action_id = str(plan.packet.action_id)
        if plan.ledger == "begin":
            plan.attempt = 1
            plan.packet = plan.packet.evolve(decision="execute", attempt=1)
            await self.runs.begin_action(
                tx,
                ActionRecord(
                    action_id=action_id,
                    run_id=plan.scope.run_id,
                    step=plan.scope.step,
                    tool=plan.tool.name,
                    org_id=plan.ctx.call.org_id,
                    arguments_hash=plan.packet.arguments_hash,
                    status=ActionStatus.STARTED,
                    created_at=now,
                    updated_at=now,
                    packet=plan.packet.to_dict(),
                ),
            )
            return
        known = plan.known
        assert known is not None
        plan.attempt = known.attempts + 1
        plan.packet = plan.packet.evolve(decision="execute", attempt=plan.attempt)
        await self.runs.update_action(
            tx,
            action_id,
            ActionStatus.STARTED,
            expected=(known.status,),
            expected_attempts=known.attempts,
            updated_at=now,
            step=plan.scope.step,
            packet=plan.packet.to_dict(),
            attempts=plan.attempt,
        )

    async def _finish(self, tx: Transaction, plan: _Plan, outcome: ToolOutcome) -> None:
        """Record the call's outcome with a compare-and-set on the ledger entry. If another
        writer moved the entry meanwhile (the late outcome of the attempt this one reconciled,
        or a worker that recovered the run and started a new attempt), its record stands: the
        outcome here is logged and audited, not written over it."""
        assert plan.tool is not None
        assert plan.ctx is not None
        action_id = str(outcome.action_id)
        stored = {"content": outcome.content, "result": outcome.result, "status": outcome.status}
        try:
            if plan.ledger == "resolve":
                assert plan.known is not None
                await self.runs.update_action(
                    tx, action_id, ActionStatus.SUCCEEDED,
                    expected=(ActionStatus.STARTED, ActionStatus.IN_DOUBT),
                    expected_attempts=plan.known.attempts, updated_at=self.clock.now(),
                    result=stored,
                )  # fmt: skip
            else:
                status = (
                    ActionStatus.IN_DOUBT
                    if outcome.status == "in_doubt"
                    else ActionStatus.FAILED
                    if outcome.is_error
                    else ActionStatus.SUCCEEDED
                )
                await self.runs.update_action(
                    tx, action_id, status, expected=(ActionStatus.STARTED,),
                    expected_attempts=plan.attempt, updated_at=self.clock.now(), result=stored,
                )  # fmt: skip
                if status is ActionStatus.FAILED:
                    await self._release(tx, plan)
        except ConflictError as exc:
            _log.warning(
                "agent.ledger_outcome_superseded", tool=plan.tool.name, action_id=action_id,
                outcome=outcome.status, stored=exc.details.get("status"),
            )  # fmt: skip
        await self._audit(tx, plan.tool, plan.ctx.call, outcome)

    async def _finish_alone(
        self, recorded: Sequence[_Plan], outcomes: Sequence[ToolOutcome], plans: Sequence[_Plan]
    ) -> None:
        """The step could not be persisted: still record what the calls did, so the ledger does
        not report known outcomes as unknown."""
        by_plan = dict(zip((id(p) for p in plans), outcomes, strict=True))
        try:
            tx = await self.unit_of_work.begin()
            try:
                for p in recorded:
                    await self._finish(tx, p, by_plan[id(p)])
                await tx.commit()
            except BaseException:
                await tx.rollback()
                raise
        except Exception:  # the store is failing: the actions stay started, i.e. in doubt
            _log.warning("agent.ledger_finish_failed", exc_info=True)

    async def _execute(self, plan: _Plan) -> None:
        tool, call, scope = plan.tool, plan.call, plan.scope
        assert tool is not None
        assert plan.packet is not None
        assert plan.ctx is not None
        packet = plan.packet.evolve(decision="execute", attempt=plan.attempt)
        limit_s = tool.timeout if tool.timeout is not None else scope.agent.tool_timeout_s
        try:
            result = await self._run_tool(plan, limit_s)
        except _TimedOut as timed_out:
            plan.late = timed_out.late
            plan.outcome = _timed_out(plan, packet, limit_s)
        except ToolOutcomeUnknownError as exc:
            plan.outcome = _outcome_unknown(plan, packet, exc)
        except ContractSpecError as exc:
            plan.outcome = ToolOutcome(
                call, "error", _problem(exc.code, exc.message, details=exc.details), True, packet
            )
        except Exception as exc:
            _log.warning("agent.tool_raised", tool=tool.name, run_id=scope.run_id, exc_info=exc)
            plan.outcome = ToolOutcome(
                call,
                "error",
                _problem("tool_error", f"{tool.name} failed: {type(exc).__name__}: {exc}"),
                True,
                packet,
            )
        except asyncio.CancelledError:
            if plan.ledger in ("begin", "restart"):
                await asyncio.shield(self._mark_in_doubt(plan))
            raise
        else:
            found = (
                unstorable_values(result)
                if not isinstance(result, _Unencodable)
                else [
                    (
                        "(result)",
                        "holds a lone surrogate, which cannot be stored; send valid Unicode",
                    )
                ]
            )
            if not found:
                plan.outcome = ToolOutcome(call, "ok", _dumps(result), False, packet, result)
                return
            shown = "; ".join(f"{field}: {message}" for field, message in found[:5])
            if tool.side_effects:
                # The effect happened: recording a failure would invite the model to run it
                # again (a second effect). The call succeeded; its result is kept as a storable
                # copy (NaN/infinities -> null, NUL/surrogates -> U+FFFD; an unencodable one ->
                # null) and the cleaning is logged.
                cleaned = None if isinstance(result, _Unencodable) else storable_copy(result)
                _log.warning(
                    "agent.tool_result_cleaned", tool=tool.name, run_id=scope.run_id, fields=shown
                )
                plan.outcome = ToolOutcome(call, "ok", _dumps(cleaned), False, packet, cleaned)
                return
            # a read: a known failure, nothing unstorable reaches the step or the model
            _log.warning("agent.tool_result_unstorable", tool=tool.name, run_id=scope.run_id)
            plan.outcome = ToolOutcome(
                call,
                "error",
                _problem(
                    "unstorable_result",
                    f"{tool.name} returned a result that cannot be stored ({shown}); the call "
                    "failed",
                ),
                True,
                packet,
            )

    async def _run_tool(self, plan: _Plan, limit_s: float) -> Any:
        tool, args, ctx = plan.tool, plan.args, plan.ctx
        assert tool is not None
        assert args is not None
        assert ctx is not None
        thread: asyncio.Future[Any] | None = None
        try:
            async with asyncio.timeout(limit_s) as deadline:
                if tool.kind == "operation":
                    return await self._run_operation(tool, args, ctx)
                fn = tool.function
                assert fn is not None
                kwargs: dict[str, Any] = {}
                if tool.positional:
                    (param,) = [
                        p for p in inspect.signature(fn).parameters if p != tool.context_param
                    ]
                    kwargs[param] = args
                else:
                    kwargs = {name: getattr(args, name) for name in type(args).model_fields}
                if inspect.iscoroutinefunction(fn):
                    if tool.context_param is not None:
                        kwargs[tool.context_param] = ctx
                    return _jsonable_result(await fn(**kwargs))
                if tool.isolation == "process":
                    context = None
                    if tool.context_param is not None:
                        context = (tool.context_param, _context_data(ctx))
                    return await run_in_process(fn, kwargs, context)
                if tool.context_param is not None:
                    kwargs[tool.context_param] = ctx
                loop = asyncio.get_running_loop()
                call = functools.partial(contextvars.copy_context().run, fn, **kwargs)
                thread = loop.run_in_executor(None, call)
                # shielded: a timeout stops the wait, not the thread, whose outcome is recorded
                result = await asyncio.shield(thread)
                thread = None
                if inspect.isawaitable(result):
                    result = await result
                return _jsonable_result(result)
        except TimeoutError:
            if deadline.expired():
                raise _TimedOut(thread) from None
            raise
        except asyncio.CancelledError:
            plan.late = thread
            raise

    async def _run_operation(self, tool: Tool, args: BaseModel, ctx: ToolContext) -> Any:
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

    async def _mark_in_doubt(self, plan: _Plan) -> None:
        """The call's run was cancelled while it ran: its outcome is unknown."""
        assert plan.packet is not None
        assert plan.tool is not None
        reason = "the run was cancelled while the call ran; it may have taken effect"
        try:
            tx = await self.unit_of_work.begin()
            try:
                await self.runs.update_action(
                    tx, str(plan.packet.action_id), ActionStatus.IN_DOUBT,
                    expected=(ActionStatus.STARTED,), expected_attempts=plan.attempt,
                    updated_at=self.clock.now(),
                    result={"content": _problem("in_doubt", reason), "result": None,
                            "status": "in_doubt"},
                )  # fmt: skip
                await tx.commit()
            except BaseException:
                await tx.rollback()
                raise
        except Exception:  # it stays started: in doubt all the same
            _log.warning("agent.mark_in_doubt_failed", tool=plan.tool.name, exc_info=True)
            return
        if plan.late is not None:
            self._watch([plan])

    def _watch(self, plans: Sequence[_Plan]) -> None:
        """Record the late outcome of threads that outlived their call."""
        for p in plans:
            late, p.late = p.late, None
            if late is None:
                continue
            if p.ledger not in ("begin", "restart"):  # nothing to record: just collect it
                late.add_done_callback(_collect)
                continue
            task = asyncio.get_running_loop().create_task(
                self._record_late(p, late), name="contractspec.agent.late_outcome"
            )
            self._late.add(task)
            task.add_done_callback(self._late.discard)

    async def _record_late(self, plan: _Plan, late: asyncio.Future[Any]) -> None:
        assert plan.tool is not None
        assert plan.ctx is not None
        assert plan.packet is not None
        tool = plan.tool
        kind: OutcomeStatus = "ok"
        try:
            value = await late
            if inspect.isawaitable(value):
                value = await value
            result = to_jsonable_python(value)
            status, content = ActionStatus.SUCCEEDED, _dumps(result)
        except Exception as exc:
            result = None
            status, kind = ActionStatus.FAILED, "error"
            content = _problem("tool_error", f"{tool.name} failed: {type(exc).__name__}: {exc}")
        try:
            tx = await self.unit_of_work.begin()
            try:
                await self.runs.update_action(
                    tx, str(plan.packet.action_id), status, expected=(ActionStatus.IN_DOUBT,),
                    expected_attempts=plan.attempt, updated_at=self.clock.now(),
                    result={"content": content, "result": result, "status": kind, "late": True},
                )  # fmt: skip
                if status is ActionStatus.FAILED:
                    await self._release(tx, plan)
                outcome = ToolOutcome(
                    plan.call, kind, content, kind == "error", plan.packet, result
                )
                await self._audit(tx, tool, plan.ctx.call, outcome, late=True)
                await tx.commit()
            except BaseException:
                await tx.rollback()
                raise
        except ConflictError:
            _log.warning(
                "agent.late_outcome_after_retry", tool=tool.name, action_id=plan.packet.action_id
            )
        except Exception:
            _log.warning("agent.late_outcome_not_recorded", tool=tool.name, exc_info=True)
        else:
            _log.info(
                "agent.late_outcome_recorded", tool=tool.name, action_id=plan.packet.action_id,
                status=status.value,
            )  # fmt: skip

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
        self,
        tx: Transaction | None,
        tool: Tool,
        call: CallContext,
        outcome: ToolOutcome,
        *,
        late: bool = False,
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
                details={
                    "status": outcome.status,
                    "packet": packet.to_dict() if packet else None,
                    **({"late": True} if late else {}),
                },
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


#: Name of a budget's line in a call's proof.
_BUDGET = "budget_reservation"


def _plain(value: Decimal) -> str:
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _budget_line(claim: BudgetClaim, before: Decimal, passed: bool) -> InvariantResult:
    """A budget's proof line: what was reserved before this call, its amount and the cap."""
    values = {
        "key": claim.key,
        "reserved": _plain(before),
        "amount": _plain(claim.amount),
        "cap": _plain(claim.cap),
    }
    message = (
        ""
        if passed
        else f"budget {claim.key!r} has {_plain(before)} of {_plain(claim.cap)} reserved; "
        f"{_plain(claim.amount)} more would exceed it"
    )
    return InvariantResult(_BUDGET, claim.expression, passed, values, message)


def _budget_reason(lines: Sequence[InvariantResult]) -> list[str]:
    """`["budget exceeded: ..."]` for failed budget lines (`budget not reserved` when an amount
    or the store was missing rather than room), `[]` when all passed."""
    failed = [r for r in lines if not r.passed]
    if not failed:
        return []
    word = "exceeded" if all("reserved" in r.values for r in failed) else "not reserved"
    return [f"budget {word}: " + "; ".join(r.message for r in failed)]


def _with_lines(
    proof: Sequence[InvariantResult], lines: Sequence[InvariantResult]
) -> tuple[InvariantResult, ...]:
    """`proof` with its budget lines replaced by `lines` of the same key (others appended)."""
    by_key = {line.values.get("key"): line for line in lines}
    out: list[InvariantResult] = []
    for r in proof:
        key = r.values.get("key") if r.name == _BUDGET else None
        out.append(by_key.pop(key, r) if r.name == _BUDGET else r)
    return (*out, *by_key.values())


def _namespace(args: BaseModel, evidence: Mapping[str, Any]) -> dict[str, Any]:
    values = args.model_dump()
    return {**values, **evidence, "args": values, "evidence": dict(evidence)}


def _shadowed(call: ToolCall, packet: ActionPacket, needs_approval: bool) -> ToolOutcome:
    would = "blocked" if not packet.passed else "needs_approval" if needs_approval else "execute"
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


def _timed_out(plan: _Plan, packet: ActionPacket, limit_s: float) -> ToolOutcome:
    tool, call = plan.tool, plan.call
    assert tool is not None
    abandoned = plan.late is not None
    if not tool.side_effects:
        message = (
            f"{tool.name} took longer than {limit_s:g} s and was cancelled"
            if not abandoned
            else f"{tool.name} took longer than {limit_s:g} s and was abandoned (it runs in a "
            "worker thread, which cannot be stopped)"
        )
        return ToolOutcome(call, "timeout", _problem("timeout", message), True, packet)
    how = (
        f"did not finish within {limit_s:g} s and is still running in a worker thread, which "
        "cannot be stopped: it may still take effect"
        if abandoned
        else f"did not finish within {limit_s:g} s and was cancelled: it may have taken effect "
        "before it was stopped"
    )
    reason = (
        f"{tool.name} {how}. Its outcome is unknown: do not assume that it happened or that it "
        "did not. Calling it again with the same arguments does not run it twice: it is checked "
        "first (reconciled, or sent to a person for approval)"
    )
    packet = packet.evolve(decision="in_doubt", reason=reason)
    return ToolOutcome(
        call, "in_doubt", _problem("in_doubt", reason, action_id=packet.action_id), True, packet
    )


def _outcome_unknown(
    plan: _Plan, packet: ActionPacket, exc: ToolOutcomeUnknownError
) -> ToolOutcome:
    """The tool itself reported that its effect may or may not have happened."""
    tool, call = plan.tool, plan.call
    assert tool is not None
    if not tool.side_effects:
        return ToolOutcome(
            call, "error", _problem(exc.code, exc.message, details=exc.details), True, packet
        )
    reason = (
        f"{tool.name}: {exc.message}. Its outcome is unknown: do not assume that it happened or "
        "that it did not. Calling it again with the same arguments does not run it twice: it is "
        "checked first (reconciled, or sent to a person for approval)"
    )
    packet = packet.evolve(decision="in_doubt", reason=reason)
    return ToolOutcome(
        call, "in_doubt", _problem("in_doubt", reason, action_id=packet.action_id), True, packet
    )


def _context_data(ctx: ToolContext) -> dict[str, Any]:
    call = ctx.call
    return {
        "run_id": ctx.run_id,
        "agent": ctx.agent,
        "step": ctx.step,
        "action_id": ctx.action_id,
        "actor_id": call.actor.id,
        "actor_kind": call.actor.kind.value,
        "roles": sorted(call.actor.roles),
        "org_id": call.org_id,
        "request_id": call.request_id,
        "correlation_id": call.correlation_id,
    }


def _collect(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: an abandoned thread's error is not "never retrieved"


class ToolExecutor:
    """Executes the tool calls of one model step, each decided and executed independently.

    Unknown tools and unexpected exceptions become failed tool results (the run goes on);
    parallel calls run concurrently (`asyncio.gather`), so one waiting for approval or timing out
    does not hold the others back. Identical calls of the step (same tool and arguments) get
    ordinals 0, 1, ... and so distinct action ids: each takes effect once.

    Args:
        gateway: The `ToolGateway` each call goes through.
        report: Let the gateway publish each outcome's event in the transaction recording the
            outcomes (`False` when the caller reports them itself, as the runner does with each
            step).
    """

    def __init__(self, gateway: ToolGateway, *, report: bool = True) -> None:
        self.gateway = gateway
        self.report = report

    async def execute(self, calls: Sequence[ToolCall], scope: RunScope) -> list[ToolOutcome]:
        """Outcomes in the order of `calls`."""
        plans = self._identify(calls, scope)
        await self._decide(plans)
        return await self._run(plans)

    def _identify(
        self, calls: Sequence[ToolCall], scope: RunScope, only: Iterable[str] | None = None
    ) -> list[_Plan]:
        """Validate the step's calls and number identical ones; `only` keeps the calls with
        these ids (the ordinals still count every call of the step)."""
        keep = None if only is None else set(only)
        seen: dict[tuple[str, str], int] = {}
        plans: list[_Plan] = []
        for call in calls:
            tool = scope.agent.tool(call.name)
            if tool is None:
                allowed = ", ".join(t.name for t in scope.agent.tools) or "none"
                plan = _Plan(None, call, scope, perf_counter())
                plan.outcome = ToolOutcome(
                    call,
                    "unknown_tool",
                    _problem(
                        "unknown_tool",
                        f"{call.name!r} is not one of this agent's tools; allowed: {allowed}",
                    ),
                    is_error=True,
                )
            else:
                plan = self.gateway._identify(tool, call, scope)
                if plan.digest is not None:
                    key = (tool.name, plan.digest)
                    plan.ordinal = seen.get(key, 0)
                    seen[key] = plan.ordinal + 1
            if keep is None or call.id in keep:
                plans.append(plan)
        return plans

    async def _decide(self, plans: Sequence[_Plan]) -> None:
        todo = [p for p in plans if p.outcome is None]
        if len(todo) == 1:
            await self._decide_one(todo[0])
        elif todo:
            await asyncio.gather(*(self._decide_one(p) for p in todo))

    async def _decide_one(self, plan: _Plan) -> None:
        try:
            await self.gateway._plan(plan)
        except Exception as exc:  # a failed tool is a failed result, never a crashed run
            _log.error(
                "agent.tool_crashed", tool=plan.call.name, run_id=plan.scope.run_id, exc_info=exc
            )
            plan.ledger = "none"
            plan.outcome = ToolOutcome(
                plan.call,
                "error",
                _problem(
                    "tool_error",
                    f"{plan.call.name} failed unexpectedly ({type(exc).__name__})",
                ),
                is_error=True,
            )

    async def _run(
        self,
        plans: Sequence[_Plan],
        *,
        open: Stage | None = None,
        close: StageOutcomes | None = None,
    ) -> list[ToolOutcome]:
        return await self.gateway._run(plans, open=open, close=close, report=self.report)


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
